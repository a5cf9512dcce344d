//! Filters: turn a log line into "this address failed", or nothing.
//!
//! A filter is a list of `failregex` patterns, each naming where the peer address is
//! with `<HOST>` (or `<ADDR>`), plus `ignoreregex` patterns that veto a match.
//! **Invariant:** this module does no I/O and never panics on any input line.

mod builtin;
pub mod date;
mod file;
mod report;

use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use regex::Regex;
use regex_syntax::hir::{Hir, HirKind};

pub use builtin::{BUILTIN, Builtin};
pub use file::{FilterFile, FilterFileError, parse_filter_file};
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

/// IPv4 dotted quad. Captured text is always checked by `IpAddr::from_str`, so the patterns
/// only need to delimit an address, not validate it (which keeps the automata small and fast).
const IPV4: &str = r"\d{1,3}(?:\.\d{1,3}){3}";
/// IPv6 in any compressed form, with an optional embedded IPv4 tail: hex digits, colons and
/// dots, with at least one colon.
const IPV6: &str = r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{1,44}";

/// Group names for the address: plain, or inside `[brackets]`.
const HOST_GROUP: &str = "host";
const HOST_BRACKETED_GROUP: &str = "host_b";

/// One compiled `failregex`.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
    /// A literal every matching line contains (the longest one found), for the prefilter.
    required: Option<Vec<u8>>,
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
        let host =
            format!(r"(?:\[(?P<{HOST_BRACKETED_GROUP}>{IPV6})\]|(?P<{HOST_GROUP}>{IPV4}|{IPV6}))");
        let expanded = source.replace("<HOST>", &host).replace("<ADDR>", &host);
        Pattern::compile(source, &expanded)
    }

    /// Compiles an `ignoreregex` (no address needed).
    pub fn ignore(source: &str) -> Result<Pattern, PatternError> {
        Pattern::compile(source, source)
    }

    fn compile(source: &str, expanded: &str) -> Result<Pattern, PatternError> {
        let regex = Regex::new(expanded).map_err(|e| PatternError::Regex(e.to_string()))?;
        // The regex compiled, so its syntax parses; a failure here only costs the prefilter.
        let required = regex_syntax::parse(expanded)
            .ok()
            .as_ref()
            .and_then(required_literal);
        Ok(Pattern {
            source: source.to_owned(),
            regex,
            required,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    fn host(&self, line: &str) -> Option<IpAddr> {
        let caps = self.regex.captures(line)?;
        let text = caps
            .name(HOST_GROUP)
            .or_else(|| caps.name(HOST_BRACKETED_GROUP))?;
        text.as_str().parse().ok().map(canonical)
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
        }
    }

    /// The first failregex that matches with a valid address, unless an ignoreregex matches.
    pub fn find(&self, line: &str) -> Option<Hit> {
        let try_pattern = |pattern: usize| {
            self.fail[pattern]
                .host(line)
                .map(|addr| Hit { addr, pattern })
        };
        let hit = match &self.prefilter {
            Some(pre) => CANDIDATES.with_borrow_mut(|c| {
                pre.candidates(line, c);
                c.iter().find_map(|&i| try_pattern(i))
            }),
            None => (0..self.fail.len()).find_map(try_pattern),
        }?;
        if self.ignore.iter().any(|p| p.regex.is_match(line)) {
            return None;
        }
        Some(hit)
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
        let Some(hit) = (0..self.fail.len()).find_map(|pattern| {
            self.fail[pattern]
                .host(line)
                .map(|addr| Hit { addr, pattern })
        }) else {
            return Verdict::Missed;
        };
        match self.ignore.iter().position(|p| p.regex.is_match(line)) {
            Some(by) => Verdict::Ignored { hit, by },
            None => Verdict::Matched(hit),
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
