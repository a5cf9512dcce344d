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

/// `banctl filters | head -1`: a reader that leaves early ends every command quietly, with
/// no panic and no error message.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    use std::io::Write;
    use std::process::Stdio;
    let log = std::env::temp_dir().join(format!("banctl-pipe-{}.log", std::process::id()));
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!(
            "Nov 21 10:00:00 web sshd[{i}]: Failed password for root from 203.0.113.{} port 22 ssh2\n",
            i % 250
        ));
    }
    std::fs::File::create(&log)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let log = log.display().to_string();
    for args in [
        vec!["filters"],
        vec!["completions", "bash"],
        vec!["version"],
        vec!["test", log.as_str(), "sshd", "--json"],
        vec!["test", log.as_str(), "sshd", "--print-matched"],
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the first byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit::OK), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_file(&log);
}

/// An error names its cause once: `cannot read X: No such file…`, not the cause twice.
#[test]
fn an_error_says_its_cause_once() {
    let missing = std::env::temp_dir().join(format!("banctl-nothing-{}", std::process::id()));
    let missing = missing.display().to_string();
    for (args, code, said) in [
        (
            vec!["check-config", missing.as_str()],
            exit::CONFIG,
            format!("banctl: cannot read {missing}: No such file or directory (os error 2)\n"),
        ),
        (
            vec!["--socket", missing.as_str(), "status"],
            exit::UNAVAILABLE,
            format!(
                "banctl: cannot reach the banctl daemon at {missing}: No such file or directory (os error 2)\n"
            ),
        ),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), said, "{args:?}");
    }
}
