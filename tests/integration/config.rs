//! The shipped example configuration, checked the way users will use it.

use std::path::Path;
use std::process::Command;

use banctl::config::Config;

use crate::daemon::BIN;

fn example() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/banctl.toml"))
        .expect("etc/banctl.toml is valid")
}

#[test]
fn example_config_passes_check_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/banctl.toml");
    let out = crate::daemon::check_config(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": OK, 2 enabled jail(s)\n"));
}

#[test]
fn example_jellyfin_jail() {
    let config = example();
    let jail = config.jails.iter().find(|j| j.name == "jellyfin").unwrap();
    assert_eq!((jail.maxretry, jail.findtime.as_secs()), (3, 12 * 3600));
    let ports: Vec<String> = jail.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ports, ["80", "443", "8096", "8920"]);
    let host = |line: &str| jail.filter.find(line).map(|h| h.addr.to_string());
    let prefix = "[2026-11-21 10:00:00.000 +01:00] [INF] [42] Jellyfin.Server.Implementations.Users.UserManager:";
    assert_eq!(
        host(&format!(
            r#"{prefix} Authentication request for "admin" has been denied (IP: "203.0.113.5")."#
        ))
        .as_deref(),
        Some("203.0.113.5")
    );
    assert_eq!(
        host(&format!(
            r#"{prefix} Authentication request for "admin" has been denied (IP: "2001:db8::5")."#
        ))
        .as_deref(),
        Some("2001:db8::5")
    );
    // The user name is attacker-controlled: it must not supply the address.
    let hostile = format!(
        r#"{prefix} Authentication request for "x" has been denied (IP: "198.51.100.9")." has been denied (IP: "203.0.113.5")."#
    );
    assert_eq!(host(&hostile).as_deref(), Some("203.0.113.5"));
    assert_eq!(
        host(&format!(
            r#"{prefix} Authentication request for "admin" has succeeded"#
        )),
        None
    );
}

#[test]
fn check_config_exit_code_and_messages() {
    let dir = crate::daemon::Scratch::new("check-config");
    let path = dir.write(
        "bad.toml",
        "[jails.x]\nfilter = \"sshd\"\nlogpath = \"/x\"\nmaxretry = 0\n",
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(banctl::cli::exit::CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:4: jails.x.maxretry: 0 is not a count",
            path.display()
        )),
        "{stderr}"
    );
}

/// Every client command finds the daemon's socket in the configuration file (`--config`,
/// `BANCTL_CONFIG`), so a changed `[daemon] socket` does not make the daemon look down;
/// `--socket` and `BANCTL_SOCKET` still win.
#[test]
fn client_commands_find_the_socket_in_the_configuration() {
    use crate::daemon::{Daemon, web_jail};
    let Some(()) = crate::netns::enter("client_commands_find_the_socket") else {
        return;
    };
    let daemon = Daemon::start("socket-from-config", &web_jail(2222, ""));
    let config = daemon.scratch.path("banctl.toml");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("BANCTL_SOCKET")
            .env_remove("BANCTL_CONFIG")
            .envs(env.iter().copied())
            .args(args);
        cmd.output().unwrap()
    };
    let config_arg = config.display().to_string();
    for (args, env) in [
        (vec!["--config", config_arg.as_str(), "status"], vec![]),
        (vec!["list", "-c", config_arg.as_str()], vec![]),
        (vec!["list"], vec![("BANCTL_CONFIG", config_arg.as_str())]),
    ] {
        let out = run(&args, &env);
        assert!(
            out.status.success(),
            "{args:?} {env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).is_empty(),
            "{args:?}: read from the kernel?"
        );
    }
    // An explicit socket wins over the configuration's.
    let out = run(
        &[
            "--config",
            config_arg.as_str(),
            "--socket",
            "/nonexistent.sock",
            "status",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(banctl::cli::exit::UNAVAILABLE));
    // `check-config` checks --config's file when given no path.
    let out = run(&["--config", config_arg.as_str(), "check-config"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&config_arg));
}

/// A missing or mistyped log path is valid but will not work yet: `check-config`, the daemon
/// and a reload warn with the jail's name; `banctl status` shows each source's state; a
/// relative path is an error.
#[test]
fn missing_log_paths_are_warned_about_and_shown_in_status() {
    use crate::daemon::{Daemon, Scratch, failures, web_jail};
    let Some(()) = crate::netns::enter("missing_log_paths") else {
        return;
    };
    let scratch = Scratch::new("relative-logpath");
    let relative = scratch.write(
        "banctl.toml",
        "[jails.web]\nfailregex = ['^x <HOST>$']\nlogpath = [\"/var/log/ok.log\", \"logs/web.log\"]\n",
    );
    let out = crate::daemon::check_config(&relative);
    assert_eq!(out.status.code(), Some(banctl::cli::exit::CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jails.web.logpath[1]: \"logs/web.log\" is not an absolute path"),
        "{stderr}"
    );

    let extra = "\n[jails.typo]\nfailregex = ['^x <HOST>$']\nlogpath = \"{dir}/nodir/app.log\"\n";
    let daemon = Daemon::start("missing-logpath", &web_jail(2222, extra));
    let config = daemon.scratch.path("banctl.toml");
    std::fs::remove_file(daemon.scratch.path("web.log")).ok();
    let out = crate::daemon::check_config(&config);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jails.web.logpath:") && stderr.contains("web.log: waiting for the file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("jails.typo.logpath:")
            && stderr.contains("nodir/app.log: waiting for the directory"),
        "{stderr}"
    );
    let states = |jail: &str| {
        let s: serde_json::Value =
            serde_json::from_str(&daemon.ok(&["status", jail, "--json"])).unwrap();
        s[0]["source_states"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(states("web"), "waiting for the file");
    assert_eq!(states("typo"), "waiting for the directory");
    assert!(
        daemon
            .ok(&["status", "typo"])
            .contains("(waiting for the directory)")
    );
    // The file appears: followed, and its failures count.
    daemon.append("web.log", &failures("127.0.0.7", 3));
    daemon.wait_banned("web", "127.0.0.7");
    assert_eq!(states("web"), "following");
    // A reload warns too.
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: jails.typo.logpath:"), "{stderr}");
}

/// Every error at once, each with its fix: a value of the wrong type no longer hides the
/// others, misspelt keys, sections and filters get "did you mean", durations read as people
/// write them.
#[test]
fn every_config_error_at_once_with_its_fix() {
    let scratch = crate::daemon::Scratch::new("config-errors-at-once");
    let path = scratch.write(
        "banctl.toml",
        "[jail.sshd]\nfilter = \"sshd\"\n\n[jails.web]\nfilter = \"nginx-limit-reqs\"\n\
         logpath = \"/var/log/x\"\nmaxretry = \"5\"\nmaxretries = 5\nport = [80]\nports = 80\n\
         bantime = \"soon\"\nfindtime = \"10min\"\n\n[jails.ok]\nfilter = \"sshd\"\n\
         logpath = \"/var/log/y\"\nbantime = \"1H\"\nfindtime = \"1mo\"\n",
    );
    let out = crate::daemon::check_config(&path);
    assert_eq!(out.status.code(), Some(banctl::cli::exit::CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for wanted in [
        ":1: jail: unknown key (did you mean \"jails\"?)",
        ":5: jails.web.filter: no built-in filter \"nginx-limit-reqs\" (did you mean \"nginx-limit-req\"?)",
        ":7: jails.web.maxretry: invalid type: string \"5\", expected i64: write a number, like maxretry = 5",
        ":8: jails.web.maxretries: unknown key (did you mean \"maxretry\"?)",
        ":9: jails.web.port: unknown key (did you mean \"ports\"?)",
        ":10: jails.web.ports: invalid type: integer `80`, expected a sequence: write a list, like ports = [80, 443]",
        ":11: jails.web.bantime: \"soon\" is not a duration",
    ] {
        assert!(
            stderr.contains(&format!("{file}{wanted}")),
            "{wanted}\n{stderr}"
        );
    }
    // 1H and 1mo are durations: jail ok has no error.
    assert!(!stderr.contains("jails.ok"), "{stderr}");
}

/// Every banctl command of the README's fail2ban/banctl table runs, as written, against a
/// daemon with an `sshd` jail (found through `BANCTL_CONFIG`); `/var/log/auth.log` is a
/// sample log here.
#[test]
fn the_readme_command_table_runs() {
    use crate::daemon::Daemon;
    let Some(()) = crate::netns::enter("the_readme_command_table_runs") else {
        return;
    };
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("The commands, side by side")
        .expect("the table");
    let end = start + readme[start..].find("\n## ").unwrap();
    let commands: Vec<String> = readme[start..end]
        .lines()
        .filter_map(|row| {
            let cell = row.trim_end_matches('|').rsplit('|').next()?.trim();
            let inner = cell.strip_prefix('`')?;
            let command = &inner[..inner.find('`')?];
            command.starts_with("banctl ").then(|| command.to_owned())
        })
        .collect();
    assert!(commands.len() >= 15, "{commands:?}");
    let daemon = Daemon::start(
        "readme-table",
        "[jails.sshd]\nfilter = \"sshd\"\nlogpath = \"{dir}/auth.log\"\nignoreself = false\n",
    );
    let sample = daemon.scratch.write(
        "sample-auth.log",
        "Nov 30 10:00:00 web sshd[7]: Failed password for root from 192.0.2.12 port 22 ssh2\n",
    );
    let config = daemon.scratch.path("banctl.toml");
    for command in &commands {
        let command = command.replace("/var/log/auth.log", &sample.display().to_string());
        if command.starts_with("banctl unban 192.0.2.10") {
            let _ = daemon.cli(&["ban", "sshd", "192.0.2.10"]);
        }
        // Words, 'quoted' ones whole, and `< FILE` as standard input.
        let mut words = Vec::new();
        let mut stdin = None;
        let mut rest = command.trim_start_matches("banctl ").trim();
        while !rest.is_empty() {
            let (word, after) = if let Some(q) = rest.strip_prefix('\'') {
                let close = q.find('\'').unwrap();
                (q[..close].to_owned(), &q[close + 1..])
            } else {
                let end = rest.find(' ').unwrap_or(rest.len());
                (rest[..end].to_owned(), &rest[end..])
            };
            rest = after.trim_start();
            if word == "<" {
                let end = rest.find(' ').unwrap_or(rest.len());
                stdin = Some(rest[..end].to_owned());
                rest = rest[end..].trim_start();
            } else {
                words.push(word);
            }
        }
        let mut cmd = Command::new(BIN);
        cmd.args(&words)
            .env("BANCTL_CONFIG", &config)
            .env_remove("BANCTL_SOCKET");
        if let Some(file) = stdin {
            cmd.stdin(std::fs::File::open(file).unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
