//! Fleet figures through real kernels and a real NATS server: host A (this namespace) bans,
//! host B (a namespace of its own, linked by veth) enforces; a new host C catches up.
//!
//! - latency: a failure line appended on A -> the element committed in B's kernel (B's
//!   nf_tables notifications, read in B's namespace), 30 samples;
//! - burst: 2,000 addresses reaching maxretry in one write on A -> all in B's kernel;
//! - catch-up: 100,000 active bans in the bucket -> a new host C started -> C reports the
//!   fleet's bans in place (they are in its kernel: checked);
//! - fan-out: 1,000 simulated subscribers (KV watchers over 50 connections, as 1,000 hosts
//!   would each hold one) -> publish to last delivery, 100 bans.
//!
//! Run through `cargo xtask bench` (or `cargo bench --bench fleet`, as root, with
//! `nats-server` on the PATH or in `BANCTL_NATS_SERVER`).

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banctl::firewall::{Firewall, Monitor};
use common::{FAILREGEX, Figure, failures, percentile, until_committed, until_settled};
use futures_util::StreamExt;

const NATS: &str = "10.7.0.1:4222";

fn nats_bin() -> String {
    std::env::var("BANCTL_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

fn run(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{cmd} {args:?}");
}

/// A network namespace kept alive by a `sleep`, linked to this one.
struct Peer(Child);

impl Peer {
    fn new(n: u8) -> Peer {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let pid = child.id().to_string();
        let (host_if, peer_if) = (format!("bf{n}"), format!("bf{n}-p"));
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &pid,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("10.7.{n}.1/24"), "dev", &host_if],
        );
        run("ip", &["link", "set", &host_if, "up"]);
        let ns = |args: &[&str]| {
            let mut full = vec!["-t", pid.as_str(), "-n", "ip"];
            full.extend_from_slice(args);
            run("nsenter", &full);
        };
        ns(&["link", "set", "lo", "up"]);
        ns(&["addr", "add", &format!("10.7.{n}.2/24"), "dev", &peer_if]);
        ns(&["link", "set", &peer_if, "up"]);
        ns(&["route", "add", "default", "via", &format!("10.7.{n}.1")]);
        Peer(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Runs `f` on a thread inside this namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.0.id())).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// A member named `name` with jail `web`, started under `wrapper` (nsenter) if given.
    fn spawn(name: &str, wrapper: Option<&Peer>, fleet_extra: &str) -> Daemon {
        let dir =
            std::env::temp_dir().join(format!("banctl-bench-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("web.log");
        std::fs::write(&log, "").unwrap();
        let config = format!(
            "[daemon]\nsocket = \"{0}/sock\"\nstate_dir = \"{0}/state\"\n\n[defaults]\nmaxretry = 3\n\
             bantime = \"1h\"\nignoreself = false\nports = [22]\n\n[jails.web]\nfailregex = ['{FAILREGEX}']\n\
             logpath = \"{1}\"\nban_prefix = {{ v4 = 32, v6 = 128 }}\n\n[fleet]\nname = \"{name}\"\n\
             servers = [\"nats://{NATS}\"]\nwait = \"30s\"\n{fleet_extra}\n",
            dir.display(),
            log.display()
        );
        std::fs::write(dir.join("banctl.toml"), config).unwrap();
        let command = match wrapper {
            Some(peer) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &peer.pid(), "-n"]).arg(common::banctl_bin());
                c
            }
            None => Command::new(common::banctl_bin()),
        };
        let child = common::spawn_daemon(command, &dir.join("banctl.toml"));
        Daemon { child, dir }
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(common::banctl_bin())
            .arg("--socket")
            .arg(self.dir.join("sock"))
            .args(["status", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Waits until the link has applied the fleet's bans.
    fn wait_caught_up(&self, within: Duration) -> Duration {
        let start = Instant::now();
        while self.status()["fleet"]["caught_up"] != true {
            assert!(start.elapsed() < within, "no catch-up within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("web.log")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn figure(
    name: &'static str,
    value: f64,
    unit: &'static str,
    target: &'static str,
    met: Option<bool>,
    note: &str,
) -> Figure {
    Figure {
        name,
        value,
        unit,
        target,
        met,
        note: note.to_owned(),
    }
}

fn main() {
    if Command::new(nats_bin()).arg("--version").output().is_err() {
        println!("fleet bench skipped: no nats-server (cargo xtask bench unpacks it)");
        return;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("network namespace (root)");
    run("ip", &["link", "set", "lo", "up"]);
    run("ip", &["addr", "add", "10.7.0.1/32", "dev", "lo"]);
    let store = std::env::temp_dir().join(format!("banctl-bench-nats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let mut nats = Command::new(nats_bin())
        .args(["-a", "10.7.0.1", "-p", "4222", "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Instant::now();
    while std::net::TcpStream::connect(NATS).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut figures = Vec::new();
    let peer_b = Peer::new(2);
    let a = Daemon::spawn("a", None, "");
    let b = Daemon::spawn("b", Some(&peer_b), "");
    a.wait_caught_up(Duration::from_secs(30));
    b.wait_caught_up(Duration::from_secs(30));

    // Latency and burst, seen from B's kernel.
    let (samples, burst) = peer_b.enter(|| {
        let mut fw = Firewall::open().unwrap();
        let mut mon = Monitor::open().unwrap();
        let mut samples = Vec::new();
        for i in 0..30u8 {
            let addr = IpAddr::from([10, 50, 0, i + 1]);
            let mut text = String::new();
            failures(addr, 3, &mut text);
            std::thread::sleep(Duration::from_millis(30));
            let start = Instant::now();
            common::append(&a.log(), &text);
            let took = until_committed(&mut mon, start, || {
                fw.list("web").unwrap().iter().any(|e| e.net.addr() == addr)
            });
            samples.push(took.as_secs_f64() * 1000.0);
        }
        let mut text = String::new();
        for i in 0..1000u32 {
            failures(
                IpAddr::from([10, 60, (i >> 8) as u8, i as u8]),
                3,
                &mut text,
            );
            let v6 = 0x2001_0db8_0060_0000_0000_0000_0000_0001u128 | (u128::from(i) << 16);
            failures(IpAddr::from(v6.to_be_bytes()), 3, &mut text);
        }
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        common::append(&a.log(), &text);
        let burst = until_settled(&mut mon, start, || fw.list("web").unwrap().len() >= 2030);
        (samples, burst)
    });
    let mut samples = samples;
    samples.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let note =
        "line appended on A -> element committed in B's kernel (B's own namespace), 30 samples";
    figures.push(figure(
        "fleet: ban latency A -> B p50",
        p50,
        "ms",
        "<= 5",
        Some(p50 <= 5.0),
        note,
    ));
    figures.push(figure(
        "fleet: ban latency A -> B p99",
        p99,
        "ms",
        "<= 20",
        Some(p99 <= 20.0),
        note,
    ));
    let ms = burst.as_secs_f64() * 1000.0;
    figures.push(figure(
        "fleet: burst of 2,000 bans on A -> all in B",
        ms,
        "ms",
        "<= 200",
        Some(ms <= 200.0),
        "6,000 lines in one write on A -> last commit in B's kernel",
    ));
    drop(b);
    drop(a);

    // Catch-up: 100,000 bans in the bucket, a new host.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seeded = runtime.block_on(seed(100_000));
    let peer_c = Peer::new(3);
    let start = Instant::now();
    if std::env::var_os("BANCTL_BENCH_LOG").is_some() {
        eprintln!("{} bench: starting host C", jiff::Timestamp::now());
    }
    // The seed made its 100,000 bans within seconds, far over the default cap per origin
    // per minute: a real fleet's 100,000 bans accumulate over days.
    let c = Daemon::spawn("c", Some(&peer_c), "max_per_minute = 1000000");
    c.wait_caught_up(Duration::from_secs(60));
    let took = start.elapsed().as_secs_f64();
    let held = peer_c.enter(|| Firewall::open().unwrap().list("web").unwrap().len());
    assert!(held >= seeded, "C holds {held} of {seeded}");
    figures.push(figure(
        "fleet: catch-up of 100,000 bans by a new host",
        took,
        "s",
        "<= 2",
        Some(took <= 2.0),
        &format!("daemon start -> fleet bans in its kernel ({held} elements checked)"),
    ));
    drop(c);

    let (fan_p50, fan_p99, subscribers) = runtime.block_on(fan_out(1000, 100));
    figures.push(figure(
        "fleet: fan-out to 1,000 hosts, p50",
        fan_p50,
        "ms",
        "-",
        None,
        &format!("{subscribers} KV watchers over 50 connections on one server, loopback; publish -> last watcher got it, 100 bans"),
    ));
    figures.push(figure(
        "fleet: fan-out to 1,000 hosts, p99",
        fan_p99,
        "ms",
        "-",
        None,
        "",
    ));

    for f in &figures {
        f.print();
    }
    common::save("fleet", &figures);
    let _ = nats.kill();
    let _ = nats.wait();
    let _ = std::fs::remove_dir_all(&store);
}

async fn bucket() -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(NATS).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_key_value("banctl").await.unwrap()
}

/// Puts `n` active bans of host `seed` into the bucket; returns `n`.
async fn seed(n: u32) -> usize {
    let kv = bucket().await;
    let mut acks = Vec::new();
    for i in 0..n {
        let net: banctl::addr::IpNet =
            IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]).into();
        let key = banctl::fleet::wire::ban_key("seed", "web", &net);
        let value = serde_json::json!({"v": 1, "jail": "web", "net": net.to_string(), "bantime_s": 3600, "count": 1, "reason": "bench"});
        acks.push(kv.put(key, value.to_string().into()));
        if acks.len() == 1000 {
            futures_util::future::try_join_all(acks.drain(..))
                .await
                .unwrap();
        }
    }
    futures_util::future::try_join_all(acks).await.unwrap();
    n as usize
}

/// `subscribers` watchers of the bucket over 50 connections; `bans` puts, one at a time: the
/// time from each put to its delivery to the last watcher.
async fn fan_out(subscribers: usize, bans: u32) -> (f64, f64, usize) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut connections = Vec::new();
    for _ in 0..50 {
        let client = async_nats::connect(NATS).await.unwrap();
        connections.push(
            async_nats::jetstream::new(client)
                .get_key_value("banctl")
                .await
                .unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for w in 0..subscribers {
        let kv = connections[w % connections.len()].clone();
        let tx = tx.clone();
        let mut watch = kv.watch("fan.>").await.unwrap();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let _ = tx.send((entry.revision, Instant::now()));
            }
        }));
    }
    let kv = bucket().await;
    let mut samples = Vec::new();
    for i in 0..bans {
        let start = Instant::now();
        let revision = kv
            .put(format!("fan.ban.web.{i}"), "{}".into())
            .await
            .unwrap();
        let mut got = 0;
        let mut last = start;
        while got < subscribers {
            let (rev, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if rev == revision {
                got += 1;
                last = last.max(at);
            }
        }
        samples.push((last - start).as_secs_f64() * 1000.0);
    }
    for t in tasks {
        t.abort();
    }
    samples.sort_by(f64::total_cmp);
    (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        subscribers,
    )
}
