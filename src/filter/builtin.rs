//! Filters shipped with banctl, written by this project from each service's real log format:
//! one banctl filter file each in `library/` (compiled into the binary), with a fixture of
//! hits, near misses, benign and hostile lines in `tests/fixtures/filters/`.
//!
//! Every pattern is anchored at both ends, and where text an attacker controls (a user name,
//! a URL) can stand on the line, the pattern picks the address from where only the service
//! writes: before that text, or, when the address ends the line, the last occurrence. Each
//! file says which, and each fixture has lines that plant an address to prove it.

use super::Filter;
use super::file::{FilterFile, FilterFileError, mode_of, parse_filter_file_in_mode};

/// A built-in filter: its name and its filter file.
#[derive(Debug)]
pub struct Builtin {
    pub name: &'static str,
    text: &'static str,
}

macro_rules! library {
    ($($name:literal),* $(,)?) => {
        &[$(Builtin { name: $name, text: include_str!(concat!("library/", $name, ".toml")) }),*]
    };
}

/// Sorted by name.
pub static BUILTIN: &[Builtin] = library![
    "apache-auth",
    "apache-badbots",
    "asterisk",
    "caddy",
    "courier",
    "cyrus-imap",
    "dovecot",
    "dropbear",
    "exim",
    "forgejo",
    "freeswitch",
    "gitea",
    "gitlab",
    "grafana",
    "haproxy-http-auth",
    "home-assistant",
    "jellyfin",
    "mongodb-auth",
    "monit",
    "mysqld-auth",
    "named-refused",
    "nextcloud",
    "nginx-bad-request",
    "nginx-botsearch",
    "nginx-http-auth",
    "nginx-limit-req",
    "openvpn",
    "phpmyadmin",
    "postfix",
    "postgresql",
    "proftpd",
    "proxmox",
    "pure-ftpd",
    "roundcube",
    "sogo",
    "sshd",
    "tightvnc",
    "traefik-auth",
    "vaultwarden",
    "vsftpd",
    "webmin",
    "wordpress",
    "xrdp",
];

impl Builtin {
    pub fn by_name(name: &str) -> Option<&'static Builtin> {
        BUILTIN.iter().find(|b| b.name == name)
    }

    /// The filter file, in `mode` (`None`: the default). The built-in files are tested to
    /// parse in every mode.
    pub fn read(&self, mode: Option<&str>) -> Result<FilterFile, FilterFileError> {
        parse_filter_file_in_mode(&format!("built-in {}", self.name), self.text, mode)
    }

    /// The filter file in the mode its options (`mode=…`, the only one built-ins take) ask for.
    pub fn read_with(&self, options: &[(String, String)]) -> Result<FilterFile, String> {
        let mode = mode_of(self.name, options)?;
        self.read(mode).map_err(|e| e.to_string())
    }

    /// The compiled filter with its options.
    pub fn compile_with(&self, options: &[(String, String)]) -> Result<Filter, String> {
        self.read_with(options).map(|f| f.filter)
    }
}

/// The fixture files of the built-in filters (`tests/fixtures/filters/NAME.log`).
#[cfg(test)]
pub(super) mod fixtures {
    /// The planted address of hostile fixture lines.
    pub const PLANTED: &str = "198.51.100.9";

    /// One fixture line: the mode to run, the line, and the address expected (`None`: no
    /// failure); `hostile` lines carry [`PLANTED`].
    pub struct Case {
        pub mode: Option<String>,
        pub line: String,
        pub expect: Option<String>,
        pub hostile: bool,
        pub at: usize,
    }

    pub fn fixture(name: &str) -> Vec<Case> {
        let path = format!(
            "{}/tests/fixtures/filters/{name}.log",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut cases = Vec::new();
        let mut pending: Option<(Option<String>, Option<String>, bool)> = None;
        for (n, line) in text.lines().enumerate() {
            if let Some(spec) = line.strip_prefix("# ") {
                // "hit ADDR: why" / "miss: why": the reason is for the reader (IPv6
                // addresses hold no ": ").
                let spec = spec.split_once(": ").map_or(spec, |(spec, _why)| spec);
                let mut words: Vec<&str> = spec.split_whitespace().collect();
                let mode = match words.first().and_then(|w| w.strip_prefix("mode=")) {
                    Some(m) => {
                        let m = m.to_owned();
                        words.remove(0);
                        Some(m)
                    }
                    None => None,
                };
                pending = match words.as_slice() {
                    ["hit", addr] => Some((mode, Some((*addr).to_owned()), false)),
                    ["hostile", addr] => Some((mode, Some((*addr).to_owned()), true)),
                    ["miss"] => Some((mode, None, false)),
                    _ => None,
                };
                continue;
            }
            let Some((mode, expect, hostile)) = pending.take() else {
                panic!("{path}:{}: a line without an expectation before it", n + 1);
            };
            cases.push(Case {
                mode,
                line: line.to_owned(),
                expect,
                hostile,
                at: n + 1,
            });
        }
        cases
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use fixtures::{Case, PLANTED, fixture};

    /// Every built-in filter, in every mode its fixture uses: each hit reports its address,
    /// each miss nothing, each hostile line the real peer and never the planted address.
    /// Each fixture has hits, misses and hostile lines, and its hits use every pattern of
    /// the default mode.
    #[test]
    fn every_builtin_passes_its_fixture() {
        let mut report = Vec::new();
        // Every wrong line of every filter, reported together.
        let mut wrong = Vec::new();
        for b in BUILTIN {
            let default = b.read(None).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                default
                    .description
                    .as_deref()
                    .is_some_and(|d| !d.is_empty()),
                "{}: no description",
                b.name
            );
            for mode in &default.modes {
                b.read(Some(mode)).unwrap_or_else(|e| panic!("{e}"));
            }
            let cases = fixture(b.name);
            let mut used = BTreeSet::new();
            let mut filters = std::collections::HashMap::new();
            for case in &cases {
                let filter = filters.entry(case.mode.clone()).or_insert_with(|| {
                    let options: Vec<(String, String)> = case
                        .mode
                        .iter()
                        .map(|m| ("mode".to_owned(), m.clone()))
                        .collect();
                    b.compile_with(&options).unwrap()
                });
                let hit = filter.find(&case.line);
                assert_eq!(
                    hit,
                    filter.clone().one_by_one().find(&case.line),
                    "{} line {}: the automata and the engine disagree",
                    b.name,
                    case.at
                );
                let found = hit.map(|h| h.addr.to_string());
                if found != case.expect {
                    wrong.push(format!(
                        "{} fixture line {} (mode {:?}): found {found:?}, expected {:?}\n  {}",
                        b.name, case.at, case.mode, case.expect, case.line
                    ));
                }
                if case.hostile {
                    assert!(
                        case.line.contains(PLANTED),
                        "{} line {}: a hostile line plants {PLANTED}",
                        b.name,
                        case.at
                    );
                }
                if let (None, Some(hit)) = (&case.mode, hit) {
                    used.insert(hit.pattern);
                }
            }
            let count = |f: fn(&Case) -> bool| cases.iter().filter(|c| f(c)).count();
            let (hits, misses, hostile) = (
                count(|c| c.expect.is_some() && !c.hostile),
                count(|c| c.expect.is_none()),
                count(|c| c.hostile),
            );
            assert!(
                hits > 0 && misses > 0 && hostile > 0,
                "{}: {hits} hits, {misses} misses, {hostile} hostile lines",
                b.name
            );
            let patterns = default.filter.patterns().len();
            assert_eq!(
                used.len(),
                patterns,
                "{}: the fixture's default-mode hits use patterns {used:?} of {patterns}",
                b.name
            );
            for mode in &default.modes {
                assert!(
                    cases
                        .iter()
                        .any(|c| c.mode.as_ref() == Some(mode) && c.expect.is_some()),
                    "{}: no hit in mode {mode}",
                    b.name
                );
            }
            report.push(format!("{} ({} lines)", b.name, cases.len()));
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        println!("{} built-in filters: {}", BUILTIN.len(), report.join(", "));
        assert!(BUILTIN.len() >= 40);
    }

    #[test]
    fn the_library_is_sorted_and_options_are_checked() {
        let names: Vec<&str> = BUILTIN.iter().map(|b| b.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let sshd = Builtin::by_name("sshd").unwrap();
        assert_eq!(sshd.read(None).unwrap().modes, ["aggressive", "ddos"]);
        let option = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(sshd.compile_with(&option("mode", "normal")).is_ok());
        assert!(sshd.compile_with(&option("mode", "paranoid")).is_err());
        assert!(sshd.compile_with(&option("port", "22")).is_err());
    }
}
