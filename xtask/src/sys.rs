//! Host set-up: Debian packages, privileges, namespaces.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What building and testing banctl needs from Debian/Ubuntu.
const PACKAGES: &[&str] = &[
    "libnftnl-dev",
    "libmnl-dev",
    "systemd-journal-remote",
    "pkg-config",
    "nftables",
    "iproute2",
    // fail2ban-regex runs on Python; the fail2ban package itself is only unpacked.
    "python3",
    // The README's https notifier example runs curl (`check-config` checks the program).
    "curl",
    // The exec-notifier test starts the daemon the way its systemd unit does.
    "util-linux",
];

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Where the compatibility tests find fail2ban (its filters and `fail2ban-regex`): `/` when
/// the package is installed, else Debian's package unpacked under `target/fail2ban` (never
/// installed: a fail2ban service would start banning on the developer's machine).
pub fn fail2ban_root() -> Result<PathBuf> {
    if installed("fail2ban") {
        return Ok(PathBuf::from("/"));
    }
    let root = workspace_root().join("target/fail2ban");
    if root.join("usr/bin/fail2ban-regex").is_file() {
        return Ok(root);
    }
    unpack("fail2ban", &root)?;
    Ok(root)
}

/// The peers `cargo xtask bench` runs banctl beside: fail2ban (Debian's package unpacked, with
/// pyinotify, which its default backend takes when present) and fail2ban-rs 1.5.4 (built with
/// `cargo install` under `target/peers`). Returns (fail2ban's root, fail2ban-rs's binary).
pub fn peers() -> Result<(PathBuf, PathBuf)> {
    let root = fail2ban_root()?;
    if !root
        .join("usr/lib/python3/dist-packages/pyinotify.py")
        .is_file()
        && root != std::path::Path::new("/")
    {
        unpack("python3-pyinotify", &root)?;
    }
    let peers = workspace_root().join("target/peers");
    let binary = peers.join("bin/fail2ban-rs");
    if !binary.is_file() {
        crate::run(
            Command::new(env!("CARGO"))
                .args([
                    "install",
                    "--locked",
                    "fail2ban-rs",
                    "--version",
                    "1.5.4",
                    "--root",
                ])
                .arg(&peers),
        )?;
    }
    Ok((root, binary))
}

/// Debian's `package` downloaded (never installed) and unpacked into `root`.
fn unpack(package: &str, root: &std::path::Path) -> Result<()> {
    let download = workspace_root().join(format!("target/{package}-deb"));
    std::fs::create_dir_all(&download)?;
    let fetch = || {
        crate::run(
            Command::new("apt-get")
                .args(["download", "-qq", package])
                .current_dir(&download),
        )
    };
    if fetch().is_err() {
        // A fresh machine's package lists may not be there yet.
        crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
        fetch().with_context(|| format!("apt-get download {package}"))?;
    }
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow::anyhow!("apt-get download {package} left no .deb"))?;
    crate::run(Command::new("dpkg").arg("-x").arg(&deb).arg(root))
}

/// The `nats-server` the fleet tests start: the installed one, else Debian's package unpacked
/// under `target/nats` (never installed: the package would enable a system service).
pub fn nats_server() -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join("nats-server");
        if path.is_file() {
            return Ok(path);
        }
    }
    let root = workspace_root().join("target/nats");
    let binary = root.join("usr/sbin/nats-server");
    if binary.is_file() {
        return Ok(binary);
    }
    unpack("nats-server", &root)?;
    if !binary.is_file() {
        bail!("the nats-server package has no usr/sbin/nats-server");
    }
    Ok(binary)
}

/// Installs the Debian packages the build and the tests need, if any is missing.
pub fn ensure_packages() -> Result<()> {
    ensure(PACKAGES)
}

/// Installs those of `packages` that are missing (as root; else says how).
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing Debian packages: {list}\ninstall them with: sudo apt-get install -y {list}");
    }
    eprintln!("xtask: installing missing packages: {list}");
    crate::run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Without root, moves this (still single-threaded) process into a new user namespace where it
/// is root, so that network namespaces and nftables work without sudo. Real root stays as is.
pub fn become_root_in_user_namespace_unless_root() -> Result<()> {
    if is_root() {
        return Ok(());
    }
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).context(
        "not root, and unprivileged user namespaces are disabled: run this as root (sudo -E cargo xtask ...)",
    )?;
    std::fs::write("/proc/self/setgroups", "deny").context("writing /proc/self/setgroups")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing uid_map")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing gid_map")?;
    eprintln!("xtask: not root: running inside a user namespace as its root");
    Ok(())
}

/// Moves this (single-threaded) process into a fresh network namespace with `lo` up.
pub fn enter_network_namespace() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    crate::run(Command::new("ip").args(["link", "set", "lo", "up"]))
}
