//! A NATS server with JetStream for fleet tests: Debian's `nats-server`, started by the test
//! in a namespace the test made, with one user per host allowed to publish only under its
//! own name (the configuration the README shows). Never a system service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::daemon::Scratch;
use crate::netns;

/// `BANCTL_NATS_SERVER` (set by `cargo xtask test`), else `nats-server` from the PATH.
fn bin() -> String {
    std::env::var("BANCTL_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned())
}

/// Whether `nats-server` can run here; without it the test is skipped loudly, or fails when
/// `BANCTL_REQUIRE_NATS=1` (set by `cargo xtask test`, and so in CI).
#[must_use]
pub fn available(test: &str) -> bool {
    let found = Command::new(bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let msg = format!("SKIPPED {test}: needs nats-server (cargo xtask test unpacks it)");
        if std::env::var_os("BANCTL_REQUIRE_NATS").is_some() {
            panic!("{msg}");
        }
        eprintln!("{msg}");
    }
    found
}

/// A running server, killed on drop; [`Nats::stop`] and [`Nats::start`] keep its store.
pub struct Nats {
    child: Option<Child>,
    config: PathBuf,
    pub listen: String,
}

impl Nats {
    /// Starts a server on `listen` (an address of this namespace) with users `hosts`, each
    /// with password `pw-HOST`.
    pub fn start_new(scratch: &Scratch, listen: &str, hosts: &[&str]) -> Nats {
        Nats::start_member(scratch, listen, hosts, None)
    }

    /// A cluster of servers on `listens` (port 4222 for clients, 6222 between servers),
    /// JetStream on each; started together, as the cluster needs its peers to elect leaders.
    pub fn start_cluster(scratch: &Scratch, listens: &[&str], hosts: &[&str]) -> Vec<Nats> {
        let mut servers: Vec<Nats> = listens
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let routes: Vec<String> = listens
                    .iter()
                    .filter(|other| *other != ip)
                    .map(|other| format!("\"nats-route://{other}:6222\""))
                    .collect();
                let cluster = format!(
                    "server_name: \"n{i}\"\ncluster {{ name: \"banctl\", listen: \"{ip}:6222\", routes: [{}] }}\n",
                    routes.join(", ")
                );
                Nats::configure(scratch, &format!("{ip}:4222"), hosts, Some((i, &cluster)))
            })
            .collect();
        for s in &mut servers {
            s.spawn();
        }
        for s in &mut servers {
            s.wait_listening();
        }
        servers
    }

    fn start_member(
        scratch: &Scratch,
        listen: &str,
        hosts: &[&str],
        cluster: Option<(usize, &str)>,
    ) -> Nats {
        let mut nats = Nats::configure(scratch, listen, hosts, cluster);
        nats.start();
        nats
    }

    fn configure(
        scratch: &Scratch,
        listen: &str,
        hosts: &[&str],
        cluster: Option<(usize, &str)>,
    ) -> Nats {
        let users: Vec<String> = hosts
            .iter()
            .map(|h| {
                format!(
                    "{{ user: \"{h}\", password: \"pw-{h}\", permissions: {} }}",
                    banctl::fleet::wire::server_permissions(h, "banctl")
                )
            })
            .collect();
        let n = cluster.map_or(0, |(i, _)| i);
        let store = scratch.path(&format!("nats-store-{n}"));
        let config = format!(
            "listen: \"{listen}\"\n{}jetstream {{ store_dir: \"{}\" }}\n\
             accounts {{\n  FLEET {{\n    jetstream: enabled\n    users: [\n      {}\n    ]\n  }}\n}}\n",
            cluster.map_or("", |(_, c)| c),
            store.display(),
            users.join(",\n      ")
        );
        let config = scratch.write(&format!("nats-{n}.conf"), &config);
        Nats {
            child: None,
            config,
            listen: listen.to_owned(),
        }
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_listening();
    }

    fn spawn(&mut self) {
        let log = self.config.with_extension("log");
        let child = Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    fn wait_listening(&self) {
        let addr: std::net::SocketAddr = self.listen.parse().unwrap();
        assert!(
            netns::eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }),
            "nats-server did not come up on {addr}"
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.listen)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `[fleet]` section of host `host` (servers `urls`, `extra` keys), its password
/// written in `dir`.
pub fn fleet_section(dir: &Path, host: &str, role: &str, urls: &[String], extra: &str) -> String {
    let password = dir.join(format!("{host}.password"));
    std::fs::write(&password, format!("pw-{host}\n")).unwrap();
    let servers: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[fleet]\nrole = \"{role}\"\nname = \"{host}\"\nservers = [{}]\nuser = \"{host}\"\n\
         password_file = \"{}\"\n{extra}\n",
        servers.join(", "),
        password.display()
    )
}
