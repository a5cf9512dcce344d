//! The control protocol: one JSON request line, one JSON response line, over a Unix socket.
//!
//! Both sides use these types, so the CLI and the daemon cannot disagree on a field. Every
//! message carries [`PROTOCOL_VERSION`]; a daemon answers a request of another version with
//! [`ErrorKind::Version`] instead of guessing.

use serde::{Deserialize, Serialize};

use crate::addr::IpNet;
use crate::duration::BanTime;

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest response line the CLI accepts (a list of many bans).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Longest request line the daemon reads: requests are small, and whatever a client sends is
/// bounded before it is looked at.
pub const MAX_REQUEST: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Active bans, of one jail or all.
    List { jail: Option<String> },
    /// Ban an address or prefix in a jail, for the jail's bantime or `time`.
    Ban {
        jail: String,
        target: IpNet,
        time: Option<BanTime>,
    },
    /// Remove the ban covering an address (in one jail, or every jail).
    Unban { target: IpNet, jail: Option<String> },
    /// Remove every ban (of one jail, or all).
    UnbanAll { jail: Option<String> },
    /// Remove every ban another host of the fleet made here.
    UnbanOrigin { origin: String },
    /// Jails, their sources, counters and drops.
    Status { jail: Option<String> },
    /// Read the configuration file again and apply it (or change nothing if it is invalid).
    Reload,
    /// The configuration the daemon runs, as TOML with every default applied.
    Config,
    /// Change the daemon's log level (`debug`, or a filter such as
    /// `info,banctl::source=debug`) until it stops or is told another.
    LogLevel { level: String },
}

impl Request {
    /// Whether the request changes state (as opposed to reading it).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Request::Ban { .. }
                | Request::Unban { .. }
                | Request::UnbanAll { .. }
                | Request::UnbanOrigin { .. }
                | Request::Reload
                | Request::LogLevel { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    pub response: Response,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Bans {
        bans: Vec<BanInfo>,
    },
    Banned {
        jail: String,
        target: IpNet,
        time: BanTime,
        /// A wider ban in force that already covers the target: nothing new was written to
        /// the kernel (the ban is kept, and enforced once the wider one ends).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        covered_by: Option<IpNet>,
        /// The target was banned in the jail already: nothing changed.
        #[serde(default)]
        already: bool,
    },
    Unbanned {
        removed: Vec<BanInfo>,
    },
    Status {
        jails: Vec<JailStatus>,
        /// The fleet link, when this host is in a fleet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fleet: Option<Box<crate::fleet::LinkStatus>>,
    },
    Reloaded {
        jails: Vec<String>,
        added: Vec<String>,
        removed: Vec<String>,
        /// Bans of removed jails that left the kernel (the state store keeps them).
        #[serde(default)]
        lifted: u64,
        /// Bans of added (re-enabled) jails put back from the state store.
        #[serde(default)]
        restored: u64,
        /// What is valid but will not work yet (missing or unreadable log files).
        #[serde(default)]
        warnings: Vec<String>,
    },
    Config {
        /// The main file, then its drop-ins (`conf.d/*.toml`), as read at start or last reload.
        files: Vec<String>,
        toml: String,
    },
    LogLevel {
        level: String,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// One active ban. `banctl list --json` prints these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    pub jail: String,
    pub address: IpNet,
    /// Seconds until the kernel lifts it; `null` for a permanent ban.
    pub expires_in_s: Option<u64>,
    /// The ban's full length in seconds; `null` for a permanent ban.
    pub bantime_s: Option<u64>,
    /// Which ban of this address it is (1 for the first); `null` when the state store does not
    /// know it (read from the kernel with the daemon down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_count: Option<u32>,
    /// Who decided it: `failures`, `manual`, `recidive`, `kernel` or `remote:HOST`; `null` when
    /// the state store does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailStatus {
    pub name: String,
    pub filter: String,
    pub sources: Vec<String>,
    /// Each source's state, in the order of `sources`: `following`, `waiting for the file`,
    /// `waiting for the directory`, `unreadable: …`.
    #[serde(default)]
    pub source_states: Vec<String>,
    pub ports: Vec<String>,
    pub protocol: String,
    pub maxretry: u32,
    pub findtime_s: u64,
    /// The ban length as written: `1h`, `permanent`.
    pub bantime: BanTime,
    /// The ban length in seconds; `null` for permanent bans.
    #[serde(default)]
    pub bantime_s: Option<u64>,
    /// Addresses with failures inside the window.
    pub tracked: usize,
    pub active_bans: usize,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Failures counted since the daemon started.
    #[serde(default)]
    pub failures_total: u64,
    /// Bans made since the daemon started.
    #[serde(default)]
    pub bans_total: u64,
    /// The addresses and prefixes the jail never bans (its `ignoreip`; loopback and the
    /// host's own addresses too when `ignoreself` is on).
    #[serde(default)]
    pub ignoreip: Vec<String>,
    #[serde(default)]
    pub ignoreself: bool,
    /// How repeated bans grow (`factor 2, at most 1w, counting this jail's bans`); `null`
    /// without escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
    /// The jail's active bans; only when `status` was asked for this one jail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bans: Option<Vec<BanInfo>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be parsed.
    BadRequest,
    /// The client speaks another protocol version.
    Version,
    UnknownJail,
    /// Nothing to unban.
    NotBanned,
    /// The address is in the jail's ignore list (or loopback, or the host's own).
    Ignored,
    /// The prefix is broader than the jail's `min_prefix`.
    TooBroad,
    /// The kernel refused the change.
    Firewall,
    /// The configuration file is invalid (the message lists every error), or a setting sent
    /// (a log level) is.
    Config,
    PermissionDenied,
    /// The daemon is shutting down.
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format is a contract with older and newer CLIs: pin it.
    #[test]
    fn wire_format_is_stable() {
        let req = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request: Request::Ban {
                jail: "sshd".into(),
                target: "192.0.2.1".parse().unwrap(),
                time: Some(BanTime::Permanent),
            },
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"request":{"type":"ban","jail":"sshd","target":"192.0.2.1","time":"permanent"}}"#
        );
        assert_eq!(serde_json::from_str::<RequestEnvelope>(&json).unwrap(), req);

        let resp = ResponseEnvelope {
            version: PROTOCOL_VERSION,
            response: Response::Error {
                kind: ErrorKind::NotBanned,
                message: "x".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"version":1,"response":{"type":"error","kind":"not_banned","message":"x"}}"#
        );
    }

    /// The fields of `list --json` and `status --json` are the README's "JSON output" tables.
    #[test]
    fn json_fields_are_the_documented_ones() {
        let readme = include_str!("../../README.md");
        let section = readme.split("### JSON output").nth(1).unwrap();
        let table = |after: &str| -> Vec<String> {
            section
                .split(after)
                .nth(1)
                .unwrap()
                .lines()
                .skip_while(|l| !l.starts_with("| field"))
                .skip(2)
                .take_while(|l| l.starts_with("| `"))
                .map(|l| l[3..].split('`').next().unwrap().to_owned())
                .collect()
        };
        let ban = BanInfo {
            jail: "sshd".into(),
            address: "192.0.2.1".parse().unwrap(),
            expires_in_s: Some(10),
            bantime_s: Some(60),
            ban_count: Some(1),
            origin: Some("failures".into()),
        };
        let status = JailStatus {
            name: "sshd".into(),
            filter: "sshd".into(),
            sources: vec![],
            source_states: vec![],
            ports: vec![],
            protocol: "tcp".into(),
            maxretry: 5,
            findtime_s: 600,
            bantime: BanTime::Permanent,
            bantime_s: None,
            tracked: 0,
            active_bans: 0,
            dropped_packets: 0,
            dropped_bytes: 0,
            failures_total: 0,
            bans_total: 0,
            ignoreip: vec![],
            ignoreself: true,
            escalation: Some("x".into()),
            bans: Some(vec![ban.clone()]),
        };
        let keys = |v: serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let mut documented = table("`banctl list --json`: an array");
        documented.sort();
        let mut actual = keys(serde_json::to_value(&ban).unwrap());
        actual.sort();
        assert_eq!(actual, documented);
        let mut documented = table("`banctl status --json`: an array");
        documented.sort();
        let mut actual = keys(serde_json::to_value(&status).unwrap());
        actual.sort();
        assert_eq!(actual, documented);
    }

    #[test]
    fn hostile_requests_are_errors() {
        for bad in [
            r#"{"version":1,"request":{"type":"ban","jail":"x","target":"not-an-ip"}}"#,
            r#"{"version":1,"request":{"type":"format_disk"}}"#,
            r#"{"version":1,"request":{"type":"list","jail":null,"extra":1}}"#,
            "\u{0}",
        ] {
            assert!(
                serde_json::from_str::<RequestEnvelope>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
