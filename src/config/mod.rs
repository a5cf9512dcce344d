//! Configuration: a TOML file of jails, parsed into [`raw`] types, then validated into [`Config`].
//!
//! **Invariant:** a [`Config`] is fully valid (every regex compiled, every address parsed);
//! loading never stops at the first problem: all of them are reported, each with file, line
//! and key.

pub mod effective;
mod fleet;
mod raw;

pub use fleet::{Apply, Auth, FLEET_JAIL, FleetConfig, Role, Tls};

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::addr::IpNet;
use crate::duration::{BanTime, parse_duration};
use crate::filter::date::Dates;
use crate::filter::{DatePattern, Filter, Pattern};
use crate::firewall::{JailRules, PortRange, Protocol};
use crate::notify::{NotifyConfig, Target, exec, webhook};
use crate::source::journal::JournalSpec;
use raw::{DurationValue, PortValue, RawConfig, RawEscalation, RawJail, RawNotify, RawPrefixLens};

pub const DEFAULT_CONFIG: &str = "/etc/banctl/banctl.toml";
pub const DEFAULT_SOCKET: &str = "/run/banctl/banctl.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/banctl";

const DEFAULT_BANTIME: Duration = Duration::from_secs(600);
const DEFAULT_FINDTIME: Duration = Duration::from_secs(600);
const DEFAULT_MAXRETRY: u32 = 5;
/// Addresses a jail keeps failure windows for; beyond it the least promising are evicted.
pub const DEFAULT_MAX_TRACKED: usize = 100_000;
/// Jail names become set names (`<jail>_v4`); keep them short and plain.
const MAX_JAIL_NAME: usize = 32;
/// How long the ban history is kept (escalation and recidive look this far back).
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_ESCALATION_FACTOR: f64 = 2.0;
/// How long one notification attempt may take, and how often a webhook is retried.
const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_WEBHOOK_RETRIES: u32 = 3;

/// A prefix length per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLens {
    pub v4: u8,
    pub v6: u8,
}

impl PrefixLens {
    pub fn for_addr(&self, addr: std::net::IpAddr) -> u8 {
        if crate::addr::canonical(addr).is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

/// Ban single IPv4 addresses and IPv6 /64s (what one customer usually gets).
pub const DEFAULT_BAN_PREFIX: PrefixLens = PrefixLens { v4: 32, v6: 64 };
/// Never ban anything broader than a /16 (IPv4) or /32 (IPv6).
pub const DEFAULT_MIN_PREFIX: PrefixLens = PrefixLens { v4: 16, v6: 32 };

/// What a jail does with a failure that names a host instead of an address (fail2ban's
/// `usedns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UseDns {
    /// Nothing (the default): a name is never resolved nor banned.
    #[default]
    No,
    /// Logged as a warning, never resolved.
    Warn,
    /// Resolved (forward lookup, 3 s timeout); each address it has now counts the failure.
    Yes,
}

/// Which log source a jail reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    /// The log files if one of them exists when the daemon starts, else the journal.
    Auto,
    File,
    Journal,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The drop-ins read after it (`conf.d/*.toml`), in order.
    pub drop_ins: Vec<PathBuf>,
    pub daemon: DaemonConfig,
    /// Enabled jails only, sorted by name.
    pub jails: Vec<JailConfig>,
    /// `[[notify]]` entries, in the order written.
    pub notify: Vec<NotifyConfig>,
    /// `[fleet]`, if this host shares bans with others.
    pub fleet: Option<FleetConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Members may change state over the control socket (ban, unban, reload), like root.
    pub admin_group: Option<Group>,
    /// Members may read state (list, status).
    pub read_group: Option<Group>,
    /// How long the ban history is kept.
    pub history: Duration,
    /// On the first start, read the existing lines of each source back to its jails' findtime
    /// (dated lines only), so that an attack in progress is counted.
    pub readback: bool,
    /// Where the Prometheus metrics are served (a loopback address), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Longer bans for addresses banned before (fail2ban's `bantime.increment`).
///
/// With `n` earlier bans of the address in the history, the ban lasts `bantime ×
/// multipliers[n]` (the last multiplier repeats) or, without multipliers, `bantime × factor^n`;
/// never more than `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub factor: f64,
    pub multipliers: Vec<u32>,
    pub max: Option<Duration>,
    /// Count earlier bans in every jail, not only this one.
    pub across_jails: bool,
}

impl Escalation {
    /// In words, as `banctl status JAIL` shows it: `bantime × 2^n, at most 1w, counting
    /// this jail's bans`.
    pub fn describe(&self) -> String {
        let growth = if self.multipliers.is_empty() {
            format!("bantime × {}^n", self.factor)
        } else {
            let list: Vec<String> = self.multipliers.iter().map(u32::to_string).collect();
            format!("bantime × [{}] (the last repeats)", list.join(", "))
        };
        let max = self.max.map_or(String::new(), |m| {
            format!(", at most {}", crate::duration::format_duration(m))
        });
        let scope = if self.across_jails {
            "every jail's"
        } else {
            "this jail's"
        };
        format!("{growth} for the n-th earlier ban{max}, counting {scope} bans")
    }

    /// The ban time for an address with `previous` earlier bans.
    pub fn bantime(&self, base: BanTime, previous: u32) -> BanTime {
        let BanTime::Finite(base) = base else {
            return BanTime::Permanent;
        };
        let scale = match self.multipliers.as_slice() {
            [] => self
                .factor
                .powi(i32::try_from(previous).unwrap_or(i32::MAX)),
            list => f64::from(list[(previous as usize).min(list.len() - 1)]),
        };
        // Saturates rather than overflows; `max` then caps it.
        let secs = (base.as_secs_f64() * scale).min(u64::MAX as f64 / 2.0);
        let time = Duration::from_secs_f64(secs.max(1.0));
        BanTime::Finite(self.max.map_or(time, |max| time.min(max)))
    }
}

/// A Unix group, resolved when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct JailConfig {
    pub name: String,
    /// `sshd` for a built-in filter, `inline` for `failregex` written in the jail.
    pub filter_name: String,
    pub filter: Filter,
    pub logpaths: Vec<String>,
    /// The journal entries this jail reads, if any.
    pub journal: Option<JournalSpec>,
    /// Which of `logpaths` and `journal` the daemon reads.
    pub source: SourceChoice,
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    pub bantime: BanTime,
    pub findtime: Duration,
    pub maxretry: u32,
    pub ignoreip: Vec<IpNet>,
    /// Never ban loopback addresses (127.0.0.0/8, ::1).
    pub ignoreself: bool,
    /// Most addresses with a failure window at once (bounds the jail's memory).
    pub max_tracked: usize,
    /// Also drop banned sources in routed traffic (the `forward` chain).
    pub forward: bool,
    /// Prefix a ban covers (an IPv6 attacker rotates inside its /64).
    pub ban_prefix: PrefixLens,
    /// Shortest prefix ever banned; broader bans are refused.
    pub min_prefix: PrefixLens,
    /// Count failures per `ban_prefix` rather than per address.
    pub count_by_prefix: bool,
    pub escalation: Option<Escalation>,
    /// A recidive jail reads no log: its failures are the bans of the other jails, counted from
    /// the ban history, and its ban covers every port unless `ports` says otherwise.
    pub recidive: bool,
    /// Reads the timestamps of this jail's log lines (`logtimezone`: the zone of dates that
    /// carry none; the system's by default).
    pub dates: Dates,
    pub usedns: UseDns,
    /// The `failregex` and `ignoreregex` written in the jail (or its defaults), as written:
    /// they add to the filter's (`banctl config` shows them).
    pub written_patterns: (Vec<String>, Vec<String>),
}

impl Config {
    /// What is valid but will not work yet: logpaths whose files or directories are missing
    /// or unreadable now, with the jail's name (and the unit's sandbox, when it hides them).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for jail in &self.jails {
            if jail.source == SourceChoice::Journal {
                continue;
            }
            for path in &jail.logpaths {
                let state = crate::source::path_state(path);
                let waiting = matches!(
                    state,
                    crate::source::PathState::WaitingForFile
                        | crate::source::PathState::WaitingForDirectory
                );
                // With a journal to fall back on, `source = "auto"` reads it meanwhile.
                let journal_instead =
                    waiting && jail.journal.is_some() && jail.source == SourceChoice::Auto;
                if state != crate::source::PathState::Following && !journal_instead {
                    out.push(format!(
                        "jails.{}.logpath: {path}: {state}{}",
                        jail.name,
                        crate::source::sandbox_hint(path)
                    ));
                }
            }
        }
        out
    }
}

impl JailConfig {
    pub fn rules(&self) -> JailRules {
        JailRules {
            name: self.name.clone(),
            ports: self.ports.clone(),
            protocol: self.protocol,
            forward: self.forward,
        }
    }

    /// Whether this jail must never ban `net`: an ignoreip entry overlaps it, or (with
    /// `ignoreself`) it is loopback or overlaps one of `own`, the host's addresses.
    pub fn ignores(&self, net: &IpNet, own: &[IpNet]) -> bool {
        let overlaps = |i: &IpNet| i.covers(net) || net.covers(i);
        (self.ignoreself && (net.is_loopback() || own.iter().any(overlaps)))
            || self.ignoreip.iter().any(overlaps)
    }

    /// Whether `net` is broader than this jail may ever ban.
    pub fn too_broad(&self, net: &IpNet) -> bool {
        net.prefix_len() < self.min_prefix.for_addr(net.addr())
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.key,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} error(s) in the configuration:\n{}", .0.len(), .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// The directory of drop-ins beside the main file: `conf.d/*.toml`, merged in name order.
pub const DROP_IN_DIR: &str = "conf.d";

impl Config {
    /// The files it was read from: the main one, then its drop-ins.
    pub fn files(&self) -> Vec<String> {
        std::iter::once(&self.path)
            .chain(&self.drop_ins)
            .map(|p| p.display().to_string())
            .collect()
    }

    /// Reads and validates a configuration file and its drop-ins ([`drop_ins`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut files = Vec::new();
        for file in std::iter::once(path.to_owned()).chain(drop_ins(path)?) {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            files.push((file, text));
        }
        Config::parse_files(&files)
    }

    /// Validates configuration text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse_files(&[(path.to_owned(), text.to_owned())])
    }

    /// Validates a main file and its drop-ins, given as (path, text), the main file first.
    /// Tables merge key by key (a later file's value wins), `[[notify]]` entries add up;
    /// every error names the file it is in.
    pub fn parse_files(files: &[(PathBuf, String)]) -> Result<Config, ConfigError> {
        let texts = Text::place(files);
        let mut cx = Context {
            files: &texts,
            errors: Vec::new(),
            fleet_jail: false,
            built: Vec::new(),
        };
        let raw = cx.deserialize();
        let config = raw.and_then(|raw| cx.validate(&raw));
        match config {
            Some(config) if cx.errors.is_empty() => Ok(config),
            _ => {
                // File by file in reading order, then by line.
                cx.errors
                    .sort_by_cached_key(|d| (texts.iter().position(|t| t.path == d.file), d.line));
                Err(ConfigError::Invalid(cx.errors))
            }
        }
    }
}

/// The drop-ins of the configuration at `path`: `conf.d/*.toml` beside it, in name order
/// (none when there is no such directory).
pub fn drop_ins(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(DROP_IN_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The control socket a configuration file names (`[daemon] socket`, also in a drop-in),
/// read leniently: the CLI finds the daemon even when the file has errors elsewhere. `None`
/// when the file cannot be read or names none.
pub fn socket_named_in(path: &Path) -> Option<PathBuf> {
    let mut socket = None;
    for file in std::iter::once(path.to_owned()).chain(drop_ins(path).unwrap_or_default()) {
        let Some(table) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        else {
            continue;
        };
        if let Some(s) = table
            .get("daemon")
            .and_then(|d| d.get("socket"))
            .and_then(|s| s.as_str())
        {
            socket = Some(PathBuf::from(s));
        }
    }
    socket
}

/// One file of a configuration, its text preceded by as many line ends as the files before it
/// are long: the spans of every file's values are then distinct, so that one merged document
/// still says which file and line each value came from.
struct Text {
    path: PathBuf,
    /// Where the file's own text begins in `padded`.
    start: usize,
    padded: String,
}

impl Text {
    fn place(files: &[(PathBuf, String)]) -> Vec<Text> {
        let mut start = 0;
        files
            .iter()
            .map(|(path, text)| {
                let mut padded = "\n".repeat(start);
                padded.push_str(text);
                let placed = Text {
                    path: path.clone(),
                    start,
                    padded,
                };
                start += text.len() + 1;
                placed
            })
            .collect()
    }

    /// The line of `offset` in this file.
    fn line(&self, offset: usize) -> usize {
        line_of(
            &self.padded[self.start.min(self.padded.len())..],
            offset.saturating_sub(self.start),
        )
    }
}

struct Context<'t> {
    /// The main file first, then its drop-ins.
    files: &'t [Text],
    errors: Vec<Diagnostic>,
    /// Whether the jail named `fleet` takes the fleet's bans (and so reads no log).
    fleet_jail: bool,
    /// The filters built so far, by what each was built from: jails with the same `filter`
    /// and patterns share one (its automata built once, kept once).
    built: Vec<(FilterSource, Filter)>,
}

/// What a jail's filter is built from (besides an inline `fail2ban_filter`): the `filter`
/// it names and its inline patterns, as written. The same source builds the same filter.
#[derive(PartialEq, Eq)]
struct FilterSource {
    filter: Option<String>,
    failregex: Vec<String>,
    ignoreregex: Vec<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

impl Context<'_> {
    /// The main configuration file.
    fn main_file(&self) -> &Path {
        &self.files[0].path
    }

    /// Checks that a key naming a file with a secret names it by its absolute path.
    fn secret_file(&mut self, v: &Spanned<String>, key: impl Into<String>) {
        if !v.get_ref().starts_with('/') {
            self.error(
                v.span(),
                key,
                "must be an absolute path (a file, never the secret itself)",
            );
        }
    }

    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl fmt::Display) {
        let file = self
            .files
            .iter()
            .rev()
            .find(|f| f.start <= span.start)
            .unwrap_or(&self.files[0]);
        self.errors.push(Diagnostic {
            file: file.path.clone(),
            line: file.line(span.start),
            key: key.into(),
            message: message.to_string(),
        });
    }

    /// TOML syntax, types and unknown keys.
    fn deserialize(&mut self) -> Option<RawConfig> {
        let mut docs = Vec::new();
        for file in self.files {
            match DeTable::parse(&file.padded) {
                Ok(doc) => docs.push(doc),
                Err(e) => {
                    let span = e.span().unwrap_or(file.start..file.start);
                    self.error(span, "(syntax)", e.message().trim());
                }
            }
        }
        if docs.len() < self.files.len() {
            return None;
        }
        let mut docs = docs.into_iter();
        let mut doc = docs.next()?;
        for drop_in in docs {
            merge(doc.get_mut(), drop_in.into_inner());
        }
        // A value of the wrong type stops serde at the first one: each is reported, taken
        // out, and the rest read again, so that every error of the file is reported at once.
        let mut unknown = std::collections::BTreeSet::new();
        let mut raw = None;
        for _ in 0..64 {
            let de = toml::de::Deserializer::from(doc.clone());
            let read = serde_ignored::deserialize(de, |path| {
                unknown.insert(path_segments(&path));
            });
            match read {
                Ok(read) => {
                    raw = Some(read);
                    break;
                }
                Err(e) => {
                    let span = e.span().unwrap_or(0..0);
                    let key = key_at(&doc, span.start).unwrap_or_else(|| "(value)".to_owned());
                    let example = example_of(key.rsplit('.').next().unwrap_or_default());
                    // serde's words for the value types that take two spellings.
                    let message = e
                        .message()
                        .trim()
                        .replace(
                            "data did not match any variant of untagged enum DurationValue",
                            "not a duration",
                        )
                        .replace(
                            "data did not match any variant of untagged enum PortValue",
                            "not a port",
                        )
                        .replace(
                            "data did not match any variant of untagged enum OneOrMany",
                            "not a path or a list of paths",
                        );
                    self.error(span.clone(), key, format!("{message}{example}"));
                    if !remove_at(doc.get_mut(), span.start) {
                        break;
                    }
                }
            }
        }
        for segments in unknown {
            let span = key_span(&doc, &segments).unwrap_or(0..0);
            let (key, table) = segments
                .split_last()
                .map_or(("", &[][..]), |(k, t)| (k.as_str(), t));
            // Notifiers are a list: the index is no table.
            let table: Vec<String> = table
                .iter()
                .filter(|s| s.parse::<usize>().is_err())
                .cloned()
                .collect();
            let hint = crate::suggest::did_you_mean(key, raw::keys_at(&table).iter().copied());
            self.error(span, segments.join("."), format!("unknown key{hint}"));
        }
        // Values taken out were reported: the rest is still validated.
        raw
    }

    fn validate(&mut self, raw: &RawConfig) -> Option<Config> {
        let daemon = DaemonConfig {
            socket: raw
                .daemon
                .socket
                .as_ref()
                .map_or(DEFAULT_SOCKET.into(), |s| s.get_ref().into()),
            state_dir: raw
                .daemon
                .state_dir
                .as_ref()
                .map_or(DEFAULT_STATE_DIR.into(), |s| s.get_ref().into()),
            admin_group: None,
            read_group: None,
            history: DEFAULT_HISTORY,
            readback: raw.daemon.readback.as_ref().is_none_or(|v| *v.get_ref()),
            metrics: None,
        };
        let mut daemon = daemon;
        daemon.admin_group = self.group(&raw.daemon.admin_group, "daemon.admin_group");
        daemon.read_group = self.group(&raw.daemon.read_group, "daemon.read_group");
        if let Some(v) = &raw.daemon.history {
            daemon.history = self
                .duration(v, "daemon.history".into())
                .unwrap_or(DEFAULT_HISTORY);
        }
        for (key, value) in [
            ("daemon.socket", &raw.daemon.socket),
            ("daemon.state_dir", &raw.daemon.state_dir),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.get_ref().starts_with('/')) {
                self.error(v.span(), key, "must be an absolute path");
            }
        }
        if let Some(v) = &raw.daemon.metrics {
            match v.get_ref().parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => daemon.metrics = Some(addr),
                Ok(_) => self.error(
                    v.span(),
                    "daemon.metrics",
                    "metrics are served on a loopback address only (127.0.0.1:9617, [::1]:9617); \
                     scrape through a proxy from elsewhere",
                ),
                Err(_) => self.error(
                    v.span(),
                    "daemon.metrics",
                    format!("{:?} is not an address:port", v.get_ref()),
                ),
            }
        }
        if let Some(v) = &raw.defaults.recidive {
            self.error(
                v.span(),
                "defaults.recidive",
                "recidive is set on one jail, not in [defaults]",
            );
        }
        let fleet = raw.fleet.as_ref().and_then(|f| self.fleet(f));
        // From what is written, so that an error elsewhere in [fleet] still reports the
        // fleet jail's own errors.
        self.fleet_jail = raw.fleet.as_ref().is_some_and(|f| {
            f.get_ref()
                .role
                .as_ref()
                .is_none_or(|r| r.get_ref() != "reporter")
        });
        let mut jails = Vec::new();
        for (name, jail) in &raw.jails {
            if let Some(jail) = self.jail(name, jail, &raw.defaults) {
                jails.push(jail);
            }
        }
        if self.fleet_jail && !raw.jails.contains_key(FLEET_JAIL) {
            // Remote bans whose jail this host lacks go here: every port, [defaults] apply.
            let span = raw.fleet.as_ref().map_or(0..0, Spanned::span);
            let mut implicit = RawJail::default();
            if raw.defaults.protocol.is_none() {
                // An upstream proxy's fleet jail drops a banned source's UDP too (QUIC).
                implicit.protocol = Some(Spanned::new(span.clone(), "both".to_owned()));
            }
            let implicit = Spanned::new(span, implicit);
            if let Some(jail) = self.jail(FLEET_JAIL, &implicit, &raw.defaults) {
                jails.push(jail);
                jails.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        let mut fleet = fleet;
        if let Some(f) = fleet.as_mut().filter(|_| {
            raw.fleet
                .as_ref()
                .is_some_and(|r| r.get_ref().keep.is_none())
        }) {
            f.keep = fleet::keep_for(&jails);
        }
        let names: Vec<&str> = raw.jails.keys().map(String::as_str).collect();
        let notify = raw
            .notify
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.notifier(i, n, &names))
            .collect();
        Some(Config {
            path: self.main_file().to_owned(),
            drop_ins: self.files[1..].iter().map(|f| f.path.clone()).collect(),
            daemon,
            jails,
            notify,
            fleet,
        })
    }

    /// One `[[notify]]` entry: exactly one of `url` (webhook) and `command` (exec).
    fn notifier(
        &mut self,
        i: usize,
        spanned: &Spanned<RawNotify>,
        jail_names: &[&str],
    ) -> Option<NotifyConfig> {
        let raw = spanned.get_ref();
        let key = |k: &str| format!("notify[{i}].{k}");
        let errors = self.errors.len();
        let mail_only = [
            ("from", raw.from.as_ref().map(Spanned::span)),
            ("smtp", raw.smtp.as_ref().map(Spanned::span)),
            ("starttls", raw.starttls.as_ref().map(Spanned::span)),
            ("user", raw.user.as_ref().map(Spanned::span)),
            (
                "password_file",
                raw.password_file.as_ref().map(Spanned::span),
            ),
        ];
        if raw.mail.is_none() {
            for (k, span) in mail_only {
                if let Some(span) = span {
                    self.error(
                        span,
                        key(k),
                        "only for a mail notifier (`mail = \"root@localhost\"`)",
                    );
                }
            }
        }
        let retries = |this: &mut Self| {
            raw.retries.as_ref().map_or(DEFAULT_WEBHOOK_RETRIES, |r| {
                u32::try_from(*r.get_ref())
                    .ok()
                    .filter(|n| *n <= 10)
                    .unwrap_or_else(|| {
                        this.error(r.span(), key("retries"), "retries is 0 to 10");
                        0
                    })
            })
        };
        let target = match (&raw.url, &raw.command, &raw.mail) {
            (None, None, Some(to)) => {
                if let Some(h) = &raw.headers {
                    self.error(h.span(), key("headers"), "only for a webhook");
                }
                let retries = retries(self);
                self.mail_target(i, raw, to, retries)
            }
            (Some(url), None, None) => {
                let headers: Vec<(String, String)> = raw
                    .headers
                    .as_ref()
                    .map(|h| h.get_ref().clone().into_iter().collect())
                    .unwrap_or_default();
                if let Some(h) = &raw.headers {
                    for (name, value) in h.get_ref() {
                        if let Err(e) = webhook::valid_header(name, value) {
                            self.error(h.span(), key("headers"), e);
                        }
                    }
                }
                let retries = retries(self);
                match url.get_ref().parse() {
                    Ok(url) => Some(Target::Webhook {
                        url,
                        headers,
                        retries,
                    }),
                    Err(e) => {
                        self.error(url.span(), key("url"), e);
                        None
                    }
                }
            }
            (None, Some(command), None) => {
                let misplaced = [
                    ("headers", raw.headers.as_ref().map(Spanned::span)),
                    ("retries", raw.retries.as_ref().map(Spanned::span)),
                ];
                for (k, span) in misplaced {
                    if let Some(span) = span {
                        self.error(
                            span,
                            key(k),
                            "only for a webhook: a program runs once per event (it may not be \
                             idempotent)",
                        );
                    }
                }
                match exec::validate(command.get_ref()) {
                    Ok(()) => Some(Target::Exec {
                        argv: command.get_ref().clone(),
                    }),
                    Err(e) => {
                        self.error(command.span(), key("command"), e);
                        None
                    }
                }
            }
            _ => {
                self.error(
                    spanned.span(),
                    format!("notify[{i}]"),
                    "a notifier has one of `url` (a webhook), `command` (a program) and `mail` \
                     (recipients)",
                );
                None
            }
        };
        let (mut on_ban, mut on_unban) = (true, false);
        if let Some(on) = &raw.on {
            (on_ban, on_unban) = (false, false);
            for event in on.get_ref() {
                match event.get_ref().as_str() {
                    "ban" => on_ban = true,
                    "unban" => on_unban = true,
                    other => self.error(
                        event.span(),
                        key("on"),
                        format!("{other:?} is not an event (ban, unban)"),
                    ),
                }
            }
        }
        let jails = raw.jails.as_ref().map(|list| {
            let mut jails = Vec::new();
            for jail in list.get_ref() {
                if !jail_names.contains(&jail.get_ref().as_str()) {
                    self.error(
                        jail.span(),
                        key("jails"),
                        format!("no jail {:?} in this file", jail.get_ref()),
                    );
                }
                jails.push(jail.get_ref().clone());
            }
            jails
        });
        let timeout = raw.timeout.as_ref().map_or(DEFAULT_NOTIFY_TIMEOUT, |t| {
            self.duration(t, key("timeout"))
                .unwrap_or(DEFAULT_NOTIFY_TIMEOUT)
        });
        if self.errors.len() > errors {
            return None;
        }
        Some(NotifyConfig {
            target: target?,
            on_ban,
            on_unban,
            jails,
            timeout,
        })
    }

    /// The SMTP settings of a `mail` notifier.
    fn mail_target(
        &mut self,
        i: usize,
        raw: &RawNotify,
        to: &Spanned<String>,
        retries: u32,
    ) -> Option<Target> {
        use crate::notify::mail;
        let key = |k: &str| format!("notify[{i}].{k}");
        let errors = self.errors.len();
        let recipients = mail::recipients(to.get_ref()).unwrap_or_else(|e| {
            self.error(to.span(), key("mail"), e);
            Vec::new()
        });
        let from = match &raw.from {
            Some(from) => match mail::mailbox(from.get_ref()) {
                Ok(from) => Some(from),
                Err(e) => {
                    self.error(from.span(), key("from"), e);
                    None
                }
            },
            // banctl@<this host>, or @localhost for a host name no address may hold.
            None => mail::mailbox(&format!(
                "banctl@{}",
                crate::notify::hostname_or_localhost()
            ))
            .or_else(|_| mail::mailbox("banctl@localhost"))
            .ok(),
        };
        let (host, port) = match &raw.smtp {
            Some(smtp) => mail::server(smtp.get_ref()).unwrap_or_else(|e| {
                self.error(smtp.span(), key("smtp"), e);
                (String::new(), 0)
            }),
            None => mail::server(mail::DEFAULT_SMTP).unwrap_or_default(),
        };
        let credentials = match (&raw.user, &raw.password_file) {
            (Some(user), Some(file)) => {
                self.secret_file(file, key("password_file"));
                Some((user.get_ref().clone(), PathBuf::from(file.get_ref())))
            }
            (Some(user), None) => {
                self.error(user.span(), key("user"), "a user needs password_file");
                None
            }
            (None, Some(file)) => {
                self.error(
                    file.span(),
                    key("password_file"),
                    "missing: password_file needs a user",
                );
                None
            }
            (None, None) => None,
        };
        let target = mail::MailTarget {
            to: recipients,
            from: from?,
            host,
            port,
            starttls: raw.starttls.as_ref().is_some_and(|t| *t.get_ref()),
            credentials,
        };
        if let Err(e) = target.validate() {
            let span = raw.user.as_ref().map_or(to.span(), Spanned::span);
            self.error(span, key("starttls"), e);
        }
        (self.errors.len() == errors).then(|| Target::Mail {
            mail: Box::new(target),
            retries,
        })
    }

    fn jail(
        &mut self,
        name: &str,
        spanned: &Spanned<RawJail>,
        defaults: &RawJail,
    ) -> Option<JailConfig> {
        let jail = spanned.get_ref();
        let key = |k: &str| format!("jails.{name}.{k}");
        let valid_name = !name.is_empty()
            && name.len() <= MAX_JAIL_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            self.error(
                spanned.span(),
                format!("jails.{name}"),
                format!("a jail name is 1 to {MAX_JAIL_NAME} letters, digits, '_' or '-'"),
            );
        }
        // A field of the jail, else of [defaults]; with the key that names where it came from.
        macro_rules! pick {
            ($field:ident) => {
                match (&jail.$field, &defaults.$field) {
                    (Some(v), _) => Some((v, key(stringify!($field)))),
                    (None, Some(v)) => Some((v, format!("defaults.{}", stringify!($field)))),
                    (None, None) => None,
                }
            };
        }
        if let Some((enabled, _)) = pick!(enabled)
            && !*enabled.get_ref()
        {
            return None;
        }
        let recidive = jail.recidive.as_ref().is_some_and(|v| *v.get_ref());
        let remote = self.fleet_jail && name == FLEET_JAIL;
        let reads_no_log = recidive || remote;
        let (filter_name, filter) = if reads_no_log {
            let (kind, why) = if recidive {
                (
                    "recidive",
                    "a recidive jail reads no log: its failures are other jails' bans",
                )
            } else {
                (
                    "fleet",
                    "the fleet jail reads no log: its bans come from other hosts",
                )
            };
            for (present, k) in [
                (jail.filter.is_some(), "filter"),
                (jail.failregex.is_some(), "failregex"),
                (jail.logpath.is_some(), "logpath"),
            ] {
                if present {
                    self.error(spanned.span(), key(k), why);
                }
            }
            (kind.to_owned(), Some(Filter::new(Vec::new(), Vec::new())))
        } else {
            self.filter(name, jail, defaults, spanned.span())
        };
        let journal = pick!(journal).and_then(|(v, k)| {
            let raw = v.get_ref();
            if raw.matches.is_empty() {
                self.error(
                    v.span(),
                    format!("{k}.matches"),
                    "name the entries to read, e.g. [\"_SYSTEMD_UNIT=ssh.service\"]",
                );
                return None;
            }
            for (i, m) in raw.matches.iter().enumerate() {
                let valid = m == "+"
                    || m.split_once('=').is_some_and(|(f, _)| {
                        !f.is_empty()
                            && f.bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    });
                if !valid {
                    self.error(
                        v.span(),
                        format!("{k}.matches[{i}]"),
                        format!("{m:?} is not FIELD=value (an upper-case field name) or +"),
                    );
                }
            }
            if let Some(dir) = raw.directory.as_ref().filter(|d| !d.starts_with('/')) {
                self.error(
                    v.span(),
                    format!("{k}.directory"),
                    format!("{dir:?} is not an absolute path"),
                );
            }
            Some(JournalSpec {
                matches: raw.matches.clone(),
                directory: raw.directory.as_ref().map(PathBuf::from),
            })
        });
        let journal = journal.filter(|_| !reads_no_log);
        let source = match pick!(source) {
            Some((v, k)) => match v.get_ref().as_str() {
                "auto" => SourceChoice::Auto,
                "file" => SourceChoice::File,
                "journal" => SourceChoice::Journal,
                other => {
                    self.error(
                        v.span(),
                        k,
                        format!("{other:?} is not \"auto\", \"file\" or \"journal\""),
                    );
                    SourceChoice::Auto
                }
            },
            None => SourceChoice::Auto,
        };
        if source == SourceChoice::Journal && journal.is_none() && !reads_no_log {
            self.error(
                spanned.span(),
                key("journal"),
                "missing: source = \"journal\" needs journal = { matches = [...] }",
            );
        }
        let needs_files = source == SourceChoice::File || journal.is_none();
        let logpaths = match pick!(logpath) {
            _ if reads_no_log => Vec::new(),
            Some((v, k)) => {
                let paths = v.get_ref().to_vec();
                for (i, p) in paths.iter().enumerate() {
                    if !p.starts_with('/') {
                        let at = if paths.len() > 1 {
                            format!("{k}[{i}]")
                        } else {
                            k.clone()
                        };
                        self.error(
                            v.span(),
                            at,
                            format!(
                                "{p:?} is not an absolute path (the daemon runs from /; write /var/log/…)"
                            ),
                        );
                    }
                }
                paths
            }
            None if !needs_files => Vec::new(),
            None => {
                self.error(
                    spanned.span(),
                    key("logpath"),
                    "missing: name the log file(s) this jail reads (or a journal)",
                );
                Vec::new()
            }
        };
        let mut ports = Vec::new();
        if let Some((list, k)) = pick!(ports) {
            for (i, p) in list.get_ref().iter().enumerate() {
                let parsed = match p.get_ref() {
                    PortValue::Number(n) => u16::try_from(*n)
                        .ok()
                        .filter(|n| *n > 0)
                        .map(PortRange::single)
                        .ok_or_else(|| format!("{n} is not a port (1 to 65535)")),
                    PortValue::Text(t) => t.parse::<PortRange>().map_err(|e| e.to_string()),
                };
                match parsed {
                    Ok(r) => ports.push(r),
                    Err(e) => self.error(p.span(), format!("{k}[{i}]"), e),
                }
            }
        }
        let protocol = match pick!(protocol) {
            Some((p, k)) => p.get_ref().parse().unwrap_or_else(|e: String| {
                self.error(p.span(), k, e);
                Protocol::Tcp
            }),
            None => Protocol::Tcp,
        };
        let bantime = match pick!(bantime) {
            Some((v, k)) => v.get_ref().text().parse().unwrap_or_else(|e| {
                self.error(v.span(), k, e);
                BanTime::Finite(DEFAULT_BANTIME)
            }),
            None => BanTime::Finite(DEFAULT_BANTIME),
        };
        let findtime = match pick!(findtime) {
            Some((v, k)) => self.duration(v, k).unwrap_or(DEFAULT_FINDTIME),
            None => DEFAULT_FINDTIME,
        };
        let maxretry = match pick!(maxretry) {
            Some((v, k)) => self.positive(v, k, "a count of failures", DEFAULT_MAXRETRY),
            None => DEFAULT_MAXRETRY,
        };
        let mut ignoreip = Vec::new();
        if let Some((list, k)) = pick!(ignoreip) {
            for (i, entry) in list.get_ref().iter().enumerate() {
                match entry.get_ref().parse::<IpNet>() {
                    Ok(net) => ignoreip.push(net),
                    Err(e) => self.error(entry.span(), format!("{k}[{i}]"), e),
                }
            }
        }
        let ignoreself = pick!(ignoreself).is_none_or(|(v, _)| *v.get_ref());
        let forward = pick!(forward).is_none_or(|(v, _)| *v.get_ref());
        // Rotation inside the banned prefix (an IPv6 /64) is one attacker: counted as one.
        let count_by_prefix = pick!(count_by_prefix).is_none_or(|(v, _)| *v.get_ref());
        let min_prefix = match pick!(min_prefix) {
            Some((v, k)) => {
                self.prefix_lens(v, &k, DEFAULT_MIN_PREFIX, PrefixLens { v4: 0, v6: 0 })
            }
            None => DEFAULT_MIN_PREFIX,
        };
        let ban_prefix = match pick!(ban_prefix) {
            Some((v, k)) => self.prefix_lens(v, &k, DEFAULT_BAN_PREFIX, min_prefix),
            None => DEFAULT_BAN_PREFIX,
        };
        let max_tracked = match pick!(max_tracked) {
            Some((v, k)) => self.positive(v, k, "a number of addresses", DEFAULT_MAX_TRACKED),
            None => DEFAULT_MAX_TRACKED,
        };
        let escalation = match pick!(escalation) {
            Some((v, k)) => self.escalation(v, &k),
            None => None,
        };
        let dates = match pick!(logtimezone) {
            Some((v, k)) => match Dates::zone(v.get_ref()) {
                Some(tz) => Dates::new(tz),
                None => {
                    self.error(
                        v.span(),
                        k,
                        format!(
                            "{:?} is not a time zone (an IANA name such as \"Europe/Berlin\", \"UTC\" or an offset such as \"+01:00\")",
                            v.get_ref()
                        ),
                    );
                    Dates::default()
                }
            },
            None => Dates::default(),
        };
        let usedns = match pick!(usedns) {
            Some((v, k)) => match v.get_ref().as_str() {
                "no" => UseDns::No,
                "warn" => UseDns::Warn,
                "yes" => UseDns::Yes,
                other => {
                    self.error(
                        v.span(),
                        k,
                        format!("{other:?} is not \"no\", \"warn\" or \"yes\""),
                    );
                    UseDns::No
                }
            },
            None => UseDns::No,
        };
        let written = |list: Option<&Spanned<Vec<Spanned<String>>>>| -> Vec<String> {
            list.iter()
                .flat_map(|l| l.get_ref().iter().map(|p| p.get_ref().clone()))
                .collect()
        };
        let written_patterns = if reads_no_log || jail.fail2ban_filter.is_some() {
            (Vec::new(), Vec::new())
        } else {
            (
                written(jail.failregex.as_ref().or(defaults.failregex.as_ref())),
                written(jail.ignoreregex.as_ref().or(defaults.ignoreregex.as_ref())),
            )
        };
        // The jail's `datepattern` over its filter's.
        let datepattern = match pick!(datepattern) {
            Some((v, k)) => match DatePattern::new(v.get_ref()) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error(v.span(), k, e.to_string());
                    None
                }
            },
            None => filter.as_ref().and_then(|f| f.datepattern().cloned()),
        };
        let (dates, filter) = match datepattern {
            Some(p) => (
                dates.with_pattern(p.clone()),
                filter.map(|f| f.with_datepattern(p)),
            ),
            None => (dates, filter),
        };
        Some(JailConfig {
            name: name.to_owned(),
            filter_name,
            filter: filter?,
            logpaths,
            journal,
            source,
            ports,
            protocol,
            bantime,
            findtime,
            maxretry,
            ignoreip,
            ignoreself,
            max_tracked,
            forward,
            ban_prefix,
            min_prefix,
            count_by_prefix,
            escalation,
            recidive,
            dates,
            usedns,
            written_patterns,
        })
    }

    fn escalation(&mut self, v: &Spanned<RawEscalation>, key: &str) -> Option<Escalation> {
        let raw = v.get_ref();
        if raw.enabled == Some(false) {
            return None;
        }
        let factor = raw.factor.unwrap_or(DEFAULT_ESCALATION_FACTOR);
        if !(1.0..=1000.0).contains(&factor) {
            self.error(
                v.span(),
                format!("{key}.factor"),
                format!("{factor} is not a factor from 1 to 1000"),
            );
        }
        let mut multipliers = Vec::new();
        for (i, m) in raw.multipliers.iter().flatten().enumerate() {
            match u32::try_from(*m) {
                Ok(m) if m >= 1 => multipliers.push(m),
                _ => self.error(
                    v.span(),
                    format!("{key}.multipliers[{i}]"),
                    format!("{m} is not a multiplier (1 or more)"),
                ),
            }
        }
        let max = raw.max.as_ref().and_then(|m| {
            parse_duration(&m.text())
                .map_err(|e| self.error(v.span(), format!("{key}.max"), e))
                .ok()
        });
        Some(Escalation {
            factor,
            multipliers,
            max,
            across_jails: raw.across_jails.unwrap_or(false),
        })
    }

    /// `{ v4 = N, v6 = M }`, each within its family's width and not below `floor`.
    fn prefix_lens(
        &mut self,
        v: &Spanned<RawPrefixLens>,
        key: &str,
        default: PrefixLens,
        floor: PrefixLens,
    ) -> PrefixLens {
        let raw = v.get_ref();
        let mut one = |value: Option<i64>, family: &str, max: u8, min: u8, default: u8| match value
        {
            None => default,
            Some(n) => match u8::try_from(n) {
                Ok(n) if n <= max && n >= min => n,
                _ => {
                    self.error(
                        v.span(),
                        format!("{key}.{family}"),
                        format!("{n} is not a prefix length from {min} to {max}"),
                    );
                    default
                }
            },
        };
        PrefixLens {
            v4: one(raw.v4, "v4", 32, floor.v4, default.v4),
            v6: one(raw.v6, "v6", 128, floor.v6, default.v6),
        }
    }

    /// A group name resolved to its gid (from the system's group database).
    fn group(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<Group> {
        let v = value.as_ref()?;
        match nix::unistd::Group::from_name(v.get_ref()) {
            Ok(Some(g)) => Some(Group {
                name: g.name,
                gid: g.gid.as_raw(),
            }),
            Ok(None) => {
                self.error(
                    v.span(),
                    key,
                    format!("no group named {:?} on this system", v.get_ref()),
                );
                None
            }
            Err(e) => {
                self.error(
                    v.span(),
                    key,
                    format!("cannot look up group {:?}: {e}", v.get_ref()),
                );
                None
            }
        }
    }

    /// An integer of 1 or more that fits `T`; else an error naming `what` it should be.
    fn positive<T: TryFrom<i64> + PartialOrd + From<u8>>(
        &mut self,
        v: &Spanned<i64>,
        key: String,
        what: &str,
        default: T,
    ) -> T {
        match T::try_from(*v.get_ref()) {
            Ok(n) if n >= T::from(1) => n,
            _ => {
                let message = format!("{} is not {what} (1 or more)", v.get_ref());
                self.error(v.span(), key, message);
                default
            }
        }
    }

    fn duration(&mut self, v: &Spanned<DurationValue>, key: String) -> Option<Duration> {
        parse_duration(&v.get_ref().text())
            .map_err(|e| self.error(v.span(), key, e))
            .ok()
    }

    /// The built-in filter named by `filter`, plus any inline `failregex` / `ignoreregex`.
    fn filter(
        &mut self,
        name: &str,
        jail: &RawJail,
        defaults: &RawJail,
        jail_span: Range<usize>,
    ) -> (String, Option<Filter>) {
        let key = |k: &str| format!("jails.{name}.{k}");
        let mut fail = Vec::new();
        let mut ignore = Vec::new();
        // The filter `filter` names, whole (its prefix and `maxlines` too).
        let mut named: Option<Filter> = None;
        let mut ok = true;
        let filter = jail.filter.as_ref().or(defaults.filter.as_ref());
        if let Some(inline) = &jail.fail2ban_filter {
            let raw = inline.get_ref();
            if jail.filter.is_some() || jail.failregex.is_some() {
                self.error(
                    inline.span(),
                    key("fail2ban_filter"),
                    "a jail has either `fail2ban_filter` or `filter`/`failregex`",
                );
                return ("fail2ban (inline)".to_owned(), None);
            }
            let definition = crate::fail2ban::Definition {
                failregex: raw.failregex.clone(),
                ignoreregex: raw.ignoreregex.clone(),
                prefregex: raw.prefregex.clone(),
                maxlines: raw.maxlines.unwrap_or(1),
                journalmatch: None,
                datepattern: raw.datepattern.clone(),
            };
            return match definition.compile(Path::new("inline filter")) {
                Ok(read) => ("fail2ban (inline)".to_owned(), Some(read.filter)),
                Err(e) => {
                    self.error(inline.span(), key("fail2ban_filter"), e);
                    ("fail2ban (inline)".to_owned(), None)
                }
            };
        }
        // Like `filter`, inline patterns may come from [defaults].
        let failregex = jail.failregex.as_ref().or(defaults.failregex.as_ref());
        let ignoreregex = jail.ignoreregex.as_ref().or(defaults.ignoreregex.as_ref());
        let texts = |list: Option<&Spanned<Vec<Spanned<String>>>>| -> Vec<String> {
            list.iter()
                .flat_map(|l| l.get_ref().iter().map(|p| p.get_ref().clone()))
                .collect()
        };
        let source = FilterSource {
            filter: filter.map(|f| f.get_ref().clone()),
            failregex: texts(failregex),
            ignoreregex: texts(ignoreregex),
        };
        if let Some((_, built)) = self.built.iter().find(|(s, _)| *s == source) {
            let name = source.filter.unwrap_or_else(|| "inline".to_owned());
            return (name, Some(built.clone()));
        }
        // `filter`: a fail2ban filter file (`…/sshd.conf[mode=aggressive]`), a banctl filter
        // file (a path) or a built-in name, each with its options.
        let filter_name = match filter {
            Some(f) => {
                let base = self
                    .main_file()
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty());
                let read = crate::filter_spec::resolve_in(f.get_ref(), base).map(|r| r.filter);
                match read {
                    Ok(filter) => named = Some(filter),
                    Err(e) => {
                        self.error(f.span(), key("filter"), e);
                        ok = false;
                    }
                }
                f.get_ref().clone()
            }
            None => "inline".to_owned(),
        };
        for (list, k, compile, out) in [
            (
                failregex,
                "failregex",
                Pattern::fail as fn(&str) -> _,
                &mut fail,
            ),
            (ignoreregex, "ignoreregex", Pattern::ignore, &mut ignore),
        ] {
            for (i, p) in list.iter().flat_map(|l| l.get_ref().iter()).enumerate() {
                match compile(p.get_ref()) {
                    Ok(pattern) => out.push(pattern),
                    Err(e) => {
                        self.error(p.span(), format!("{}[{i}]", key(k)), e);
                        ok = false;
                    }
                }
            }
        }
        if ok && fail.is_empty() && named.is_none() {
            let span = failregex.map_or(jail_span, |f| f.span());
            self.error(
                span,
                key("filter"),
                "no filter: set `filter` to a built-in name or write `failregex`",
            );
            ok = false;
        }
        // The named filter as it was built, with any inline patterns after its own.
        let filter = ok.then(|| match named {
            Some(filter) => filter.with_more(fail, ignore),
            None => Filter::new(fail, ignore),
        });
        if let Some(filter) = &filter {
            self.built.push((source, filter.clone()));
        }
        (filter_name, filter)
    }
}

/// The keys of a `serde_ignored` path (serde_spanned's private wrapper fields left out).
fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(index.to_string()),
        Path::Map { key, .. } if !key.starts_with("$__") => out.push(key.clone()),
        _ => {}
    }
    out
}

/// The span of the key at `segments` in the document.
fn key_span(doc: &Spanned<DeTable<'_>>, segments: &[String]) -> Option<Range<usize>> {
    let mut table = doc.get_ref();
    let mut span = None;
    for (i, seg) in segments.iter().enumerate() {
        let (k, v) = table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == seg.as_str())?;
        span = Some(k.span());
        if i + 1 < segments.len() {
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return span,
            }
        }
    }
    span
}

/// Merges a drop-in into the document: tables key by key, the drop-in's value winning;
/// arrays of tables (`[[notify]]`) add up.
fn merge<'i>(into: &mut DeTable<'i>, from: DeTable<'i>) {
    for (key, value) in from {
        let Some(old) = into.get_mut(key.get_ref().as_ref()) else {
            into.insert(key, value);
            continue;
        };
        let span = value.span();
        match (old.get_mut(), value.into_inner()) {
            (DeValue::Table(old), DeValue::Table(new)) => merge(old, new),
            (DeValue::Array(old), DeValue::Array(new))
                if [&*old, &new]
                    .iter()
                    .all(|a| a.iter().all(|v| matches!(v.get_ref(), DeValue::Table(_)))) =>
            {
                for table in new {
                    old.push(table);
                }
            }
            (_, new) => *old = Spanned::new(span, new),
        }
    }
}

/// Takes out of `table` the value (not a table) whose key or value contains `offset`.
fn remove_at(table: &mut DeTable<'_>, offset: usize) -> bool {
    let found = table
        .iter()
        .find(|(k, v)| {
            let here = v.span().contains(&offset) || k.span().contains(&offset);
            here && !matches!(v.get_ref(), DeValue::Table(_))
        })
        .map(|(k, _)| k.get_ref().to_string());
    if let Some(key) = found {
        return table.remove(key.as_str()).is_some();
    }
    table.iter_mut().any(|(_, v)| match v.get_mut() {
        DeValue::Table(t) => remove_at(t, offset),
        _ => false,
    })
}

/// How a value of `key` is written, for type errors.
fn example_of(key: &str) -> &'static str {
    match key {
        "maxretry" | "max_tracked" | "retries" | "max_per_minute" | "queue" | "replicas" => {
            ": write a number, like maxretry = 5"
        }
        "bantime" | "findtime" | "history" | "timeout" | "wait" | "keep" => {
            ": write a duration in quotes, like bantime = \"1h\" (or seconds: 3600)"
        }
        "ports" => ": write a list, like ports = [80, 443] or ports = [\"8000-8100\"]",
        "logpath" => ": write a path or a list, like logpath = \"/var/log/auth.log\"",
        "ignoreip" | "failregex" | "ignoreregex" | "servers" | "on" | "jails" | "command" => {
            ": write a list in brackets, like ignoreip = [\"10.0.0.0/8\"]"
        }
        "enabled" | "ignoreself" | "forward" | "recidive" | "readback" | "count_by_prefix" => {
            ": write true or false"
        }
        _ => "",
    }
}

/// The dotted key whose value contains `offset` (for type errors that only carry a span).
fn key_at(doc: &Spanned<DeTable<'_>>, offset: usize) -> Option<String> {
    fn walk(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
        table.iter().find_map(|(k, v)| {
            let name = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            match v.get_ref() {
                // `[a.b]` headers give tables spans that need not cover their keys: look inside.
                DeValue::Table(t) => walk(t, offset, &name),
                _ if v.span().contains(&offset) || k.span().contains(&offset) => Some(name),
                _ => None,
            }
        })
    }
    walk(doc.get_ref(), offset, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("t.toml"), text).map_err(|e| match e {
            ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        })
    }

    #[test]
    fn escalation_multiplies_and_caps() {
        let hour = BanTime::Finite(Duration::from_secs(3600));
        let by_factor = Escalation {
            factor: 2.0,
            multipliers: Vec::new(),
            max: Some(Duration::from_secs(3 * 3600)),
            across_jails: false,
        };
        let secs = |t: BanTime| match t {
            BanTime::Finite(d) => d.as_secs(),
            BanTime::Permanent => u64::MAX,
        };
        let got: Vec<u64> = (0..4).map(|n| secs(by_factor.bantime(hour, n))).collect();
        assert_eq!(got, [3600, 7200, 10800, 10800]);
        assert_eq!(by_factor.bantime(BanTime::Permanent, 3), BanTime::Permanent);
        // A huge count saturates instead of overflowing.
        assert_eq!(secs(by_factor.bantime(hour, u32::MAX)), 10800);
        let listed = Escalation {
            multipliers: vec![1, 5, 30],
            max: None,
            ..by_factor
        };
        let got: Vec<u64> = (0..5).map(|n| secs(listed.bantime(hour, n))).collect();
        assert_eq!(got, [3600, 18000, 108_000, 108_000, 108_000]);
    }

    #[test]
    fn recidive_jails_read_no_log_and_escalation_is_checked() {
        let text = r#"
[defaults.escalation]
factor = 0.5
multipliers = [1, 0]

[jails.recidive]
recidive = true
logpath = "/var/log/x"
bantime = "1w"
"#;
        let errors = parse(text).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("defaults.escalation.factor: 0.5 is not a factor")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("defaults.escalation.multipliers[1]")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("jails.recidive.logpath: a recidive jail reads no log")),
            "{errors:?}"
        );
        let ok = parse(
            "[jails.recidive]\nrecidive = true\nbantime = \"1w\"\n[jails.recidive.escalation]\nacross_jails = true\n",
        )
        .unwrap();
        let jail = &ok.jails[0];
        assert!(jail.recidive && jail.logpaths.is_empty() && jail.ports.is_empty());
        assert!(jail.escalation.as_ref().unwrap().across_jails);
    }

    #[test]
    fn fleet_roles_secrets_from_files_and_every_error_at_once() {
        let errors = parse(
            r#"
[fleet]
role = "leader"
name = "web 1"
servers = ["10.0.0.1:4222", "nats://10.0.0.2:4222"]
password = "hunter2"
nkey_seed = "seed.nk"
credentials = "/etc/banctl/fleet.creds"
min_prefix = { v4 = 4 }

[jails.fleet]
logpath = "/var/log/x"
"#,
        )
        .unwrap_err();
        for wanted in [
            ":3: fleet.role: \"leader\" is not",
            ":4: fleet.name: \"web 1\" cannot name this host",
            ":5: fleet.servers[0]: \"10.0.0.1:4222\" is not nats://",
            ":6: fleet.password: unknown key",
            ":7: fleet.nkey_seed: choose one of credentials, nkey_seed and password_file",
            ":7: fleet.nkey_seed: must be an absolute path",
            ":9: fleet.min_prefix.v4: 4 is not a prefix length from 8 to 32",
            "jails.fleet.logpath: the fleet jail reads no log",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(wanted)),
                "{wanted}\n{errors:#?}"
            );
        }
        // An enforcer with no jail of its own gets the fleet jail: every port, no log.
        let keep = |text: &str| parse(text).unwrap().fleet.unwrap().keep;
        let fleet = "[fleet]\nname = \"a\"\nservers = [\"nats://10.0.0.1:4222\"]\n";
        let web = "[jails.web]\nfailregex = ['^x <HOST>$']\nlogpath = \"/l\"\n";
        assert_eq!(
            keep(&format!("{fleet}{web}bantime = \"2d\"\n")),
            Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            keep(&format!("{fleet}{web}bantime = \"1h\"\n")),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            keep(&format!(
                "{fleet}{web}bantime = \"1h\"\nescalation = {{ factor = 2, max = \"1w\" }}\n"
            )),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            keep(&format!("{fleet}{web}escalation = {{ factor = 2 }}\n")),
            Duration::ZERO
        );
        assert_eq!(
            keep(&format!("{fleet}{web}bantime = \"permanent\"\n")),
            Duration::ZERO
        );
        assert_eq!(
            keep(&format!(
                "{fleet}keep = \"3d\"\n{web}bantime = \"permanent\"\n"
            )),
            Duration::from_secs(3 * 86_400)
        );
        let enforcer = parse(
            "[defaults]\nignoreip = [\"10.0.0.0/8\"]\n[fleet]\nrole = \"enforcer\"\nname = \"edge\"\n\
             servers = [\"tls://nats.example:4222\"]\nuser = \"edge\"\npassword_file = \"/etc/banctl/pw\"\n",
        )
        .unwrap();
        let fleet = enforcer.fleet.as_ref().unwrap();
        assert_eq!((fleet.role, fleet.name.as_str()), (Role::Enforcer, "edge"));
        assert_eq!(
            fleet.auth,
            Auth::Password {
                user: "edge".into(),
                file: "/etc/banctl/pw".into()
            }
        );
        let jail = &enforcer.jails[0];
        assert_eq!(jail.name, FLEET_JAIL);
        assert!(jail.logpaths.is_empty() && jail.ports.is_empty() && !jail.recidive);
        assert_eq!(jail.protocol, Protocol::Both);
        assert_eq!(jail.ignoreip, ["10.0.0.0/8".parse().unwrap()]);
        // A reporter enforces nothing from others: no fleet jail.
        let reporter = parse(
            "[fleet]\nrole = \"reporter\"\nname = \"r\"\nservers = [\"nats://10.0.0.1:4222\"]\n",
        )
        .unwrap();
        assert!(reporter.jails.is_empty());
    }

    #[test]
    fn minimal_jail_with_defaults() {
        let c = parse(
            r#"
[defaults]
bantime = "1h"
maxretry = 3

[jails.sshd]
filter = "sshd"
logpath = "/var/log/auth.log"
ports = [22, "2200-2299"]
"#,
        )
        .unwrap();
        let j = &c.jails[0];
        assert_eq!(j.name, "sshd");
        assert_eq!(j.bantime, BanTime::Finite(Duration::from_secs(3600)));
        assert_eq!(j.maxretry, 3);
        assert_eq!(j.findtime, DEFAULT_FINDTIME);
        assert_eq!(
            j.ports,
            vec![
                PortRange::single(22),
                PortRange {
                    first: 2200,
                    last: 2299
                }
            ]
        );
        assert_eq!(c.daemon.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(j.ignoreself);
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let errors = parse(
            r#"[jails.web]
failregex = ["no host here"]
logpath = ["/var/log/x"]
bantime = "10x"
ignoreip = ["10.0.0.0/33"]
colour = "blue"
"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "t.toml:2: jails.web.failregex[0]: pattern has no <HOST> or <ADDR>: the address to ban must be captured",
                "t.toml:4: jails.web.bantime: \"10x\" is not a duration: write a number with a unit, like 600 (seconds), 90s, 10min, 1h30m, 1d, 1w, 1mo or 1y",
                "t.toml:5: jails.web.ignoreip[0]: prefix length 33 is out of range for IPv4 (max 32)",
                "t.toml:6: jails.web.colour: unknown key",
            ]
        );
    }

    #[test]
    fn drop_ins_merge_in_order_and_errors_name_their_file() {
        let files = |dropins: &[(&str, &str)]| {
            let mut files = vec![(
                PathBuf::from("/etc/banctl/banctl.toml"),
                r#"[defaults]
bantime = "1h"
ignoreip = ["10.0.0.0/8"]

[jails.sshd]
filter = "sshd"
logpath = "/var/log/auth.log"
maxretry = 5

[[notify]]
command = ["/bin/true"]
"#
                .to_owned(),
            )];
            for (name, text) in dropins {
                files.push((
                    PathBuf::from(format!("/etc/banctl/conf.d/{name}")),
                    (*text).to_owned(),
                ));
            }
            files
        };
        let config = Config::parse_files(&files(&[
            (
                "10-sshd.toml",
                "[jails.sshd]\nmaxretry = 3\n\n[jails.nginx]\nfilter = \"nginx-http-auth\"\nlogpath = \"/var/log/nginx/error.log\"\n",
            ),
            ("20-more.toml", "[defaults]\nignoreip = [\"192.0.2.0/24\"]\n\n[[notify]]\ncommand = [\"/bin/false\"]\n[jails.sshd]\nmaxretry = 4\n"),
        ]))
        .unwrap();
        let sshd = config.jails.iter().find(|j| j.name == "sshd").unwrap();
        // The later file wins; the keys it does not set stay.
        assert_eq!(sshd.maxretry, 4);
        assert_eq!(sshd.logpaths, ["/var/log/auth.log"]);
        assert_eq!(sshd.bantime, BanTime::Finite(Duration::from_secs(3600)));
        assert_eq!(sshd.ignoreip.len(), 1);
        assert!(sshd.ignoreip[0].contains("192.0.2.1".parse().unwrap()));
        assert!(config.jails.iter().any(|j| j.name == "nginx"));
        assert_eq!(config.notify.len(), 2);
        assert_eq!(config.path, Path::new("/etc/banctl/banctl.toml"));

        let errors: Vec<String> = match Config::parse_files(&files(&[
            ("10-a.toml", "[jails.sshd]\nmaxretries = 3\n"),
            (
                "20-b.toml",
                "\n\n[jails.web]\nfilter = \"sshd\"\nlogpath = \"/x\"\nbantime = \"soon\"\n",
            ),
        ])) {
            Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0]
                .starts_with("/etc/banctl/conf.d/10-a.toml:2: jails.sshd.maxretries: unknown key"),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with("/etc/banctl/conf.d/20-b.toml:6: jails.web.bantime:"),
            "{errors:#?}"
        );
        let syntax = match Config::parse_files(&files(&[("10-a.toml", "[jails.sshd\n")])) {
            Err(ConfigError::Invalid(d)) => d[0].to_string(),
            other => panic!("{other:?}"),
        };
        assert!(
            syntax.starts_with("/etc/banctl/conf.d/10-a.toml:1: (syntax)"),
            "{syntax}"
        );
    }

    #[test]
    fn notifiers_and_metrics_are_checked() {
        let errors = parse(
            r#"[daemon]
metrics = "0.0.0.0:9617"

[jails.web]
filter = "sshd"
logpath = "/x"

[[notify]]
url = "https://hooks.example.com/x"

[[notify]]
command = ["notify-send", "{address}"]
retries = 2

[[notify]]
url = "http://127.0.0.1:8080/"
command = ["/bin/true"]

[[notify]]
url = "http://127.0.0.1:8080/"
headers = { "X-Bad" = "a\r\nInjected: 1" }
on = ["ban", "expiry"]
jails = ["web", "nope"]

[[notify]]
mail = "root@@localhost"
smtp = "mx example:25"

[[notify]]
mail = "root@localhost, security@example.org"
smtp = "mx.example.org:587"
user = "banctl"
password_file = "/etc/banctl/smtp.password"

[[notify]]
command = ["/bin/true"]
from = "banctl@example.org"
"#,
        )
        .unwrap_err();
        let expected = [
            "t.toml:2: daemon.metrics: metrics are served on a loopback address only",
            "t.toml:9: notify[0].url: https is not built in",
            "t.toml:12: notify[1].command: \"notify-send\": the program is named by its absolute path",
            "t.toml:13: notify[1].retries: only for a webhook",
            "t.toml:15: notify[2]: a notifier has one of `url` (a webhook), `command` (a program) and `mail`",
            "t.toml:21: notify[3].headers: the value of X-Bad holds a control character",
            "t.toml:22: notify[3].on: \"expiry\" is not an event (ban, unban)",
            "t.toml:23: notify[3].jails: no jail \"nope\" in this file",
            "t.toml:26: notify[4].mail: \"root@@localhost\" is not a mail address",
            "t.toml:27: notify[4].smtp: \"mx example:25\" is not host:port",
            "t.toml:32: notify[5].starttls: a user name and password would cross the network in clear to mx.example.org",
            "t.toml:37: notify[6].from: only for a mail notifier",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, start) in errors.iter().zip(expected) {
            assert!(
                error.starts_with(start),
                "{error}\n  should start with\n{start}"
            );
        }

        let config = Config::parse(
            Path::new("t.toml"),
            r#"[daemon]
metrics = "[::1]:9617"
[jails.web]
filter = "sshd"
logpath = "/x"
[[notify]]
command = ["/bin/true", "{jail}"]
on = ["unban"]
timeout = "3s"
[[notify]]
mail = "Admin <root@localhost>"
"#,
        )
        .unwrap();
        match &config.notify[1].target {
            Target::Mail { mail, retries } => {
                assert_eq!(mail.to[0].to_string(), "Admin <root@localhost>");
                assert!(
                    mail.from.to_string().starts_with("banctl@"),
                    "{}",
                    mail.from
                );
                assert_eq!(
                    (mail.host.as_str(), mail.port, mail.starttls),
                    ("localhost", 25, false)
                );
                assert_eq!(*retries, DEFAULT_WEBHOOK_RETRIES);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.daemon.metrics, Some("[::1]:9617".parse().unwrap()));
        let n = &config.notify[0];
        assert_eq!(
            (n.on_ban, n.on_unban, n.timeout),
            (false, true, Duration::from_secs(3))
        );
    }

    /// A fail2ban filter file named by `filter` keeps its `maxlines` (the lines it joins),
    /// also when the jail adds failregexes of its own (after the file's).
    #[test]
    fn a_fail2ban_filter_file_keeps_its_maxlines() {
        let dir = std::env::temp_dir().join(format!("banctl-f2b-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("two.conf");
        std::fs::write(
            &file,
            "[Definition]\nfailregex = ^login attempt\\n.*denied for <HOST>$\nmaxlines = 2\n",
        )
        .unwrap();
        let text = format!(
            "[jails.two]\nfilter = \"{}\"\nfailregex = ['^also from <HOST>$']\nlogpath = \"/x\"\n",
            file.display()
        );
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let filter = &config.jails[0].filter;
        assert!(filter.remembers(), "maxlines = 2 is kept");
        let mut memory = crate::filter::Memory::default();
        assert_eq!(filter.find_in("login attempt", &mut memory), None);
        let hit = filter
            .find_in("x denied for 192.0.2.7", &mut memory)
            .unwrap();
        assert_eq!(hit.addr, "192.0.2.7".parse::<std::net::IpAddr>().unwrap());
        let hit = filter.find_in("also from 192.0.2.8", &mut memory).unwrap();
        assert_eq!(hit.pattern, 1);
        // The file alone.
        let text = format!(
            "[jails.two]\nfilter = \"{}\"\nlogpath = \"/x\"\n",
            file.display()
        );
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let filter = &config.jails[0].filter;
        let mut memory = crate::filter::Memory::default();
        assert_eq!(filter.find_in("login attempt", &mut memory), None);
        assert!(
            filter
                .find_in("x denied for 192.0.2.7", &mut memory)
                .is_some()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_inline_fail2ban_filter_matches_as_fail2ban_would() {
        let config = Config::parse(
            Path::new("t.toml"),
            r#"[jails.vnc]
logpath = "/x"
[jails.vnc.fail2ban_filter]
prefregex = '^\s*\S+ vncserver: <F-CONTENT>.+</F-CONTENT>$'
failregex = ['^authentication failed for <F-USER>\S+</F-USER> from <HOST>$']
ignoreregex = ['for trusted ']
"#,
        )
        .unwrap();
        let filter = &config.jails[0].filter;
        // The date is cut out first, as fail2ban does.
        let hit = filter
            .find(
                "2026-11-21T10:00:00Z host vncserver: authentication failed for bob from 192.0.2.7",
            )
            .unwrap();
        assert_eq!(hit.addr.to_string(), "192.0.2.7");
        assert!(
            filter
                .find("2026-11-21T10:00:00Z host vncserver: authentication failed for trusted from 192.0.2.7")
                .is_none()
        );

        let errors = parse(
            r#"[jails.vnc]
filter = "sshd"
logpath = "/x"
[jails.vnc.fail2ban_filter]
failregex = ['^failed from <HOST>$']
[jails.bad]
logpath = "/x"
[jails.bad.fail2ban_filter]
failregex = ['^(unclosed <HOST>']
"#,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("t.toml:4: jails.vnc.fail2ban_filter: a jail has either"));
        assert!(
            errors[1].starts_with("t.toml:8: jails.bad.fail2ban_filter: inline filter: pattern"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn builtin_filters_take_a_mode() {
        let config = Config::parse(
            Path::new("t.toml"),
            "[jails.ssh]\nfilter = \"sshd[mode=aggressive]\"\nlogpath = \"/x\"\n",
        )
        .unwrap();
        let filter = &config.jails[0].filter;
        assert!(
            filter
                .find("sshd[1]: Connection closed by 192.0.2.7 port 4 [preauth]")
                .is_some()
        );
        assert_eq!(config.jails[0].filter_name, "sshd[mode=aggressive]");
        let errors =
            parse("[jails.ssh]\nlogpath = \"/x\"\nfilter = \"sshd[mode=loud]\"\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("t.toml:3: jails.ssh.filter: ")
                && errors[0].contains("no mode \"loud\""),
            "{errors:?}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let errors =
            parse("[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\nmaxretry = \"three\"\n")
                .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("t.toml:4: jails.a.maxretry: "),
            "{errors:?}"
        );
    }

    #[test]
    fn datepattern_reads_dates_and_a_bad_one_names_its_line() {
        let errors =
            parse("[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\ndatepattern = \"^%Y-%q\"\n")
                .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("t.toml:4: jails.a.datepattern: unknown directive %q"),
            "{errors:?}"
        );
        let config = Config::parse(
            Path::new("t.toml"),
            "[defaults]\ndatepattern = '^L %d/%m/%Y - %H:%M:%S'\n[jails.a]\nfailregex = ['^L \\S+ - \\S+: denied <HOST>$']\nlogpath = \"/x\"\nlogtimezone = \"UTC\"\n",
        )
        .unwrap();
        let line = "L 21/11/2026 - 10:00:00: denied 192.0.2.1";
        let found = config.jails[0]
            .dates
            .find(line, std::time::SystemTime::now())
            .unwrap();
        assert_eq!(
            found.at,
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
        );
        assert!(config.jails[0].filter.find(line).is_some());
    }

    #[test]
    fn jails_with_the_same_filter_and_patterns_share_one_build() {
        let config = Config::parse(
            Path::new("t.toml"),
            "[defaults]\nmaxretry = 2\n\
             [jails.a]\nlogpath = \"/a\"\nfailregex = ['^denied <HOST>$']\n\
             [jails.b]\nlogpath = \"/b\"\nfailregex = ['^denied <HOST>$']\n\
             datepattern = '^%Y-%m-%d %H:%M:%S'\n\
             [jails.c]\nlogpath = \"/c\"\nfailregex = ['^refused <HOST>$']\n\
             [jails.d]\nfilter = \"sshd\"\nlogpath = \"/d\"\n\
             [jails.e]\nfilter = \"sshd\"\nlogpath = \"/e\"\n\
             [jails.f]\nfilter = \"sshd\"\nlogpath = \"/f\"\nfailregex = ['^denied <HOST>$']\n",
        )
        .unwrap();
        let jail = |name: &str| config.jails.iter().find(|j| j.name == name).unwrap();
        let build = |name: &str| jail(name).filter.candidate_search().unwrap().id();
        // The same source, one build; each jail keeps its own keys beside it.
        assert_eq!(build("a"), build("b"));
        let dated = "2026-11-21 10:00:00";
        let now = std::time::SystemTime::now();
        assert_ne!(
            format!("{:?}", jail("a").dates),
            format!("{:?}", jail("b").dates)
        );
        assert!(jail("b").dates.find(dated, now).is_some());
        assert_eq!(build("d"), build("e"));
        assert_eq!(jail("d").filter_name, "sshd");
        assert_eq!(jail("a").filter_name, "inline");
        // Another pattern, another filter, or the same filter with more patterns: its own.
        let distinct = ["a", "c", "d", "f"].map(build);
        for (i, x) in distinct.iter().enumerate() {
            assert!(!distinct[i + 1..].contains(x), "{distinct:?}");
        }
        let line = "denied 192.0.2.7";
        assert!(jail("b").filter.find(line).is_some());
        assert!(jail("c").filter.find(line).is_none());
        assert!(jail("e").filter.find(line).is_none());
        assert!(jail("f").filter.find(line).is_some());
    }

    #[test]
    fn usedns_is_no_warn_or_yes() {
        let errors = parse("[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\nusedns = \"maybe\"\n")
            .unwrap_err();
        assert_eq!(
            errors,
            ["t.toml:4: jails.a.usedns: \"maybe\" is not \"no\", \"warn\" or \"yes\""]
        );
    }

    #[test]
    fn logtimezone_is_a_known_zone() {
        let errors = parse(
            "[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\nlogtimezone = \"Mars/Olympus\"\n",
        )
        .unwrap_err();
        assert!(
            errors[0]
                .starts_with("t.toml:4: jails.a.logtimezone: \"Mars/Olympus\" is not a time zone"),
            "{errors:?}"
        );
        for zone in ["Europe/Berlin", "UTC", "+05:30"] {
            let text = format!(
                "[daemon]\nreadback = false\n[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\nlogtimezone = \"{zone}\"\n"
            );
            let config = parse(&text).unwrap();
            assert!(!config.daemon.readback);
        }
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let errors = parse("[jails.a]\nfilter = \n").unwrap_err();
        assert!(errors[0].starts_with("t.toml:2: (syntax): "), "{errors:?}");
    }

    #[test]
    fn disabled_jails_are_skipped_and_names_checked() {
        let c = parse("[jails.off]\nenabled = false\nfailregex = [\"x\"]\n").unwrap();
        assert!(c.jails.is_empty());
        let errors =
            parse("[jails.\"bad name\"]\nfilter = \"sshd\"\nlogpath = \"/x\"\n").unwrap_err();
        assert!(
            errors[0].contains("jails.bad name: a jail name is"),
            "{errors:?}"
        );
        let errors = parse("[jails.a]\nfilter = \"nope\"\nlogpath = \"/x\"\n").unwrap_err();
        assert!(
            errors[0].contains("no built-in filter \"nope\""),
            "{errors:?}"
        );
    }

    #[test]
    fn ignore_rules() {
        let c =
            parse("[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\nignoreip = [\"10.0.0.0/8\"]\n")
                .unwrap();
        let j = &c.jails[0];
        let own: Vec<IpNet> = vec!["192.0.2.200".parse().unwrap()];
        assert!(j.ignores(&"10.1.2.3".parse().unwrap(), &own));
        assert!(j.ignores(&"127.0.0.2".parse().unwrap(), &own));
        assert!(j.ignores(&"::1".parse().unwrap(), &own));
        assert!(!j.ignores(&"192.0.2.1".parse().unwrap(), &own));
        // A prefix that would cover an ignored or own address is ignored too.
        assert!(j.ignores(&"0.0.0.0/0".parse().unwrap(), &own));
        assert!(j.ignores(&"192.0.2.0/24".parse().unwrap(), &own));
        assert!(j.ignores(&"192.0.2.200".parse().unwrap(), &own));
    }

    #[test]
    fn prefix_settings() {
        let c = parse("[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\n").unwrap();
        assert_eq!(c.jails[0].ban_prefix, DEFAULT_BAN_PREFIX);
        assert!(c.jails[0].too_broad(&"10.0.0.0/8".parse().unwrap()));
        assert!(!c.jails[0].too_broad(&"2001:db8:1::/64".parse().unwrap()));
        let errors = parse(
            "[jails.a]\nfilter = \"sshd\"\nlogpath = \"/x\"\nban_prefix = { v4 = 24, v6 = 16 }\nmin_prefix = { v6 = 129 }\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "t.toml:4: jails.a.ban_prefix.v6: 16 is not a prefix length from 32 to 128",
                "t.toml:5: jails.a.min_prefix.v6: 129 is not a prefix length from 0 to 128",
            ]
        );
    }
}
