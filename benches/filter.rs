//! Filter throughput: the built-in sshd filter on a generated, mixed 1M-line auth log, one core;
//! and the source latency: a line appended to a followed file until its failure is counted by
//! the jail. Run through `cargo xtask bench` (or `cargo bench --bench filter`).

mod common;

use std::io::Write;
use std::time::{Instant, SystemTime};

use banctl::config::Config;
use banctl::filter::Builtin;
use banctl::jail::{Jail, Outcome};
use banctl::source::{FileFollower, Resume};
use common::Figure;

const LINES: usize = 1_000_000;

fn main() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let auth = common::auth_log(LINES, 42);
    std::fs::write(dir.join("auth-1M.log"), &auth).unwrap();
    let sshd = throughput("filter: sshd, mixed 1M-line auth.log", "sshd", &auth);
    sshd.print();
    let access = common::access_log(LINES, 43);
    std::fs::write(dir.join("access-1M.log"), &access).unwrap();
    let nginx = throughput(
        "filter: nginx-botsearch, mixed 1M-line access.log",
        "nginx-botsearch",
        &access,
    );
    nginx.print();
    let latency = source_latency(&dir);
    latency.print();
    common::save("filter", &[sshd, nginx, latency]);
}

/// Lines per second of a built-in filter over `log` on one core (best of three runs after a
/// warm-up, which fills the regex engines' lazy DFAs).
fn throughput(name: &'static str, filter: &str, log: &str) -> Figure {
    let filter = Builtin::by_name(filter)
        .expect("built-in filter")
        .compile_with(&[])
        .expect("built-in filters compile");
    let lines: Vec<&str> = log.lines().collect();
    let mut hits = 0;
    let mut best = f64::MAX;
    for _ in 0..4 {
        let start = Instant::now();
        hits = lines.iter().filter(|l| filter.find(l).is_some()).count();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let rate = lines.len() as f64 / best;
    Figure {
        name,
        value: rate / 1e6,
        unit: "M lines/s",
        target: ">= 5",
        met: Some(rate >= 5e6),
        note: format!("({hits} hits, {:.0} ms per 1M lines)", best * 1000.0),
    }
}

/// A failure line appended (one write) to a file the follower watches, until the jail has
/// counted it: inotify wake-up, read, line split, filter, count. 200 samples, p50.
fn source_latency(dir: &std::path::Path) -> Figure {
    const SAMPLES: usize = 200;
    let log = dir.join("latency.log");
    std::fs::write(&log, "").unwrap();
    let text = format!(
        "[jails.j]\nfilter = \"sshd\"\nlogpath = \"{}\"\nmaxretry = 1000000\n",
        log.display()
    );
    let config = Config::parse(std::path::Path::new("bench.toml"), &text).expect("config");
    let mut jail = Jail::new(config.jails[0].clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The writer is another thread, as a logger is another process: the reader sleeps in
    // epoll until the write wakes it, as the daemon does.
    let (sent, written) = std::sync::mpsc::channel::<Instant>();
    let (ready, go) = std::sync::mpsc::channel::<()>();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            go.recv().unwrap();
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            for i in 0..SAMPLES {
                std::thread::sleep(std::time::Duration::from_millis(2));
                let line = format!(
                    "Nov 21 10:00:00 host sshd[{i}]: Failed password for root from 198.51.100.{} port 22 ssh2\n",
                    i % 250 + 1
                );
                let start = Instant::now();
                file.write_all(line.as_bytes()).unwrap();
                sent.send(start).unwrap();
            }
        })
    };
    let mut samples: Vec<f64> = runtime.block_on(async {
        let mut follower =
            FileFollower::new(&[log.display().to_string()], &Resume::default()).unwrap();
        ready.send(()).unwrap();
        let mut samples = Vec::with_capacity(SAMPLES);
        while samples.len() < SAMPLES {
            for batch in follower.next().await.unwrap() {
                for line in batch.lines.iter() {
                    if let Some(Outcome::Counted { .. }) = jail.on_line(line, SystemTime::now()) {
                        let start = written.recv().unwrap();
                        samples.push(start.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        }
        samples
    });
    writer.join().unwrap();
    samples.sort_by(f64::total_cmp);
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Figure {
        name: "source: line appended -> failure in the jail",
        value: p(0.5),
        unit: "ms p50",
        target: "<= 0.5",
        met: Some(p(0.5) <= 0.5),
        note: format!(
            "(p90 {:.3} ms, max {:.3} ms, {SAMPLES} samples)",
            p(0.9),
            p(1.0)
        ),
    }
}
