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

/// Rights come from the groups the calling process holds (issue 21): a uid that no
/// `/etc/group` line names, running with the admin group as a supplementary group, may ban;
/// the same uid without it may not.
#[test]
fn rights_come_from_the_callers_groups_not_from_etc_group() {
    let Some(()) = netns::enter("rights_come_from_the_callers_groups_not_from_etc_group") else {
        return;
    };
    let daemon = Daemon::start(
        "peer-groups",
        "admin_group = \"staff\"\n\n[jails.web]\nfailregex = ['^fail <HOST>$']\nlogpath = \"{dir}/web.log\"\n",
    );
    std::fs::set_permissions(
        &daemon.scratch.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let staff = nix::unistd::Group::from_name("staff")
        .unwrap()
        .expect("Debian has a staff group")
        .gid
        .as_raw();
    // setpriv sets exactly these groups (no look-up in /etc/group), then runs the CLI.
    let run = |groups: &[u32], args: &[&str]| {
        let groups = match groups {
            [] => "--clear-groups".to_owned(),
            list => format!(
                "--groups={}",
                list.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        Command::new("setpriv")
            .args([
                &format!("--reuid={STRANGER}"),
                &format!("--regid={STRANGER}"),
                &groups,
                BIN,
                "--socket",
            ])
            .arg(&daemon.socket)
            .args(args)
            .output()
            .unwrap()
    };
    // The socket is 0660 root:staff: without the group the connect itself is refused.
    let out = run(&[], &["ban", "web", "192.0.2.3"]);
    assert_eq!(out.status.code(), Some(exit::REFUSED));
    let out = run(&[staff], &["ban", "web", "192.0.2.3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.banned("web"), ["192.0.2.3"]);
}

/// Runs a Python program as `nobody` that opens `n` connections to `socket` and holds them
/// (idle) for `secs`; returns once they are open.
fn idle_clients(socket: &Path, n: usize, secs: u32) -> std::process::Child {
    let program = format!(
        "import socket, sys, time\n\
         held = []\n\
         for _ in range({n}):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({path:?})\n    held.append(s)\n\
         print('open', flush=True)\n\
         time.sleep({secs})\n",
        path = socket.display().to_string()
    );
    let mut child = Command::new("python3")
        .args(["-c", &program])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    child
}

/// One request over a raw connection: the daemon's answer line.
fn raw_request(socket: &Path, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The daemon may answer and close before reading all of an over-long request.
    let _ = stream.write_all(bytes);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The control socket bounds what a client may cost (issue 21): requests over 8 KiB are
/// refused unread, requests that are not UTF-8 get an answer, and hundreds of idle
/// connections of a read_group member neither exhaust the daemon nor keep root out.
#[test]
fn control_connections_and_requests_are_bounded() {
    let Some(()) = netns::enter("control_connections_and_requests_are_bounded") else {
        return;
    };
    let daemon = Daemon::start(
        "bounded",
        "read_group = \"nogroup\"\n\n[jails.web]\nfailregex = ['^fail <HOST>$']\nlogpath = \"{dir}/web.log\"\n",
    );
    std::fs::set_permissions(
        &daemon.scratch.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    let mut big = vec![b'x'; 4 * 1024 * 1024];
    big.push(b'\n');
    let answer = raw_request(&daemon.socket, &big);
    assert!(
        answer.contains("\"bad_request\"") && answer.contains("longer than 8192"),
        "{answer}"
    );
    let answer = raw_request(&daemon.socket, b"{\"version\":1,\xff\xfe}\n");
    assert!(answer.contains("not valid UTF-8"), "{answer}");

    let mut clients = idle_clients(&daemon.socket, 300, 20);
    let started = std::time::Instant::now();
    daemon.ok(&["ban", "web", "192.0.2.4"]);
    assert_eq!(daemon.banned("web"), ["192.0.2.4"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "root waited {:?} behind idle clients",
        started.elapsed()
    );
    let grown = rss().saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} kB");
    let _ = clients.kill();
    let _ = clients.wait();
}
