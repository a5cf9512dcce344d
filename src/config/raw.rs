//! The configuration file as written: serde types that keep every value's position.
//!
//! Nothing here is validated; [`super::validate`] turns it into typed values. Unknown keys are
//! not rejected by serde (that would stop at the first one): they are collected with
//! `serde_ignored` so that every error in the file is reported at once.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub defaults: RawJail,
    #[serde(default)]
    pub jails: BTreeMap<String, Spanned<RawJail>>,
    #[serde(default)]
    pub notify: Vec<Spanned<RawNotify>>,
    pub fleet: Option<Spanned<RawFleet>>,
}

/// `[fleet]`: bans shared with other hosts over NATS JetStream.
#[derive(Debug, Default, Deserialize)]
pub struct RawFleet {
    pub role: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub bucket: Option<Spanned<String>>,
    pub credentials: Option<Spanned<String>>,
    pub nkey_seed: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub tls_ca: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub min_prefix: Option<Spanned<RawPrefixLens>>,
    pub max_per_minute: Option<Spanned<i64>>,
    pub queue: Option<Spanned<i64>>,
    pub apply: Option<Spanned<String>>,
    pub wait: Option<Spanned<DurationValue>>,
    pub keep: Option<Spanned<DurationValue>>,
    pub replicas: Option<Spanned<i64>>,
}

/// `[[notify]]`: a webhook (`url`) or a program (`command`), on ban and/or unban.
#[derive(Debug, Default, Deserialize)]
pub struct RawNotify {
    pub url: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub retries: Option<Spanned<i64>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub mail: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    pub smtp: Option<Spanned<String>>,
    pub starttls: Option<Spanned<bool>>,
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub on: Option<Spanned<Vec<Spanned<String>>>>,
    pub jails: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout: Option<Spanned<DurationValue>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDaemon {
    pub socket: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub admin_group: Option<Spanned<String>>,
    pub read_group: Option<Spanned<String>>,
    pub history: Option<Spanned<DurationValue>>,
    pub readback: Option<Spanned<bool>>,
    pub metrics: Option<Spanned<String>>,
}

/// A jail, or the `[defaults]` every jail inherits from.
#[derive(Debug, Default, Deserialize)]
pub struct RawJail {
    pub enabled: Option<Spanned<bool>>,
    pub filter: Option<Spanned<String>>,
    pub failregex: Option<Spanned<Vec<Spanned<String>>>>,
    pub ignoreregex: Option<Spanned<Vec<Spanned<String>>>>,
    pub logpath: Option<Spanned<OneOrMany>>,
    pub ports: Option<Spanned<Vec<Spanned<PortValue>>>>,
    pub protocol: Option<Spanned<String>>,
    pub bantime: Option<Spanned<DurationValue>>,
    pub findtime: Option<Spanned<DurationValue>>,
    pub maxretry: Option<Spanned<i64>>,
    pub ignoreip: Option<Spanned<Vec<Spanned<String>>>>,
    pub ignoreself: Option<Spanned<bool>>,
    pub max_tracked: Option<Spanned<i64>>,
    pub forward: Option<Spanned<bool>>,
    pub ban_prefix: Option<Spanned<RawPrefixLens>>,
    pub min_prefix: Option<Spanned<RawPrefixLens>>,
    pub count_by_prefix: Option<Spanned<bool>>,
    pub escalation: Option<Spanned<RawEscalation>>,
    pub recidive: Option<Spanned<bool>>,
    pub journal: Option<Spanned<RawJournal>>,
    pub source: Option<Spanned<String>>,
    pub logtimezone: Option<Spanned<String>>,
    pub usedns: Option<Spanned<String>>,
    pub datepattern: Option<Spanned<String>>,
    pub fail2ban_filter: Option<Spanned<RawFail2banFilter>>,
}

/// `[jails.NAME.fail2ban_filter]`: a fail2ban filter written into the configuration (what
/// `import-fail2ban --inline` writes): patterns in fail2ban's dialect, matched on the line
/// with its date cut out, as fail2ban does.
#[derive(Debug, Default, Deserialize)]
pub struct RawFail2banFilter {
    pub failregex: Vec<String>,
    #[serde(default)]
    pub ignoreregex: Vec<String>,
    pub prefregex: Option<String>,
    pub datepattern: Option<String>,
    pub maxlines: Option<usize>,
}

/// `journal = { matches = ["_SYSTEMD_UNIT=ssh.service"], directory = "/path" }`.
#[derive(Debug, Default, Deserialize)]
pub struct RawJournal {
    #[serde(default)]
    pub matches: Vec<String>,
    pub directory: Option<String>,
}

/// `[defaults.escalation]` or `[jails.NAME.escalation]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawEscalation {
    pub enabled: Option<bool>,
    pub factor: Option<f64>,
    pub multipliers: Option<Vec<i64>>,
    pub max: Option<DurationValue>,
    pub across_jails: Option<bool>,
}

/// `{ v4 = 32, v6 = 64 }`
#[derive(Debug, Default, Deserialize)]
pub struct RawPrefixLens {
    pub v4: Option<i64>,
    pub v6: Option<i64>,
}

/// `logpath = "/var/log/x"` or `logpath = ["/var/log/x", "/var/log/y*"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `22` or `"8000-8100"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Text(String),
}

/// `600` (seconds) or `"10m"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(i64),
    Text(String),
}

impl DurationValue {
    pub fn text(&self) -> String {
        match self {
            DurationValue::Seconds(n) => n.to_string(),
            DurationValue::Text(s) => s.clone(),
        }
    }
}

/// The keys a table of type `T` takes, as serde's derive lists them (so a misspelt key can be
/// answered with the closest real one, never with a list kept by hand).
pub fn keys_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Fields(std::cell::Cell<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &Fields {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.set(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let fields = Fields(std::cell::Cell::new(&[]));
    let _ = T::deserialize(&fields);
    fields.0.get()
}

/// The keys of the table at `path` (segments of a key's path without the key itself), for
/// "did you mean".
pub fn keys_at(path: &[String]) -> &'static [&'static str] {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    match names.as_slice() {
        [] => keys_of::<RawConfig>(),
        ["daemon"] => keys_of::<RawDaemon>(),
        ["defaults"] | ["jails", _] => keys_of::<RawJail>(),
        ["defaults", "escalation"] | ["jails", _, "escalation"] => keys_of::<RawEscalation>(),
        ["defaults", "journal"] | ["jails", _, "journal"] => keys_of::<RawJournal>(),
        ["jails", _, "fail2ban_filter"] => keys_of::<RawFail2banFilter>(),
        ["defaults" | "jails", ..] if names.last().is_some_and(|l| l.ends_with("prefix")) => {
            keys_of::<RawPrefixLens>()
        }
        ["notify", ..] => keys_of::<RawNotify>(),
        ["fleet"] => keys_of::<RawFleet>(),
        ["fleet", "min_prefix"] => keys_of::<RawPrefixLens>(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_types() {
        assert!(keys_of::<RawJail>().contains(&"maxretry"));
        assert!(keys_of::<RawConfig>().contains(&"jails"));
        assert_eq!(keys_of::<RawPrefixLens>(), ["v4", "v6"]);
        assert!(keys_at(&["jails".into(), "sshd".into()]).contains(&"bantime"));
        assert!(keys_at(&["fleet".into()]).contains(&"servers"));
    }
}

/// The README's configuration reference is the documentation of these types (and the source
/// of `banctl.toml(5)`): every key a section takes has its row.
#[cfg(test)]
mod documented {
    use super::*;

    const README: &str = include_str!("../../README.md");

    /// The keys in the first column of the reference table under `heading`.
    fn documented(heading: &str) -> Vec<String> {
        let section = README
            .split("## Configuration reference")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README: Configuration reference");
        let table = section
            .split(&format!("### {heading}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("README: no \"### {heading}\""));
        let mut keys = Vec::new();
        for row in table.split("\n### ").next().unwrap_or("").lines() {
            let Some(first) = row.strip_prefix("| `") else {
                continue;
            };
            // `a` + `b` rows document two keys.
            let cell = first.split(" |").next().unwrap_or("");
            for key in cell.split(" + ").flat_map(|k| k.split(", ")) {
                keys.push(key.trim_matches('`').to_owned());
            }
        }
        keys
    }

    #[test]
    fn every_key_is_documented_in_the_readme() {
        let tables: [(&str, &[&str]); 4] = [
            ("`[daemon]`", keys_of::<RawDaemon>()),
            ("`[defaults]` and `[jails.<name>]`", keys_of::<RawJail>()),
            ("`[[notify]]`", keys_of::<RawNotify>()),
            ("`[fleet]`", keys_of::<RawFleet>()),
        ];
        for (heading, keys) in tables {
            let documented = documented(heading);
            let missing: Vec<&&str> = keys
                .iter()
                .filter(|k| !documented.iter().any(|d| d == *k))
                .collect();
            assert!(
                missing.is_empty(),
                "{heading}: undocumented keys {missing:?}"
            );
            let unknown: Vec<&String> = documented
                .iter()
                .filter(|d| !keys.contains(&d.as_str()))
                .collect();
            assert!(
                unknown.is_empty(),
                "{heading}: documented keys that do not exist {unknown:?}"
            );
        }
    }
}
