//! `[fleet]`: which role this host plays in a fleet sharing bans over NATS JetStream, where
//! the servers are, and how far remote bans are trusted. Credentials and TLS keys are files,
//! never values in the TOML.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawFleet;
use super::{Context, PrefixLens};

/// What this host does in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes the bans of its own jails and enforces the fleet's.
    Member,
    /// Reads no logs of its own (an upstream proxy, router or bastion): enforces the fleet's
    /// bans on the traffic it receives or forwards.
    Enforcer,
    /// Publishes its bans, enforces none from others.
    Reporter,
}

impl Role {
    pub fn publishes(self) -> bool {
        matches!(self, Role::Member | Role::Reporter)
    }

    pub fn enforces(self) -> bool {
        matches!(self, Role::Member | Role::Enforcer)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Enforcer => "enforcer",
            Role::Reporter => "reporter",
        }
    }
}

/// Where a remote ban is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// In the local jail of the same name (its ports), else in the `fleet` jail.
    SameJail,
    /// Always in the `fleet` jail (every port).
    Fleet,
}

/// How this host proves who it is to the NATS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// A `.creds` file (JWT and nkey seed), as `nsc` writes it.
    Credentials(PathBuf),
    /// A file holding an nkey seed (`SU…`).
    NkeySeed(PathBuf),
    /// A user name and a file holding its password.
    Password {
        user: String,
        file: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// CA certificate(s) that sign the servers' certificates.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    pub role: Role,
    /// This host's name in the fleet: the subject it publishes on and the ORIGIN others show.
    pub name: String,
    /// `nats://host:port` (or `tls://`) URLs; the client fails over between them.
    pub servers: Vec<String>,
    /// The JetStream key-value bucket (stream `KV_<bucket>`).
    pub bucket: String,
    pub auth: Auth,
    pub tls: Option<Tls>,
    /// Remote bans broader than this are refused.
    pub min_prefix: PrefixLens,
    /// Remote bans accepted from one origin per minute; the rest are refused and counted.
    pub max_per_minute: u32,
    /// Local bans kept for publishing while the servers are unreachable (oldest dropped).
    pub queue: usize,
    pub apply: Apply,
    /// How long the daemon's start waits for the fleet's bans before it reports ready.
    pub wait: Duration,
    /// How long the stream keeps a ban (at least the longest bantime); zero keeps it forever.
    pub keep: Duration,
    /// Copies of the stream in a NATS cluster (when this host creates it): 1, 3 or 5.
    pub replicas: usize,
}

/// The jail remote bans go to when no local jail has their jail's name.
pub const FLEET_JAIL: &str = "fleet";
/// Fleet bans are /24 (IPv4) and /48 (IPv6) at the widest unless `min_prefix` says otherwise.
pub const DEFAULT_FLEET_MIN_PREFIX: PrefixLens = PrefixLens { v4: 24, v6: 48 };
pub const DEFAULT_MAX_PER_MINUTE: u32 = 10_000;
pub const DEFAULT_QUEUE: usize = 100_000;
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_BUCKET: &str = "banctl";

/// How long the stream keeps a ban when `keep` is not written: the longest ban the jails can
/// make (escalation's `max` included), at least a day; forever (zero) when a jail bans
/// permanently or escalates without a `max`.
pub fn keep_for(jails: &[super::JailConfig]) -> Duration {
    let mut longest = Duration::from_secs(86_400);
    for j in jails {
        let base = match j.bantime {
            crate::duration::BanTime::Permanent => return Duration::ZERO,
            crate::duration::BanTime::Finite(d) => d,
        };
        let most = match &j.escalation {
            None => base,
            Some(e) => match e.max {
                Some(max) => max.max(base),
                None => return Duration::ZERO,
            },
        };
        longest = longest.max(most);
    }
    longest
}

/// Whether `name` can be one token of a NATS subject and a key of a KV bucket.
pub fn valid_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Context<'_> {
    /// `[fleet]`, with every error reported.
    pub(super) fn fleet(&mut self, spanned: &Spanned<RawFleet>) -> Option<FleetConfig> {
        let raw = spanned.get_ref();
        let errors = self.errors.len();
        let role = match raw.role.as_ref() {
            None => Role::Member,
            Some(v) => match v.get_ref().as_str() {
                "member" => Role::Member,
                "enforcer" => Role::Enforcer,
                "reporter" => Role::Reporter,
                other => {
                    self.error(
                        v.span(),
                        "fleet.role",
                        format!("{other:?} is not \"member\", \"enforcer\" or \"reporter\""),
                    );
                    Role::Member
                }
            },
        };
        let name = match raw.name.as_ref() {
            Some(v) => v.get_ref().clone(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.split('.').next().unwrap_or_default().to_owned())
                .unwrap_or_default(),
        };
        if !valid_token(&name) {
            let span = raw.name.as_ref().map_or(spanned.span(), Spanned::span);
            self.error(
                span,
                "fleet.name",
                format!(
                    "{name:?} cannot name this host in the fleet: 1 to 64 letters, digits, '_' or '-' \
                     (set fleet.name when the host name does not fit)"
                ),
            );
        }
        let servers: Vec<String> = match raw.servers.as_ref() {
            None => {
                self.error(
                    spanned.span(),
                    "fleet.servers",
                    "missing: the NATS servers, e.g. [\"nats://10.0.0.1:4222\"]",
                );
                Vec::new()
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(list.span(), "fleet.servers", "name at least one server");
                }
                for (i, s) in list.get_ref().iter().enumerate() {
                    let url = s.get_ref();
                    let scheme_ok = ["nats://", "tls://"].iter().any(|p| url.starts_with(p));
                    if !scheme_ok || url.contains(char::is_whitespace) {
                        self.error(
                            s.span(),
                            format!("fleet.servers[{i}]"),
                            format!("{url:?} is not nats://HOST:PORT or tls://HOST:PORT"),
                        );
                    }
                }
                list.get_ref().iter().map(|s| s.get_ref().clone()).collect()
            }
        };
        let bucket = raw
            .bucket
            .as_ref()
            .map_or(DEFAULT_BUCKET.to_owned(), |b| b.get_ref().clone());
        if let Some(b) = raw.bucket.as_ref().filter(|b| !valid_token(b.get_ref())) {
            self.error(
                b.span(),
                "fleet.bucket",
                "a bucket name is letters, digits, '_' or '-'",
            );
        }
        let auth = self.fleet_auth(raw);
        let tls = self.fleet_tls(raw);
        let min_prefix = match raw.min_prefix.as_ref() {
            Some(v) => self.prefix_lens(
                v,
                "fleet.min_prefix",
                DEFAULT_FLEET_MIN_PREFIX,
                PrefixLens { v4: 8, v6: 16 },
            ),
            None => DEFAULT_FLEET_MIN_PREFIX,
        };
        let max_per_minute = raw
            .max_per_minute
            .as_ref()
            .map_or(DEFAULT_MAX_PER_MINUTE, |v| {
                self.positive(
                    v,
                    "fleet.max_per_minute".into(),
                    "a number of bans",
                    DEFAULT_MAX_PER_MINUTE,
                )
            });
        let queue = raw.queue.as_ref().map_or(DEFAULT_QUEUE, |v| {
            self.positive(v, "fleet.queue".into(), "a number of bans", DEFAULT_QUEUE)
        });
        let apply = match raw.apply.as_ref() {
            None => Apply::SameJail,
            Some(v) => match v.get_ref().as_str() {
                "same-jail" => Apply::SameJail,
                "fleet" => Apply::Fleet,
                other => {
                    self.error(
                        v.span(),
                        "fleet.apply",
                        format!("{other:?} is not \"same-jail\" or \"fleet\""),
                    );
                    Apply::SameJail
                }
            },
        };
        let wait = raw.wait.as_ref().map_or(DEFAULT_WAIT, |v| {
            self.duration(v, "fleet.wait".into())
                .unwrap_or(DEFAULT_WAIT)
        });
        let keep = raw.keep.as_ref().map_or(Duration::ZERO, |v| {
            self.duration(v, "fleet.keep".into())
                .unwrap_or(Duration::ZERO)
        });
        let replicas = match raw.replicas.as_ref() {
            None => 1,
            Some(v) => match *v.get_ref() {
                n @ (1 | 3 | 5) => n as usize,
                n => {
                    self.error(
                        v.span(),
                        "fleet.replicas",
                        format!("{n} is not 1, 3 or 5 (copies of the stream in the cluster)"),
                    );
                    1
                }
            },
        };
        (self.errors.len() == errors).then_some(FleetConfig {
            role,
            name,
            servers,
            bucket,
            auth,
            tls,
            min_prefix,
            max_per_minute,
            queue,
            apply,
            wait,
            keep,
            replicas,
        })
    }

    fn fleet_auth(&mut self, raw: &RawFleet) -> Auth {
        let given: Vec<(&str, &Spanned<String>)> = [
            ("fleet.credentials", raw.credentials.as_ref()),
            ("fleet.nkey_seed", raw.nkey_seed.as_ref()),
            ("fleet.password_file", raw.password_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        for (k, v) in &given {
            self.secret_file(v, *k);
        }
        if given.len() > 1 {
            for (k, v) in &given[1..] {
                self.error(
                    v.span(),
                    *k,
                    format!(
                        "choose one of credentials, nkey_seed and password_file ({} is set)",
                        given[0].0
                    ),
                );
            }
        }
        match (given.first(), raw.user.as_ref()) {
            (None, None) => Auth::None,
            (None, Some(u)) => {
                self.error(u.span(), "fleet.user", "a user needs password_file");
                Auth::None
            }
            (Some(&(k, v)), user) => {
                let file = PathBuf::from(v.get_ref());
                match (k, user) {
                    ("fleet.password_file", Some(u)) => Auth::Password {
                        user: u.get_ref().clone(),
                        file,
                    },
                    ("fleet.password_file", None) => {
                        self.error(
                            v.span(),
                            "fleet.user",
                            "missing: password_file needs a user",
                        );
                        Auth::None
                    }
                    (_, Some(u)) => {
                        self.error(u.span(), "fleet.user", "only with password_file");
                        Auth::None
                    }
                    ("fleet.credentials", None) => Auth::Credentials(file),
                    _ => Auth::NkeySeed(file),
                }
            }
        }
    }

    fn fleet_tls(&mut self, raw: &RawFleet) -> Option<Tls> {
        let mut path = |v: &Option<Spanned<String>>, key: &str| {
            v.as_ref().map(|v| {
                if !v.get_ref().starts_with('/') {
                    self.error(v.span(), key, "must be an absolute path");
                }
                PathBuf::from(v.get_ref())
            })
        };
        let ca = path(&raw.tls_ca, "fleet.tls_ca");
        let cert = path(&raw.tls_cert, "fleet.tls_cert");
        let key = path(&raw.tls_key, "fleet.tls_key");
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let span = raw
                    .tls_cert
                    .as_ref()
                    .or(raw.tls_key.as_ref())
                    .map_or(0..0, Spanned::span);
                self.error(span, "fleet.tls_cert", "tls_cert and tls_key go together");
                None
            }
        };
        (ca.is_some() || client.is_some()).then_some(Tls { ca, client })
    }
}
