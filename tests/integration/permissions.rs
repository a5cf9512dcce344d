//! The control socket checks the peer's credentials: changes need root or admin_group, reads
//! may be granted to read_group, anyone else is refused and nothing changes.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use banctl::cli::exit;

use crate::daemon::{BIN, Daemon};
use crate::netns;

/// Debian's `nobody` user and `nogroup` group.
const NOBODY: u32 = 65534;
/// A uid and gid that belong to no user and no group.
const STRANGER: u32 = 4242;

fn as_user(daemon: &Daemon, uid: u32, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
}

#[test]
fn socket_permissions_by_peer_credentials() {
    let Some(()) = netns::enter("socket_permissions_by_peer_credentials") else {
        return;
    };
    // Keys before the first table header belong to [daemon].
    let daemon = Daemon::start(
        "permissions",
        "read_group = \"nogroup\"\n\n[jails.web]\nfailregex = ['^fail <HOST>$']\nlogpath = \"{dir}/web.log\"\n",
    );
    // The scratch directory must be reachable by the other users.
    std::fs::set_permissions(
        &daemon.scratch.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    daemon.ok(&["ban", "web", "192.0.2.1"]);

    // read_group: reads are allowed, changes refused and nothing changes.
    let list = as_user(&daemon, NOBODY, &["list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("192.0.2.1"));
    for args in [
        &["ban", "web", "192.0.2.2"][..],
        &["unban", "192.0.2.1"],
        &["reload"],
    ] {
        let out = as_user(&daemon, NOBODY, args);
        assert_eq!(out.status.code(), Some(exit::REFUSED), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("permission denied: this change needs root"),
            "{stderr}"
        );
    }
    assert_eq!(daemon.banned("web"), ["192.0.2.1"]);

    // Neither root nor in a group: the socket itself (0660 root:nogroup) refuses.
    let out = as_user(&daemon, STRANGER, &["status"]);
    assert_eq!(out.status.code(), Some(exit::REFUSED));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"));
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOBODY));
}

/// A capability set of a thread from /proc/PID/task/TID/status (`CapEff`, `CapBnd`, ...).
fn capabilities(status: &Path, set: &str) -> u64 {
    let status = std::fs::read_to_string(status).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{set}:\t")))
        .unwrap();
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn daemon_keeps_only_net_admin_and_dac_read_search() {
    let Some(()) = netns::enter("daemon_keeps_only_net_admin_and_dac_read_search") else {
        return;
    };
    // A journal jail too, so that its reader thread exists: capabilities are per thread.
    let journal = crate::daemon::Scratch::new("caps-journal");
    let daemon = Daemon::start(
        "caps",
        &format!(
            "[jails.web]\nfilter = \"sshd\"\nlogpath = \"{{dir}}/auth.log\"\n\
             [jails.ssh]\nfilter = \"sshd\"\nsource = \"journal\"\n\
             journal = {{ matches = [\"_COMM=sshd\"], directory = \"{}\" }}\n",
            journal.0.display()
        ),
    );
    let kept = (1u64 << 12) | (1u64 << 2); // CAP_NET_ADMIN, CAP_DAC_READ_SEARCH
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .unwrap()
        .map(|t| t.unwrap().path().join("status"))
        .collect();
    assert!(
        tasks.len() >= 3,
        "main, ruleset watcher and journal threads: {tasks:?}"
    );
    for status in &tasks {
        for set in ["CapEff", "CapPrm"] {
            assert_eq!(
                capabilities(status, set),
                kept,
                "{set} of {}",
                status.display()
            );
        }
        // Nothing for programs it runs (exec notifiers) to inherit or gain at exec.
        for set in ["CapAmb", "CapInh", "CapBnd"] {
            assert_eq!(
                capabilities(status, set),
                0,
                "{set} of {}",
                status.display()
            );
        }
    }
    // It still bans with what it kept.
    daemon.ok(&["ban", "web", "192.0.2.1"]);
    assert_eq!(daemon.banned("web"), ["192.0.2.1"]);
}

#[test]
fn daemon_without_net_admin_refuses_to_start_and_says_what_to_do() {
    let Some(()) = netns::enter("daemon_without_net_admin_refuses_to_start_and_says_what_to_do")
    else {
        return;
    };
    let scratch = crate::daemon::Scratch::new("nocaps");
    std::fs::set_permissions(
        &scratch.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = scratch.write(
        "banctl.toml",
        &format!(
            "[daemon]\nsocket = \"{0}/sock\"\n[jails.web]\nfilter = \"sshd\"\nlogpath = \"{0}/auth.log\"\n",
            scratch.0.display()
        ),
    );
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&config)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs CAP_NET_ADMIN") && stderr.contains("AmbientCapabilities"),
        "{stderr}"
    );
    assert_eq!(netns::nft(&["list", "ruleset"]).trim(), "");
}
