//! `cargo xtask demo`: the real daemon against a simulated SSH brute force, in a throw-away
//! network namespace. Nothing on the host changes; the namespace dies with this process.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::sys;

const SSH_PORT: u16 = 2222;
const ATTACKER: &str = "127.0.0.2";
const NEIGHBOUR: &str = "127.0.0.3";

struct Cleanup {
    daemon: Option<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // The daemon is ours and must not outlive the demo; kill errors mean it is gone.
            if child.kill().is_ok() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

pub fn run() -> Result<()> {
    sys::ensure_packages()?;
    crate::cargo(&["build", "--quiet", "--package", "banctl", "--bin", "banctl"])?;
    let banctl = sys::workspace_root().join("target/debug/banctl");
    sys::become_root_in_user_namespace_unless_root()?;
    sys::enter_network_namespace()?;

    let dir = std::env::temp_dir().join(format!("banctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cleanup = Cleanup {
        daemon: None,
        dir: dir.clone(),
    };
    let log = dir.join("auth.log");
    let socket = dir.join("banctl.sock");
    std::fs::write(&log, "")?;
    let config = dir.join("banctl.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
socket = "{socket}"
state_dir = "{dir}/state"

[jails.sshd]
filter = "sshd"
logpath = ["{log}"]
ports = [{SSH_PORT}]
maxretry = 3
findtime = "10m"
bantime = "1h"
ignoreself = false   # the demo's attacker is 127.0.0.2 inside its own namespace
"#,
            socket = socket.display(),
            dir = dir.display(),
            log = log.display()
        ),
    )?;

    step(&format!(
        "an \"sshd\" listening on 127.0.0.1:{SSH_PORT} inside a fresh network namespace"
    ));
    let target = listen(SSH_PORT)?;
    println!(
        "connect from {ATTACKER}: {}",
        verdict(connects(ATTACKER, target)?)
    );

    step("start the real daemon: banctl daemon --config banctl.toml");
    let daemon = Command::new(&banctl)
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting banctl daemon")?;
    cleanup.daemon = Some(daemon);
    let cli = |args: &[&str]| cli(&banctl, &socket, args);
    wait_for(Duration::from_secs(10), || cli(&["status"]).is_ok())
        .context("the daemon did not start")?;

    step(&format!(
        "simulated attack: 5 failed logins from {ATTACKER}, 1 success from {NEIGHBOUR}"
    ));
    let mut lines: Vec<String> = (0..5)
        .map(|i| {
            format!("Nov 21 10:00:0{i} demo sshd[4{i}1]: Failed password for invalid user admin from {ATTACKER} port 5{i}022 ssh2")
        })
        .collect();
    lines.push(format!(
        "Nov 21 10:00:09 demo sshd[499]: Accepted publickey for alice from {NEIGHBOUR} port 50999 ssh2: ED25519 SHA256:x"
    ));
    append(&log, &lines)?;
    for line in &lines {
        println!("  {line}");
    }
    let started = Instant::now();
    wait_for(Duration::from_secs(5), || {
        cli(&["list", "--json"]).is_ok_and(|o| o.contains(ATTACKER))
    })
    .context("the attacker was not banned")?;
    println!(
        "banned after {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    step("banctl list");
    print!("{}", cli(&["list"])?);
    step("banctl status");
    print!("{}", cli(&["status"])?);
    step("nft list table inet banctl");
    let nft = Command::new("nft")
        .args(["list", "table", "inet", "banctl"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&nft.stdout));

    step("traffic proof");
    let attacker = connects(ATTACKER, target)?;
    let neighbour = connects(NEIGHBOUR, target)?;
    println!("connect from {ATTACKER}: {}", verdict(attacker));
    println!("connect from {NEIGHBOUR}: {}", verdict(neighbour));
    if attacker || !neighbour {
        bail!(
            "the ban did not behave: attacker connected={attacker}, neighbour connected={neighbour}"
        );
    }

    step(&format!("banctl unban {ATTACKER}"));
    print!("{}", cli(&["unban", ATTACKER])?);
    let after = connects(ATTACKER, target)?;
    println!("connect from {ATTACKER}: {}", verdict(after));
    if !after {
        bail!("{ATTACKER} is still dropped after unban");
    }

    step("demo OK: stopping the daemon; the namespace and its ruleset vanish with this process");
    drop(cleanup);
    Ok(())
}

/// `banctl --socket SOCKET ARGS…`: its output, or its error.
pub fn cli(banctl: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(banctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("banctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn verdict(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "DROPPED (timed out)"
    }
}

fn listen(port: u16) -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).context("listening")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Ok(addr)
}

pub fn connects(source: &str, target: SocketAddr) -> Result<bool> {
    let source: std::net::IpAddr = source.parse()?;
    let sock = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    Ok(sock
        .connect_timeout(&target.into(), Duration::from_millis(500))
        .is_ok())
}

pub fn append(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())?;
    Ok(())
}

pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
