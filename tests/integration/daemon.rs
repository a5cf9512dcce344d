//! The real `banctl daemon` binary, driven through its log files and its CLI, in a namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use banctl::firewall::Firewall;

use crate::netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_banctl");

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("banctl-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon, killed on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub scratch: Scratch,
    /// What the daemon is started under (`nsenter …`), again on a restart.
    wrapper: Vec<String>,
}

impl Daemon {
    /// Writes `config` (with `{dir}` replaced by the scratch directory) and starts the daemon.
    pub fn start(test: &str, config: &str) -> Daemon {
        Daemon::start_under(test, config, &[])
    }

    /// Like [`Daemon::start`], the daemon started by `wrapper` (`setpriv …`) when not empty.
    pub fn start_under(test: &str, config: &str, wrapper: &[&str]) -> Daemon {
        Daemon::start_in(test, config, wrapper, None)
    }

    /// Like [`Daemon::start`], with the state store in `state_dir`.
    pub fn start_with_state(test: &str, config: &str, state_dir: &Path) -> Daemon {
        Daemon::start_in(test, config, &[], Some(state_dir))
    }

    fn start_in(test: &str, config: &str, wrapper: &[&str], state: Option<&Path>) -> Daemon {
        let scratch = Scratch::new(test);
        let dir = scratch.0.display().to_string();
        let socket = scratch.path("banctl.sock");
        let state = state.map_or(format!("{dir}/state"), |p| p.display().to_string());
        let config = format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{state}\"\n\n{}",
            socket.display(),
            config.replace("{dir}", &dir)
        );
        let path = scratch.write("banctl.toml", &config);
        let mut daemon = Daemon {
            child: spawn_under(&path, &[], wrapper),
            socket,
            scratch,
            wrapper: wrapper.iter().map(|w| (*w).to_owned()).collect(),
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        assert!(
            netns::eventually(Duration::from_secs(10), || self
                .cli(&["status"])
                .status
                .success()),
            "daemon did not come up"
        );
    }

    /// Starts the daemon again with `env`, its log going to the file returned.
    pub fn restart_logging(&mut self, env: &[(&str, &str)]) -> PathBuf {
        self.stop();
        let log = self.scratch.path("daemon.log");
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        self.child = spawn_logging(&self.scratch.path("banctl.toml"), env, &wrapper, Some(&log));
        self.wait_ready();
        log
    }

    /// Starts the daemon again (after [`Daemon::stop`]) with the same configuration and state.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
        self.wait_ready();
    }

    /// Like [`Daemon::restart`] with extra environment variables, without waiting for it.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.stop();
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        self.child = spawn_under(&self.scratch.path("banctl.toml"), env, &wrapper);
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run banctl")
    }

    /// Runs the CLI and returns stdout, asserting success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "banctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Addresses `banctl list --json` shows for a jail.
    pub fn banned(&self, jail: &str) -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ok(&["list", "--json", "--jail", jail])).unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits (up to 5 s) until `addr` is among `jail`'s bans.
    pub fn wait_banned(&self, jail: &str, addr: &str) {
        assert!(
            netns::eventually(Duration::from_secs(5), || self
                .banned(jail)
                .iter()
                .any(|b| b == addr)),
            "{addr} not banned in {jail}: {:?}",
            self.banned(jail)
        );
    }

    pub fn append(&self, log: &str, lines: &[String]) {
        append(&self.scratch.path(log), lines);
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Kills the daemon with SIGKILL: no clean-up of any kind.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_under(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Child {
    spawn_logging(config, env, wrapper, None)
}

fn spawn_logging(
    config: &Path,
    env: &[(&str, &str)],
    wrapper: &[&str],
    log: Option<&Path>,
) -> Child {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    command
        .args(["daemon", "--config"])
        .arg(config)
        .env("BANCTL_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::inherit())
        .stderr(match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        })
        .spawn()
        .expect("start banctl daemon")
}

/// `banctl check-config PATH`.
pub fn check_config(path: &Path) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run banctl check-config")
}

/// Appends lines in one write, as a logging daemon would.
pub fn append(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `n` failure lines of `addr`, dated now (as a logger writes them).
pub fn failures(addr: &str, n: usize) -> Vec<String> {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    (0..n)
        .map(|i| format!("{now} app: login failed for admin from {addr} port 4{i}"))
        .collect()
}

/// The failregex that matches [`failures`].
pub const FAILREGEX: &str = r"^\S+ app: login failed for .* from <HOST> port \d+$";

/// A jail `web` guarding `port`: 3 [`failures`] in `{dir}/web.log` within 10 minutes ban for an
/// hour; `extra` follows (more keys of the jail, more jails, notifiers).
pub fn web_jail(port: u16, extra: &str) -> String {
    format!(
        r#"
[defaults]
maxretry = 3
findtime = "10m"
ports = [{port}]
ignoreself = false   # these tests attack from 127.0.0.x inside their own namespace

[jails.web]
failregex = ['{FAILREGEX}']
logpath = ["{{dir}}/web.log"]
bantime = "1h"
{extra}
"#
    )
}

/// [`web_jail`] plus a `short` jail whose bans last 2 s, both banning single addresses (the
/// neighbours share the attacker's /64).
fn config(port: u16) -> String {
    let single = "ban_prefix = { v4 = 32, v6 = 128 }";
    web_jail(
        port,
        &format!(
            "{single}\n\n[jails.short]\nfailregex = ['{FAILREGEX}']\n\
             logpath = [\"{{dir}}/short.log\"]\nbantime = \"2s\"\n{single}\n"
        ),
    )
}

#[test]
fn ban_unban_and_expiry_with_traffic_ipv4() {
    let Some(()) = netns::enter("ban_unban_and_expiry_with_traffic_ipv4") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let daemon = Daemon::start("e2e-v4", &config(target.port()));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    std::fs::write(daemon.scratch.path("short.log"), "").unwrap();
    assert!(netns::connects("127.0.0.2", target));

    // Two failures of 127.0.0.3 stay below maxretry; three of 127.0.0.2 reach it.
    let mut lines = failures("127.0.0.3", 2);
    lines.extend(failures("127.0.0.2", 3));
    daemon.append("web.log", &lines);
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("web")
            == ["127.0.0.2"]),
        "127.0.0.2 not banned: {:?}",
        daemon.banned("web")
    );

    // Read back over netlink: one element, with the jail's bantime as its timeout.
    let elements = Firewall::open().unwrap().list("web").unwrap();
    assert_eq!(elements.len(), 1);
    assert_eq!(elements[0].timeout, Some(Duration::from_secs(3600)));
    // And as an admin sees it.
    let set = netns::nft(&["list", "set", "inet", "banctl", "web_v4"]);
    println!("{set}");
    assert!(set.contains("127.0.0.2 timeout 1h expires"), "{set}");

    assert!(
        !netns::connects("127.0.0.2", target),
        "banned 127.0.0.2 connected"
    );
    assert!(
        netns::connects("127.0.0.3", target),
        "127.0.0.3 was dropped"
    );

    let out = daemon.ok(&["unban", "127.0.0.2"]);
    assert_eq!(out, "unbanned 127.0.0.2 from jail web\n");
    assert!(
        netns::connects("127.0.0.2", target),
        "still dropped after unban"
    );
    let again = daemon.cli(&["unban", "127.0.0.2"]);
    assert_eq!(again.status.code(), Some(banctl::cli::exit::NOT_FOUND));

    // A 2 s ban expires in the kernel by itself.
    daemon.append("short.log", &failures("127.0.0.2", 3));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("short")
        == ["127.0.0.2"]));
    assert!(!netns::connects("127.0.0.2", target));
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon.banned("short").is_empty()),
        "2 s ban did not expire"
    );
    assert!(netns::connects("127.0.0.2", target), "dropped after expiry");

    // The refused connect above sent at least one SYN into the jail's counter.
    let status: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["status", "web", "--json"])).unwrap();
    assert!(
        status[0]["dropped_packets"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status[0]["active_bans"], 0, "{status}");
}

#[test]
fn ban_unban_and_expiry_with_traffic_ipv6() {
    let Some(()) = netns::enter("ban_unban_and_expiry_with_traffic_ipv6") else {
        return;
    };
    netns::add_v6_addrs(&["2001:db8::1", "2001:db8::2", "2001:db8::3"]);
    let target = netns::listen("[2001:db8::1]:0");
    let daemon = Daemon::start("e2e-v6", &config(target.port()));
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    std::fs::write(daemon.scratch.path("short.log"), "").unwrap();

    daemon.append("web.log", &failures("2001:db8::2", 3));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("web")
        == ["2001:db8::2"]));
    let set = netns::nft(&["list", "set", "inet", "banctl", "web_v6"]);
    assert!(set.contains("2001:db8::2 timeout 1h expires"), "{set}");
    assert!(
        !netns::connects("2001:db8::2", target),
        "banned 2001:db8::2 connected"
    );
    assert!(
        netns::connects("2001:db8::3", target),
        "2001:db8::3 was dropped"
    );

    daemon.ok(&["unban", "2001:db8::2", "--jail", "web"]);
    assert!(
        netns::connects("2001:db8::2", target),
        "still dropped after unban"
    );

    daemon.append("short.log", &failures("[2001:db8::2]", 3));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("short")
        == ["2001:db8::2"]));
    assert!(!netns::connects("2001:db8::2", target));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("short")
        .is_empty()));
    assert!(
        netns::connects("2001:db8::2", target),
        "dropped after expiry"
    );
}

#[test]
fn manual_ban_refuses_ignored_addresses() {
    let Some(()) = netns::enter("manual_ban_refuses_ignored_addresses") else {
        return;
    };
    let daemon = Daemon::start(
        "manual",
        "[jails.sshd]\nfilter = \"sshd\"\nlogpath = \"{dir}/auth.log\"\nignoreip = [\"198.51.100.0/24\"]\n",
    );
    let refused = daemon.cli(&["ban", "sshd", "198.51.100.7"]);
    assert_eq!(refused.status.code(), Some(banctl::cli::exit::REFUSED));
    let refused = daemon.cli(&["ban", "sshd", "127.0.0.1"]);
    assert_eq!(refused.status.code(), Some(banctl::cli::exit::REFUSED));
    assert_eq!(
        daemon.ok(&["ban", "sshd", "203.0.113.0/24", "--time", "1d"]),
        "banned 203.0.113.0/24 in jail sshd for 1d\n"
    );
    assert_eq!(daemon.banned("sshd"), ["203.0.113.0/24"]);
    // Unbanning an address inside the prefix lifts the prefix ban.
    assert_eq!(
        daemon.ok(&["unban", "203.0.113.9"]),
        "unbanned 203.0.113.0/24 from jail sshd\n"
    );
    let unknown = daemon.cli(&["ban", "nope", "203.0.113.1"]);
    assert_eq!(unknown.status.code(), Some(banctl::cli::exit::NOT_FOUND));
}

#[test]
fn bad_config_reports_every_error_and_touches_no_ruleset() {
    let Some(()) = netns::enter("bad_config_reports_every_error_and_touches_no_ruleset") else {
        return;
    };
    let scratch = Scratch::new("badconfig");
    let path = scratch.write(
        "banctl.toml",
        r#"[jails.web]
logpath = ["/var/log/web.log"]
failregex = ['^login failed for \S+$']
bantime = "2 fortnights"
ignoreip = ["10.0.0.0/99"]
colour = "blue"
"#,
    );
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(banctl::cli::exit::CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:3: jails.web.failregex[0]: pattern has no <HOST>"),
        format!("{file}:4: jails.web.bantime: \"2 fortnights\" is not a duration"),
        format!("{file}:5: jails.web.ignoreip[0]: prefix length 99 is out of range"),
        format!("{file}:6: jails.web.colour: unknown key"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert_eq!(
        netns::nft(&["list", "ruleset"]).trim(),
        "",
        "a bad config touched the ruleset"
    );
}

#[test]
fn ipv6_prefix_ban_with_traffic_and_ignoreip_inside_the_prefix() {
    let Some(()) = netns::enter("ipv6_prefix_ban_with_traffic_and_ignoreip_inside_the_prefix")
    else {
        return;
    };
    netns::add_v6_addrs(&[
        "2001:db8:ff::1",
        "2001:db8:1::5",
        "2001:db8:1::6",
        "2001:db8:2::5",
        "2001:db8:3::5",
    ]);
    let target = netns::listen("[2001:db8:ff::1]:0");
    let daemon = Daemon::start(
        "prefix",
        &format!(
            r#"
[jails.web]
failregex = ['^\S+ app: login failed for .* from <HOST> port \d+$']
logpath = ["{{dir}}/web.log"]
ports = [{}]
maxretry = 3
ban_prefix = {{ v4 = 32, v6 = 64 }}
ignoreip = ["2001:db8:3::77"]
ignoreself = false   # the "attackers" are addresses of this test's own namespace
"#,
            target.port()
        ),
    );
    std::fs::write(daemon.scratch.path("web.log"), "").unwrap();
    daemon.append("web.log", &failures("2001:db8:1::5", 3));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("web")
        == ["2001:db8:1::/64"]));
    assert!(
        !netns::connects("2001:db8:1::5", target),
        "the attacker connected"
    );
    assert!(
        !netns::connects("2001:db8:1::6", target),
        "a neighbour in the same /64 connected"
    );
    assert!(
        netns::connects("2001:db8:2::5", target),
        "another /64 was dropped"
    );
    // Prefixes are kept in the jail's interval set, beside the address set.
    let set = netns::nft(&["list", "set", "inet", "banctl", "web_v6_nets"]);
    assert!(set.contains("2001:db8:1::/64 timeout"), "{set}");

    // The /64 of 2001:db8:3::5 holds an ignoreip address: only the attacker itself is banned.
    daemon.append("web.log", &failures("2001:db8:3::5", 3));
    assert!(netns::eventually(Duration::from_secs(5), || daemon
        .banned("web")
        .contains(&"2001:db8:3::5".to_owned())));
    assert_eq!(daemon.banned("web"), ["2001:db8:1::/64", "2001:db8:3::5"]);

    // Unbanning any address inside the prefix lifts the prefix ban.
    assert_eq!(
        daemon.ok(&["unban", "2001:db8:1::6"]),
        "unbanned 2001:db8:1::/64 from jail web\n"
    );
    assert!(netns::connects("2001:db8:1::5", target));

    // Two addresses of one /64 reaching maxretry in the same write ask for the same ban: one
    // element, no failed batch.
    let mut lines = failures("2001:db8:1::5", 3);
    lines.extend(failures("2001:db8:1::6", 3));
    daemon.append("web.log", &lines);
    assert!(
        netns::eventually(Duration::from_secs(5), || daemon
            .banned("web")
            .contains(&"2001:db8:1::/64".to_owned())),
        "a round with the same prefix twice was not banned"
    );
    assert!(!netns::connects("2001:db8:1::6", target));
    // Broader than min_prefix (v6 /32 by default): refused.
    let refused = daemon.cli(&["ban", "web", "2001:db8::/16"]);
    assert_eq!(refused.status.code(), Some(banctl::cli::exit::REFUSED));
}

#[test]
fn unban_all_and_filters() {
    let Some(()) = netns::enter("unban_all_and_filters") else {
        return;
    };
    let daemon = Daemon::start(
        "unbanall",
        "[jails.a]\nfilter = \"sshd\"\nlogpath = \"{dir}/a.log\"\n\n[jails.b]\nfilter = \"sshd\"\nlogpath = \"{dir}/b.log\"\n",
    );
    for (jail, addr) in [("a", "192.0.2.1"), ("a", "192.0.2.2"), ("b", "192.0.2.3")] {
        daemon.ok(&["ban", jail, addr]);
    }
    assert_eq!(
        daemon.ok(&["unban", "--all", "--jail", "a"]),
        "unbanned 192.0.2.1 from jail a\nunbanned 192.0.2.2 from jail a\n"
    );
    assert_eq!(daemon.banned("b"), ["192.0.2.3"]);
    assert_eq!(
        daemon.ok(&["unban", "--all"]),
        "unbanned 192.0.2.3 from jail b\n"
    );
    assert_eq!(daemon.ok(&["unban", "--all"]), "no active bans\n");
    let usage = daemon.cli(&["unban"]);
    assert_eq!(usage.status.code(), Some(banctl::cli::exit::USAGE));
    let filters = daemon.ok(&["filters"]);
    assert!(filters.lines().count() >= 40, "{filters}");
    assert!(
        filters
            .lines()
            .any(|l| l.starts_with("sshd               OpenSSH server")
                && l.ends_with(" [mode=aggressive|ddos]")),
        "{filters}"
    );
}

/// A failure that names a host, not an address, is banned only in a jail with
/// `usedns = "yes"`: the name is resolved off the loop and each address counts the failure.
/// "localhost" resolves from /etc/hosts, without any network.
#[test]
fn host_names_are_banned_only_with_usedns_yes() {
    let Some(()) = netns::enter("host_names_are_banned_only_with_usedns_yes") else {
        return;
    };
    let target = netns::listen("127.0.0.1:0");
    let jail = |name: &str, extra: &str| {
        format!(
            "[jails.{name}]\nlogpath = [\"{{dir}}/{name}.log\"]\n{extra}\n\
             [jails.{name}.fail2ban_filter]\nfailregex = ['^auth failed from <HOST>$']\n"
        )
    };
    let config = format!(
        "[defaults]\nmaxretry = 2\nports = [{}]\nignoreself = false\n\
         ban_prefix = {{ v4 = 32, v6 = 128 }}\n\n{}\n{}",
        target.port(),
        jail("named", "usedns = \"yes\""),
        jail("quiet", "")
    );
    let daemon = Daemon::start("usedns", &config);
    let lines = vec!["auth failed from localhost".to_owned(); 3];
    daemon.append("quiet.log", &lines);
    daemon.append("named.log", &lines[..2]);
    daemon.wait_banned("named", "127.0.0.1");
    assert!(!netns::connects("127.0.0.1", target), "127.0.0.1 is banned");
    assert!(netns::connects("127.0.0.2", target), "127.0.0.2 is not");
    assert!(
        daemon.banned("quiet").is_empty(),
        "{:?}",
        daemon.banned("quiet")
    );
}
