//! The control socket checks the peer's credentials: changes need root or admin_group, reads
//! may be granted to read_group, anyone else is refused and nothing changes.

use std::os::unix::process::CommandExt;
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
