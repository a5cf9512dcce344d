//! `cargo xtask symbol-order`: writes `build/symbol-order.txt`, the functions a daemon runs,
//! which `build.rs` has the linker place first and together in release builds (see there).
//!
//! The release daemon runs under callgrind, in a throw-away network namespace, through what
//! a host sees in its life: a start with built-in and custom filters, a `status` request and
//! idle time, then failures that ban IPv4 addresses and IPv6 prefixes, the CLI's requests,
//! a reload, more idle time and a stop. Every function of the binary it executed is listed:
//! first those of the start and the first idle time (a profile is dumped there), then the
//! rest. The kernel maps a file's pages 64 KiB around each one touched, so a daemon that has
//! banned nothing yet has only the first group resident; the code of bans, requests and
//! reloads comes in when it first runs.
//! Regenerate after changing dependencies or much of the code: symbols the file names that a
//! build lacks are skipped, so a stale file only costs resident memory.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::demo::{append, wait_for};
use crate::sys;

pub fn run() -> Result<()> {
    if !sys::is_root() {
        bail!("run as root: valgrind's daemon needs CAP_NET_ADMIN in its namespace");
    }
    sys::ensure(&["valgrind"])?;
    // As `cargo xtask bench` and `dist` build it: the same symbols.
    let banctl = crate::dist::release_binary()?;
    let root = sys::workspace_root();
    sys::enter_network_namespace()?;
    let dir = std::env::temp_dir().join(format!("banctl-order-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let profile = dir.join("callgrind.out");
    let result = train(&banctl, &dir, &profile).and_then(|()| {
        let started = std::fs::read_to_string(started_profile(&profile))?;
        let rest = std::fs::read_to_string(&profile)?;
        let order = executed(&[&started, &rest], "banctl");
        let out = root.join("build/symbol-order.txt");
        std::fs::create_dir_all(out.parent().unwrap())?;
        let header = "# Functions of banctl a daemon runs, those of its start and idle time \
                      first: written by `cargo xtask symbol-order`, read by build.rs.\n";
        std::fs::write(&out, header.to_owned() + &order.join("\n") + "\n")?;
        println!("{} functions written to {}", order.len(), out.display());
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A `status` request from a client that connects, then writes: the daemon's read of it
/// waits, with a timeout, and that path (the timer set, the task woken, the timer removed) is
/// one an idle daemon takes for about half of the requests it gets, by the race between its
/// accept and the client's write. The CLI's own requests, sent at once, miss it under
/// valgrind, where the daemon is slow to accept.
fn late_status(socket: &Path) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    std::thread::sleep(Duration::from_secs(2));
    // The control protocol's request line (src/control/proto.rs), version 1.
    stream.write_all(b"{\"version\":1,\"request\":{\"type\":\"status\",\"jail\":null}}\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if !answer.contains("\"jails\"") {
        bail!("the daemon did not answer a status request: {answer}");
    }
    Ok(())
}

/// Where callgrind writes the dump it is asked for during the run: `<profile>.1`.
fn started_profile(profile: &Path) -> std::path::PathBuf {
    let mut name = profile.as_os_str().to_owned();
    name.push(".1");
    name.into()
}

/// Runs the daemon under callgrind through a host's life; the profile of its start and first
/// idle time lands at [`started_profile`], that of the rest at `profile`.
fn train(banctl: &Path, dir: &Path, profile: &Path) -> Result<()> {
    let socket = dir.join("sock");
    let logs: Vec<_> = ["sshd", "web", "custom"]
        .iter()
        .map(|n| dir.join(format!("{n}.log")))
        .collect();
    for log in &logs {
        std::fs::write(log, "")?;
    }
    let config = dir.join("banctl.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}/state\"\n\n\
             [defaults]\nmaxretry = 3\nbantime = \"1h\"\nignoreself = false\n\n\
             [jails.sshd]\nfilter = \"sshd\"\nlogpath = \"{}\"\nports = [22]\n\n\
             [jails.web]\nfilter = \"nginx-botsearch\"\nlogpath = \"{}\"\nports = [80, 443]\n\n\
             [jails.custom]\nfailregex = ['^fail <HOST>$']\nlogpath = \"{}\"\n",
            socket.display(),
            dir.display(),
            logs[0].display(),
            logs[1].display(),
            logs[2].display()
        ),
    )?;
    let mut daemon = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--demangle=no",
            "--dump-instr=no",
            "--quiet",
        ])
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg(banctl)
        .args(["daemon", "--config"])
        .arg(&config)
        .env("BANCTL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the daemon under valgrind")?;
    let daemon_pid = daemon.id();
    let cli = |args: &[&str]| crate::demo::cli(banctl, &socket, args);
    let life = || -> Result<()> {
        wait_for(Duration::from_secs(180), || cli(&["status"]).is_ok())
            .context("the daemon did not start")?;
        late_status(&socket)?;
        // Idle, as a host with no attack sees it; then what ran so far is dumped apart.
        std::thread::sleep(Duration::from_secs(3));
        let dumped = Command::new("callgrind_control")
            .arg("--dump=started")
            .arg(daemon_pid.to_string())
            .stdout(Stdio::null())
            .status()
            .context("running callgrind_control")?;
        if !dumped.success() {
            bail!("callgrind_control --dump ended with {dumped}");
        }
        let started = started_profile(profile);
        wait_for(Duration::from_secs(60), || started.exists())
            .context("callgrind wrote no profile of the start")?;
        let sshd: Vec<String> = (0..40)
            .flat_map(|i| {
                let addr = match i % 2 {
                    0 => format!("192.0.2.{i}"),
                    _ => format!("2001:db8:{i:x}::1"),
                };
                (0..3).map(move |k| {
                    format!(
                        "Dec  2 10:00:0{k} host sshd[{i}{k}]: Failed password for invalid user \
                         admin from {addr} port 5{i:03} ssh2"
                    )
                })
            })
            .collect();
        append(&logs[0], &sshd)?;
        let web: Vec<String> = (0..3)
            .map(|k| {
                format!(
                    "198.51.100.7 - - [02/Dec/2026:10:00:0{k} +0000] \"GET /phpmyadmin/ HTTP/1.1\" \
                     404 153 \"-\" \"scan\""
                )
            })
            .collect();
        append(&logs[1], &web)?;
        append(&logs[2], &vec!["fail 203.0.113.9".to_owned(); 3])?;
        wait_for(Duration::from_secs(120), || {
            cli(&["list", "--json"]).is_ok_and(|o| o.contains("203.0.113.9"))
        })
        .context("the daemon banned nothing")?;
        for args in [
            &["status"][..],
            &["list"],
            &["unban", "203.0.113.9"],
            &["ban", "custom", "203.0.113.0/24"],
            &["config"],
            &["reload"],
        ] {
            cli(args)?;
        }
        // Idle: timers, sweeps, the ruleset watcher.
        std::thread::sleep(Duration::from_secs(5));
        Ok(())
    };
    let lived = life();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = daemon.wait()?;
    lived?;
    if !status.success() {
        bail!("the daemon under valgrind ended with {status}");
    }
    Ok(())
}

/// The functions of object `object` that callgrind profiles saw run, in the order they first
/// appear, each once, the first profile's before the next's.
fn executed(profiles: &[&str], object: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    profiles
        .iter()
        .flat_map(|profile| functions(profile, object))
        .filter(|f| seen.insert(f.clone()))
        .collect()
}

/// The functions of object `object` that one callgrind profile saw run, in the order they
/// first appear there, each once.
fn functions(profile: &str, object: &str) -> Vec<String> {
    // `ob=`/`fn=` lines name an object or function once, `(id) name`, and by `(id)` after.
    let (mut objects, mut functions) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    let mut in_object = false;
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for line in profile.lines() {
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        let Some((id, name)) = rest
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .map(|(id, name)| (id.to_owned(), name.trim()))
        else {
            continue;
        };
        let named = |table: &mut std::collections::HashMap<String, String>| -> String {
            if !name.is_empty() {
                table.insert(id.clone(), name.to_owned());
            }
            table.get(&id).cloned().unwrap_or_default()
        };
        match key {
            "ob" => {
                let ob = named(&mut objects);
                in_object = Path::new(&ob).file_name().is_some_and(|f| f == object);
            }
            "cob" => {
                named(&mut objects);
            }
            "fn" => {
                // A recursion level shows as `name'2`.
                let f = named(&mut functions);
                let f = f.split('\'').next().unwrap_or_default().to_owned();
                let symbol = !f.is_empty() && !f.starts_with("0x") && !f.starts_with('(');
                if in_object && symbol && seen.insert(f.clone()) {
                    order.push(f);
                }
            }
            "cfn" => {
                named(&mut functions);
            }
            _ => {}
        }
    }
    order
}

#[cfg(test)]
mod tests {
    #[test]
    fn functions_of_the_object_are_listed_once_in_first_seen_order() {
        let profile = "ob=(1) /usr/lib/libc.so.6\nfn=(1) memcpy\n\
                       ob=(2) /x/target/release/banctl\nfn=(2) _ZN4main17hE\n\
                       cob=(1)\ncfn=(1)\ncfn=(3) _ZN3two17hE\n\
                       fn=(3)\nfn=(4) _ZN3rec17hE'2\nfn=(2)\nob=(1)\nfn=(1)\n";
        assert_eq!(
            super::executed(&[profile], "banctl"),
            ["_ZN4main17hE", "_ZN3two17hE", "_ZN3rec17hE"]
        );
    }

    #[test]
    fn the_first_profiles_functions_come_first_and_none_twice() {
        let started = "ob=(1) /x/banctl\nfn=(1) start\nfn=(2) both\n";
        let rest = "ob=(1) /x/banctl\nfn=(1) ban\nfn=(2) both\nfn=(3) reload\n";
        assert_eq!(
            super::executed(&[started, rest], "banctl"),
            ["start", "both", "ban", "reload"]
        );
    }
}
