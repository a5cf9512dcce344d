//! `cargo xtask fuzz TARGET [--time DURATION]`: coverage-guided fuzzing with cargo-afl (AFL++
//! on the stable toolchain), or the differential test at length.
//!
//! Targets (in `fuzz/src/bin/`): `config`, `filter_file`, `fail2ban_filter`, `datepattern`,
//! `jail_lines`, `control`; `differential` runs the adversarial-line test of the filters in
//! release for the given time with a fresh seed. Seeds come from the repository (the example
//! configuration, the built-in filters, their fixtures) and, when present, fail2ban's stock
//! filters. Findings land in `target/fuzz/TARGET/default/crashes` and are listed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys;

pub const TARGETS: [&str; 7] = [
    "config",
    "filter_file",
    "fail2ban_filter",
    "datepattern",
    "jail_lines",
    "control",
    "differential",
];

pub fn run(args: &[String]) -> Result<()> {
    let Some(target) = args.first() else {
        bail!(
            "usage: cargo xtask fuzz <{}> [--time 10m]",
            TARGETS.join("|")
        );
    };
    if !TARGETS.contains(&target.as_str()) {
        bail!(
            "unknown fuzz target {target:?}: one of {}",
            TARGETS.join(", ")
        );
    }
    let time = match args.iter().position(|a| a == "--time") {
        Some(i) => parse_time(args.get(i + 1).map(String::as_str).unwrap_or(""))?,
        None => Duration::from_secs(600),
    };
    sys::ensure_packages()?;
    if target == "differential" {
        return differential(time);
    }
    ensure_cargo_afl()?;
    let root = sys::workspace_root();
    let manifest = root.join("fuzz/Cargo.toml");
    crate::run(
        Command::new(env!("CARGO"))
            .args([
                "afl",
                "build",
                "--release",
                "--bin",
                target,
                "--manifest-path",
            ])
            .arg(&manifest)
            .current_dir(&root),
    )?;
    let seeds = root.join("target/fuzz-seeds").join(target);
    write_seeds(target, &seeds)?;
    let out = root.join("target/fuzz").join(target);
    std::fs::create_dir_all(&out)?;
    let binary = root.join("fuzz/target/release").join(target);
    let started = Instant::now();
    // A run resumes its corpus (`-i -`) when one exists.
    let input = if out.join("default/queue").is_dir() {
        PathBuf::from("-")
    } else {
        seeds
    };
    let status = Command::new(env!("CARGO"))
        .args(["afl", "fuzz", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["-V", &time.as_secs().to_string(), "--"])
        .arg(&binary)
        .env("AFL_NO_UI", "1")
        .env("AFL_SKIP_CPUFREQ", "1")
        .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
        .status()
        .context("running cargo afl fuzz")?;
    let crashes = findings(&out.join("default/crashes"));
    let hangs = findings(&out.join("default/hangs"));
    println!(
        "fuzz {target}: {:.1} min, exit {status}; {} crashes, {} hangs (in {})",
        started.elapsed().as_secs_f64() / 60.0,
        crashes.len(),
        hangs.len(),
        out.display()
    );
    for f in crashes.iter().chain(&hangs) {
        println!("  {}", f.display());
    }
    if !crashes.is_empty() {
        bail!("{target}: {} crashing inputs", crashes.len());
    }
    Ok(())
}

fn parse_time(text: &str) -> Result<Duration> {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n
        .parse()
        .with_context(|| format!("bad --time {text:?} (10m, 2h, 90s)"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("bad --time {text:?} (10m, 2h, 90s)"),
    }))
}

fn ensure_cargo_afl() -> Result<()> {
    if !crate::has_cargo_subcommand("afl") {
        crate::cargo(&["install", "cargo-afl", "--version", "0.18.2", "--locked"])?;
    }
    // Builds AFL++ once for this toolchain; says so (and fails) when it already has.
    let _ = Command::new(env!("CARGO"))
        .args(["afl", "config", "--build"])
        .output();
    Ok(())
}

fn findings(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.file_name().is_some_and(|n| n != "README.txt"));
    found.sort();
    found
}

/// Files of the repository (and of fail2ban, when unpacked) that start a target's corpus.
fn write_seeds(target: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let root = sys::workspace_root();
    let files = |sub: &str, ext: &str| -> Vec<PathBuf> {
        std::fs::read_dir(root.join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    match target {
        "config" => {
            seeds.push(std::fs::read(root.join("etc/banctl.toml"))?);
            seeds.push(b"[jails.a]\nfilter = \"sshd\"\nlogpath = \"/var/log/auth.log\"\nbantime = \"1h\"\nignoreip = [\"10.0.0.0/8\"]\n".to_vec());
        }
        "filter_file" => {
            for f in files("src/filter/library", "toml") {
                seeds.push(std::fs::read(f)?);
            }
        }
        "fail2ban_filter" => {
            let stock = std::env::var_os("BANCTL_FAIL2BAN_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/fail2ban"))
                .join("etc/fail2ban/filter.d");
            if let Ok(dir) = std::fs::read_dir(&stock) {
                for f in dir
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .take(40)
                {
                    seeds.push(std::fs::read(f)?);
                }
            }
            seeds.push(b"[Definition]\nfailregex = ^auth failed for <F-USER>\\S+</F-USER> from <HOST>( port \\d+)?$\nignoreregex = trusted\n".to_vec());
        }
        "datepattern" => {
            for p in [
                "^%%Y-%%m-%%d %%H:%%M:%%S",
                "{^LN-BEG}%%b %%d %%H:%%M:%%S",
                "EPOCH",
                "^\\[%%d/%%b/%%Y:%%H:%%M:%%S %%z\\]",
                "{^LN-BEG}ExYear(?P<_sep>[-/.])Exmonth(?P=_sep)Exday",
            ] {
                seeds.push(
                    format!("{p}\n2026-11-21 10:00:00 x\n[21/Nov/2026:10:00:00 +0100] y\n")
                        .into_bytes(),
                );
            }
        }
        "jail_lines" => {
            for f in files("tests/fixtures/filters", "log") {
                seeds.push(std::fs::read(f)?);
            }
        }
        _ => {
            seeds.push(br#"{"version":1,"request":{"type":"ban","jail":"sshd","target":"192.0.2.1","time":"1h"}}"#.to_vec());
            seeds.push(br#"{"version":1,"request":{"type":"list","jail":null}}"#.to_vec());
            seeds.push(br#"{"version":2,"request":{"type":"reload"}}"#.to_vec());
        }
    }
    for (i, seed) in seeds.iter().enumerate() {
        // AFL++ wants small seeds; it finds the rest.
        let seed = &seed[..seed.len().min(16 * 1024)];
        std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
    }
    Ok(())
}

/// The differential test of the filters (fast path against the capturing engine on
/// adversarial lines), in release, in rounds of fresh seeds until `time` is up.
fn differential(time: Duration) -> Result<()> {
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    while started.elapsed() < time {
        rounds += 1;
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        crate::run(
            Command::new(env!("CARGO"))
                .args([
                    "test",
                    "--release",
                    "--lib",
                    "fast_path_equals_capturing_engine",
                    "--",
                    "--nocapture",
                ])
                .env("BANCTL_ADVERSARIAL_LINES", "5000000")
                .env("BANCTL_ADVERSARIAL_SEED", seed.to_string())
                .current_dir(sys::workspace_root()),
        )?;
    }
    println!(
        "fuzz differential: {rounds} rounds of 5,000,000 lines in {:.1} min, no disagreement",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
