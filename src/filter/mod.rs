//! Filters: turn a log line into "this address failed", or nothing.
//!
//! A filter is a list of `failregex` patterns, each naming where the peer address is
//! with `<HOST>` (or `<ADDR>`), plus `ignoreregex` patterns that veto a match. A filter read
//! from a fail2ban `.conf` file also has a [`Prefix`]: the line's date is cut out and its
//! `prefregex` picks the text the failregexes see, as fail2ban does.
//!
//! Patterns run on the `regex` crate; one that needs look-around, back-references or
//! conditionals (fail2ban's sshd filter does) is compiled with `fancy-regex` instead. The
//! `regex` ones of a filter are also one automaton that tries them all in one pass, and the
//! address is read from automata when only one reading is possible ([`scan`]).
//! **Invariant:** matching does no I/O and never panics on any input line (a time zone is
//! loaded once, when a configuration is validated).

#[cfg(test)]
mod adversarial;
pub mod bounded;
mod builtin;
pub mod date;
mod datepattern;
mod file;
mod memory;
mod prefilter;
mod python;
mod report;
mod scan;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, OnceLock};

use regex::Regex;
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_syntax::hir::Hir;

use bounded::Bounded;
pub use builtin::{BUILTIN, Builtin};
pub use datepattern::{DatePattern, DatePatternError};
pub use file::{
    FilterFile, FilterFileError, SYSLOG_START, parse_filter_file, parse_filter_file_in_mode,
    read_filter_file,
};
use memory::Marks;
pub use memory::Memory;
use prefilter::Needles;
pub use python::python_to_rust;
pub use report::{Names, Report, Verdict};
use scan::{HostSplit, Scanner};

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
    Std(LazyRegex),
    /// Back-references and look-arounds, with bounded work per line.
    Fancy(Box<Bounded>),
}

/// The groups of one match.
enum Groups<'t> {
    Std(regex::Captures<'t>),
    Fancy {
        text: &'t str,
        spans: bounded::Spans,
        names: Arc<[Option<String>]>,
    },
}

impl<'t> Groups<'t> {
    fn name(&self, name: &str) -> Option<&'t str> {
        match self {
            Groups::Std(c) => c.name(name).map(|m| m.as_str()),
            Groups::Fancy { names, .. } => {
                let i = names.iter().position(|n| n.as_deref() == Some(name))?;
                self.text(i)
            }
        }
    }

    /// Where group `i` matched (0: the whole match).
    fn span(&self, i: usize) -> Option<(usize, usize)> {
        match self {
            Groups::Std(c) => c.get(i).map(|m| (m.start(), m.end())),
            Groups::Fancy { spans, .. } => spans.get(i).copied().flatten(),
        }
    }

    fn text(&self, i: usize) -> Option<&'t str> {
        match self {
            Groups::Std(c) => c.get(i).map(|m| m.as_str()),
            Groups::Fancy { text, .. } => {
                let (a, b) = self.span(i)?;
                text.get(a..b)
            }
        }
    }
}

/// A `regex` crate pattern, checked when the filter is built but kept compiled only from its
/// first search: the automata (`scan.rs`) answer most lines a filter matches, so a jail that
/// never needs the capturing engine does not hold one (1.4 MB for the sshd filter's).
#[derive(Debug, Clone)]
struct LazyRegex {
    source: Arc<str>,
    /// The capture group names, in order (the whole match first).
    names: Arc<[Option<String>]>,
    /// Shared by the filter's clones.
    compiled: Arc<OnceLock<Regex>>,
}

impl LazyRegex {
    fn new(checked: &Regex) -> LazyRegex {
        LazyRegex {
            source: checked.as_str().into(),
            names: checked
                .capture_names()
                .map(|n| n.map(str::to_owned))
                .collect(),
            compiled: Arc::default(),
        }
    }

    /// `source`, parsed into `hir`, when the `regex` crate is sure to compile it: both of
    /// its automata fit the crate's size limit, checked without building the rest of its
    /// engine. `None` when that cannot be told so cheaply (the caller builds the engine
    /// and takes its word).
    ///
    /// `Regex::new` parses the pattern with this crate's default syntax options (the ones
    /// `regex_syntax::parse` uses), then builds a forward Thompson NFA with every group and
    /// a reverse one without groups, each under its size limit; the engines built from
    /// those cannot fail on a pattern whose look-arounds are supported. So a pattern that
    /// passes the same two builds compiles; the check costs less than half the engine.
    fn checked(source: &str, hir: &Hir) -> Option<LazyRegex> {
        // `regex::RegexBuilder::size_limit`'s default.
        const SIZE_LIMIT: usize = 10 * (1 << 20);
        let config = thompson::Config::new()
            .utf8(true)
            .nfa_size_limit(Some(SIZE_LIMIT))
            .shrink(false)
            .which_captures(WhichCaptures::All);
        let forward = thompson::Compiler::new()
            .configure(config.clone())
            .build_from_hir(hir)
            .ok()?;
        forward.look_set_any().available().ok()?;
        thompson::Compiler::new()
            .configure(config.which_captures(WhichCaptures::None).reverse(true))
            .build_from_hir(hir)
            .ok()?;
        let names = forward
            .group_info()
            .pattern_names(regex_automata::PatternID::ZERO)
            .map(|n| n.map(str::to_owned))
            .collect();
        Some(LazyRegex {
            source: source.into(),
            names,
            compiled: Arc::default(),
        })
    }

    fn regex(&self) -> &Regex {
        self.compiled.get_or_init(|| {
            Regex::new(&self.source).expect("a pattern that compiled when checked compiles again")
        })
    }

    fn capture_names(&self) -> impl Iterator<Item = Option<&str>> {
        self.names.iter().map(Option::as_deref)
    }
}

impl Engine {
    /// The engine of `expanded`, and its HIR when the `regex` crate runs it.
    fn new(expanded: &str) -> Result<(Engine, Option<Hir>), PatternError> {
        let hir = regex_syntax::parse(expanded).ok();
        if let Some(parsed) = &hir
            && let Some(checked) = LazyRegex::checked(expanded, parsed)
        {
            return Ok((Engine::Std(checked), hir));
        }
        // Not parsed, or too large to tell: the engine's own build decides, and says why not.
        match Engine::build(expanded)? {
            engine @ Engine::Std(_) => Ok((engine, hir)),
            engine @ Engine::Fancy(_) => Ok((engine, None)),
        }
    }

    fn build(expanded: &str) -> Result<Engine, PatternError> {
        match Regex::new(expanded) {
            Ok(regex) => Ok(Engine::Std(LazyRegex::new(&regex))),
            Err(std_error) => fancy_regex::Regex::new(expanded)
                .map(|r| Engine::Fancy(Box::new(Bounded::new(Arc::new(r)))))
                .map_err(|_| PatternError::Regex(std_error.to_string())),
        }
    }

    /// A search that gave up (see [`bounded`]) counts as no match.
    fn is_match(&self, text: &str) -> bool {
        match self {
            Engine::Std(r) => r.regex().is_match(text),
            Engine::Fancy(r) => r.captures(text).is_some(),
        }
    }

    fn captures<'t>(&self, text: &'t str) -> Option<Groups<'t>> {
        match self {
            Engine::Std(r) => r.regex().captures(text).map(Groups::Std),
            Engine::Fancy(r) => Some(Groups::Fancy {
                text,
                spans: r.captures(text)?,
                names: r.names().clone(),
            }),
        }
    }

    /// The index of the first group without a name.
    fn first_unnamed_group(&self) -> Option<usize> {
        let mut names: Box<dyn Iterator<Item = Option<&str>>> = match self {
            Engine::Std(r) => Box::new(r.capture_names()),
            Engine::Fancy(r) => Box::new(r.regex().capture_names()),
        };
        names.by_ref().next();
        names.position(|n| n.is_none()).map(|i| i + 1)
    }

    fn names(&self) -> Vec<String> {
        match self {
            Engine::Std(r) => r.capture_names().flatten().map(str::to_owned).collect(),
            Engine::Fancy(r) => r
                .regex()
                .capture_names()
                .flatten()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// IPv4 dotted quad. Captured text is always checked by `IpAddr::from_str`, so the patterns
/// only need to delimit an address, not validate it (which keeps the automata small and fast:
/// ASCII digits, where `\d` would bring every script's digits into the automaton).
const IPV4: &str = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}";
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
/// fail2ban's multi-line failure id, and the mark that ends its session ([`Memory`]).
const MLFID_GROUP: &str = "mlfid";
const FORGET_GROUP: &str = "mlfforget";

/// The regex for an address tag; `None` for a tag that is not one.
pub(crate) fn address_tag(tag: &str) -> Option<String> {
    // In brackets or not, either family, as fail2ban reads them (`client [192.0.2.1]`);
    // brackets only in pairs.
    let ip = format!(
        r"(?:\[(?P<{HOST_BRACKETED_GROUP}>{IPV4}|{IPV6})\]|(?P<{HOST_GROUP}>{IPV4}|{IPV6}))"
    );
    Some(match tag {
        "HOST" => format!(r"(?:{ip}|(?P<{DNS_GROUP}>{DNS}))"),
        "ADDR" => ip,
        "IP4" => format!("(?P<{HOST_GROUP}>{IPV4})"),
        "IP6" => format!(r"(?:\[(?P<{HOST_BRACKETED_GROUP}>{IPV6})\]|(?P<{HOST_GROUP}>{IPV6}))"),
        "DNS" => format!("(?P<{DNS_GROUP}>{DNS})"),
        // The prefix length alone, as in fail2ban (`<ADDR>/<CIDR>`).
        "CIDR" => r"(?P<cidr>[0-9]+)".to_owned(),
        "SUBNET" => format!(r"{ip}(?:/(?P<cidr>[0-9]+))?"),
        _ => return None,
    })
}

/// The most lines a multi-line filter joins (fail2ban's filters use up to 20).
const MAX_LINES: usize = 100;

/// The address tags whose place in a pattern [`HostSplit`] can find: each one's name, HIR and
/// regex.
static SPLIT_TAGS: LazyLock<Vec<(&str, Hir, String)>> = LazyLock::new(|| {
    ["ADDR", "HOST", "IP4", "IP6", "DNS"]
        .into_iter()
        .filter_map(|tag| {
            let source = address_tag(tag)?;
            Some((tag, regex_syntax::parse(&source).ok()?, source))
        })
        .collect()
});

/// What address tag `tag` found when it took exactly `text`, read as its groups would say;
/// `None` when only the regex can tell (a `<HOST>` that is no address: a name, or `999.1.1.1`).
fn read_tag(tag: &str, text: &str) -> Option<Option<Found>> {
    // Only the bracketed alternative starts with `[`, an address never has one inside.
    let ip = match text.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']')?,
        None => text,
    };
    let addr = ip.parse().ok().map(|a| Found::Addr(canonical(a)));
    match tag {
        "DNS" => Some(Some(Found::Name(text.to_owned()))),
        "HOST" if addr.is_none() => None,
        _ => Some(addr),
    }
}

/// A pattern's automata that place the address, and the tag they place.
type Split = (Arc<HostSplit>, &'static str);

/// One compiled `failregex`.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    engine: Engine,
    /// The pattern's HIR anchored at the line start, for the filter's [`Scanner`] and
    /// [`Needles`] (`None` for a `fancy-regex` pattern), held only until a [`Filter`] is built with the pattern (a sshd filter's
    /// are 200 KB, which a running jail has no use for); read again from the source when a
    /// filter is built a second time from the same patterns.
    anchored: Option<Hir>,
    /// Where the address is, from automata ([`HostSplit`]), and the tag it is; `None`: the
    /// capturing engine.
    /// Built on the pattern's first match, and shared by its clones: most of a filter's
    /// patterns never match on a given host (10 of sshd's 12 in a typical auth.log), and
    /// each split holds three automata.
    split: Arc<OnceLock<Option<Split>>>,
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
        let (engine, hir) = Engine::new(expanded)?;
        let anchored = hir.map(scan::anchored);
        let nofail = engine
            .names()
            .iter()
            .any(|n| n == NOFAIL_GROUP || n == GAINED_GROUP);
        Ok(Pattern {
            source: source.to_owned(),
            engine,
            anchored,
            split: Arc::default(),
            nofail,
        })
    }

    /// The automata that place the address, and the tag they place, built the first time
    /// they are asked for. `None`: the capturing engine does (a match without a failure is
    /// told by its groups, so such patterns always use it).
    fn split(&self) -> Option<&Split> {
        if self.nofail || !self.scannable() {
            return None;
        }
        self.split
            .get_or_init(|| {
                let hir = match &self.anchored {
                    Some(hir) => Cow::Borrowed(hir),
                    None => Cow::Owned(self.parse_anchored()?),
                };
                SPLIT_TAGS.iter().find_map(|(name, tag, source)| {
                    Some((HostSplit::new(&hir, tag, source)?, *name))
                })
            })
            .as_ref()
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

    /// What this pattern finds in `text`, if it matches; `end`, when known, is where the
    /// match ends (from the filter's [`Scanner`]), which lets automata place the address.
    fn found(&self, text: &str, end: Option<usize>) -> Option<Found> {
        if let (Some(end), Some((split, tag))) = (end, self.split())
            && let Some((s, e)) = split.span(text, end)
        {
            let text = &text[s..e];
            if let Some(found) = read_tag(tag, text) {
                return found;
            }
            if let Some(groups) = split.tag_captures(text) {
                return self.found_in(&Groups::Std(groups));
            }
        }
        self.found_in(&self.engine.captures(text)?)
    }

    /// What the groups of one match of this pattern found.
    fn found_in(&self, groups: &Groups) -> Option<Found> {
        if self.nofail
            && (groups.name(NOFAIL_GROUP).is_some() || groups.name(GAINED_GROUP).is_some())
        {
            return Some(Found::NoFailure);
        }
        match Pattern::address_in(groups) {
            Some(found) => Some(found),
            // An address group that took no address (`999.1.1.1`) is no match.
            None if groups.name(HOST_GROUP).is_some() => None,
            None if groups.name(HOST_BRACKETED_GROUP).is_some() => None,
            None => Some(Found::NoHost),
        }
    }

    /// The address or host name a match's groups took; `None` also for an address group
    /// that took no address (delimited, not validated, by the pattern: `999.1.1.1`).
    fn address_in(groups: &Groups) -> Option<Found> {
        let ip = groups
            .name(HOST_GROUP)
            .or_else(|| groups.name(HOST_BRACKETED_GROUP));
        match ip {
            Some(ip) => ip.parse().ok().map(|a| Found::Addr(canonical(a))),
            None => groups.name(DNS_GROUP).map(|n| Found::Name(n.to_owned())),
        }
    }

    /// The HIR the automata run, taken out of the pattern; parsed again from the source
    /// when a filter took it before. `None` for a pattern the automata do not run.
    fn take_anchored(&mut self) -> Option<Hir> {
        self.anchored.take().or_else(|| self.parse_anchored())
    }

    /// Whether the automata run this pattern: those of the `regex` crate's patterns.
    fn scannable(&self) -> bool {
        matches!(self.engine, Engine::Std(_))
    }

    /// The HIR the automata run, parsed from the source.
    fn parse_anchored(&self) -> Option<Hir> {
        match &self.engine {
            Engine::Std(regex) => regex_syntax::parse(&regex.source).ok().map(scan::anchored),
            Engine::Fancy(_) => None,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The same pattern, shown as `written` (a filter file's failregex with its `prefix`
    /// as written, `{syslog}` and all, rather than expanded).
    pub(crate) fn shown_as(mut self, written: String) -> Pattern {
        self.source = written;
        self
    }

    /// Has a `<F-MLFID>` group.
    fn names_session(&self) -> bool {
        self.engine.names().iter().any(|n| n == MLFID_GROUP)
    }
}

/// A failure found in a line: the peer address and which pattern matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub addr: IpAddr,
    pub pattern: usize,
}

/// A jail's compiled filter.
///
/// Speed: one pass of one automaton over the line says which failregex matches first; most
/// lines of a busy log match none and cost nothing more.
#[derive(Debug, Clone)]
pub struct Filter {
    fail: Vec<Pattern>,
    ignore: Vec<Pattern>,
    scanner: Option<Scanner>,
    /// The literals one of which every failregex match holds, when each pattern has them
    /// (shared by the filter's clones).
    needles: Option<CandidateSearch>,
    prefix: Option<Prefix>,
    /// fail2ban's `maxlines`: the failregexes see this many lines joined ([`Memory`]).
    maxlines: usize,
    /// A pattern names a multi-line failure id (`<F-MLFID>`): lines share sessions.
    sessions: bool,
}

/// A filter's search for the lines it may match ([`Filter::next_candidate`]), cheap to clone
/// and to send to another thread. Its id names the filter build it comes from: clones of a
/// filter share it, a filter built again (a reload) has a new one, so a result computed
/// elsewhere is used only by the filter it was computed for.
#[derive(Debug, Clone)]
pub struct CandidateSearch {
    id: u64,
    needles: Arc<Needles>,
}

impl CandidateSearch {
    fn new(needles: Needles) -> CandidateSearch {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        CandidateSearch {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            needles: Arc::new(needles),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// [`Filter::next_candidate`] of the filter this search is of.
    pub fn next(&self, block: &[u8], from: usize) -> Option<usize> {
        self.needles.next(block, from)
    }
}

/// The text the failregexes see, and the host and multi-line failure id the prefregex found
/// in the line.
struct View<'a> {
    text: Cow<'a, str>,
    host: Option<Found>,
    mlfid: Option<String>,
}

/// How a fail2ban filter prepares a line: its date cut out, then its `prefregex` must match
/// and its `<F-CONTENT>` is what the failregexes see.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub strip_date: bool,
    /// Where the date is, when the filter says (`datepattern`); the automatic formats if not.
    pub datepattern: Option<DatePattern>,
    pub prefregex: Option<Pattern>,
}

impl Filter {
    pub fn new(mut fail: Vec<Pattern>, ignore: Vec<Pattern>) -> Filter {
        let hirs: Vec<Option<Hir>> = fail.iter_mut().map(Pattern::take_anchored).collect();
        let sessions = fail.iter().any(Pattern::names_session);
        let needles = hirs
            .iter()
            .map(Option::as_ref)
            .collect::<Option<Vec<&Hir>>>()
            .and_then(Needles::new)
            .map(CandidateSearch::new);
        let scanner = Scanner::new(
            hirs.into_iter()
                .enumerate()
                .filter_map(|(i, hir)| Some((i, hir?)))
                .collect(),
        );
        Filter {
            fail,
            ignore,
            scanner,
            needles,
            prefix: None,
            maxlines: 1,
            sessions,
        }
    }

    /// The same filter preparing lines as a fail2ban filter does.
    pub fn with_prefix(mut self, prefix: Prefix) -> Filter {
        self.sessions |= prefix
            .prefregex
            .as_ref()
            .is_some_and(Pattern::names_session);
        self.prefix = Some(prefix);
        self
    }

    /// The same filter matching the last `maxlines` lines joined (fail2ban's `maxlines`).
    pub fn with_maxlines(mut self, maxlines: usize) -> Filter {
        self.maxlines = maxlines.clamp(1, MAX_LINES);
        self
    }

    /// Whether lines depend on the lines before them (`maxlines`, `<F-MLFID>` sessions): then
    /// [`Filter::find_in`] with one [`Memory`] per log is the way to match.
    pub fn remembers(&self) -> bool {
        self.maxlines > 1 || self.sessions
    }

    /// Where, at or after `from` in `block` (lines of a log, raw bytes), the next line that a
    /// failregex may match is: the position is inside that line. Every line before it and
    /// after `from` is one [`Filter::examine`] calls [`Verdict::Missed`], whatever its
    /// bytes; `None` when every line from `from` on is. A filter that cannot tell (one that
    /// [remembers](Filter::remembers), cuts dates out, or has a pattern without a required
    /// literal) answers `from`: every line is examined.
    pub fn next_candidate(&self, block: &[u8], from: usize) -> Option<usize> {
        match self.candidate_search() {
            Some(search) => search.next(block, from),
            None => (from < block.len()).then_some(from),
        }
    }

    /// What [`Filter::next_candidate`] searches with, to run on another thread; `None` when
    /// the filter examines every line.
    pub fn candidate_search(&self) -> Option<&CandidateSearch> {
        self.needles
            .as_ref()
            .filter(|_| !self.remembers() && self.prefix.is_none())
    }

    pub fn prefix(&self) -> Option<&Prefix> {
        self.prefix.as_ref()
    }

    /// The same filter finding the date to cut out (fail2ban filters) with `pattern`.
    pub fn with_datepattern(mut self, pattern: DatePattern) -> Filter {
        if let Some(prefix) = &mut self.prefix {
            prefix.datepattern = Some(pattern);
        }
        self
    }

    /// The filter's `datepattern`, if it has one.
    pub fn datepattern(&self) -> Option<&DatePattern> {
        self.prefix.as_ref()?.datepattern.as_ref()
    }

    /// What the failregexes see: the line, or (fail2ban filters) the line without its date,
    /// cut to the prefregex's content; `None` when the prefregex does not match.
    fn view<'a>(&self, line: &'a str) -> Option<View<'a>> {
        let Some(prefix) = &self.prefix else {
            return Some(View {
                text: Cow::Borrowed(line),
                host: None,
                mlfid: None,
            });
        };
        let mut text = Cow::Borrowed(line);
        let span = match &prefix.datepattern {
            Some(pattern) => pattern.span(line),
            None => date::span(line),
        };
        if prefix.strip_date
            && let Some((start, end)) = span
        {
            text = Cow::Owned(format!("{}{}", &line[..start], &line[end..]));
        }
        let Some(pre) = &prefix.prefregex else {
            return Some(View {
                text,
                host: None,
                mlfid: None,
            });
        };
        let groups = pre.engine.captures(&text)?;
        let host = pre.found_in(&groups)?;
        let content = groups.name(CONTENT_GROUP).map(str::to_owned);
        let mlfid = groups.name(MLFID_GROUP).map(str::to_owned);
        Some(View {
            text: content.map_or(text, Cow::Owned),
            host: Some(host),
            mlfid,
        })
    }

    /// The first failregex matching `view` (fail2ban's order: the first match decides), and
    /// what it found; a pattern without an address takes the prefregex's.
    ///
    /// The scanner names the first of its patterns that matches; `fancy-regex` patterns
    /// before it are tried in turn. A winner whose address does not parse (`999.1.1.1`)
    /// passes the line on to the patterns after it, as when each is tried in turn.
    fn first_match(&self, view: &View) -> Option<(usize, Found)> {
        let text: &str = &view.text;
        let try_pattern = |i: usize, end: Option<usize>| {
            let found = match self.fail[i].found(text, end)? {
                Found::NoHost => view.host.clone().unwrap_or(Found::NoHost),
                found => found,
            };
            Some((i, found))
        };
        // Without a scanner, or when it stopped without an answer, each pattern in turn.
        let Some(Ok(first)) = self.scanner.as_ref().map(|s| s.first(text)) else {
            return (0..self.fail.len()).find_map(|i| try_pattern(i, None));
        };
        (0..self.fail.len()).find_map(|i| match first {
            Some((winner, end)) if i == winner => try_pattern(i, Some(end)),
            Some((winner, _)) if i > winner => try_pattern(i, None),
            _ if !self.fail[i].scannable() => try_pattern(i, None),
            _ => None,
        })
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

    /// Like [`Filter::find`], but says what the line is when it is no failure (a host name,
    /// a match without a failure) and which ignoreregex discarded a failure (for `banctl
    /// test`, and for the daemon, which resolves host names with `usedns`).
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
        self.unless_ignored(Hit { addr, pattern }, &view.text)
    }

    /// A failure found in `text`, or the first ignoreregex that discards it.
    fn unless_ignored(&self, hit: Hit, text: &str) -> Verdict {
        match self.ignore.iter().position(|p| p.engine.is_match(text)) {
            Some(by) => Verdict::Ignored { hit, by },
            None => Verdict::Matched(hit),
        }
    }

    /// [`Filter::find`] for a filter that [remembers](Filter::remembers): `memory` holds what
    /// the lines before said (one per log).
    pub fn find_in(&self, line: &str, memory: &mut Memory) -> Option<Hit> {
        match self.examine_in(line, memory) {
            Verdict::Matched(hit) => Some(hit),
            _ => None,
        }
    }

    /// [`Filter::examine`] with the lines before in `memory`: the line joins the last
    /// `maxlines` lines, and a match of a session (`<F-MLFID>`) without an address takes the
    /// session's ([`Memory`]). The first failregex that matches decides, as in fail2ban.
    pub fn examine_in(&self, line: &str, memory: &mut Memory) -> Verdict {
        if !self.remembers() {
            return self.examine(line);
        }
        let Some(view) = self.view(line) else {
            return Verdict::Missed;
        };
        let joined;
        let text: &str = if self.maxlines > 1 {
            joined = memory.push_line(&view.text, self.maxlines);
            &joined
        } else {
            &view.text
        };
        let Some((pattern, groups)) = self
            .fail
            .iter()
            .enumerate()
            .find_map(|(i, p)| Some((i, p.engine.captures(text)?)))
        else {
            return Verdict::Missed;
        };
        if self.maxlines > 1
            && let Some(span) = groups.span(0)
        {
            memory.consume(span);
        }
        // The address a match names, also when it is no failure (`Connection from <HOST>`
        // opens a session).
        let found = match Pattern::address_in(&groups) {
            Some(found) => Some(found),
            None => match &view.host {
                Some(Found::Addr(a)) => Some(Found::Addr(*a)),
                _ => None,
            },
        };
        let host = match &found {
            Some(Found::Addr(a)) => Some(*a),
            _ => None,
        };
        let marks = Marks {
            nofail: groups.name(NOFAIL_GROUP).is_some(),
            gained: groups.name(GAINED_GROUP).is_some(),
            forget: groups.name(FORGET_GROUP).is_some(),
        };
        let mlfid = groups.name(MLFID_GROUP).map(str::to_owned).or(view.mlfid);
        let failure = match &mlfid {
            Some(id) => memory.session(id, host, marks),
            None => host.filter(|_| !marks.nofail && !marks.gained),
        };
        match (failure, found) {
            (Some(addr), _) => self.unless_ignored(Hit { addr, pattern }, text),
            (None, Some(Found::Name(name))) => Verdict::Name { pattern, name },
            (None, _) => Verdict::NoFailure { pattern },
        }
    }

    /// The `<F-…>` captures (`user`, …) of failregex `pattern` on `line`.
    pub fn fields(&self, line: &str, pattern: usize) -> Vec<(String, String)> {
        match (self.view(line), self.fail.get(pattern)) {
            (Some(view), Some(p)) => p.fields(&view.text),
            _ => Vec::new(),
        }
    }

    /// The same filter trying each pattern in turn with its capturing engine: what the
    /// automata must agree with.
    #[cfg(test)]
    pub(crate) fn one_by_one(mut self) -> Filter {
        self.scanner = None;
        self.needles = None;
        self
    }

    /// The literals around the address tag of each pattern the automata place addresses
    /// for (see [`HostSplit`]).
    #[cfg(test)]
    pub(crate) fn tag_literals(&self) -> Vec<(Option<String>, Option<String>)> {
        self.fail
            .iter()
            .filter_map(|p| p.split())
            .map(|(split, _)| split.literals())
            .collect()
    }

    /// The same filter with `fail` and `ignore` after its own patterns: its prefix (a
    /// fail2ban filter's prefregex and datepattern) and `maxlines` kept. With nothing to
    /// add, the filter as it was built.
    pub fn with_more(self, fail: Vec<Pattern>, ignore: Vec<Pattern>) -> Filter {
        if fail.is_empty() && ignore.is_empty() {
            return self;
        }
        let Filter {
            fail: mut all_fail,
            ignore: mut all_ignore,
            prefix,
            maxlines,
            ..
        } = self;
        all_fail.extend(fail);
        all_ignore.extend(ignore);
        let filter = Filter::new(all_fail, all_ignore).with_maxlines(maxlines);
        match prefix {
            Some(prefix) => filter.with_prefix(prefix),
            None => filter,
        }
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

    /// The indexes of the lines of `block` ('\n'-terminated) that [`Filter::next_candidate`]
    /// sends to be examined.
    pub(super) fn candidate_lines(filter: &Filter, block: &[u8]) -> Vec<usize> {
        let (mut found, mut from, mut line) = (Vec::new(), 0, 0);
        while let Some(at) = filter.next_candidate(block, from) {
            line += memchr::memchr_iter(b'\n', &block[from..at]).count();
            found.push(line);
            let end = memchr::memchr(b'\n', &block[at..]).map_or(block.len(), |n| at + n);
            from = end + 1;
            line += 1;
        }
        found
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
    fn the_first_pattern_in_order_wins_whatever_its_engine() {
        let f = filter(
            &[
                r"^(?P<u>\w+) rejected (?P=u) from <HOST>$",
                r"^login failed from <HOST>",
                r"failed again from <HOST>",
                r"^(?:login|x) failed from \S+ via <HOST>$",
            ],
            &[],
        );
        assert!(!f.fail[0].scannable(), "a back-reference needs fancy-regex");
        let hit = |line: &str| f.find(line).map(|h| (h.pattern, h.addr.to_string()));
        assert_eq!(
            hit("bob rejected bob from 192.0.2.1"),
            Some((0, "192.0.2.1".into()))
        );
        assert_eq!(hit("bob rejected eve from 192.0.2.1"), None);
        assert_eq!(
            hit("login failed from 192.0.2.2 via 192.0.2.9"),
            Some((1, "192.0.2.2".into()))
        );
        // Unanchored: found where it is, and before pattern 3 that also matches.
        assert_eq!(
            hit("x failed from a via 192.0.2.3 failed again from 192.0.2.4"),
            Some((2, "192.0.2.4".into()))
        );
        // The first match has no valid address: the next pattern gets the line.
        assert_eq!(
            hit("login failed from 999.1.1.1 via 192.0.2.9"),
            Some((3, "192.0.2.9".into()))
        );
    }

    /// Every address the automata read equals the capturing engine's, and the automata answer
    /// for ordinary lines; where two readings exist they leave it to the engine.
    #[test]
    fn automata_read_the_same_address_as_the_capturing_engine() {
        let cases: &[(&str, &str, bool)] = &[
            (
                r"^\S+ sshd\[\d+\]: Failed password for .* from <HOST> port \d+( ssh2)?$",
                "web sshd[1]: Failed password for root from 192.0.2.10 port 22 ssh2",
                true,
            ),
            (
                r"^\S+ sshd\[\d+\]: Failed password for .* from <HOST> port \d+( ssh2)?$",
                "web sshd[1]: Failed password for x from 198.51.100.9 port 1 from 192.0.2.10 port 22",
                true,
            ),
            (
                r"^Invalid user .* from <HOST>(?: port \d+)?$",
                "Invalid user a from [2001:db8::7] port 9",
                true,
            ),
            (
                r"^Invalid user .* from <HOST>(?: port \d+)?$",
                "Invalid user a from 2001:db8::7",
                true,
            ),
            (
                r"^<HOST> - \S+ \[[^]]+\] .*$",
                "203.0.113.5 - - [21/Nov/2026:10:00:00 +0000] GET / from 198.51.100.9",
                true,
            ),
            (r"denied <HOST>\b", "x: denied 192.0.2.8 now", true),
            (
                r"^user .* from <HOST>.*$",
                "user a from 198.51.100.9 from 192.0.2.11",
                false,
            ),
        ];
        for &(source, line, forced) in cases {
            let p = Pattern::fail(source).unwrap();
            let (split, _) = p.split().expect(source);
            let end = Scanner::new(vec![(0, p.anchored.clone().unwrap())])
                .unwrap()
                .first(line)
                .unwrap()
                .expect(line)
                .1;
            assert_eq!(split.span(line, end).is_some(), forced, "{line}");
            assert_eq!(p.found(line, Some(end)), p.found(line, None), "{line}");
        }
    }

    /// Lines made of the words and addresses these patterns look for, in random order: the
    /// automata find what trying each pattern with its capturing engine finds, line by line.
    #[test]
    fn automata_agree_with_the_engine_on_generated_lines() {
        let sshd = Builtin::by_name("sshd")
            .unwrap()
            .compile_with(&[("mode".into(), "aggressive".into())])
            .unwrap();
        let mixed = filter(
            &[
                r"^(?P<u>\w+) rejected (?P=u) from <HOST>$",
                r"^user .* from <HOST>.*$",
                r"^<HOST> - \S+ .*$",
                r"denied <HOST>\b",
                r"^\[<HOST>\]:\d+ (?:bad|worse)$",
            ],
            &[],
        );
        const STARTS: [&str; 7] = [
            "Nov 21 10:00:00 web sshd[1]: Failed password for ",
            "sshd[2]: Invalid user ",
            "2026-11-21T10:00:00+01:00 web sshd[3]: Connection closed by invalid user ",
            "sshd[4]: Received disconnect from ",
            "user ",
            "bob rejected bob from ",
            "",
        ];
        const WORDS: [&str; 16] = [
            "from ",
            "port ",
            "22 ",
            "ssh2",
            " ",
            "192.0.2.1",
            "198.51.100.9 ",
            "2001:db8::1",
            "[2001:db8::2]",
            "999.1.1.1 ",
            "invalid user ",
            "x",
            "[preauth]",
            "- ",
            "denied ",
            "ü",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        // The same patterns without the backreference: all of them give literals to the
        // prefilter, whose skipped lines must be lines no pattern matches.
        let plain = filter(
            &[
                r"^user .* from <HOST>.*$",
                r"^<HOST> - \S+ .*$",
                r"denied <HOST>\b",
                r"^\[<HOST>\]:\d+ (?:bad|worse)$",
            ],
            &[],
        );
        assert!(plain.needles.is_some() && sshd.needles.is_some());
        let (mut lines, mut hits) = (0, 0);
        for f in [sshd, mixed, plain] {
            let slow = f.clone().one_by_one();
            let (mut block, mut matched) = (String::new(), Vec::new());
            for i in 0..20_000 {
                let mut line = STARTS[next(STARTS.len())].to_owned();
                for _ in 0..next(9) {
                    line.push_str(WORDS[next(WORDS.len())]);
                }
                let hit = f.find(&line);
                assert_eq!(hit, slow.find(&line), "{line}");
                lines += 1;
                hits += usize::from(hit.is_some());
                if f.examine(&line) != Verdict::Missed {
                    matched.push(i);
                }
                block.push_str(&line);
                block.push('\n');
            }
            let candidates = candidate_lines(&f, block.as_bytes());
            for i in matched {
                assert!(
                    candidates.binary_search(&i).is_ok(),
                    "the prefilter skipped a line a pattern matches:\n{}",
                    block.lines().nth(i).unwrap_or_default()
                );
            }
        }
        assert!(
            hits > 500,
            "{hits} of {lines} lines matched: the words miss the patterns"
        );
    }

    /// The cheap check that the `regex` crate compiles a pattern says yes only where it
    /// does: at the crate's size limit, for patterns whose forward automaton (with groups)
    /// or reverse one (without) is the larger.
    #[test]
    fn the_compile_check_agrees_with_the_regex_crate_at_its_size_limit() {
        let check = |p: &str| LazyRegex::checked(p, &regex_syntax::parse(p).unwrap()).is_some();
        for template in [r"\w{N}", r"(\d){N}", r"\pL{N}"] {
            let at = |n: usize| template.replace('N', &n.to_string());
            // The largest repetition the crate compiles, by bisection.
            let (mut lo, mut hi) = (1, 1 << 12);
            assert!(Regex::new(&at(lo)).is_ok() && Regex::new(&at(hi)).is_err());
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                match Regex::new(&at(mid)) {
                    Ok(_) => lo = mid,
                    Err(_) => hi = mid,
                }
            }
            for n in [lo - 1, lo, hi, hi + 1] {
                let p = at(n);
                assert_eq!(check(&p), Regex::new(&p).is_ok(), "{p}");
            }
            // Too large for the check: the engine's build gives the crate's own error.
            let err = Pattern::ignore(&at(hi)).unwrap_err();
            assert_eq!(
                err,
                PatternError::Regex(Regex::new(&at(hi)).unwrap_err().to_string())
            );
        }
        // The names of the groups are the crate's.
        let p = r"^(?P<user>\w+) (x)(?<host>\S+)$";
        let checked = LazyRegex::checked(p, &regex_syntax::parse(p).unwrap()).unwrap();
        assert!(
            checked
                .capture_names()
                .eq(Regex::new(p).unwrap().capture_names())
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
