//! `banctl init` against a fake root: a directory tree with the traces of sshd (journal only,
//! as on Debian 12 without rsyslog), nginx, postfix, an installed but disabled dovecot, MySQL
//! without its log, Jellyfin in Docker with a log volume and Vaultwarden in Docker without
//! one, listening sockets, routes and an SSH session. The configuration it writes is asserted
//! whole.

use std::path::Path;
use std::process::Command;

use crate::daemon::{BIN, Scratch};
use crate::journal::{Entry, can_write_journals, write_journal};

fn put(root: &Path, path: &str, text: &str) {
    let full = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, text).unwrap();
}

/// A journal under `root` with entries of `(unit, identifier)`.
fn journal(root: &Path, entries: &[(&str, &str)]) {
    let dir = root.join("var/log/journal/0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&dir).unwrap();
    let entries: Vec<Entry<'_>> = entries
        .iter()
        .enumerate()
        .map(|(i, (unit, ident))| Entry {
            at_us: 1_764_500_000_000_000 + i as u128,
            unit,
            ident,
            message: "hello",
        })
        .collect();
    write_journal(
        &dir.join("system.journal"),
        "fedcba9876543210fedcba9876543210",
        &entries,
    );
}

fn container(
    root: &Path,
    id: &str,
    name: &str,
    image: &str,
    mount: Option<(&str, &str)>,
    port: u16,
) {
    let mounts = mount.map_or(String::new(), |(dest, source)| {
        format!(r#""{dest}":{{"Source":"{source}","Destination":"{dest}","RW":true}}"#)
    });
    put(
        root,
        &format!("/var/lib/docker/containers/{id}/config.v2.json"),
        &format!(
            r#"{{"ID":"{id}","Name":"/{name}","State":{{"Running":true}},"Config":{{"Image":"{image}"}},"MountPoints":{{{mounts}}}}}"#
        ),
    );
    put(
        root,
        &format!("/var/lib/docker/containers/{id}/hostconfig.json"),
        &format!(r#"{{"PortBindings":{{"{port}/tcp":[{{"HostIp":"","HostPort":"{port}"}}]}}}}"#),
    );
    put(
        root,
        &format!("/var/lib/docker/containers/{id}/{id}-json.log"),
        "",
    );
}

const EXPECTED: &str = r#"# banctl configuration written by `banctl init` for web1.
# Each jail says what it was found from. Check it with `banctl check-config`, try a
# filter on a log with `banctl test LOG FILTER`, then `systemctl enable --now banctl`.
# Every key: README, "Configuration reference"; `banctl config` shows the defaults.

[defaults]
bantime = "1h"     # the first ban of an address
findtime = "10m"   # failures count within this window…
maxretry = 5       # …and this many of them ban
escalation = { factor = 2, max = "1w" }   # each later ban twice as long, up to a week
# Never banned (loopback and this host's addresses neither: ignoreself).
ignoreip = [
    "203.0.113.50",  # the SSH session that ran `banctl init`
    "192.168.1.0/24",  # this host's network on eth0
    "172.17.0.0/16",  # this host's network on docker0
    "2001:db8:1::/64",  # this host's network on eth0
]

# sshd: unit ssh.service (enabled)
# sshd: journal entries with _SYSTEMD_UNIT=ssh.service
# sshd: listening on 22
[jails.sshd]
filter = "sshd"
journal = { matches = ["_SYSTEMD_UNIT=ssh.service"] }
ports = [22]

# nginx-http-auth: unit nginx.service (enabled)
# nginx-http-auth: log file /var/log/nginx/error.log
# nginx-http-auth: listening on 80
# nginx-http-auth: listening on 443
[jails.nginx-http-auth]
filter = "nginx-http-auth"
logpath = ["/var/log/nginx/error.log"]
ports = [80, 443]

# nginx-botsearch: unit nginx.service (enabled)
# nginx-botsearch: log file /var/log/nginx/access.log
# nginx-botsearch: listening on 80
# nginx-botsearch: listening on 443
[jails.nginx-botsearch]
filter = "nginx-botsearch"
logpath = ["/var/log/nginx/access.log"]
ports = [80, 443]

# postfix: unit postfix.service (enabled)
# postfix: journal entries with _SYSTEMD_UNIT=postfix@-.service
# postfix: log file /var/log/mail.log
# postfix: listening on 25
[jails.postfix]
filter = "postfix"
logpath = ["/var/log/mail.log"]
journal = { matches = ["_SYSTEMD_UNIT=postfix@-.service"] }
ports = [25]

# dovecot: unit dovecot.service (installed, not enabled)
# dovecot: log file /var/log/mail.log
[jails.dovecot]
enabled = false   # installed, not running: enable it with the service
filter = "dovecot"
logpath = ["/var/log/mail.log"]
ports = [110, 143, 993, 995, 4190]  # not seen listening: the service's usual ports

# jellyfin: container jellyfin (image jellyfin/jellyfin:10.10, running)
# jellyfin: log files /srv/jellyfin/config/log/log_*.log (2)
# jellyfin: listening on 8096
[jails.jellyfin]
filter = "jellyfin"
logpath = ["/srv/jellyfin/config/log/log_*.log"]
ports = [8096]

# Found, but not protected:
# - vaultwarden (container vw): its log is only in Docker's json-file log /var/lib/docker/containers/bbbb/bbbb-json.log, which banctl does not read: give it a log volume (/data holding vaultwarden.log)
# - mysqld-auth: unit mariadb.service (enabled) found, but no log at /var/log/mysql/error.log
"#;

#[test]
fn init_writes_one_jail_per_service_found_with_its_evidence() {
    if !can_write_journals() {
        return;
    }
    let scratch = Scratch::new("init");
    let root = scratch.path("root");
    let r = root.as_path();
    put(r, "/etc/hostname", "web1\n");
    for unit in [
        "ssh.service",
        "nginx.service",
        "postfix.service",
        "mariadb.service",
    ] {
        put(
            r,
            &format!("/etc/systemd/system/multi-user.target.wants/{unit}"),
            "",
        );
    }
    put(r, "/lib/systemd/system/dovecot.service", "[Unit]\n");
    journal(
        r,
        &[
            ("ssh.service", "sshd"),
            ("postfix@-.service", "postfix/smtpd"),
            ("cron.service", "CRON"),
        ],
    );
    put(r, "/var/log/nginx/error.log", "");
    put(r, "/var/log/nginx/access.log", "");
    put(r, "/var/log/mail.log", "");
    put(r, "/srv/jellyfin/config/log/log_20261129.log", "");
    put(r, "/srv/jellyfin/config/log/log_20261130.log", "");
    container(
        r,
        "aaaa",
        "jellyfin",
        "jellyfin/jellyfin:10.10",
        Some(("/config", "/srv/jellyfin/config")),
        8096,
    );
    container(r, "bbbb", "vw", "vaultwarden/server:latest", None, 8080);
    // Listening: sshd, nginx, postfix, docker-proxy for Jellyfin, MariaDB on loopback only.
    let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    let listen = |hex: &str, port: u16| {
        format!(
            "   0: {hex}:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n"
        )
    };
    put(
        r,
        "/proc/net/tcp",
        &format!(
            "{header}{}{}{}{}{}{}",
            listen("00000000", 22),
            listen("00000000", 80),
            listen("00000000", 443),
            listen("00000000", 25),
            listen("00000000", 8096),
            listen("0100007F", 3306),
        ),
    );
    put(r, "/proc/net/tcp6", header);
    put(
        r,
        "/proc/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
         eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
         docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n",
    );
    put(
        r,
        "/proc/net/ipv6_route",
        "20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
         fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
         00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n",
    );

    let config = scratch.path("etc/banctl.toml");
    let init = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("init")
            .arg("--root")
            .arg(&root)
            .args(args)
            .env("SSH_CONNECTION", "203.0.113.50 51234 192.168.1.10 22")
            .output()
            .unwrap()
    };
    let dry = init(&["--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert_eq!(text, EXPECTED, "\n{text}");
    assert!(!config.exists(), "--dry-run wrote a file");

    // Written where --config says, once; never over an existing file.
    let wrote = init(&[]);
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&wrote.stdout),
        format!(
            "wrote {}: 5 jail(s) (jellyfin, nginx-botsearch, nginx-http-auth, postfix, sshd); check it with `banctl check-config`, then `systemctl enable --now banctl`\n",
            config.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), EXPECTED);
    std::fs::write(&config, "# the admin's own\n").unwrap();
    let again = init(&[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists: banctl init never overwrites"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# the admin's own\n"
    );

    // The example the package installed, untouched, makes way and is kept beside.
    let shipped = include_str!("../../etc/banctl.toml");
    std::fs::write(&config, shipped).unwrap();
    let over_example = init(&[]);
    assert!(over_example.status.success());
    assert!(
        String::from_utf8_lossy(&over_example.stdout).starts_with(&format!(
            "the shipped example (unchanged) was at {}: kept as {}.example\n",
            config.display(),
            config.display()
        )),
        "{}",
        String::from_utf8_lossy(&over_example.stdout)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), EXPECTED);
    let mut example = config.clone().into_os_string();
    example.push(".example");
    assert_eq!(std::fs::read_to_string(example).unwrap(), shipped);
}
