//! Shared by the benchmark programs: a deterministic generator and result output.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// xorshift64*: deterministic, fast, good enough to mix log lines.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A public-looking IPv4 address.
    pub fn ipv4(&mut self) -> String {
        format!(
            "{}.{}.{}.{}",
            1 + self.below(222),
            self.below(256),
            self.below(256),
            1 + self.below(254)
        )
    }
}

/// A measured figure, printed and saved as JSON for `cargo xtask bench`.
pub struct Figure {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub target: &'static str,
    pub met: Option<bool>,
    pub note: String,
}

impl Figure {
    /// A figure in milliseconds whose target is at most `limit`.
    pub fn ms_at_most(
        name: &'static str,
        value: f64,
        target: &'static str,
        limit: f64,
        note: String,
    ) -> Figure {
        Figure {
            name,
            value,
            unit: "ms",
            target,
            met: Some(value <= limit),
            note,
        }
    }

    pub fn print(&self) {
        let verdict = match self.met {
            Some(true) => "meets target",
            Some(false) => "MISSES target",
            None => "",
        };
        println!(
            "{:<44} {:>14.3} {:<8} target {:<12} {verdict} {}",
            self.name, self.value, self.unit, self.target, self.note
        );
    }

    pub fn json(&self) -> String {
        let met = self.met.map_or("null".to_owned(), |m| m.to_string());
        format!(
            "{{\"name\":{:?},\"value\":{},\"unit\":{:?},\"target\":{:?},\"met\":{met},\"note\":{:?}}}",
            self.name, self.value, self.unit, self.target, self.note
        )
    }
}

/// Writes figures to target/bench/<file>.json (an array).
pub fn save(file: &str, figures: &[Figure]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let body: Vec<String> = figures.iter().map(Figure::json).collect();
    std::fs::write(
        dir.join(format!("{file}.json")),
        format!("[{}]\n", body.join(",\n")),
    )
    .expect("write bench json");
}

/// A mixed auth.log: mostly benign lines from many daemons, some sshd failures.
pub fn auth_log(lines: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(lines * 110);
    for i in 0..lines {
        let (h, m, s) = ((i / 3600) % 24, (i / 60) % 60, i % 60);
        let ts = format!("Nov 21 {h:02}:{m:02}:{s:02} web");
        let ip = rng.ipv4();
        let pid = 1000 + rng.below(60000);
        let port = 1024 + rng.below(64000);
        let line = match rng.below(100) {
            0..=7 => {
                format!("{ts} sshd[{pid}]: Failed password for root from {ip} port {port} ssh2")
            }
            8..=11 => format!(
                "{ts} sshd[{pid}]: Failed password for invalid user admin from {ip} port {port} ssh2"
            ),
            12..=14 => format!("{ts} sshd[{pid}]: Invalid user oracle from {ip} port {port}"),
            15..=16 => format!(
                "{ts} sshd[{pid}]: Connection closed by invalid user test {ip} port {port} [preauth]"
            ),
            17..=24 => format!(
                "{ts} sshd[{pid}]: Accepted publickey for deploy from {ip} port {port} ssh2: ED25519 SHA256:Zm9vYmFy"
            ),
            25..=34 => format!(
                "{ts} sshd[{pid}]: pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"
            ),
            35..=44 => format!(
                "{ts} sshd[{pid}]: Received disconnect from {ip} port {port}:11: disconnected by user"
            ),
            45..=64 => format!(
                "{ts} CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"
            ),
            65..=79 => format!("{ts} systemd-logind[{pid}]: New session {i} of user deploy."),
            80..=89 => format!(
                "{ts} kernel: [UFW BLOCK] IN=eth0 OUT= SRC={ip} DST=192.0.2.1 PROTO=TCP SPT={port} DPT=23"
            ),
            _ => format!(
                "{ts} sudo[{pid}]: deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/apt update"
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A mixed nginx combined access log: mostly ordinary requests, some scanners probing for
/// admin and exploit paths.
pub fn access_log(lines: usize, seed: u64) -> String {
    const PAGES: [&str; 6] = [
        "/",
        "/index.html",
        "/blog/2026/11/rust-and-nftables",
        "/static/app.3f2a9c.js",
        "/static/style.css",
        "/api/v1/items?page=2",
    ];
    const PROBES: [&str; 6] = [
        "/wp-login.php",
        "/.env",
        "/xmlrpc.php",
        "/phpmyadmin/index.php",
        "/.git/config",
        "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
    ];
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(lines * 160);
    for i in 0..lines {
        let (h, m, s) = ((i / 3600) % 24, (i / 60) % 60, i % 60);
        let ip = rng.ipv4();
        let bytes = rng.below(90_000);
        let (path, status) = match rng.below(100) {
            0..=9 => (PROBES[rng.below(6) as usize], 404),
            10..=14 => (PAGES[rng.below(6) as usize], 404),
            15..=17 => (PAGES[rng.below(6) as usize], 304),
            _ => (PAGES[rng.below(6) as usize], 200),
        };
        out.push_str(&format!(
            "{ip} - - [21/Nov/2026:{h:02}:{m:02}:{s:02} +0000] \"GET {path} HTTP/1.1\" {status} {bytes} \"https://example.com/\" \"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\"\n"
        ));
    }
    out
}

/// Waits for committed transactions until `done` holds; returns when the commit that made it
/// hold was announced by the kernel. Checking only after a commit keeps the bench from
/// competing with the daemon for the CPU.
pub fn until_committed(
    mon: &mut banctl::firewall::Monitor,
    start: Instant,
    mut done: impl FnMut() -> bool,
) -> Duration {
    loop {
        let left = Duration::from_secs(30).saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "no commit made the condition true within 30 s"
        );
        let types = mon.next(left).expect("monitor");
        let at = start.elapsed();
        if types
            .iter()
            .any(|n| n.kind == banctl::firewall::NFT_MSG_NEWGEN)
            && done()
        {
            return at;
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The failregex that matches [`failures`].
pub const FAILREGEX: &str = r"^\S+ app: auth failure from <HOST>$";

/// `n` failure lines of `addr`, dated now.
pub fn failures(addr: std::net::IpAddr, n: usize, out: &mut String) {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    for _ in 0..n {
        out.push_str(&format!("{now} app: auth failure from {addr}\n"));
    }
}

/// The banctl binary to measure: `BANCTL_BENCH_BIN` when set (`cargo xtask bench` sets it
/// to the `cargo build --release` binary, the one users install, whose code is laid out by
/// `build/symbol-order.txt`; or an older build, to compare), else this bench build's.
pub fn banctl_bin() -> String {
    std::env::var("BANCTL_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_banctl").to_owned())
}

/// Starts `banctl daemon --config CONFIG` through `command` (the binary itself, or a
/// wrapper that runs it in another namespace), logging at `BANCTL_BENCH_LOG` (warn).
pub fn spawn_daemon(
    mut command: std::process::Command,
    config: &std::path::Path,
) -> std::process::Child {
    use std::process::Stdio;
    command
        .args(["daemon", "--config"])
        .arg(config)
        .env(
            "BANCTL_LOG",
            std::env::var("BANCTL_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the daemon")
}

/// Appends `text` in one write, as a logging daemon would.
pub fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Like [`until_committed`], but checks only once commits stop for 50 ms, and reports the time
/// of the last commit: for bursts, where checking a large set after every commit would steal
/// the CPU from the daemon being measured.
pub fn until_settled(
    mon: &mut banctl::firewall::Monitor,
    start: Instant,
    done: impl FnMut() -> bool,
) -> Duration {
    until_settled_within(mon, start, Duration::from_secs(30), done).expect("not done within 30 s")
}

/// [`until_settled`] giving up after `limit` (`None`): for peers that may never get there.
pub fn until_settled_within(
    mon: &mut banctl::firewall::Monitor,
    start: Instant,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    let mut last_commit = None;
    while start.elapsed() < limit {
        let wait = if last_commit.is_some() {
            Duration::from_millis(50)
        } else {
            limit.saturating_sub(start.elapsed())
        };
        let types = mon.next(wait).expect("monitor");
        if types
            .iter()
            .any(|n| n.kind == banctl::firewall::NFT_MSG_NEWGEN)
        {
            last_commit = Some(start.elapsed());
        } else if types.is_empty()
            && let Some(at) = last_commit.filter(|_| done())
        {
            return Some(at);
        }
    }
    None
}

/// Address `i` (below 2,000) of the burst: the first 400 IPv4 (10.2.x.y), the rest IPv6, each
/// in a /64 of its own.
pub fn burst_address(i: u32) -> std::net::IpAddr {
    if i < 400 {
        std::net::IpAddr::from([10, 2, (i >> 8) as u8, i as u8])
    } else {
        let v6 = 0x2001_0db8_0002_0000_0000_0000_0000_0000u128 | u128::from(i) << 64 | 1;
        std::net::IpAddr::from(v6.to_be_bytes())
    }
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS:`, `RssAnon:`), in MB; 0 when absent.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
