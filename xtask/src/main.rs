//! `cargo xtask <task>`: the project's automation, in Rust.
//!
//! - `test`: installs missing Debian build packages, then runs fmt, clippy and every test
//!   (namespace tests included: they must run, not skip).
//! - `demo`: builds banctl and runs the real daemon in a throw-away network namespace against a
//!   simulated SSH brute force, showing `banctl list` and `nft list table inet banctl`, and
//!   proving the drop with traffic.
//! - `bench`: prints measured figures with their targets (see `bench.rs`).
//! - `dist`: release binary, man pages, completions and a .deb under `target/dist/`.
//! - `fuzz TARGET --time D`: coverage-guided fuzzing (cargo-afl) or the differential test.
//! - `install`: installs the same files on this host from source (as root).
//! - `symbol-order`: lists the functions a daemon runs, for the linker (see `order.rs`).

mod bench;
mod demo;
mod demo_fleet;
mod dist;
mod fuzz;
mod man;
mod order;
mod sys;

use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <test|demo|bench|dist|install|fuzz|symbol-order>

  test   install missing build packages, then fmt, clippy and all tests (namespace tests required)
  demo   run the real daemon in a throw-away network namespace against a simulated attack
  demo fleet  two web servers and an upstream proxy sharing bans over NATS JetStream
  bench  measure filter throughput, ban latency, bursts, restore and memory (figures, never a failure)
  dist   build target/dist/banctl_<version>_<arch>.deb (release binary, unit, config, man pages, completions)
  install  install from source on this host: /usr/local/bin, /etc/systemd/system (run with sudo)
  fuzz TARGET [--time 10m]  fuzz config, filter_file, fail2ban_filter, datepattern, jail_lines or
         control with cargo-afl, or run the filters' differential test (differential) that long
  symbol-order  run the release daemon under callgrind through a host's life and write the
         functions it ran to build/symbol-order.txt (placed together by the linker; as root)";

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "demo" => match std::env::args().nth(2).as_deref() {
            Some("fleet") => demo_fleet::run(),
            None => demo::run(),
            Some(other) => {
                eprintln!("unknown demo {other:?}: `cargo xtask demo` or `cargo xtask demo fleet`");
                std::process::exit(2);
            }
        },
        "bench" => bench::run(),
        "dist" => dist::dist().map(drop),
        "install" => dist::install(),
        "fuzz" => fuzz::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        "symbol-order" => order::run(),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Runs a command from the workspace root; fails with its name if it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(sys::workspace_root()))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub fn has_cargo_subcommand(name: &str) -> bool {
    Command::new(env!("CARGO"))
        .args([name, "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn test() -> Result<()> {
    sys::ensure_packages()?;
    sys::become_root_in_user_namespace_unless_root()?;
    if has_cargo_subcommand("fmt") {
        cargo(&["fmt", "--all", "--", "--check"])?;
    } else {
        eprintln!("xtask: rustfmt is not installed: format check skipped");
    }
    if has_cargo_subcommand("clippy") {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    } else {
        eprintln!("xtask: clippy is not installed: lint skipped");
    }
    // The package test lists what `dist` built.
    dist::dist()?;
    let fail2ban = sys::fail2ban_root()?;
    let nats = sys::nats_server()?;
    // Namespace tests must run here: a skip is a failure; so must the package test and the
    // fail2ban compatibility tests.
    // --show-output: what the compatibility tests print (how many stock filters agree with
    // fail2ban-regex, and where the others differ) is part of CI's record.
    run(Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--", "--show-output"])
        .env("BANCTL_REQUIRE_NETNS", "1")
        .env("BANCTL_REQUIRE_DIST", "1")
        .env("BANCTL_REQUIRE_FAIL2BAN", "1")
        .env("BANCTL_FAIL2BAN_ROOT", &fail2ban)
        .env("BANCTL_REQUIRE_NATS", "1")
        .env("BANCTL_NATS_SERVER", &nats)
        .current_dir(sys::workspace_root()))
}
