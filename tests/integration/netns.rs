//! Throw-away network namespaces for tests that touch nftables or send traffic.
//!
//! Each test calls [`enter`] first: the *test thread* moves into a fresh network namespace
//! (namespaces are per thread on Linux), and every process it spawns inherits it. The host's
//! ruleset is never touched. Without root the test is skipped loudly, or fails when
//! `BANCTL_REQUIRE_NETNS=1` (set by `cargo xtask test`, and so in CI).

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};
use std::process::Command;
use std::time::Duration;

/// Moves this thread into a new network namespace with `lo` up. `None` means "skip".
#[must_use]
pub fn enter(test: &str) -> Option<()> {
    if !nix::unistd::geteuid().is_root() {
        let msg = format!(
            "SKIPPED {test}: needs root for a network namespace (run `sudo cargo xtask test`)"
        );
        if std::env::var_os("BANCTL_REQUIRE_NETNS").is_some() {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return None;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    ip(&["link", "set", "lo", "up"]);
    Some(())
}

/// Runs `ip` (iproute2) in the current namespace; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs a command to completion, returning stdout; panics on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft list ...` as text, for tests that show what an admin sees.
pub fn nft(args: &[&str]) -> String {
    run("nft", args)
}

/// Adds IPv6 test addresses to `lo` (inside the namespace only).
pub fn add_v6_addrs(addrs: &[&str]) {
    for a in addrs {
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{a}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
    }
}

/// A TCP listener that accepts in the background forever.
pub fn listen(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).expect("bind listener");
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    local
}

/// Whether a TCP connection from `source` (an address of this namespace) to `target`
/// completes within 300 ms. A dropped SYN shows up as a timeout.
pub fn connects(source: &str, target: SocketAddr) -> bool {
    let source: std::net::IpAddr = source.parse().expect("source address");
    let sock = Socket::new(Domain::for_address(target), Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(source, 0).into())
        .expect("bind source address");
    sock.connect_timeout(&target.into(), Duration::from_millis(300))
        .is_ok()
}

/// Waits up to `timeout` for `check` to hold.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another network namespace, kept alive by a `sleep` child, for "containers" and "clients".
pub struct Peer {
    child: std::process::Child,
}

impl Peer {
    pub fn new() -> Peer {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .spawn()
            .expect("unshare -n sleep");
        let peer = Peer { child };
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = format!("/proc/{}/ns/net", peer.child.id());
        assert!(
            eventually(Duration::from_secs(5), || std::fs::read_link(&theirs)
                .is_ok_and(|l| l != ours)),
            "peer namespace did not appear"
        );
        peer.ip(&["link", "set", "lo", "up"]);
        peer
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Runs `ip` inside the peer namespace.
    pub fn ip(&self, args: &[&str]) {
        let pid = self.pid();
        let mut full = vec!["-t", pid.as_str(), "-n", "ip"];
        full.extend_from_slice(args);
        run("nsenter", &full);
    }

    /// Runs `f` on a thread inside the peer namespace (sockets made there live there).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.child.id()))
            .expect("open peer netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in peer namespace")
        })
    }

    /// Links the peer to this namespace with a veth pair and gives both ends addresses; the
    /// peer routes everything through this namespace.
    pub fn link(&self, host_if: &str, host_addr: &str, peer_addrs: &[&str]) {
        let peer_if = format!("{host_if}-p");
        ip(&[
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "netns",
            &self.pid(),
        ]);
        ip(&["addr", "add", host_addr, "dev", host_if]);
        ip(&["link", "set", host_if, "up"]);
        for a in peer_addrs {
            self.ip(&["addr", "add", a, "dev", &peer_if]);
        }
        self.ip(&["link", "set", &peer_if, "up"]);
        let gateway = host_addr.split('/').next().unwrap();
        self.ip(&["route", "add", "default", "via", gateway]);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Applies an nft script (test scaffolding such as a NAT table, never bans).
pub fn nft_script(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -f failed for:\n{script}"
    );
}
