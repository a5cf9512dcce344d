//! `cargo xtask dist`: a release build, man pages, shell completions and a .deb.
//! `cargo xtask install`: the same files installed on this host from source (run with sudo).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run, sys};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where each file goes, relative to a root (the package tree or `/`).
struct Layout {
    bin: &'static str,
    unit: &'static str,
    man: &'static str,
    man5: &'static str,
    bash: &'static str,
    zsh: &'static str,
    fish: &'static str,
    doc: &'static str,
}

/// Debian package paths.
const PACKAGE: Layout = Layout {
    bin: "usr/bin",
    unit: "lib/systemd/system",
    man: "usr/share/man/man8",
    man5: "usr/share/man/man5",
    bash: "usr/share/bash-completion/completions/banctl",
    zsh: "usr/share/zsh/vendor-completions/_banctl",
    fish: "usr/share/fish/vendor_completions.d/banctl.fish",
    doc: "usr/share/doc/banctl",
};

/// Paths of an install from source: `/usr/local` for files, `/etc/systemd/system` for the unit.
const LOCAL: Layout = Layout {
    bin: "usr/local/bin",
    unit: "etc/systemd/system",
    man: "usr/local/share/man/man8",
    man5: "usr/local/share/man/man5",
    bash: "usr/local/share/bash-completion/completions/banctl",
    zsh: "usr/local/share/zsh/site-functions/_banctl",
    fish: "usr/local/share/fish/vendor_completions.d/banctl.fish",
    doc: "usr/local/share/doc/banctl",
};

/// The release binary as users get it (what `bench` and `symbol-order` measure too): built
/// with the lock file, at target/release/banctl.
pub fn release_binary() -> Result<PathBuf> {
    cargo(&["build", "--release", "--locked", "--bin", "banctl"])?;
    Ok(sys::workspace_root().join("target/release/banctl"))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Lays out everything but the configuration under `root` with `layout`; `exec` is the path
/// the unit's ExecStart names.
fn stage(bin: &Path, root: &Path, layout: &Layout, exec: &str) -> Result<()> {
    let ws = sys::workspace_root();
    copy(bin, &root.join(layout.bin).join("banctl"), 0o755)?;
    let unit = std::fs::read_to_string(ws.join("systemd/banctl.service"))?
        .replace("/usr/bin/banctl", exec);
    write(
        &root.join(layout.unit).join("banctl.service"),
        unit.as_bytes(),
        0o644,
    )?;

    let man = root.join(layout.man);
    let pages = output(Command::new(bin).arg("manpages").arg(&man))?;
    let readme = std::fs::read_to_string(ws.join("README.md"))?;
    let config_page = crate::man::config_page(&readme, VERSION).map_err(anyhow::Error::msg)?;
    let config_page_path = root.join(layout.man5).join("banctl.toml.5");
    write(&config_page_path, config_page.as_bytes(), 0o644)?;
    let pages =
        String::from_utf8_lossy(&pages).into_owned() + &format!("{}\n", config_page_path.display());
    for page in pages.lines() {
        // -n: no name or time stamp in the archive, so the package is reproducible.
        run(Command::new("gzip").args(["-9", "-n", "-f", page]))?;
    }
    for (shell, path) in [
        ("bash", layout.bash),
        ("zsh", layout.zsh),
        ("fish", layout.fish),
    ] {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        write(&root.join(path), &script, 0o644)?;
    }
    copy(
        &ws.join("README.md"),
        &root.join(layout.doc).join("README.md"),
        0o644,
    )?;
    Ok(())
}

fn architecture() -> Result<String> {
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    Ok(String::from_utf8_lossy(&arch).trim().to_owned())
}

/// Builds `target/dist/banctl_<version>_<arch>.deb`; returns its path.
pub fn dist() -> Result<PathBuf> {
    let bin = release_binary()?;
    let ws = sys::workspace_root();
    let arch = architecture()?;
    let name = format!("banctl_{VERSION}_{arch}");
    let dist = ws.join("target/dist");
    let root = dist.join(&name);
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    stage(&bin, &root, &PACKAGE, "/usr/bin/banctl")?;
    copy(
        &ws.join("etc/banctl.toml"),
        &root.join("etc/banctl/banctl.toml"),
        0o640,
    )?;
    write(
        &root.join(PACKAGE.doc).join("copyright"),
        b"banctl: Copyright the banctl developers. License: MIT OR Apache-2.0.\n",
        0o644,
    )?;

    let control = format!(
        "Package: banctl
Version: {VERSION}
Architecture: {arch}
Maintainer: banctl developers <banctl@localhost>
Section: net
Priority: optional
Depends: libc6 (>= 2.36), libnftnl11, libmnl0, nftables
Recommends: libsystemd0
Description: nftables-native intrusion prevention (a fail2ban replacement)
 banctl follows log files, matches fail2ban-compatible filters and writes bans
 as elements of per-jail nftables sets with kernel-side timeouts, over netlink.
 Host services and published container ports are covered by one rule.
"
    );
    write(&root.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &root.join("DEBIAN/conffiles"),
        b"/etc/banctl/banctl.toml\n",
        0o644,
    )?;
    // Registers the unit; enabling it is the admin's choice once the jails are configured.
    write(
        &root.join("DEBIAN/postinst"),
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )?;
    write(
        &root.join("DEBIAN/postrm"),
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )?;
    let deb = dist.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb))?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Installs from source on this host: binary, unit, man pages, completions, and the example
/// configuration if none exists. Needs root (`sudo cargo xtask install`).
pub fn install() -> Result<()> {
    if !sys::is_root() {
        bail!("install writes to /usr/local and /etc: run `sudo cargo xtask install`");
    }
    sys::ensure_packages()?;
    let bin = release_binary()?;
    let root = Path::new("/");
    stage(&bin, root, &LOCAL, "/usr/local/bin/banctl")?;
    let config = root.join("etc/banctl/banctl.toml");
    if config.exists() {
        eprintln!("xtask: kept the existing {}", config.display());
    } else {
        copy(
            &sys::workspace_root().join("etc/banctl.toml"),
            &config,
            0o640,
        )?;
    }
    if Path::new("/run/systemd/system").exists() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    eprintln!(
        "xtask: installed. Write the configuration with `banctl init` (or edit /etc/banctl/banctl.toml), check it with `banctl check-config`, then `systemctl enable --now banctl`."
    );
    Ok(())
}
