//! `banctl init`: a first configuration from what the machine shows. A [`Survey`] reads the
//! traces services leave under a root directory (`/`, or a mounted system's tree): systemd
//! units, the journal's units and identifiers, log files in their usual places, Docker
//! containers with their images, volumes and published ports, listening sockets, the host's
//! own networks and the SSH session that runs the command. [`plan`] turns it into jails, each
//! with its evidence; [`render`] writes them as a commented `banctl.toml`.
//!
//! **Invariants:** reading only, never a write under the root; nothing run (no `systemctl`,
//! no `docker`): files and the journal's index only, so the result depends on the tree alone
//! and a test can assert it exactly. Every path written into the configuration is the path on
//! the surveyed system (the root left out).

pub mod services;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use toml::Value;

use crate::addr::IpNet;
use services::{SERVICES, Service};

/// How a systemd unit is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// Wanted by a target: starts at boot.
    Enabled,
    /// Its file exists, nothing wants it.
    Installed,
}

/// A listening socket's port, and whether only loopback can reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub port: u16,
    pub loopback_only: bool,
}

/// A Docker container, from its directory under `/var/lib/docker/containers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub running: bool,
    /// Host ports it publishes.
    pub ports: Vec<u16>,
    /// Volumes: the path inside the container, and the host's.
    pub mounts: BTreeMap<String, String>,
    /// Its json-file log, on the surveyed system.
    pub json_log: String,
}

/// What the machine shows.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub root: PathBuf,
    pub hostname: Option<String>,
    pub units: BTreeMap<String, UnitState>,
    /// `_SYSTEMD_UNIT` values in the journal; `None` when there is no readable journal.
    pub journal_units: Option<BTreeSet<String>>,
    /// `SYSLOG_IDENTIFIER` values in the journal.
    pub journal_idents: BTreeSet<String>,
    /// Listening TCP and UDP ports.
    pub listening: BTreeMap<u16, bool>,
    /// Directly connected networks and their interface (no default route, no gateway).
    pub networks: Vec<(IpNet, String)>,
    /// The address of the SSH client that runs `banctl init` (from `SSH_CONNECTION`).
    pub session: Option<IpAddr>,
    pub containers: Vec<Container>,
}

impl Survey {
    /// Reads the system under `root`; `ssh_connection` is `SSH_CONNECTION`'s value.
    pub fn of(root: &Path, ssh_connection: Option<&str>) -> Survey {
        let mut units = BTreeMap::new();
        for unit in SERVICES.iter().flat_map(|s| s.units.iter()) {
            if let Some(state) = unit_state(root, unit) {
                units.insert((*unit).to_owned(), state);
            }
        }
        let journal = |field| crate::source::journal::unique_values(root, field);
        let journal_units = journal("_SYSTEMD_UNIT").ok().map(BTreeSet::from_iter);
        let journal_idents = journal("SYSLOG_IDENTIFIER")
            .map(BTreeSet::from_iter)
            .unwrap_or_default();
        let mut listening = BTreeMap::new();
        for (file, v6) in [
            ("tcp", false),
            ("tcp6", true),
            ("udp", false),
            ("udp6", true),
        ] {
            let text = read(root, &format!("/proc/net/{file}"));
            for l in listeners(&text, v6, file.starts_with("tcp")) {
                let only = listening.entry(l.port).or_insert(true);
                *only &= l.loopback_only;
            }
        }
        let mut networks = routes_v4(&read(root, "/proc/net/route"));
        networks.extend(routes_v6(&read(root, "/proc/net/ipv6_route")));
        let hostname = read(root, "/etc/hostname").trim().to_owned();
        Survey {
            root: root.to_owned(),
            hostname: Some(hostname).filter(|h| !h.is_empty()),
            units,
            journal_units,
            journal_idents,
            listening,
            networks,
            session: ssh_connection
                .and_then(|c| c.split_whitespace().next())
                .and_then(|a| a.parse().ok()),
            containers: containers(root),
        }
    }

    /// The files a glob on the surveyed system matches now.
    fn files(&self, pattern: &str) -> Vec<PathBuf> {
        let full = under(&self.root, pattern);
        let mut files: Vec<PathBuf> = glob::glob(&full)
            .map(|paths| {
                paths
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    fn in_journal(&self, s: &Service) -> Vec<String> {
        let units = self.journal_units.iter().flatten();
        let mut found: Vec<String> = units
            .filter(|u| s.units.contains(&u.as_str()))
            .map(|u| format!("_SYSTEMD_UNIT={u}"))
            .collect();
        if found.is_empty() {
            found = self
                .journal_idents
                .iter()
                .filter(|i| s.idents.contains(&i.as_str()))
                .map(|i| format!("SYSLOG_IDENTIFIER={i}"))
                .collect();
        }
        found
    }
}

/// `path` (absolute on the surveyed system) under `root`, as text (globs stay globs).
fn under(root: &Path, path: &str) -> String {
    format!("{}{path}", root.to_string_lossy().trim_end_matches('/'))
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(under(root, path)).unwrap_or_default()
}

fn unit_state(root: &Path, unit: &str) -> Option<UnitState> {
    let wanted = under(root, &format!("/etc/systemd/system/*.wants/{unit}"));
    if glob::glob(&wanted).is_ok_and(|mut m| m.any(|p| p.is_ok())) {
        return Some(UnitState::Enabled);
    }
    [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ]
    .iter()
    .any(|dir| Path::new(&under(root, &format!("{dir}/{unit}"))).exists())
    .then_some(UnitState::Installed)
}

/// Listening sockets of a `/proc/net/{tcp,udp}{,6}` text (TCP in state LISTEN, UDP bound).
fn listeners(text: &str, v6: bool, tcp: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        // 0A: TCP_LISTEN; 07: TCP_CLOSE, which is what a bound UDP socket shows.
        if *state != if tcp { "0A" } else { "07" } {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(addr), Ok(port)) = (proc_addr(addr, v6), u16::from_str_radix(port, 16)) else {
            continue;
        };
        out.push(Listener {
            port,
            loopback_only: addr.is_loopback(),
        });
    }
    out
}

/// An address as `/proc/net` prints it: its 32-bit words in hex, each the native-endian
/// reading of four bytes in network order.
fn proc_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let mut bytes = Vec::with_capacity(16);
    for i in 0..hex.len() / 8 {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    match (v6, bytes.len()) {
        (false, 4) => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        (true, 16) => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// Directly connected IPv4 networks of a `/proc/net/route` text.
fn routes_v4(text: &str) -> Vec<(IpNet, String)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dest), Some(gateway), Some(mask)) =
            (f.first(), f.get(1), f.get(2), f.get(7))
        else {
            continue;
        };
        let (Some(IpAddr::V4(dest)), Some(IpAddr::V4(mask))) =
            (proc_addr(dest, false), proc_addr(mask, false))
        else {
            continue;
        };
        let len = u32::from(mask).count_ones() as u8;
        if *gateway != "00000000" || len == 0 || *iface == "lo" {
            continue;
        }
        out.push((IpNet::new(IpAddr::V4(dest), len), (*iface).to_owned()));
    }
    out
}

/// Directly connected IPv6 networks of a `/proc/net/ipv6_route` text (global ones: no
/// link-local, multicast, host or default routes).
fn routes_v6(text: &str) -> Vec<(IpNet, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(dest), Ok(len)) = (hex_v6(f[0]), u8::from_str_radix(f[1], 16)) else {
            continue;
        };
        let gateway = f[4].bytes().any(|b| b != b'0');
        let first = dest.segments()[0];
        let special = first & 0xffc0 == 0xfe80 || first & 0xff00 == 0xff00;
        if gateway || special || len == 0 || len == 128 || f[9] == "lo" {
            continue;
        }
        let net = (IpNet::new(IpAddr::V6(dest), len), f[9].to_owned());
        if !out.contains(&net) {
            out.push(net);
        }
    }
    out
}

/// An IPv6 address as `/proc/net/ipv6_route` prints it: 32 hex digits in network order.
fn hex_v6(hex: &str) -> Option<Ipv6Addr> {
    u128::from_str_radix(hex, 16)
        .ok()
        .filter(|_| hex.len() == 32)
        .map(Ipv6Addr::from)
}

/// Docker's containers under the root.
fn containers(root: &Path) -> Vec<Container> {
    let dir = under(root, "/var/lib/docker/containers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let json = |name: &str| -> serde_json::Value {
            std::fs::read(path.join(name))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        let config = json("config.v2.json");
        let Some(image) = config["Config"]["Image"].as_str() else {
            continue;
        };
        let id = entry.file_name().to_string_lossy().into_owned();
        let mounts = config["MountPoints"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| {
                        Some((
                            v["Destination"].as_str()?.to_owned(),
                            v["Source"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let host = json("hostconfig.json");
        let mut ports: Vec<u16> = host["PortBindings"]
            .as_object()
            .map(|b| {
                b.values()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter_map(|b| b["HostPort"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        ports.sort_unstable();
        ports.dedup();
        out.push(Container {
            name: config["Name"]
                .as_str()
                .unwrap_or(&id)
                .trim_start_matches('/')
                .to_owned(),
            image: image.to_owned(),
            running: config["State"]["Running"].as_bool().unwrap_or(false),
            ports,
            mounts,
            json_log: format!("/var/lib/docker/containers/{id}/{id}-json.log"),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A jail `banctl init` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    pub name: String,
    pub filter: &'static str,
    /// What it was found from, one line each.
    pub evidence: Vec<String>,
    pub enabled: bool,
    pub logpath: Vec<String>,
    pub journal: Vec<String>,
    pub ports: Vec<u16>,
    /// Whether `ports` were seen listening (else they are the service's usual ones).
    pub ports_seen: bool,
    pub udp: bool,
}

/// A service found but left without a jail, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprotected {
    pub name: String,
    pub why: String,
}

/// The jails the survey calls for, in [`SERVICES`]' order, and what was found but cannot be
/// protected yet.
pub fn plan(survey: &Survey) -> (Vec<JailPlan>, Vec<Unprotected>) {
    let mut jails = Vec::new();
    let mut unprotected = Vec::new();
    for s in SERVICES {
        let mut evidence = Vec::new();
        let (mut enabled_unit, mut running_container) = (false, false);
        let unit_found = s.units.iter().any(|u| survey.units.contains_key(*u));
        for unit in s.units {
            match survey.units.get(*unit) {
                Some(UnitState::Enabled) => {
                    enabled_unit = true;
                    evidence.push(format!("unit {unit} (enabled)"));
                }
                Some(UnitState::Installed) => {
                    evidence.push(format!("unit {unit} (installed, not enabled)"));
                }
                None => {}
            }
        }
        let journal = survey.in_journal(s);
        for m in &journal {
            evidence.push(format!("journal entries with {m}"));
        }
        let mut logpath = Vec::new();
        for pattern in s.logs {
            let files = survey.files(pattern);
            if !files.is_empty() {
                evidence.push(found_files(pattern, files.len()));
                logpath.push((*pattern).to_owned());
            }
        }
        let mut container_ports = Vec::new();
        for c in survey
            .containers
            .iter()
            .filter(|c| s.images.iter().any(|i| c.image.contains(i)))
        {
            let state = if c.running { "running" } else { "stopped" };
            evidence.push(format!("container {} (image {}, {state})", c.name, c.image));
            container_ports.extend(&c.ports);
            let log = s.volume_log.and_then(|v| {
                let source = c.mounts.get(v.mount)?;
                Some(format!("{}/{}", source.trim_end_matches('/'), v.pattern))
            });
            running_container |= c.running;
            let found = log
                .as_deref()
                .map_or(0, |pattern| survey.files(pattern).len());
            match log {
                Some(pattern) if found > 0 => {
                    evidence.push(found_files(&pattern, found));
                    logpath.push(pattern);
                }
                _ => unprotected.push(Unprotected {
                    name: format!("{} (container {})", s.jail, c.name),
                    why: format!(
                        "its log is only in Docker's json-file log {}, which banctl does not read: \
                         give it a log volume{}",
                        c.json_log,
                        s.volume_log
                            .map(|v| format!(" ({} holding {})", v.mount, v.pattern))
                            .unwrap_or_default()
                    ),
                }),
            }
        }
        // A unit installed but not enabled outweighs a log file (mail.log is shared): the
        // jail is written disabled.
        let seen = enabled_unit
            || !journal.is_empty()
            || (!logpath.is_empty() && !unit_found)
            || running_container;
        let installed = !evidence.is_empty();
        if !seen && !installed {
            continue;
        }
        if logpath.is_empty() && journal.is_empty() && (s.needs_log || s.units.is_empty()) {
            if unit_found {
                unprotected.push(Unprotected {
                    name: s.jail.to_owned(),
                    why: format!(
                        "{} found, but no log at {}",
                        evidence.join(", "),
                        s.logs.join(" or ")
                    ),
                });
            }
            continue;
        }
        // A unit found but no log yet: its usual files, and its journal.
        let mut journal = journal;
        if logpath.is_empty() && journal.is_empty() {
            logpath = s.logs.iter().map(|l| (*l).to_owned()).collect();
            journal = s
                .units
                .iter()
                .filter(|u| survey.units.contains_key(**u))
                .map(|u| format!("_SYSTEMD_UNIT={u}"))
                .collect();
            evidence.push("no log seen yet".to_owned());
        }
        let listening: Vec<u16> = s
            .ports
            .iter()
            .copied()
            .filter(|p| survey.listening.contains_key(p))
            .collect();
        for p in &listening {
            let scope = if survey.listening[p] {
                " (loopback only)"
            } else {
                ""
            };
            evidence.push(format!("listening on {p}{scope}"));
        }
        let mut ports: Vec<u16> = listening.iter().chain(&container_ports).copied().collect();
        ports.sort_unstable();
        ports.dedup();
        let ports_seen = !ports.is_empty();
        if !ports_seen {
            ports = s.ports.to_vec();
        }
        jails.push(JailPlan {
            name: s.jail.to_owned(),
            filter: s.filter,
            evidence,
            enabled: seen,
            logpath,
            journal,
            ports,
            ports_seen,
            udp: s.udp,
        });
    }
    (jails, unprotected)
}

fn found_files(pattern: &str, n: usize) -> String {
    if pattern.contains('*') {
        format!("log files {pattern} ({n})")
    } else {
        format!("log file {pattern}")
    }
}

/// A TOML value written as TOML writes it (quotes and escapes).
fn value(v: impl Into<Value>) -> String {
    v.into().to_string()
}

fn strings(items: &[String]) -> String {
    value(Value::Array(
        items.iter().map(|s| Value::String(s.clone())).collect(),
    ))
}

/// The configuration for `survey`, commented: every jail says what it was found from.
pub fn render(survey: &Survey) -> String {
    let (jails, unprotected) = plan(survey);
    let mut out = String::new();
    let host = survey.hostname.as_deref().unwrap_or("this host");
    let _ = writeln!(
        out,
        "# banctl configuration written by `banctl init` for {host}."
    );
    out.push_str(
        "# Each jail says what it was found from. Check it with `banctl check-config`, try a\n\
         # filter on a log with `banctl test LOG FILTER`, then `systemctl enable --now banctl`.\n\
         # Every key: README, \"Configuration reference\"; `banctl config` shows the defaults.\n\n",
    );
    out.push_str("[defaults]\n");
    out.push_str(
        "bantime = \"1h\"     # the first ban of an address\n\
         findtime = \"10m\"   # failures count within this window…\n\
         maxretry = 5       # …and this many of them ban\n\
         escalation = { factor = 2, max = \"1w\" }   # each later ban twice as long, up to a week\n",
    );
    let mut ignored: Vec<(String, String)> = Vec::new();
    if let Some(session) = survey.session {
        ignored.push((
            IpNet::host(session).to_string(),
            "the SSH session that ran `banctl init`".to_owned(),
        ));
    }
    for (net, iface) in &survey.networks {
        let net = net.to_string();
        if !ignored.iter().any(|(n, _)| *n == net) {
            ignored.push((net, format!("this host's network on {iface}")));
        }
    }
    if ignored.is_empty() {
        out.push_str("ignoreip = []     # addresses and networks never banned\n");
    } else {
        out.push_str("# Never banned (loopback and this host's addresses neither: ignoreself).\n");
        out.push_str("ignoreip = [\n");
        for (net, why) in &ignored {
            let _ = writeln!(out, "    {},  # {why}", value(net.as_str()));
        }
        out.push_str("]\n");
    }
    for j in &jails {
        out.push('\n');
        for e in &j.evidence {
            let _ = writeln!(out, "# {}: {e}", j.name);
        }
        let _ = writeln!(out, "[jails.{}]", j.name);
        if !j.enabled {
            out.push_str(
                "enabled = false   # installed, not running: enable it with the service\n",
            );
        }
        let _ = writeln!(out, "filter = {}", value(j.filter));
        if !j.logpath.is_empty() {
            let _ = writeln!(out, "logpath = {}", strings(&j.logpath));
        }
        if !j.journal.is_empty() {
            let mut matches = Vec::new();
            for (i, m) in j.journal.iter().enumerate() {
                if i > 0 {
                    matches.push("+".to_owned());
                }
                matches.push(m.clone());
            }
            let _ = writeln!(out, "journal = {{ matches = {} }}", strings(&matches));
        }
        let ports: Vec<String> = j.ports.iter().map(u16::to_string).collect();
        let note = if j.ports_seen {
            ""
        } else {
            "  # not seen listening: the service's usual ports"
        };
        let _ = writeln!(out, "ports = [{}]{note}", ports.join(", "));
        if j.udp {
            out.push_str("protocol = \"both\"\n");
        }
    }
    if jails.is_empty() {
        out.push_str(
            "\n# No known service was found. Write a jail by hand (README, \"Examples from real use\").\n",
        );
    }
    if !unprotected.is_empty() {
        out.push_str("\n# Found, but not protected:\n");
        for u in &unprotected {
            let _ = writeln!(out, "# - {}: {}", u.name, u.why);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_is_read_as_the_kernel_writes_it() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
                   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 2 1 0 100 0 0 10 0\n   \
                   2: 0A00020F:0016 0A000202:D2F4 01 00000000:00000000 02:00095B2C 00000000     0        0 3 4 0 20 4 29 10 -1\n";
        assert_eq!(
            listeners(tcp, false, true),
            [
                Listener {
                    port: 22,
                    loopback_only: false
                },
                Listener {
                    port: 3306,
                    loopback_only: true
                }
            ]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n   \
                    0: 00000000000000000000000001000000:0019 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(
            listeners(tcp6, true, true),
            [Listener {
                port: 25,
                loopback_only: true
            }]
        );
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t0000000A\t0101A8C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(
            routes_v4(route),
            [("192.168.1.0/24".parse().unwrap(), "eth0".to_owned())]
        );
        let route6 = "20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                      fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                      00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n\
                      20010db8000100000000000000000005 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001     eth0\n";
        assert_eq!(
            routes_v6(route6),
            [("2001:db8:1::/64".parse().unwrap(), "eth0".to_owned())]
        );
    }
}
