//! Regressions from the adversarial probe of 2026-11-30 (issue 21), each against the real
//! daemon in a namespace: an attacker must not choose the banned address, nor make one ban
//! cost the others of its round.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::daemon::{Daemon, failures, web_jail};
use crate::netns;
use crate::notify::{sample, scrape};

/// A free loopback port for the metrics endpoint.
fn metrics_address() -> SocketAddr {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// A line longer than 64 KiB whose first 65,536 bytes end like a failure of 127.0.0.2 (the
/// attacker's user name runs to the cut); the real peer, 127.0.0.3, comes after the cut.
fn planted_at_the_cut() -> String {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    let head = format!("{now} app: login failed for ");
    let planted = " from 127.0.0.2 port 41";
    let name = "a".repeat(banctl::source::MAX_LINE - head.len() - planted.len());
    let line = format!("{head}{name}{planted} from 127.0.0.3 port 9");
    assert_eq!(
        &line[..banctl::source::MAX_LINE].len(),
        &banctl::source::MAX_LINE
    );
    assert!(line[..banctl::source::MAX_LINE].ends_with(planted));
    line
}

#[test]
fn a_line_cut_at_the_limit_never_bans_the_address_before_the_cut() {
    let Some(()) = netns::enter("a_line_cut_at_the_limit_never_bans_the_address_before_the_cut")
    else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let metrics = metrics_address();
    let config = format!("metrics = \"{metrics}\"\n{}", web_jail(target.port(), ""));
    let daemon = Daemon::start("cut-line", &config);
    daemon.append("web.log", &vec![planted_at_the_cut(); 3]);
    // Then real failures of 127.0.0.4: once they are banned, the long lines were read.
    daemon.append("web.log", &failures("127.0.0.4", 3));
    daemon.wait_banned("web", "127.0.0.4");
    assert_eq!(daemon.banned("web"), ["127.0.0.4"]);
    assert!(
        netns::connects("127.0.0.2", target),
        "the planted address was banned"
    );
    assert!(!netns::connects("127.0.0.4", target));
    let (_, body) = scrape(metrics, "/metrics");
    assert_eq!(sample(&body, "banctl_lines_cut_total{jail=\"web\"}"), 3);
    assert_eq!(sample(&body, "banctl_failures_total{jail=\"web\"}"), 3);
}

/// A jail banning IPv6 /64s: an address inside a manually banned /128, reaching maxretry in
/// the same write as 50 other addresses, makes a /64 that overlaps the /128. Every ban of the
/// round is written (the /64 replaces the /128), and the manual ban comes back when the /64
/// ends.
#[test]
fn an_overlapping_ban_costs_no_other_ban_of_its_round() {
    let Some(()) = netns::enter("an_overlapping_ban_costs_no_other_ban_of_its_round") else {
        return;
    };
    netns::add_v6_addrs(&[
        "2001:db8::1",
        "2001:db8:5::7",
        "2001:db8:5::8",
        "2001:db8:6::1",
    ]);
    let target = netns::listen("[2001:db8::1]:0");
    let extra = "ban_prefix = { v4 = 32, v6 = 64 }\n\n[jails.short]\n\
                 failregex = ['^\\S+ app: login failed for .* from <HOST> port \\d+$']\n\
                 logpath = [\"{dir}/short.log\"]\nbantime = \"3s\"\nban_prefix = { v4 = 32, v6 = 64 }\n";
    let daemon = Daemon::start("overlap", &web_jail(target.port(), extra));
    std::fs::write(daemon.scratch.path("short.log"), "").unwrap();
    let out = daemon.ok(&["ban", "web", "2001:db8:5::7"]);
    assert_eq!(out, "banned 2001:db8:5::7 in jail web for 1h\n");

    let mut lines = failures("2001:db8:5::8", 3);
    let others: Vec<String> = (0..50)
        .map(|i| format!("2001:db8:{:x}::1", 0x100 + i))
        .collect();
    for addr in &others {
        lines.extend(failures(addr, 3));
    }
    daemon.append("web.log", &lines);
    daemon.wait_banned("web", "2001:db8:5::/64");
    let banned = daemon.banned("web");
    assert_eq!(banned.len(), 51, "{banned:?}");
    for addr in &others {
        let net = format!("{}/64", addr.trim_end_matches('1'));
        assert!(banned.contains(&net), "{net} not in {banned:?}");
    }
    assert!(!banned.iter().any(|b| b == "2001:db8:5::7"), "{banned:?}");
    assert!(!netns::connects("2001:db8:5::7", target));
    assert!(!netns::connects("2001:db8:5::8", target));
    assert!(netns::connects("2001:db8:6::1", target));

    // A manual ban inside the /64 is covered: recorded, nothing written, reported.
    let out = daemon.ok(&["ban", "web", "2001:db8:5::9"]);
    assert!(
        out.contains("already covered by the ban of 2001:db8:5::/64"),
        "{out}"
    );
    assert_eq!(daemon.banned("web").len(), 51);

    // Unbanning an address of the /64 lifts the /64; the bans of their own that waited
    // inside it (2001:db8:5::7, ::9) go back into the kernel.
    daemon.ok(&["unban", "--jail", "web", "2001:db8:5::8"]);
    assert!(netns::connects("2001:db8:5::8", target));
    assert!(!netns::connects("2001:db8:5::7", target));
    let banned = daemon.banned("web");
    assert!(banned.iter().any(|b| b == "2001:db8:5::7"), "{banned:?}");
    assert!(banned.iter().any(|b| b == "2001:db8:5::9"), "{banned:?}");
    assert_eq!(banned.len(), 52, "{banned:?}");

    // In a jail whose /64 lasts 3 s, a manual /128 inside it is put back when the /64 ends.
    daemon.ok(&["ban", "short", "2001:db8:6::1", "--time", "1h"]);
    daemon.append("short.log", &failures("2001:db8:6::2", 3));
    daemon.wait_banned("short", "2001:db8:6::/64");
    assert_eq!(daemon.banned("short"), ["2001:db8:6::/64"]);
    assert!(
        netns::eventually(Duration::from_secs(10), || daemon.banned("short")
            == ["2001:db8:6::1"]),
        "the manual ban did not come back: {:?}",
        daemon.banned("short")
    );
}
