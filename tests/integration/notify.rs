//! Notifications and metrics of the real daemon, in a namespace: a webhook receiver and a
//! metrics scraper on loopback, exec notifiers fed hostile log lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use crate::daemon::{Daemon, FAILREGEX, failures, web_jail};
use crate::netns;

/// One request a receiver got.
struct Received {
    head: String,
    body: serde_json::Value,
}

/// A webhook receiver on loopback: answers the first `fail_first` requests 503, then 200.
fn receiver(fail_first: usize) -> (SocketAddr, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n < fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let mut stream = reader.into_inner();
            write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
            let body = serde_json::from_slice(&body).unwrap();
            if tx.send(Received { head, body }).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn next(rx: &mpsc::Receiver<Received>, what: &str) -> Received {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no webhook request: {what}"))
}

#[test]
fn webhook_gets_bans_and_unbans_as_json_and_never_delays_a_ban() {
    let Some(()) = netns::enter("webhook_gets_bans_and_unbans_as_json_and_never_delays_a_ban")
    else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let (hook, requests) = receiver(1);
    // Accepts connections (the kernel does) but never answers: its notifier hangs 30 s.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        r#"
[jails.short]
failregex = ['{FAILREGEX}']
logpath = "{{dir}}/short.log"
bantime = "2s"

[[notify]]
url = "http://{hole}/stuck"
timeout = "30s"
retries = 0

[[notify]]
url = "http://{hook}/hooks/ban?source=banctl"
headers = {{ Authorization = "Bearer t0k3n" }}
on = ["ban", "unban"]
retries = 2
timeout = "5s"
"#,
        hole = hole.local_addr().unwrap(),
    );
    let daemon = Daemon::start("webhook", &web_jail(target.port(), &extra));
    // A user name built to break out of a JSON string or a shell command.
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{now} app: login failed for x", "address": "6.6.6.6"}}; $(reboot) `id` from 127.0.0.2 port 4{i}"#
            )
        })
        .collect();
    daemon.append("web.log", &lines);
    daemon.wait_banned("web", "127.0.0.2");
    assert_eq!(daemon.banned("web"), ["127.0.0.2"]);
    assert!(
        !netns::connects("127.0.0.2", target),
        "banned 127.0.0.2 connected"
    );

    // The first attempt got 503; the retry brought the same document.
    let first = next(&requests, "ban, first attempt");
    let retry = next(&requests, "ban, retried");
    assert_eq!(first.body, retry.body);
    assert!(
        retry
            .head
            .starts_with("POST /hooks/ban?source=banctl HTTP/1.1\r\n"),
        "{}",
        retry.head
    );
    assert!(
        retry.head.contains("Authorization: Bearer t0k3n\r\n"),
        "{}",
        retry.head
    );
    assert!(retry.head.contains("Content-Type: application/json\r\n"));
    let ban = retry.body;
    assert_eq!(ban["version"], 1);
    assert_eq!(ban["event"], "ban");
    assert_eq!(ban["jail"], "web");
    assert_eq!(ban["address"], "127.0.0.2");
    assert_eq!(ban["prefix"], "127.0.0.2");
    assert_eq!(ban["bantime_s"], 3600);
    assert_eq!(ban["ban_count"], 1);
    assert_eq!(ban["reason"], "failures");
    // The log lines arrive as data, byte for byte.
    assert_eq!(ban["matched"], serde_json::json!(lines));
    assert!(ban["time"].as_u64().unwrap() > 1_700_000_000);

    // The stuck notifier still waits for its answer; bans and the other notifier go on.
    daemon.append("web.log", &failures("127.0.0.4", 3));
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("web").len() == 2),
        "second ban delayed"
    );
    let second = next(&requests, "second ban").body;
    assert_eq!(
        (&second["event"], &second["address"]),
        (&"ban".into(), &"127.0.0.4".into())
    );

    daemon.ok(&["unban", "127.0.0.2"]);
    let unban = next(&requests, "unban").body;
    assert_eq!(unban["event"], "unban");
    assert_eq!(unban["address"], "127.0.0.2");
    assert_eq!(unban["reason"], "manual");
    assert!(netns::connects("127.0.0.2", target));

    // A ban the kernel lifts by itself is announced too.
    daemon.append("short.log", &failures("127.0.0.5", 3));
    let short = next(&requests, "short ban").body;
    assert_eq!(
        (&short["jail"], &short["bantime_s"]),
        (&"short".into(), &2.into())
    );
    let expired = next(&requests, "expiry").body;
    assert_eq!(expired["event"], "unban");
    assert_eq!(expired["jail"], "short");
    assert_eq!(expired["reason"], "expired");
    assert_eq!(expired["address"], "127.0.0.5");
    drop(hole);
}

/// A quoted-printable body decoded (soft line breaks and `=XX` escapes).
fn quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// One message an SMTP receiver got: the envelope's recipients and the DATA.
struct Mail {
    rcpt: Vec<String>,
    data: String,
}

/// A minimal SMTP receiver on loopback (an MTA's side of RFC 5321, no extensions): one
/// message per DATA, handed over as received (dot-stuffing undone).
fn smtp_receiver() -> (SocketAddr, mpsc::Receiver<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let _ = stream.write_all(b"220 receiver.test ESMTP\r\n");
            let mut rcpt = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let answer: &[u8] = match verb.as_str() {
                    "EHLO" | "HELO" => b"250 receiver.test\r\n",
                    "RCPT" => {
                        rcpt.push(line.trim_end().to_owned());
                        b"250 OK\r\n"
                    }
                    "DATA" => {
                        stream.write_all(b"354 go on\r\n").unwrap();
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            if reader.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                                break;
                            }
                            data.push_str(l.strip_prefix('.').unwrap_or(&l));
                        }
                        let mail = Mail {
                            rcpt: std::mem::take(&mut rcpt),
                            data,
                        };
                        if tx.send(mail).is_err() {
                            return;
                        }
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        let _ = stream.write_all(b"221 bye\r\n");
                        break;
                    }
                    _ => b"250 OK\r\n",
                };
                if stream.write_all(answer).is_err() {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

#[test]
fn mail_reports_bans_and_unbans_with_the_lines_over_smtp() {
    let Some(()) = netns::enter("mail_reports_bans_and_unbans_with_the_lines_over_smtp") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let (smtp, mails) = smtp_receiver();
    let extra = format!(
        r#"
[[notify]]
mail = "root@localhost, Security Team <security@example.org>"
from = "banctl@web1.example.org"
smtp = "{smtp}"
on = ["ban", "unban"]
"#
    );
    let daemon = Daemon::start("mail", &web_jail(target.port(), &extra));
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    // User names shaped as SMTP commands and headers.
    let lines: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{now} app: login failed for x\rSubject: pwned\r. QUIT from 127.0.0.2 port 4{i}"
            )
        })
        .collect();
    daemon.append("web.log", &lines);
    daemon.wait_banned("web", "127.0.0.2");
    let next = |what: &str| {
        mails
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no mail: {what}"))
    };
    let ban = next("ban");
    assert_eq!(
        ban.rcpt,
        ["RCPT TO:<root@localhost>", "RCPT TO:<security@example.org>"]
    );
    let data = &ban.data;
    assert!(data.contains("From: banctl@web1.example.org\r\n"), "{data}");
    assert!(data.contains("Subject: [banctl] "), "{data}");
    assert!(
        data.contains(" banned 127.0.0.2 in web (ban #1)\r\n"),
        "{data}"
    );
    // One header block; the log text stays in the body, its CRs shown escaped.
    let (head, body) = data.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains("Content-Transfer-Encoding: quoted-printable"),
        "{head}"
    );
    let body = &quoted_printable(body);
    assert_eq!(head.matches("Subject:").count(), 1, "{data}");
    assert!(
        !body.contains('\r') || !body.replace("\r\n", "").contains('\r'),
        "{data}"
    );
    assert!(data.contains("for:      1h"), "{data}");
    for line in &lines {
        assert!(
            body.contains(&format!("    {}", line.replace('\r', "\\r"))),
            "{data}"
        );
    }
    assert!(data.contains("banctl unban 127.0.0.2 --jail web"), "{data}");

    daemon.ok(&["unban", "127.0.0.2"]);
    let unban = next("unban");
    assert!(
        unban.data.contains(" unbanned 127.0.0.2 in web\r\n"),
        "{}",
        unban.data
    );
    assert!(unban.data.contains("reason:   manual"), "{}", unban.data);
}

/// A capability set from a `/proc/…/status` text.
fn capability(status: &str, set: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{set}:\t")))
        .unwrap_or_else(|| panic!("no {set} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// The processes whose parent is `parent`, by name.
fn children(parent: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent) {
            out.push((pid, comm.rsplit('(').next().unwrap_or("").to_owned()));
        }
    }
    out
}

/// Runs the exec test with the daemon started by `wrapper` (empty: by hand as root).
fn exec_notifiers(test: &str, wrapper: &[&str]) {
    let target = netns::listen("127.0.0.1:0");
    let notifiers = r#"
[[notify]]
command = ["/usr/bin/tee", "{dir}/{event}-{jail}-{address}.json"]

[[notify]]
command = ["/bin/cp", "/proc/self/status", "{dir}/caps-{address}"]

[[notify]]
command = ["/bin/sleep", "600"]
timeout = "2s"
"#;
    let daemon = Daemon::start_under(test, &web_jail(target.port(), notifiers), wrapper);
    let dir = daemon.scratch.0.clone();
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    let pwned = |n: usize| dir.join(format!("pwned{n}"));
    let hostile = format!(
        "$(touch {}); `touch {}` | touch {} && touch {}; {{address}} {{jail}} >{}",
        pwned(1).display(),
        pwned(2).display(),
        pwned(3).display(),
        pwned(4).display(),
        pwned(5).display(),
    );
    let lines: Vec<String> = (0..3)
        .map(|i| format!("{now} app: login failed for {hostile} from 127.0.0.2 port 4{i}"))
        .collect();
    daemon.append("web.log", &lines);
    daemon.wait_banned("web", "127.0.0.2");
    assert_eq!(daemon.banned("web"), ["127.0.0.2"]);
    assert!(!netns::connects("127.0.0.2", target));

    let event = dir.join("ban-web-127.0.0.2.json");
    assert!(
        netns::eventually(Duration::from_secs(10), || event.exists()
            && std::fs::read(&event).is_ok_and(|b| b.ends_with(b"}"))),
        "tee did not write {}",
        event.display()
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&event).unwrap()).unwrap();
    assert_eq!(json["matched"], serde_json::json!(lines));
    for n in 1..=5 {
        assert!(
            !pwned(n).exists(),
            "{} exists: log text ran",
            pwned(n).display()
        );
    }

    // The program ran without any capability.
    let caps = dir.join("caps-127.0.0.2");
    assert!(netns::eventually(Duration::from_secs(10), || caps.exists()));
    let status = std::fs::read_to_string(&caps).unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            capability(&status, set),
            0,
            "{set} of the notifier:\n{status}"
        );
    }

    // The program that outlives its timeout is killed.
    let daemon_pid = daemon.pid().as_raw();
    let sleeping = || {
        children(daemon_pid)
            .into_iter()
            .any(|(_, name)| name == "sleep")
    };
    assert!(
        netns::eventually(Duration::from_secs(10), || !sleeping()),
        "sleep 600 still runs after its 2 s timeout"
    );
    // …and the daemon still bans.
    daemon.append("web.log", &failures("127.0.0.4", 3));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("web")
        .len()
        == 2));
    // The children's SIGCHLD interrupted no wait for good: the ruleset watcher still repairs.
    netns::nft(&["flush", "set", "inet", "banctl", "web_v4"]);
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("web").len() == 2),
        "the flushed set was not repaired"
    );
}

#[test]
fn exec_notifier_gets_log_text_as_data_only_and_no_capability() {
    let Some(()) = netns::enter("exec_notifier_gets_log_text_as_data_only_and_no_capability")
    else {
        return;
    };
    exec_notifiers("exec-by-hand", &[]);
}

/// As systemd starts it from the unit: root, a bounding set of the two capabilities (so no
/// CAP_SETPCAP to empty it), ambient capabilities, no_new_privs and `SecureBits=noroot`.
#[test]
fn exec_notifier_gets_no_capability_under_the_units_settings() {
    let Some(()) = netns::enter("exec_notifier_gets_no_capability_under_the_units_settings") else {
        return;
    };
    let caps = "+net_admin,+dac_read_search";
    exec_notifiers(
        "exec-unit",
        &[
            "setpriv",
            &format!("--bounding-set=-all,{caps}"),
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps={caps}"),
            "--securebits=+noroot,+noroot_locked",
            "--nnp",
        ],
    );
}

/// `GET path` on the metrics endpoint: (status line, body).
pub fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of one sample (`name{labels}`) in an exposition.
pub fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_scrape_counts_lines_failures_bans_drops_and_repairs() {
    let Some(()) = netns::enter("metrics_scrape_counts_lines_failures_bans_drops_and_repairs")
    else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let text = format!("metrics = \"{metrics}\"\n{}", web_jail(target.port(), ""));
    let daemon = Daemon::start("metrics", &text);
    let mut lines = failures("127.0.0.2", 3);
    lines.push("benign line".into());
    daemon.append("web.log", &lines);
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("web")
        == ["127.0.0.2"]));
    assert!(!netns::connects("127.0.0.2", target));

    let (status, body) = scrape(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    println!("{body}");
    let web = |name: &str| sample(&body, &format!("banctl_{name}{{jail=\"web\"}}"));
    assert_eq!(web("lines_read_total"), 4);
    assert_eq!(web("lines_matched_total"), 3);
    assert_eq!(web("failures_total"), 3);
    assert_eq!(web("bans_total"), 1);
    assert_eq!(web("active_bans"), 1);
    assert!(web("dropped_packets_total") >= 1);
    assert!(web("dropped_bytes_total") >= 40);
    assert_eq!(sample(&body, "banctl_netlink_errors_total"), 0);
    assert_eq!(sample(&body, "banctl_repairs_total"), 0);

    // Another process empties the set: the daemon puts the ban back and counts a repair.
    netns::nft(&["flush", "set", "inet", "banctl", "web_v4"]);
    assert!(netns::eventually(Duration::from_secs(5), || {
        sample(&scrape(metrics, "/metrics").1, "banctl_repairs_total") == 1
    }));
    assert_eq!(daemon.banned("web"), ["127.0.0.2"]);

    daemon.ok(&["unban", "127.0.0.2"]);
    let body = scrape(metrics, "/metrics").1;
    assert_eq!(sample(&body, "banctl_unbans_total{jail=\"web\"}"), 1);
    assert_eq!(sample(&body, "banctl_active_bans{jail=\"web\"}"), 0);
    assert_eq!(scrape(metrics, "/other").0, "HTTP/1.1 404 Not Found");
}
