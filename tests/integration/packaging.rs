//! What ships: the systemd unit's exposure score, the .deb from `cargo xtask dist`, and every
//! TOML example of the README.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::{Scratch, check_config};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_unit_exposure_is_at_most_2() {
    let unit = workspace().join("systemd/banctl.service");
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: systemd-analyze not available ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for banctl.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no score in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("systemd-analyze security --offline=true banctl.service: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

fn built_deb() -> Option<PathBuf> {
    let dist = workspace().join("target/dist");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dist)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    debs.pop()
}

#[test]
fn deb_from_xtask_dist_holds_binary_unit_config_man_pages_and_completions() {
    let Some(deb) = built_deb() else {
        assert!(
            std::env::var_os("BANCTL_REQUIRE_DIST").is_none(),
            "no .deb in target/dist: `cargo xtask dist` did not run"
        );
        eprintln!("SKIPPED: no .deb in target/dist (run `cargo xtask dist`)");
        return;
    };
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    println!("dpkg-deb -c {}:\n{listing}", deb.display());
    let entry = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} missing from the package"))
            .to_owned()
    };
    assert!(entry("usr/bin/banctl").starts_with("-rwxr-xr-x root/root"));
    entry("lib/systemd/system/banctl.service");
    assert!(entry("etc/banctl/banctl.toml").starts_with("-rw-r----- root/root"));
    for page in [
        "banctl",
        "banctl-list",
        "banctl-unban",
        "banctl-daemon",
        "banctl-status",
        "banctl-init",
        "banctl-config",
        "banctl-log-level",
    ] {
        entry(&format!("usr/share/man/man8/{page}.8.gz"));
    }
    // The configuration's page, made from the README's reference.
    entry("usr/share/man/man5/banctl.toml.5.gz");
    entry("usr/share/bash-completion/completions/banctl");
    entry("usr/share/zsh/vendor-completions/_banctl");
    entry("usr/share/fish/vendor_completions.d/banctl.fish");
    entry("usr/share/doc/banctl/copyright");

    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "banctl");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert!(field("Depends").contains("libnftnl11"));
    let conffiles = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout),
        "/etc/banctl/banctl.toml\n"
    );
}

/// The ```toml blocks of a Markdown text.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```toml") => current = Some((i + 2, String::new())),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_toml_example_in_the_readme_passes_check_config() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let blocks = toml_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "only {} TOML examples found",
        blocks.len()
    );
    let scratch = Scratch::new("readme");
    for (line, text) in &blocks {
        let path = scratch.write(&format!("readme-line-{line}.toml"), text);
        let out = check_config(&path);
        assert!(
            out.status.success(),
            "README.md line {line}: the example fails check-config:\n{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
