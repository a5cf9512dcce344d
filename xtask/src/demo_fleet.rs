//! `cargo xtask demo fleet`: two web servers and an upstream proxy sharing bans over NATS
//! JetStream, each host its own network namespace, one NATS server in the namespace between
//! them. A brute force against web1 is dropped by web2 and by the proxy within milliseconds;
//! an unban on web2 lets the address in everywhere. Nothing on the host changes.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::{append, connects, step, verdict, wait_for};
use crate::sys;

const NATS: &str = "10.9.0.1:4222";
const ATTACKER: &str = "10.9.99.9";
const NEIGHBOUR: &str = "10.9.99.10";
const PORT: u16 = 2222;

/// Children killed and files removed when the demo ends, however it ends.
struct Cleanup {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            if child.kill().is_ok() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A host: its network namespace (held by a `sleep`), linked to the demo's namespace.
struct Host {
    name: &'static str,
    pid: String,
    addr: String,
    socket: PathBuf,
}

impl Host {
    fn cli(&self, banctl: &Path, args: &[&str]) -> Result<String> {
        let out = Command::new(banctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{}: banctl {args:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn target(&self) -> SocketAddr {
        format!("{}:{PORT}", self.addr).parse().expect("address")
    }
}

pub fn run() -> Result<()> {
    sys::ensure_packages()?;
    crate::cargo(&["build", "--quiet", "--package", "banctl", "--bin", "banctl"])?;
    let banctl = sys::workspace_root().join("target/debug/banctl");
    let nats = sys::nats_server()?;
    sys::become_root_in_user_namespace_unless_root()?;
    sys::enter_network_namespace()?;
    let dir = std::env::temp_dir().join(format!("banctl-demo-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dir: dir.clone(),
    };
    for a in ["10.9.0.1", ATTACKER, NEIGHBOUR] {
        ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
    }

    step(&format!(
        "a NATS server with JetStream on {NATS}: each host may publish under its own name only"
    ));
    let hosts = ["web1", "web2", "edge"];
    // Each host's rights, as `banctl nats-permissions HOST` prints them.
    let mut users = Vec::new();
    for h in hosts {
        let out = Command::new(&banctl)
            .args(["nats-permissions", h])
            .output()
            .context("banctl nats-permissions")?;
        let permissions = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        users.push(format!(
            "{{ user: \"{h}\", password: \"demo-{h}\", permissions: {permissions} }}"
        ));
    }
    let conf = format!(
        "listen: \"{NATS}\"\njetstream {{ store_dir: \"{}/nats\" }}\naccounts {{\n  FLEET {{\n    jetstream: enabled\n    users: [\n      {}\n    ]\n  }}\n}}\n",
        dir.display(),
        users.join(",\n      ")
    );
    std::fs::write(dir.join("nats.conf"), &conf)?;
    print!("{conf}");
    let server = Command::new(&nats)
        .arg("-c")
        .arg(dir.join("nats.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    cleanup.children.push(server);
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(NATS).is_ok()
    })
    .context("nats-server did not start")?;

    let mut started = Vec::new();
    for (n, name) in hosts.iter().enumerate() {
        let n = n + 1;
        let ns = Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .spawn()
            .context("unshare -n")?;
        let pid = ns.id().to_string();
        cleanup.children.push(ns);
        std::thread::sleep(Duration::from_millis(50));
        let (host_if, peer_if) = (format!("fleet{n}"), format!("fleet{n}-p"));
        let addr = format!("10.9.{n}.2");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &pid,
        ])?;
        ip(&["addr", "add", &format!("10.9.{n}.1/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| -> Result<()> {
            let mut full = vec!["-t", pid.as_str(), "-n", "ip"];
            full.extend_from_slice(args);
            crate::run(Command::new("nsenter").args(&full))
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["addr", "add", &format!("{addr}/24"), "dev", &peer_if])?;
        inside(&["link", "set", &peer_if, "up"])?;
        inside(&["route", "add", "default", "via", &format!("10.9.{n}.1")])?;
        listen_in(&pid, &format!("{addr}:{PORT}"))?;
        let host_dir = dir.join(name);
        std::fs::create_dir_all(&host_dir)?;
        let password = host_dir.join("nats.password");
        std::fs::write(&password, format!("demo-{name}\n"))?;
        let role = if *name == "edge" {
            "enforcer"
        } else {
            "member"
        };
        let jails = if role == "member" {
            format!(
                "[jails.sshd]\nfilter = \"sshd\"\nlogpath = [\"{}/auth.log\"]\nports = [{PORT}]\nmaxretry = 3\nbantime = \"1h\"\n",
                host_dir.display()
            )
        } else {
            "# An upstream proxy reads no logs: the fleet jail drops every fleet ban on\n\
             # every port, for local and forwarded traffic.\n"
                .to_owned()
        };
        std::fs::write(host_dir.join("auth.log"), "")?;
        let config = format!(
            "[daemon]\nsocket = \"{0}/banctl.sock\"\nstate_dir = \"{0}/state\"\n\n{jails}\n\
             [fleet]\nrole = \"{role}\"\nname = \"{name}\"\nservers = [\"nats://{NATS}\"]\n\
             user = \"{name}\"\npassword_file = \"{1}\"\n",
            host_dir.display(),
            password.display()
        );
        std::fs::write(host_dir.join("banctl.toml"), &config)?;
        step(&format!("{name} ({addr}): banctl daemon, role {role}"));
        print!("{config}");
        let daemon = Command::new("nsenter")
            .args(["-t", &pid, "-n"])
            .arg(&banctl)
            .args(["daemon", "--config"])
            .arg(host_dir.join("banctl.toml"))
            .env("BANCTL_LOG", "warn")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting banctl daemon")?;
        cleanup.children.push(daemon);
        started.push(Host {
            name,
            pid,
            addr,
            socket: host_dir.join("banctl.sock"),
        });
    }
    for h in &started {
        wait_for(Duration::from_secs(15), || {
            h.cli(&banctl, &["status", "--json"])
                .is_ok_and(|s| s.contains("\"caught_up\": true"))
        })
        .with_context(|| format!("{} did not join the fleet", h.name))?;
    }
    let [web1, web2, edge] = &started[..] else {
        bail!("three hosts")
    };
    for h in [web1, web2, edge] {
        println!(
            "connect from {ATTACKER} to {}: {}",
            h.name,
            verdict(connects(ATTACKER, h.target())?)
        );
    }

    step(&format!(
        "brute force against web1: 3 failed logins from {ATTACKER}"
    ));
    let lines: Vec<String> = (0..3)
        .map(|i| format!("Nov 30 10:00:0{i} web1 sshd[71{i}]: Failed password for root from {ATTACKER} port 4{i}022 ssh2"))
        .collect();
    for line in &lines {
        println!("  {line}");
    }
    let start = Instant::now();
    append(&dir.join("web1/auth.log"), &lines)?;
    for h in [web2, edge] {
        let jail = if h.name == "edge" { "fleet" } else { "sshd" };
        wait_for(Duration::from_secs(5), || {
            h.cli(&banctl, &["list", "--jail", jail])
                .is_ok_and(|o| o.contains(ATTACKER))
        })
        .with_context(|| format!("{} did not get web1's ban", h.name))?;
        println!(
            "{}: enforcing web1's ban {:.1} ms after the log line",
            h.name,
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
    for h in [web1, web2, edge] {
        step(&format!("banctl list on {}", h.name));
        print!("{}", h.cli(&banctl, &["list"])?);
    }
    step("banctl status on edge");
    print!("{}", edge.cli(&banctl, &["status"])?);
    step("nft list table inet banctl, inside edge's namespace");
    let nft = Command::new("nsenter")
        .args([
            "-t", &edge.pid, "-n", "nft", "list", "table", "inet", "banctl",
        ])
        .output()?;
    print!("{}", String::from_utf8_lossy(&nft.stdout));

    step("traffic proof");
    for h in [web1, web2, edge] {
        let attacker = connects(ATTACKER, h.target())?;
        let neighbour = connects(NEIGHBOUR, h.target())?;
        println!(
            "{}: from {ATTACKER} {}, from {NEIGHBOUR} {}",
            h.name,
            verdict(attacker),
            verdict(neighbour)
        );
        if attacker || !neighbour {
            bail!("{}: the fleet ban did not behave", h.name);
        }
    }

    step(&format!(
        "banctl unban {ATTACKER} on web2: lifted everywhere"
    ));
    print!("{}", web2.cli(&banctl, &["unban", ATTACKER])?);
    for h in [web1, edge] {
        wait_for(Duration::from_secs(5), || {
            connects(ATTACKER, h.target()).unwrap_or(false)
        })
        .with_context(|| format!("{} still drops {ATTACKER}", h.name))?;
        println!("{}: connect from {ATTACKER}: connected", h.name);
    }

    step("demo OK: stopping; the namespaces, the NATS server and their state vanish");
    drop(cleanup);
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    crate::run(Command::new("ip").args(args))
}

/// A TCP listener on `addr` inside the namespace of process `pid`, accepting forever.
fn listen_in(pid: &str, addr: &str) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let addr = addr.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let bound = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(anyhow::Error::from)
            .and_then(|()| TcpListener::bind(&addr).map_err(anyhow::Error::from));
        match bound {
            Ok(listener) => {
                let _ = tx.send(Ok(()));
                for conn in listener.incoming() {
                    drop(conn);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv()?
}
