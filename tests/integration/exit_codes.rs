//! The documented exit codes that need no running daemon to provoke (issue 16): 4 when the
//! daemon cannot be reached, 7 when the kernel has no banctl table to read; the others are
//! asserted where their cause is tested (daemon.rs, permissions.rs, tester.rs).

use std::process::Command;

use banctl::cli::exit;

use crate::daemon::BIN;
use crate::netns;

#[test]
fn an_unreachable_daemon_exits_4_and_a_missing_table_exits_7() {
    let Some(()) = netns::enter("an_unreachable_daemon_exits_4_and_a_missing_table_exits_7") else {
        return;
    };
    let socket = std::env::temp_dir().join(format!("banctl-nobody-{}.sock", std::process::id()));
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(exit::UNAVAILABLE), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the banctl daemon"));
    // `list` falls back to the kernel, which in this fresh namespace has no table: all jails
    // have no bans, a named jail's sets are missing.
    let out = run(&["list"]);
    assert_eq!(out.status.code(), Some(exit::OK), "{out:?}");
    let out = run(&["list", "--jail", "web"]);
    assert_eq!(out.status.code(), Some(exit::FIREWALL), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
