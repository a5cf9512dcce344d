//! The systemd journal as a source: a journal directory built with `systemd-journal-remote`
//! from export format, read in-process by the daemon.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::daemon::{Daemon, Scratch};
use crate::netns;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// One journal entry as a test writes it.
pub struct Entry<'a> {
    /// Microseconds since the epoch.
    pub at_us: u128,
    pub unit: &'a str,
    pub ident: &'a str,
    pub message: &'a str,
}

/// Whether `systemd-journal-remote` is there to write journal files; without it a journal
/// test is skipped, loudly, unless tests must run (`cargo xtask test` installs it).
pub fn can_write_journals() -> bool {
    if Path::new(JOURNAL_REMOTE).exists() {
        return true;
    }
    assert!(
        std::env::var_os("BANCTL_REQUIRE_NETNS").is_none(),
        "{JOURNAL_REMOTE} is missing (cargo xtask test installs systemd-journal-remote)"
    );
    eprintln!("SKIPPED: {JOURNAL_REMOTE} is missing");
    false
}

/// Appends `entries` to the journal file `file` (through export format and
/// systemd-journal-remote), each with a process id of its own.
pub fn write_journal(file: &Path, boot: &str, entries: &[Entry<'_>]) {
    let mut export = String::new();
    for (i, e) in entries.iter().enumerate() {
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={at}\n__MONOTONIC_TIMESTAMP={at}\n_BOOT_ID={boot}\n\
             _SYSTEMD_UNIT={}\nSYSLOG_IDENTIFIER={}\n_PID={}\nMESSAGE={}\n\n",
            e.unit,
            e.ident,
            1000 + i,
            e.message,
            at = e.at_us,
        ));
    }
    let source = file.with_extension("export");
    std::fs::write(&source, export).unwrap();
    let out = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .arg(&source)
        .output()
        .unwrap();
    std::fs::remove_file(&source).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends entries to `<dir>/test.journal`: (seconds ago, unit, sshd message).
fn write_entries(dir: &Path, entries: &[(u64, &str, String)]) {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let entries: Vec<Entry<'_>> = entries
        .iter()
        .map(|(ago, unit, message)| Entry {
            at_us: (now - Duration::from_secs(*ago)).as_micros(),
            unit,
            ident: "sshd",
            message,
        })
        .collect();
    write_journal(&dir.join("test.journal"), &boot, &entries);
}

fn invalid_user(addr: &str) -> String {
    format!("Invalid user admin from {addr} port 4022")
}

fn failures(
    ago: u64,
    unit: &'static str,
    addr: &str,
    n: usize,
) -> Vec<(u64, &'static str, String)> {
    (0..n).map(|_| (ago, unit, invalid_user(addr))).collect()
}

#[test]
fn journal_matches_follow_readback_and_cursor_resume() {
    let Some(()) = netns::enter("journal_matches_follow_readback_and_cursor_resume") else {
        return;
    };
    if !Path::new(JOURNAL_REMOTE).exists() {
        assert!(
            std::env::var_os("BANCTL_REQUIRE_NETNS").is_none(),
            "systemd-journal-remote is missing (cargo xtask test installs it)"
        );
        eprintln!("SKIPPED: {JOURNAL_REMOTE} not installed");
        return;
    }
    let config = r#"
[jails.sshd]
filter = "sshd"
journal = { matches = ["_SYSTEMD_UNIT=ssh.service", "+", "_SYSTEMD_UNIT=sshd.service"], directory = "JOURNAL" }
maxretry = 3
findtime = "10m"
ignoreself = false
"#;
    let files = Scratch::new("journal-files");
    // Written before the daemon's first start: 2 recent failures of .1 (counted by the
    // read-back), 3 of .8 two hours ago (older than findtime), 3 of .9 from another unit.
    let journal = files.path("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let mut before = failures(7200, "ssh.service", "192.0.2.8", 3);
    before.extend(failures(60, "ssh.service", "192.0.2.1", 2));
    before.extend(failures(30, "cron.service", "192.0.2.9", 3));
    write_entries(&journal, &before);

    let config = config.replace("JOURNAL", journal.to_str().unwrap());
    let mut daemon = Daemon::start("journal", &config);
    assert!(
        mapped(&daemon).contains("/libsystemd.so"),
        "a journal jail loads libsystemd"
    );
    let status: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "sshd", "--json"])).unwrap();
    let source = status[0]["sources"][0].as_str().unwrap().to_owned();
    assert!(source.starts_with("journal:"), "{status}");
    assert!(netns::eventually(Duration::from_secs(5), || {
        let s: serde_json::Value =
            serde_json::from_str(&daemon.ok(&["status", "sshd", "--json"])).unwrap();
        s[0]["tracked"] == 1
    }));
    assert!(daemon.banned("sshd").is_empty());

    // Following: the third failure of .1 arrives; .2 fails through the other unit (the OR).
    let mut more = failures(0, "ssh.service", "192.0.2.1", 1);
    more.extend(failures(0, "sshd.service", "192.0.2.2", 3));
    write_entries(&journal, &more);
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("sshd")
            == ["192.0.2.1", "192.0.2.2"]),
        "following: {:?}",
        daemon.banned("sshd")
    );

    // Resume: unban, stop, write while down, start. The cursor means nothing read before is
    // read again (no re-ban of .1/.2) and nothing written while down is skipped.
    daemon.ok(&["unban", "--all"]);
    daemon.stop();
    write_entries(&journal, &failures(0, "ssh.service", "192.0.2.3", 3));
    daemon.restart();
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("sshd")
            == ["192.0.2.3"]),
        "after restart: {:?}",
        daemon.banned("sshd")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        daemon.banned("sshd"),
        ["192.0.2.3"],
        "an earlier entry was read twice"
    );
}

/// What the daemon has mapped (`/proc/PID/maps`).
fn mapped(daemon: &Daemon) -> String {
    std::fs::read_to_string(format!("/proc/{}/maps", daemon.pid())).unwrap()
}

/// libsystemd (and the libraries it pulls in) is loaded when a jail opens a journal, never by
/// a daemon whose jails read files only.
#[test]
fn a_daemon_reading_only_files_never_loads_libsystemd() {
    let Some(()) = netns::enter("a_daemon_reading_only_files_never_loads_libsystemd") else {
        return;
    };
    let config = format!(
        "[jails.app]\nfailregex = ['{}']\nlogpath = \"{{dir}}/app.log\"\n",
        crate::daemon::FAILREGEX
    );
    let daemon = Daemon::start("no-journal", &config);
    daemon.append("app.log", &crate::daemon::failures("192.0.2.7", 1));
    assert!(netns::eventually(Duration::from_secs(5), || {
        let s: serde_json::Value =
            serde_json::from_str(&daemon.ok(&["status", "app", "--json"])).unwrap();
        s[0]["tracked"] == 1
    }));
    let maps = mapped(&daemon);
    for library in [
        "/libsystemd.so",
        "/libgcrypt.so",
        "/liblz4.so",
        "/libzstd.so",
    ] {
        assert!(!maps.contains(library), "{library} is mapped:\n{maps}");
    }
}
