//! Bans that are never lost: restart after kill -9, repair of a removed table, restore after a
//! (simulated) reboot, escalation and recidive. Real daemon, real kernel, real traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use banctl::firewall::{Element, Firewall};

use crate::daemon::{Daemon, failures, web_jail};
use crate::netns;

fn elements(jail: &str) -> Vec<Element> {
    Firewall::open().unwrap().list(jail).unwrap()
}

fn ban_by_log(daemon: &Daemon, addr: &str) {
    daemon.append("web.log", &failures(addr, 3));
    daemon.wait_banned("web", addr);
}

/// Connects from `source` to `target` in a loop on another thread; counts the successes.
struct Prober {
    stop: Arc<AtomicBool>,
    successes: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(source: &'static str, target: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let successes = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (s, ok, n) = (stop.clone(), successes.clone(), attempts.clone());
        // A thread made by this thread shares its network namespace.
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                n.fetch_add(1, Ordering::Relaxed);
                if netns::connects(source, target) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Prober {
            stop,
            successes,
            attempts,
            thread: Some(thread),
        }
    }

    /// Stops; returns (successful connections, attempts).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.successes.load(Ordering::Relaxed),
            self.attempts.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn kill_9_and_restart_leave_no_gap_and_no_duplicate() {
    let Some(()) = netns::enter("kill_9_and_restart_leave_no_gap_and_no_duplicate") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut daemon = Daemon::start("kill9", &web_jail(target.port(), ""));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    ban_by_log(&daemon, "127.0.0.2");
    let before = elements("web");
    assert_eq!(before.len(), 1);

    let prober = Prober::start("127.0.0.2", target);
    daemon.stop(); // SIGKILL
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !netns::connects("127.0.0.2", target),
        "the ban must hold while the daemon is down"
    );
    daemon.restart();
    std::thread::sleep(Duration::from_millis(700));
    let (through, attempts) = prober.finish();
    assert!(attempts >= 3, "only {attempts} probes ran");
    assert_eq!(
        through, 0,
        "{through} of {attempts} connections from the banned address got through across the restart"
    );

    // Exactly one element, with its original timeout and an expiry that kept running.
    let after = elements("web");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].timeout, Some(Duration::from_secs(3600)));
    assert!(
        after[0].expires_in <= before[0].expires_in,
        "{after:?} vs {before:?}"
    );
    let set = netns::nft(&["list", "set", "inet", "banctl", "web_v4"]);
    assert_eq!(set.matches("127.0.0.2").count(), 1, "{set}");
    let list: serde_json::Value = serde_json::from_str(&daemon.ok(&["list", "--json"])).unwrap();
    assert_eq!(list[0]["ban_count"], 1, "{list}");
    assert!(netns::connects("127.0.0.3", target));
}

#[test]
fn removed_table_and_elements_are_repaired_within_a_second() {
    let Some(()) = netns::enter("removed_table_and_elements_are_repaired_within_a_second") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let daemon = Daemon::start("repair", &web_jail(target.port(), ""));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    ban_by_log(&daemon, "127.0.0.2");
    daemon.ok(&["ban", "web", "127.0.0.4", "--time", "2h"]);

    let has = |addr: &str| {
        elements_or_none("web")
            .iter()
            .any(|e| e.net.to_string() == addr)
    };
    for (what, cmd) in [
        (
            "nft delete table",
            vec!["delete", "table", "inet", "banctl"],
        ),
        ("nft flush ruleset", vec!["flush", "ruleset"]),
        (
            "nft delete element",
            vec![
                "delete",
                "element",
                "inet",
                "banctl",
                "web_v4",
                "{ 127.0.0.2 }",
            ],
        ),
        (
            "nft flush chain",
            vec!["flush", "chain", "inet", "banctl", "prerouting"],
        ),
    ] {
        netns::nft(&cmd);
        let start = Instant::now();
        let back = netns::eventually(Duration::from_secs(1), || {
            has("127.0.0.2") && has("127.0.0.4")
        });
        let took = start.elapsed();
        assert!(back, "{what}: bans not back within 1 s");
        println!(
            "{what}: repaired after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
        assert!(
            netns::eventually(Duration::from_secs(1), || !netns::connects(
                "127.0.0.2",
                target
            )),
            "{what}: banned traffic flows after the repair"
        );
    }
    let manual = elements("web")
        .into_iter()
        .find(|e| e.net.to_string() == "127.0.0.4")
        .unwrap();
    assert_eq!(
        manual.timeout,
        Some(Duration::from_secs(7200)),
        "kept its own ban time"
    );

    // An unban through banctl is final: nothing puts it back.
    daemon.ok(&["unban", "127.0.0.2"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!has("127.0.0.2"), "an unban was repaired back");
    assert!(netns::connects("127.0.0.2", target));
}

fn elements_or_none(jail: &str) -> Vec<Element> {
    Firewall::open().unwrap().list(jail).unwrap_or_default()
}

#[test]
fn simulated_reboot_restores_bans_with_their_remaining_time() {
    let Some(()) = netns::enter("simulated_reboot_restores_bans_with_their_remaining_time") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut daemon = Daemon::start("reboot", &web_jail(target.port(), ""));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    daemon.ok(&["ban", "web", "127.0.0.2", "--time", "1h"]);
    let banned_at = Instant::now();
    daemon.ok(&["ban", "web", "2001:db8::/64", "--time", "permanent"]);
    daemon.ok(&["ban", "web", "127.0.0.5", "--time", "2s"]);

    daemon.stop();
    // A reboot (or `systemctl restart nftables`) while banctl is down: the table is gone.
    netns::nft(&["delete", "table", "inet", "banctl"]);
    assert!(netns::connects("127.0.0.2", target));
    std::thread::sleep(Duration::from_millis(2500));
    daemon.restart();

    let restored = elements("web");
    let shown: Vec<String> = restored.iter().map(|e| e.net.to_string()).collect();
    assert_eq!(
        shown,
        ["127.0.0.2", "2001:db8::/64"],
        "the 2 s ban expired while down"
    );
    let expected = Duration::from_secs(3600) - banned_at.elapsed();
    let left = restored[0].expires_in.unwrap();
    let error = left.abs_diff(expected);
    println!("remaining {left:?}, expected {expected:?}, off by {error:?}");
    assert!(
        error <= Duration::from_secs(1),
        "remaining {left:?}, expected {expected:?}"
    );
    assert_eq!(restored[0].timeout, Some(Duration::from_secs(3600)));
    assert_eq!(restored[1].timeout, None, "permanent stays permanent");
    let set = netns::nft(&["list", "set", "inet", "banctl", "web_v4"]);
    assert!(set.contains("127.0.0.2 timeout 1h expires 59m"), "{set}");
    assert!(!netns::connects("127.0.0.2", target));
    assert!(netns::connects("127.0.0.5", target));
}

#[test]
fn escalation_over_three_bans_then_recidive() {
    let Some(()) = netns::enter("escalation_over_three_bans_then_recidive") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let extra = r#"escalation = { factor = 2, max = "3h" }

[jails.recidive]
recidive = true
maxretry = 3
findtime = "1d"
bantime = "1w"
ports = []
"#;
    let mut daemon = Daemon::start("escalation", &web_jail(target.port(), extra));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    let bantime = |daemon: &Daemon| -> (u64, u64) {
        let list: serde_json::Value =
            serde_json::from_str(&daemon.ok(&["list", "--json", "--jail", "web"])).unwrap();
        (
            list[0]["bantime_s"].as_u64().unwrap(),
            list[0]["ban_count"].as_u64().unwrap(),
        )
    };
    let mut seen = Vec::new();
    for round in 1..=3 {
        ban_by_log(&daemon, "127.0.0.2");
        seen.push(bantime(&daemon));
        if round < 3 {
            assert!(
                daemon.banned("recidive").is_empty(),
                "recidive after {round} bans"
            );
            daemon.ok(&["unban", "127.0.0.2"]);
        }
        if round == 2 {
            // The history is in the state store, not in memory.
            daemon.restart();
        }
    }
    assert_eq!(
        seen,
        [(3600, 1), (7200, 2), (10800, 3)],
        "1h, 2h, then 4h capped at 3h"
    );
    assert!(
        netns::eventually(Duration::from_secs(2), || daemon.banned("recidive")
            == ["127.0.0.2"]),
        "third ban within a day did not reach the recidive jail"
    );
    let recidive = elements("recidive");
    assert_eq!(
        recidive[0].timeout,
        Some(Duration::from_secs(7 * 24 * 3600))
    );
    // The recidive ban covers every port: a port no jail names is closed to it too.
    let other = netns::listen("127.0.0.1:0");
    assert!(!netns::connects("127.0.0.2", other));
    assert!(netns::connects("127.0.0.3", other));
}

/// Reads one notification datagram, waiting up to 10 s.
fn notification(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sd_notify_ready_only_once_bans_are_restored_then_watchdog_pings() {
    let Some(()) = netns::enter("sd_notify_ready_only_once_bans_are_restored_then_watchdog_pings")
    else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut daemon = Daemon::start("notify", &web_jail(target.port(), ""));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    daemon.ok(&["ban", "web", "127.0.0.2"]);
    daemon.stop();
    netns::nft(&["delete", "table", "inet", "banctl"]);

    let path = daemon.scratch.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notify = path.display().to_string();
    // 400 ms watchdog: a ping every 200 ms.
    daemon.restart_with(&[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")]);

    let ready = notification(&sock);
    // When READY=1 arrives, the restored ban is already enforced.
    let restored = elements("web");
    println!("{ready:?}");
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    assert!(
        ready.contains("1 jails, 1 active bans; 1 bans restored"),
        "{ready:?}"
    );
    assert_eq!(
        restored.len(),
        1,
        "READY=1 before the restore: {restored:?}"
    );
    assert!(!netns::connects("127.0.0.2", target));

    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "only {pings} watchdog pings"
        );
        if notification(&sock) == "WATCHDOG=1" {
            pings += 1;
        }
    }
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut last = String::new();
    while !last.starts_with("STOPPING=1") {
        last = notification(&sock);
    }
}

pub fn tracked(daemon: &Daemon) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "web", "--json"])).unwrap();
    s[0]["tracked"].as_u64().unwrap()
}

/// Counting goes on across restarts exactly as in an uninterrupted run: the ban comes with the
/// 5th failure, not earlier (lines read twice) and not later (failures or lines lost).
#[test]
fn restart_resumes_counting_without_rereading_or_losing() {
    let Some(()) = netns::enter("restart_resumes_counting_without_rereading_or_losing") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let mut daemon = Daemon::start("resume", &web_jail(target.port(), "maxretry = 5"));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    let attacker = "127.0.0.2";
    daemon.append("web.log", &failures(attacker, 2));
    assert!(netns::eventually(Duration::from_secs(5), || tracked(
        &daemon
    ) == 1));

    // Killed; one failure is written while it is down: 3 so far.
    daemon.stop();
    daemon.append("web.log", &failures(attacker, 1));
    daemon.restart();
    std::thread::sleep(Duration::from_millis(800));
    assert!(daemon.banned("web").is_empty(), "banned after 3 failures");
    assert_eq!(tracked(&daemon), 1);
    assert!(netns::connects(attacker, target));

    // The 4th while running, killed again, nothing new while down: still 4.
    daemon.append("web.log", &failures(attacker, 1));
    std::thread::sleep(Duration::from_millis(300));
    daemon.stop();
    daemon.restart();
    std::thread::sleep(Duration::from_millis(800));
    assert!(daemon.banned("web").is_empty(), "banned after 4 failures");

    // The 5th bans.
    daemon.append("web.log", &failures(attacker, 1));
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon
            .banned("web")
            .contains(&attacker.to_owned())),
        "not banned after the 5th failure: counts were lost across the restarts"
    );
    assert!(!netns::connects(attacker, target));
}

/// The first start reads back the existing log: recent dated failures count, older than
/// findtime or undated ones do not.
#[test]
fn first_start_reads_back_recent_dated_failures_only() {
    let Some(()) = netns::enter("first_start_reads_back_recent_dated_failures_only") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let dir = crate::daemon::Scratch::new("readback-log");
    let two_hours_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    let old = two_hours_ago.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut log = Vec::new();
    for i in 0..3 {
        log.push(format!(
            "{old} app: login failed for admin from 127.0.0.3 port 5{i}"
        ));
        log.push(format!(
            "app: login failed for admin from 127.0.0.3 port 6{i}"
        ));
    }
    log.extend(failures("127.0.0.2", 2));
    log.extend(failures("127.0.0.3", 1));
    let path = dir.path("web.log");
    crate::daemon::append(&path, &log);
    let config = web_jail(target.port(), "").replace("{dir}/web.log", &path.display().to_string());
    let daemon = Daemon::start("readback", &config);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        daemon.banned("web").is_empty(),
        "old or undated failures counted: {:?}",
        daemon.banned("web")
    );
    assert_eq!(tracked(&daemon), 2);
    crate::daemon::append(&path, &failures("127.0.0.2", 1));
    daemon.wait_banned("web", "127.0.0.2");
    assert!(netns::connects("127.0.0.3", target));
}
