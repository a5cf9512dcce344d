//! Filters: turn a log line into "this address failed", or nothing.
//!
//! A filter is a list of `failregex` patterns, each naming where the peer address is
//! with `<HOST>` (or `<ADDR>`), plus `ignoreregex` patterns that veto a match. A filter read
//! from a fail2ban `.conf` file also has a [`Prefix`]: the line's date is cut out and its
//! `prefregex` picks the text the failregexes see, as fail2ban does.
//!
//! Patterns run on the `regex` crate; one that needs look-around, back-references or
//! conditionals (fail2ban's sshd filter does) is compiled with `fancy-regex` instead.
//! **Invariant:** matching does no I/O and never panics on any input line (a time zone is
//! loaded once, when a configuration is validated).

mod builtin;
pub mod date;
mod file;
mod report;

use std::borrow::Cow;
use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use regex::Regex;
use regex_syntax::hir::{Hir, HirKind};

pub use builtin::{BUILTIN, Builtin};
pub use file::{
    FilterFile, FilterFileError, SYSLOG_START, parse_filter_file, parse_filter_file_in_mode,
    read_filter_file,
};
pub use report::{Report, Verdict};

use crate::addr::canonical;

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("pattern has no <HOST> or <ADDR>: the address to ban must be captured")]
    NoHost,
    #[error("pattern has more than one <HOST>/<ADDR>")]
    ManyHosts,
    #[error("invalid regular expression: {0}")]
    Regex(String),
}

/// A compiled regular expression: the `regex` crate (linear time) unless the pattern needs
/// what only a backtracker offers.
#[derive(Debug, Clone)]
enum Engine {
    Std(Regex),
    Fancy(Box<fancy_regex::Regex>),
}

/// The groups of one match.
enum Groups<'t> {
    Std(regex::Captures<'t>),
    Fancy(fancy_regex::Captures<'t>),
}

impl<'t> Groups<'t> {
    fn name(&self, name: &str) -> Option<&'t str> {
        match self {
            Groups::Std(c) => c.name(name).map(|m| m.as_str()),
            Groups::Fancy(c) => c.name(name).map(|m| m.as_str()),
        }
    }
}

impl Engine {
    fn new(expanded: &str) -> Result<Engine, PatternError> {
        match Regex::new(expanded) {
            Ok(regex) => Ok(Engine::Std(regex)),
            Err(std_error) => fancy_regex::Regex::new(expanded)
                .map(|r| Engine::Fancy(Box::new(r)))
                .map_err(|_| PatternError::Regex(std_error.to_string())),
        }
    }

    /// A backtracking limit hit by a hostile line counts as no match.
    fn is_match(&self, text: &str) -> bool {
        match self {
            Engine::Std(r) => r.is_match(text),
            Engine::Fancy(r) => r.is_match(text).unwrap_or(false),
        }
    }

    fn captures<'t>(&self, text: &'t str) -> Option<Groups<'t>> {
        match self {
            Engine::Std(r) => r.captures(text).map(Groups::Std),
            Engine::Fancy(r) => r.captures(text).ok().flatten().map(Groups::Fancy),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Engine::Std(r) => r.capture_names().flatten().map(str::to_owned).collect(),
            Engine::Fancy(r) => r.capture_names().flatten().map(str::to_owned).collect(),
        }
    }
}

/// IPv4 dotted quad. Captured text is always checked by `IpAddr::from_str`, so the patterns
/// only need to delimit an address, not validate it (which keeps the automata small and fast).
const IPV4: &str = r"\d{1,3}(?:\.\d{1,3}){3}";
/// IPv6 in any compressed form, with an optional embedded IPv4 tail: hex digits, colons and
/// dots, with at least one colon.
const IPV6: &str = r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,44}";

/// A host name (fail2ban's `<DNS>`): reported, never resolved nor banned.
const DNS: &str = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?";

/// Group names for the address: plain, or inside `[brackets]`; a host name.
const HOST_GROUP: &str = "host";
const HOST_BRACKETED_GROUP: &str = "host_b";
const DNS_GROUP: &str = "dns";
/// fail2ban's `<F-NOFAIL>`: a match where this group took part is not a failure; nor is one
/// where `<F-MLFGAINED>` did (a successful login).
const NOFAIL_GROUP: &str = "nofail";
const GAINED_GROUP: &str = "mlfgained";
/// fail2ban's `<F-CONTENT>` in a `prefregex`.
const CONTENT_GROUP: &str = "content";

/// The regex for an address tag; `None` for a tag that is not one.
pub(crate) fn address_tag(tag: &str) -> Option<String> {
    let ip = format!(r"(?:\[(?P<{HOST_BRACKETED_GROUP}>{IPV6})\]|(?P<{HOST_GROUP}>{IPV4}|{IPV6}))");
    Some(match tag {
        "HOST" => format!(r"(?:{ip}|(?P<{DNS_GROUP}>{DNS}))"),
        "ADDR" => ip,
        "IP4" => format!("(?P<{HOST_GROUP}>{IPV4})"),
        "IP6" => format!(r"(?:\[(?P<{HOST_BRACKETED_GROUP}>{IPV6})\]|(?P<{HOST_GROUP}>{IPV6}))"),
        "DNS" => format!("(?P<{DNS_GROUP}>{DNS})"),
        // The prefix length alone, as in fail2ban (`<ADDR>/<CIDR>`).
        "CIDR" => r"(?P<cidr>\d+)".to_owned(),
        "SUBNET" => format!(r"{ip}(?:/(?P<cidr>\d+))?"),
        _ => return None,
    })
}

/// One compiled `failregex`.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    engine: Engine,
    /// A literal every matching line contains (the longest one found), for the prefilter.
    required: Option<Vec<u8>>,
    /// Has an `<F-NOFAIL>` group.
    nofail: bool,
}

/// What one failregex found in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// An address: a failure.
    Addr(IpAddr),
    /// Only a host name: reported, never resolved nor banned.
    Name(String),
    /// A match without a failure: `<F-NOFAIL>` or `<F-MLFGAINED>` took part.
    NoFailure,
    /// A match of a pattern without an address tag: the host is the prefregex's, if any.
    NoHost,
}

/// The longest literal that every match of `hir` must contain, looking through the top-level
/// sequence (and groups in it); alternations and repetitions contribute nothing.
fn required_literal(hir: &Hir) -> Option<Vec<u8>> {
    fn walk(hir: &Hir, best: &mut Option<Vec<u8>>) {
        match hir.kind() {
            HirKind::Literal(lit) if best.as_ref().is_none_or(|b| lit.0.len() > b.len()) => {
                *best = Some(lit.0.to_vec());
            }
            HirKind::Capture(cap) => walk(&cap.sub, best),
            HirKind::Concat(items) => items.iter().for_each(|h| walk(h, best)),
            _ => {}
        }
    }
    let mut best = None;
    walk(hir, &mut best);
    best.filter(|b| b.len() >= 3)
}

impl Pattern {
    /// Compiles a fail2ban-style pattern: `<HOST>` and `<ADDR>` become an address capture.
    pub fn fail(source: &str) -> Result<Pattern, PatternError> {
        let tags = source.matches("<HOST>").count() + source.matches("<ADDR>").count();
        match tags {
            0 => return Err(PatternError::NoHost),
            1 => {}
            _ => return Err(PatternError::ManyHosts),
        }
        let host = address_tag("ADDR").unwrap_or_default();
        let expanded = source.replace("<HOST>", &host).replace("<ADDR>", &host);
        Pattern::compile(source, &expanded)
    }

    /// Compiles a pattern already translated to this crate's syntax (a fail2ban filter's),
    /// shown as `source`.
    pub(crate) fn translated(source: &str, expanded: &str) -> Result<Pattern, PatternError> {
        Pattern::compile(source, expanded)
    }

    /// Compiles an `ignoreregex` (no address needed).
    pub fn ignore(source: &str) -> Result<Pattern, PatternError> {
        Pattern::compile(source, source)
    }

    fn compile(source: &str, expanded: &str) -> Result<Pattern, PatternError> {
        let engine = Engine::new(expanded)?;
        // A pattern regex-syntax cannot parse (a fancy one) only goes without the prefilter.
        let required = regex_syntax::parse(expanded)
            .ok()
            .as_ref()
            .and_then(required_literal);
        let nofail = engine
            .names()
            .iter()
            .any(|n| n == NOFAIL_GROUP || n == GAINED_GROUP);
        Ok(Pattern {
            source: source.to_owned(),
            engine,
            required,
            nofail,
        })
    }

    /// The named captures of a match other than the address (`user`, `fid`, …).
    fn fields(&self, text: &str) -> Vec<(String, String)> {
        let Some(groups) = self.engine.captures(text) else {
            return Vec::new();
        };
        self.engine
            .names()
            .into_iter()
            .filter(|name| {
                ![HOST_GROUP, HOST_BRACKETED_GROUP, DNS_GROUP, CONTENT_GROUP]
                    .contains(&name.as_str())
            })
            .filter_map(|name| {
                let value = groups.name(&name)?;
                Some((name, value.to_owned()))
            })
            .collect()
    }

    /// What this pattern finds in `text`, if it matches.
    fn found(&self, text: &str) -> Option<Found> {
        self.found_in(&self.engine.captures(text)?)
    }

    /// What the groups of one match of this pattern found.
    fn found_in(&self, groups: &Groups) -> Option<Found> {
        if self.nofail
            && (groups.name(NOFAIL_GROUP).is_some() || groups.name(GAINED_GROUP).is_some())
        {
            return Some(Found::NoFailure);
        }
        let ip = groups
            .name(HOST_GROUP)
            .or_else(|| groups.name(HOST_BRACKETED_GROUP));
        if let Some(ip) = ip {
            // Delimited, not validated, by the pattern: `999.1.1.1` is no address.
            return ip.parse().ok().map(|a| Found::Addr(canonical(a)));
        }
        match groups.name(DNS_GROUP) {
            Some(name) => Some(Found::Name(name.to_owned())),
            None => Some(Found::NoHost),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

thread_local! {
    /// Scratch space for prefilter candidates, so matching a line allocates nothing.
    static CANDIDATES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A failure found in a line: the peer address and which pattern matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub addr: IpAddr,
    pub pattern: usize,
}

/// A jail's compiled filter.
///
/// Speed: one Aho-Corasick pass over the line finds which failregexes can match at all (each
/// needs its required literal); only those run. Most lines of a busy log run no regex.
#[derive(Debug, Clone)]
pub struct Filter {
    fail: Vec<Pattern>,
    ignore: Vec<Pattern>,
    prefilter: Option<Prefilter>,
    prefix: Option<Prefix>,
}

/// The text the failregexes see, and the host the prefregex found in the line.
struct View<'a> {
    text: Cow<'a, str>,
    host: Option<Found>,
}

/// How a fail2ban filter prepares a line: its date cut out, then its `prefregex` must match
/// and its `<F-CONTENT>` is what the failregexes see.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub strip_date: bool,
    pub prefregex: Option<Pattern>,
}

#[derive(Debug, Clone)]
struct Prefilter {
    literals: AhoCorasick,
    /// For each literal of `literals`, the failregexes needing it.
    owners: Vec<Vec<usize>>,
    /// Failregexes without a required literal: always tried.
    always: Vec<usize>,
}

impl Prefilter {
    fn new(fail: &[Pattern]) -> Option<Prefilter> {
        let mut literals: Vec<&[u8]> = Vec::new();
        let mut owners: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        for (i, p) in fail.iter().enumerate() {
            match &p.required {
                Some(lit) => match literals.iter().position(|l| *l == lit.as_slice()) {
                    Some(at) => owners[at].push(i),
                    None => {
                        literals.push(lit);
                        owners.push(vec![i]);
                    }
                },
                None => always.push(i),
            }
        }
        // Without literals there is nothing to skip with.
        let literals = AhoCorasick::new(&literals)
            .ok()
            .filter(|_| !owners.is_empty())?;
        Some(Prefilter {
            literals,
            owners,
            always,
        })
    }

    /// Indexes of the failregexes that may match `line`, in pattern order.
    fn candidates(&self, line: &str, out: &mut Vec<usize>) {
        out.clear();
        out.extend_from_slice(&self.always);
        for m in self.literals.find_overlapping_iter(line) {
            out.extend_from_slice(&self.owners[m.pattern().as_usize()]);
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

impl Filter {
    pub fn new(fail: Vec<Pattern>, ignore: Vec<Pattern>) -> Filter {
        let prefilter = Prefilter::new(&fail);
        Filter {
            fail,
            ignore,
            prefilter,
            prefix: None,
        }
    }

    /// The same filter preparing lines as a fail2ban filter does.
    pub fn with_prefix(mut self, prefix: Prefix) -> Filter {
        self.prefix = Some(prefix);
        self
    }

    pub fn prefix(&self) -> Option<&Prefix> {
        self.prefix.as_ref()
    }

    /// What the failregexes see: the line, or (fail2ban filters) the line without its date,
    /// cut to the prefregex's content; `None` when the prefregex does not match.
    fn view<'a>(&self, line: &'a str) -> Option<View<'a>> {
        let Some(prefix) = &self.prefix else {
            return Some(View {
                text: Cow::Borrowed(line),
                host: None,
            });
        };
        let mut text = Cow::Borrowed(line);
        if prefix.strip_date
            && let Some((start, end)) = date::span(line)
        {
            text = Cow::Owned(format!("{}{}", &line[..start], &line[end..]));
        }
        let Some(pre) = &prefix.prefregex else {
            return Some(View { text, host: None });
        };
        let groups = pre.engine.captures(&text)?;
        let host = pre.found_in(&groups)?;
        let content = groups.name(CONTENT_GROUP).map(str::to_owned);
        Some(View {
            text: content.map_or(text, Cow::Owned),
            host: Some(host),
        })
    }

    /// The first failregex matching `view` (fail2ban's order: the first match decides), and
    /// what it found; a pattern without an address takes the prefregex's.
    fn first_match(&self, view: &View) -> Option<(usize, Found)> {
        let text: &str = &view.text;
        let try_pattern = |i: usize| {
            let found = match self.fail[i].found(text)? {
                Found::NoHost => view.host.clone().unwrap_or(Found::NoHost),
                found => found,
            };
            Some((i, found))
        };
        match &self.prefilter {
            Some(pre) => CANDIDATES.with_borrow_mut(|c| {
                pre.candidates(text, c);
                c.iter().find_map(|&i| try_pattern(i))
            }),
            None => (0..self.fail.len()).find_map(try_pattern),
        }
    }

    /// The address of a failure on `line`: the first failregex that matches, if it found an
    /// address, unless an ignoreregex matches.
    pub fn find(&self, line: &str) -> Option<Hit> {
        let view = self.view(line)?;
        let (pattern, Found::Addr(addr)) = self.first_match(&view)? else {
            return None;
        };
        if self.ignore.iter().any(|p| p.engine.is_match(&view.text)) {
            return None;
        }
        Some(Hit { addr, pattern })
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.fail
    }

    pub fn ignore_patterns(&self) -> &[Pattern] {
        &self.ignore
    }

    /// Like [`Filter::find`], but says which ignoreregex discarded a failure (for
    /// `banctl test`; the daemon uses `find`).
    pub fn examine(&self, line: &str) -> Verdict {
        let Some(view) = self.view(line) else {
            return Verdict::Missed;
        };
        let Some((pattern, found)) = self.first_match(&view) else {
            return Verdict::Missed;
        };
        let addr = match found {
            Found::Addr(addr) => addr,
            Found::Name(name) => return Verdict::Name { pattern, name },
            Found::NoFailure | Found::NoHost => return Verdict::NoFailure { pattern },
        };
        let hit = Hit { addr, pattern };
        match self
            .ignore
            .iter()
            .position(|p| p.engine.is_match(&view.text))
        {
            Some(by) => Verdict::Ignored { hit, by },
            None => Verdict::Matched(hit),
        }
    }

    /// The `<F-…>` captures (`user`, …) of failregex `pattern` on `line`.
    pub fn fields(&self, line: &str, pattern: usize) -> Vec<(String, String)> {
        match (self.view(line), self.fail.get(pattern)) {
            (Some(view), Some(p)) => p.fields(&view.text),
            _ => Vec::new(),
        }
    }

    /// The failregex and ignoreregex patterns.
    pub fn into_parts(self) -> (Vec<Pattern>, Vec<Pattern>) {
        (self.fail, self.ignore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(fail: &[&str], ignore: &[&str]) -> Filter {
        Filter::new(
            fail.iter().map(|p| Pattern::fail(p).unwrap()).collect(),
            ignore.iter().map(|p| Pattern::ignore(p).unwrap()).collect(),
        )
    }

    fn host(f: &Filter, line: &str) -> Option<String> {
        f.find(line).map(|h| h.addr.to_string())
    }

    #[test]
    fn address_forms() {
        let f = filter(&[r"^login failed from <HOST>$"], &[]);
        assert_eq!(
            host(&f, "login failed from 192.0.2.7"),
            Some("192.0.2.7".into())
        );
        assert_eq!(
            host(&f, "login failed from 2001:db8::7"),
            Some("2001:db8::7".into())
        );
        assert_eq!(
            host(&f, "login failed from [2001:db8::7]"),
            Some("2001:db8::7".into())
        );
        assert_eq!(
            host(&f, "login failed from ::ffff:192.0.2.7"),
            Some("192.0.2.7".into())
        );
        assert_eq!(host(&f, "login failed from 999.1.1.1"), None);
        assert_eq!(host(&f, "login failed from example.org"), None);
        assert_eq!(host(&f, "login failed from [192.0.2.7"), None);
    }

    #[test]
    fn ignoreregex_vetoes() {
        let f = filter(&[r"^fail <HOST>( .*)?$"], &[r"^fail \S+ trusted$"]);
        assert_eq!(host(&f, "fail 192.0.2.1"), Some("192.0.2.1".into()));
        assert_eq!(host(&f, "fail 192.0.2.1 trusted"), None);
    }

    #[test]
    fn required_literals_feed_the_prefilter() {
        let p = Pattern::fail(
            r"^\S+ sshd\[\d+\]: Failed (?:password|none) for .* from <HOST> port \d+$",
        )
        .unwrap();
        assert_eq!(p.required.as_deref(), Some(&b"]: Failed "[..]));
        assert_eq!(Pattern::fail("(?i)^fail <HOST>$").unwrap().required, None);
        // A pattern without a literal is still tried on every line.
        let f = filter(&[r"^a+ <HOST>$", r"^login failed from <HOST>$"], &[]);
        assert_eq!(host(&f, "aaa 192.0.2.1"), Some("192.0.2.1".into()));
        assert_eq!(
            host(&f, "login failed from 192.0.2.2"),
            Some("192.0.2.2".into())
        );
    }

    #[test]
    fn pattern_errors() {
        assert_eq!(
            Pattern::fail("no address here").unwrap_err(),
            PatternError::NoHost
        );
        assert_eq!(
            Pattern::fail("<HOST> and <ADDR>").unwrap_err(),
            PatternError::ManyHosts
        );
        assert!(matches!(
            Pattern::fail("(<HOST>").unwrap_err(),
            PatternError::Regex(_)
        ));
    }
}
