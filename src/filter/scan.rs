//! Matching without a capturing engine, where the answer is the same.
//!
//! A filter's patterns are one multi-pattern automaton ([`Scanner`]): one anchored pass of a
//! lazy DFA over the line says which pattern matches first (fail2ban's order) and where its
//! match ends. Most lines of a log match nothing and cost only that pass.
//!
//! For the line that matched, the address is read without a backtracker ([`HostSplit`]). The
//! pattern is a sequence `A T B` where `T` is the address tag. Lazy DFAs that report every
//! match end (`MatchKind::All`) give the positions where `T B` can start (scanning back from
//! the match end), where `A` can end (scanning forward from the line start) and where `B` can
//! start. Every parse of the match puts the tag at some `[s, e)` allowed by all three; when
//! exactly one such `[s, e)` exists it is the span a capturing engine would report, whatever
//! its preference order. Otherwise (a hostile line with two plausible addresses, a pattern
//! the split cannot express) the caller runs the capturing engine: the fast path only ever
//! answers when the answer is forced.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::pool::Pool;
use regex_automata::{Anchored, Input, MatchKind, meta};
use regex_syntax::hir::{
    Class, ClassBytes, ClassBytesRange, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Look,
};

/// A pattern as the automata run it: anchored at the start of the line. An unanchored pattern
/// gets a lazy `(?s:.)*?` in front, which finds its leftmost match as the unanchored search
/// would.
pub(super) fn anchored(hir: Hir) -> Hir {
    if hir.properties().look_set_prefix().contains(Look::Start) {
        return hir;
    }
    let any = regex_syntax::parse(r"(?s:.)*?").expect("a constant pattern parses");
    Hir::concat(vec![any, hir])
}

/// `hir` for haystacks of ASCII bytes only: every class cut to ASCII, literals that hold
/// other bytes never matching, word boundaries the ASCII ones. On a haystack with no byte
/// above 0x7f it matches exactly where `hir` does: every character such a haystack holds is
/// ASCII, and Unicode's word characters among ASCII are ASCII's. The automata of the result
/// are smaller (fewer byte classes, fewer states), so a line costs fewer cache misses.
pub(super) fn ascii_only(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) if lit.0.is_ascii() => hir.clone(),
        HirKind::Literal(_) => Hir::fail(),
        // The ranges are sorted: the ASCII ones come first, the last of them cut at 0x7f
        // (a class like `\S` has hundreds of ranges, which need no copy).
        HirKind::Class(Class::Unicode(class)) => {
            let ranges = class.ranges().iter().take_while(|r| r.start() <= '\x7f');
            Hir::class(Class::Unicode(ClassUnicode::new(
                ranges.map(|r| ClassUnicodeRange::new(r.start(), r.end().min('\x7f'))),
            )))
        }
        HirKind::Class(Class::Bytes(class)) => {
            let ranges = class.ranges().iter().take_while(|r| r.start() <= 0x7f);
            Hir::class(Class::Bytes(ClassBytes::new(
                ranges.map(|r| ClassBytesRange::new(r.start(), r.end().min(0x7f))),
            )))
        }
        HirKind::Look(look) => Hir::look(match look {
            Look::WordUnicode => Look::WordAscii,
            Look::WordUnicodeNegate => Look::WordAsciiNegate,
            Look::WordStartUnicode => Look::WordStartAscii,
            Look::WordEndUnicode => Look::WordEndAscii,
            Look::WordStartHalfUnicode => Look::WordStartHalfAscii,
            Look::WordEndHalfUnicode => Look::WordEndHalfAscii,
            other => *other,
        }),
        HirKind::Repetition(rep) => {
            let mut rep = rep.clone();
            rep.sub = Box::new(ascii_only(&rep.sub));
            Hir::repetition(rep)
        }
        HirKind::Capture(cap) => {
            let mut cap = cap.clone();
            cap.sub = Box::new(ascii_only(&cap.sub));
            Hir::capture(cap)
        }
        HirKind::Concat(items) => Hir::concat(items.iter().map(ascii_only).collect()),
        HirKind::Alternation(items) => Hir::alternation(items.iter().map(ascii_only).collect()),
    }
}

/// All of a filter's patterns that the `regex` crate runs, as one forward lazy DFA, and its
/// twin for lines of ASCII bytes only ([`ascii_only`]), which most log lines are. Only where a
/// match ends is wanted and every pattern is anchored, so no reverse automaton and no
/// capture-aware engine are built (a filter's scanner once held both: a quarter of a jail's
/// memory, and of `banctl test`'s start).
#[derive(Debug, Clone)]
pub(super) struct Scanner {
    automata: Arc<ScanAutomata>,
    /// The filter's index of each automaton pattern.
    index: Vec<usize>,
}

struct ScanAutomata {
    /// The automaton for lines with other bytes than ASCII, built on the first such line:
    /// its NFA is two to ten times its twin's (`\S`, `.` and `\w` over all of Unicode;
    /// 200 KB for the sshd filter), and most logs never need it. `None` when it cannot be
    /// built (size limits): such lines then try the patterns one by one.
    multi: OnceLock<Option<Multi>>,
    /// The anchored patterns `multi` is built from, until it is.
    hirs: Mutex<Vec<Hir>>,
    ascii: DFA,
    /// Per thread: the lazy DFAs' caches (`multi`'s, made on the first line with other
    /// bytes than ASCII; `ascii`'s), each filled only as it is used.
    caches: Pool<(Option<Cache>, Cache), CacheMaker>,
}

type CacheMaker = Box<dyn Fn() -> (Option<Cache>, Cache) + Send + Sync>;

/// The automaton for lines with other bytes than ASCII. A lazy DFA cannot see a Unicode word
/// boundary next to such a byte, so patterns that hold one get the `regex` crate's engine,
/// which runs a lazy DFA and falls back where it must (only `postfix` among the built-ins).
enum Multi {
    Lazy(Box<DFA>),
    Engine(meta::Regex),
}

impl Multi {
    /// `None` also for no patterns: the scanner has at least one, so its list is empty only
    /// if a build of it was cut short, and then its lines go to the patterns one by one.
    fn new(hirs: &[Hir]) -> Option<Multi> {
        if hirs.is_empty() {
            return None;
        }
        if hirs
            .iter()
            .any(|h| h.properties().look_set().contains_word_unicode())
        {
            let config = meta::Config::new().which_captures(WhichCaptures::Implicit);
            let regex = meta::Builder::new()
                .configure(config)
                .build_many_from_hir(hirs);
            regex.ok().map(Multi::Engine)
        } else {
            forward_dfa(hirs).map(|dfa| Multi::Lazy(Box::new(dfa)))
        }
    }
}

impl ScanAutomata {
    /// The automaton for lines with other bytes than ASCII, built now if it is not yet.
    fn multi(&self) -> Option<&Multi> {
        self.multi
            .get_or_init(|| {
                let hirs =
                    std::mem::take(&mut *self.hirs.lock().unwrap_or_else(PoisonError::into_inner));
                Multi::new(&hirs)
            })
            .as_ref()
    }
}

impl std::fmt::Debug for ScanAutomata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanAutomata").finish_non_exhaustive()
    }
}

/// A forward lazy DFA of `hirs`, leftmost-first.
fn forward_dfa(hirs: &[Hir]) -> Option<DFA> {
    let nfa = thompson::Compiler::new()
        .configure(thompson::Config::new().which_captures(WhichCaptures::None))
        .build_many_from_hir(hirs)
        .ok()?;
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::LeftmostFirst)
                // A line that keeps filling the cache (a hostile one) gives up, as the
                // `regex` crate's own lazy DFA does, instead of costing a rebuild of the
                // cache per byte: it is then matched pattern by pattern.
                .minimum_cache_clear_count(Some(3))
                .minimum_bytes_per_state(Some(10)),
        )
        .build_from_nfa(nfa)
        .ok()
}

impl Scanner {
    /// `patterns`: (index in the filter, anchored HIR), in filter order. `None` when the
    /// automaton cannot be built (size limits): the caller tries the patterns one by one.
    pub(super) fn new(patterns: Vec<(usize, Hir)>) -> Option<Scanner> {
        if patterns.is_empty() {
            return None;
        }
        let (index, hirs): (Vec<usize>, Vec<Hir>) = patterns.into_iter().unzip();
        let ascii = forward_dfa(&hirs.iter().map(ascii_only).collect::<Vec<_>>())?;
        let caches = {
            let ascii = ascii.clone();
            let create: CacheMaker = Box::new(move || (None, ascii.create_cache()));
            Pool::new(create)
        };
        Some(Scanner {
            automata: Arc::new(ScanAutomata {
                multi: OnceLock::new(),
                hirs: Mutex::new(hirs),
                ascii,
                caches,
            }),
            index,
        })
    }

    /// The first pattern (in filter order) that matches `text`, and where its match ends.
    /// Every pattern is anchored at the start, so leftmost-first picks the lowest index.
    /// `Err` when the automaton gave up on the line: the caller tries the patterns one by
    /// one.
    pub(super) fn first(&self, text: &str) -> Result<Option<(usize, usize)>, GiveUp> {
        let automata = &*self.automata;
        let input = Input::new(text).anchored(Anchored::Yes);
        let mut caches = automata.caches.get();
        let (multi_cache, ascii_cache) = &mut *caches;
        let found = if text.is_ascii() {
            automata
                .ascii
                .try_search_fwd(ascii_cache, &input)?
                .map(|m| (m.pattern(), m.offset()))
        } else {
            match automata.multi().ok_or(GiveUp)? {
                Multi::Lazy(dfa) => dfa
                    .try_search_fwd(
                        multi_cache.get_or_insert_with(|| dfa.create_cache()),
                        &input,
                    )?
                    .map(|m| (m.pattern(), m.offset())),
                Multi::Engine(regex) => regex.search(&input).map(|m| (m.pattern(), m.end())),
            }
        };
        Ok(found.map(|(pattern, end)| (self.index[pattern.as_usize()], end)))
    }
}

/// The automata and literals that place a pattern's address tag, and their scratch space.
pub(super) struct HostSplit {
    /// `A`, forward.
    before: DFA,
    /// `T`, forward, and `^(?:T)$`: the tag's, shared by every pattern with that tag.
    tag: Arc<TagAutomata>,
    /// `T B`, reversed.
    tag_and_after: DFA,
    /// `B`, reversed.
    after: DFA,
    /// What `A` demands of the text just before the tag, cheaply checked.
    before_edge: Option<Before>,
    /// What `B` demands of the text just after it.
    after_edge: Option<After>,
    scratch: Pool<Scratch, Box<dyn Fn() -> Scratch + Send + Sync>>,
}

impl std::fmt::Debug for HostSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSplit")
            .field("tag", &self.tag.regex)
            .finish_non_exhaustive()
    }
}

/// `A`'s last item: the tag starts at the line start, or right after a literal.
enum Before {
    LineStart,
    Literal(Box<memchr::memmem::Finder<'static>>),
}

/// `B`'s first item: a literal follows the tag, or the line (or match) ends with it.
enum After {
    Literal(Vec<u8>),
    LineEnd,
    MatchEnd,
}

/// What one search needs: the automata's caches and room for positions, reused.
struct Scratch {
    before: Cache,
    tag: Cache,
    tag_and_after: Cache,
    after: Cache,
    starts: Vec<usize>,
    ends: Vec<usize>,
    tag_ends: Vec<usize>,
}

/// How hard to look for the tag's span: the literal edges are necessary conditions only (a
/// unique survivor is forced), the automata give the exact sets.
#[derive(Clone, Copy, PartialEq)]
enum Effort {
    Edges,
    Automata,
}

/// Why the DFAs gave no answer: the caller runs the capturing engine.
#[derive(Debug, PartialEq)]
pub(super) struct GiveUp;

impl From<regex_automata::hybrid::CacheError> for GiveUp {
    fn from(_: regex_automata::hybrid::CacheError) -> GiveUp {
        GiveUp
    }
}

impl From<regex_automata::MatchError> for GiveUp {
    fn from(_: regex_automata::MatchError) -> GiveUp {
        GiveUp
    }
}

/// An address tag's own automata: the same for every pattern that holds the tag, so built once
/// per process (a jail's sshd patterns held ten copies, and every jail its own).
struct TagAutomata {
    /// `T`, forward.
    dfa: DFA,
    /// `^(?:T)$`, for the rare reading a caller cannot do from the text alone.
    regex: regex::Regex,
}

impl TagAutomata {
    /// The automata of the tag whose regex is `source`: built by `build` the first time.
    fn shared(
        source: &str,
        build: impl FnOnce() -> Option<TagAutomata>,
    ) -> Option<Arc<TagAutomata>> {
        // A handful of tags (`SPLIT_TAGS`), each kept for the life of the process.
        static BUILT: Mutex<Vec<(String, Arc<TagAutomata>)>> = Mutex::new(Vec::new());
        let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, tag)) = built.iter().find(|(s, _)| s == source) {
            return Some(Arc::clone(tag));
        }
        let tag = Arc::new(build()?);
        built.push((source.to_owned(), Arc::clone(&tag)));
        Some(tag)
    }
}

impl HostSplit {
    /// The split of `pattern` (anchored) at the one item of its top-level sequence that is
    /// `tag` (the address tag's HIR, from the regex `tag_source`). `None` when the tag is
    /// not such an item (inside a group, changed by a case-insensitive flag) or an automaton
    /// cannot be built: the pattern then always uses the capturing engine.
    pub(super) fn new(pattern: &Hir, tag: &Hir, tag_source: &str) -> Option<Arc<HostSplit>> {
        let HirKind::Concat(items) = pattern.kind() else {
            return None;
        };
        let mut at = items.iter().enumerate().filter(|(_, item)| *item == tag);
        let (k, _) = at.next()?;
        if at.next().is_some() {
            return None;
        }
        let (before, tag, after) = (&items[..k], &items[k], &items[k + 1..]);
        let before_edge = match before {
            [] | [_] if before.iter().all(|h| *h == Hir::look(Look::Start)) => {
                Some(Before::LineStart)
            }
            [.., last] => match last.kind() {
                HirKind::Literal(lit) => Some(Before::Literal(Box::new(
                    memchr::memmem::Finder::new(&lit.0).into_owned(),
                ))),
                _ => None,
            },
            [] => None,
        };
        let after_edge = match after {
            [] => Some(After::MatchEnd),
            [end] if *end == Hir::look(Look::End) => Some(After::LineEnd),
            [first, ..] => match first.kind() {
                HirKind::Literal(lit) => Some(After::Literal(lit.0.to_vec())),
                _ => None,
            },
        };
        let dfa = |items: &[Hir], reverse: bool| -> Option<DFA> {
            let nfa = thompson::Compiler::new()
                .configure(
                    thompson::Config::new()
                        .reverse(reverse)
                        .which_captures(WhichCaptures::None),
                )
                .build_from_hir(&Hir::concat(items.to_vec()))
                .ok()?;
            DFA::builder()
                .configure(
                    DFA::config()
                        .match_kind(MatchKind::All)
                        .unicode_word_boundary(true),
                )
                .build_from_nfa(nfa)
                .ok()
        };
        let before = dfa(before, false)?;
        let tag_and_after = dfa(&items[k..], true)?;
        let after = dfa(after, true)?;
        let tag = TagAutomata::shared(tag_source, || {
            Some(TagAutomata {
                dfa: dfa(std::slice::from_ref(tag), false)?,
                regex: regex::Regex::new(&format!("^(?:{tag_source})$")).ok()?,
            })
        })?;
        let scratch = {
            let dfas = [&before, &tag.dfa, &tag_and_after, &after].map(DFA::clone);
            let create: Box<dyn Fn() -> Scratch + Send + Sync> = Box::new(move || Scratch {
                before: dfas[0].create_cache(),
                tag: dfas[1].create_cache(),
                tag_and_after: dfas[2].create_cache(),
                after: dfas[3].create_cache(),
                starts: Vec::new(),
                ends: Vec::new(),
                tag_ends: Vec::new(),
            });
            Pool::new(create)
        };
        Some(Arc::new(HostSplit {
            before,
            tag,
            tag_and_after,
            after,
            before_edge,
            after_edge,
            scratch,
        }))
    }

    /// The span of the address tag in the pattern's match `[0, end)` of `hay`, when only
    /// one is possible; `None`: ask the capturing engine.
    ///
    /// A span found from the literal edges is forced only if the edges listed every
    /// candidate. Starts found by searching for the literal before the tag are the one list
    /// that could miss one (it did, when the search skipped overlapping occurrences), so such
    /// an answer is also checked: what follows the tag must match `B` to the end of the
    /// match. A mistake in listing starts then costs speed, never the address.
    pub(super) fn span(&self, hay: &str, end: usize) -> Option<(usize, usize)> {
        let hay = hay.as_bytes();
        let mut scratch = self.scratch.get();
        match self.pairs(hay, end, &mut scratch, Effort::Edges) {
            Ok(Pairs::One(s, e)) if self.tail_holds(hay, e, end, &mut scratch) => Some((s, e)),
            Ok(Pairs::One(..) | Pairs::Several) => {
                match self.pairs(hay, end, &mut scratch, Effort::Automata) {
                    Ok(Pairs::One(s, e)) => Some((s, e)),
                    _ => None,
                }
            }
            Ok(Pairs::None) | Err(GiveUp) => None,
        }
    }

    /// Whether `B` matches `[e, end)`, for a span whose start was found by the literal before
    /// the tag. (A start at the line start is exact; so is a tag end at the match or line
    /// end, and one that [`HostSplit::pairs`] checked against `B`'s automaton already, which
    /// it does when `B` starts with no literal.)
    fn tail_holds(&self, hay: &[u8], e: usize, end: usize, scratch: &mut Scratch) -> bool {
        let exact = !matches!(self.before_edge, Some(Before::Literal(_)))
            || matches!(
                self.after_edge,
                Some(After::MatchEnd | After::LineEnd) | None
            );
        if exact {
            return true;
        }
        // An anchored reverse search with `MatchKind::All` reports its leftmost start: a match
        // of exactly `[e, end)` exists when it reaches `e`.
        let input = Input::new(hay).range(e..end).anchored(Anchored::Yes);
        matches!(self.after.try_search_rev(&mut scratch.after, &input), Ok(Some(m)) if m.offset() == e)
    }

    /// The literals just before and just after the tag, where the pattern has them: what
    /// an attacker copies to plant an address.
    #[cfg(test)]
    pub(super) fn literals(&self) -> (Option<String>, Option<String>) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let before = match &self.before_edge {
            Some(Before::Literal(lit)) => Some(text(lit.needle())),
            _ => None,
        };
        let after = match &self.after_edge {
            Some(After::Literal(lit)) => Some(text(lit)),
            _ => None,
        };
        (before, after)
    }

    /// The tag's groups on the text of its span (`^(?:T)$`).
    pub(super) fn tag_captures<'t>(&self, text: &'t str) -> Option<regex::Captures<'t>> {
        self.tag.regex.captures(text)
    }

    /// The `[s, e)` the tag may take: where `A` may end, `T` match and `B` may start.
    fn pairs(
        &self,
        hay: &[u8],
        end: usize,
        scratch: &mut Scratch,
        effort: Effort,
    ) -> Result<Pairs, GiveUp> {
        let Scratch {
            before,
            tag,
            tag_and_after,
            after,
            starts,
            ends,
            tag_ends,
        } = scratch;
        let edges = effort == Effort::Edges;
        match &self.before_edge {
            Some(Before::LineStart) => {
                starts.clear();
                starts.push(0);
            }
            Some(Before::Literal(lit)) if edges => {
                starts.clear();
                starts.extend(overlapping(lit, &hay[..end]).map(|at| at + lit.needle().len()));
            }
            _ => {
                // Where `T B` can start, of which those where `A` can end.
                starts_reversed(&self.tag_and_after, tag_and_after, hay, end, 0, ends)?;
                starts.clear();
                if let Some(&last) = ends.last() {
                    for_each_end_forward(&self.before, before, hay, 0, last, |at| {
                        if ends.binary_search(&at).is_ok() {
                            starts.push(at);
                        }
                    })?;
                }
            }
        }
        let Some(&first) = starts.first() else {
            return Ok(Pairs::None);
        };
        let exact_after = match &self.after_edge {
            Some(After::LineEnd | After::MatchEnd) => false,
            Some(After::Literal(_)) => !edges,
            None => true,
        };
        if exact_after {
            starts_reversed(&self.after, after, hay, end, first + 1, ends)?;
        }
        let mut pairs = Pairs::None;
        for &s in starts.iter() {
            tag_ends.clear();
            for_each_end_forward(&self.tag.dfa, tag, hay, s, end, |at| tag_ends.push(at))?;
            for &e in tag_ends.iter() {
                let fits = match &self.after_edge {
                    _ if exact_after => ends.binary_search(&e).is_ok(),
                    Some(After::Literal(lit)) => hay[e..end].starts_with(lit),
                    Some(After::LineEnd) => e == hay.len(),
                    _ => e == end,
                };
                if fits {
                    pairs = match pairs {
                        Pairs::None => Pairs::One(s, e),
                        _ => return Ok(Pairs::Several),
                    };
                }
            }
        }
        Ok(pairs)
    }
}

/// Every occurrence of `lit` in `hay`, overlapping ones included (` from from ` holds
/// ` from ` twice), as positions in increasing order.
fn overlapping<'h>(
    lit: &'h memchr::memmem::Finder<'static>,
    hay: &'h [u8],
) -> impl Iterator<Item = usize> + 'h {
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = from + lit.find(hay.get(from..)?)?;
        from = at + 1;
        Some(at)
    })
}

/// How many spans the tag may take.
enum Pairs {
    None,
    One(usize, usize),
    Several,
}

/// Fills `found` with the positions `p >= floor` where the reversed automaton `dfa`, run
/// back from `end`, matches `[p, end)`, in increasing order.
fn starts_reversed(
    dfa: &DFA,
    cache: &mut Cache,
    hay: &[u8],
    end: usize,
    floor: usize,
    found: &mut Vec<usize>,
) -> Result<(), GiveUp> {
    found.clear();
    let input = Input::new(hay).range(..end).anchored(Anchored::Yes);
    let mut sid = dfa.start_state_reverse(cache, &input)?;
    // A match state is seen one byte late: after the byte at `j` it means `[j + 1, end)`; a
    // match at 0 shows at the end of input. (A plain range over the bytes: this loop is the
    // hottest of placing an address.)
    let hay = &hay[..end];
    let mut dead = false;
    for j in (floor.saturating_sub(1)..end).rev() {
        sid = dfa.next_state(cache, sid, hay[j])?;
        match step(sid)? {
            Step::Match => found.push(j + 1),
            Step::Dead => {
                dead = true;
                break;
            }
            Step::Go => {}
        }
    }
    if floor == 0 && !dead && matches!(step(dfa.next_eoi_state(cache, sid)?)?, Step::Match) {
        found.push(0);
    }
    found.reverse();
    Ok(())
}

/// Calls `each(p)` for every `p <= last` where the forward automaton matches `[from, p)`.
fn for_each_end_forward(
    dfa: &DFA,
    cache: &mut Cache,
    hay: &[u8],
    from: usize,
    last: usize,
    mut each: impl FnMut(usize),
) -> Result<(), GiveUp> {
    let input = Input::new(hay).range(from..).anchored(Anchored::Yes);
    let mut sid = dfa.start_state_forward(cache, &input)?;
    // Seen one byte late too: after the byte at `at`, a match state means `[from, at)`; a
    // match at the end shows at the end of input.
    debug_assert!(last <= hay.len());
    let bytes = hay.get(from..hay.len().min(last + 1)).unwrap_or_default();
    for (at, &byte) in (from..).zip(bytes) {
        sid = dfa.next_state(cache, sid, byte)?;
        match step(sid)? {
            Step::Match => each(at),
            Step::Dead => return Ok(()),
            Step::Go => {}
        }
    }
    if from <= last
        && last == hay.len()
        && matches!(step(dfa.next_eoi_state(cache, sid)?)?, Step::Match)
    {
        each(last);
    }
    Ok(())
}

enum Step {
    Go,
    Match,
    Dead,
}

fn step(sid: LazyStateID) -> Result<Step, GiveUp> {
    if !sid.is_tagged() {
        return Ok(Step::Go);
    }
    if sid.is_quit() || sid.is_unknown() {
        return Err(GiveUp);
    }
    Ok(if sid.is_match() {
        Step::Match
    } else if sid.is_dead() {
        Step::Dead
    } else {
        Step::Go
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::builtin::BUILTIN;
    use crate::filter::builtin::fixtures::fixture;

    /// The pattern and end each automaton of `scanner` finds in `text`: (ASCII, Unicode).
    type Found = Option<(usize, usize)>;
    fn both(scanner: &Scanner, text: &str) -> (Found, Found) {
        let input = Input::new(text).anchored(Anchored::Yes);
        let lazy = |automaton: &DFA| {
            let mut cache = automaton.create_cache();
            automaton
                .try_search_fwd(&mut cache, &input)
                .expect("the automata never give up on these short lines")
                .map(|m| (m.pattern().as_usize(), m.offset()))
        };
        let unicode = match scanner.automata.multi().expect("short patterns build") {
            Multi::Lazy(dfa) => lazy(dfa),
            Multi::Engine(regex) => regex
                .search(&input)
                .map(|m| (m.pattern().as_usize(), m.end())),
        };
        (lazy(&scanner.automata.ascii), unicode)
    }

    fn scanner(patterns: &[&str]) -> Scanner {
        let hirs = patterns.iter().enumerate();
        Scanner::new(
            hirs.map(|(i, p)| (i, anchored(regex_syntax::parse(p).unwrap())))
                .collect(),
        )
        .unwrap()
    }

    /// Patterns built of what Unicode widens: classes, case folding, word boundaries,
    /// non-ASCII literals, `.`.
    const WIDE: [&str; 8] = [
        r"^(?i)user \w+ from (\d{1,3}(?:\.\d{1,3}){3})\b",
        r"^\S+ \[\w+\]: (?:bad|worse) \b\w+\b$",
        r"^(?i)kelvin=\d+ ",
        r"^é+ \d",
        r"^\s*[[:alpha:]\pL]+ ok \W+$",
        r"^.{3} \w\B\w",
        r"(?-u:\w)+ #\d",
        r"^[^\d\s]+ \p{Greek}?x\b",
    ];

    #[test]
    fn the_ascii_twin_finds_what_the_unicode_automaton_finds_on_ascii_lines() {
        let s = scanner(&WIDE);
        // A line matching each pattern that ASCII can match, edited at random with any
        // ASCII byte (controls and DEL too) and pieces of the others.
        const SEEDS: [&str; 7] = [
            "USER bob from 192.0.2.1 port 22",
            "host [web]: bad w0rd",
            "Kelvin=300 K",
            "\t abc ok !!",
            "abc xyz",
            "_a9 #7",
            "abc x",
        ];
        let mut seed = 0xA5C1_1DEA_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut hits = [0; WIDE.len()];
        for _ in 0..20_000 {
            let mut line = SEEDS[next(SEEDS.len())].to_owned();
            for _ in 0..next(4) {
                let at = next(line.len() + 1);
                match next(3) {
                    0 => line.insert(at, char::from(next(128) as u8)),
                    1 => line.insert_str(at, SEEDS[next(SEEDS.len())]),
                    _ => line.truncate(at),
                }
            }
            let (ascii, unicode) = both(&s, &line);
            assert_eq!(ascii, unicode, "the twins disagree on {line:?}");
            assert_eq!(s.first(&line), Ok(unicode));
            if let Some((p, _)) = unicode {
                hits[p] += 1;
            }
        }
        // Every pattern an ASCII line can match was matched (`é+` needs other bytes).
        for (p, n) in hits.iter().enumerate() {
            assert_eq!(*n == 0, p == 3, "pattern {} matched {n} lines", WIDE[p]);
        }
    }

    #[test]
    fn lines_with_other_characters_take_the_unicode_automaton() {
        let s = scanner(&WIDE);
        // Matches only Unicode gives: a Kelvin sign folding to `k`, Arabic-Indic digits,
        // letters beyond ASCII, a literal `é`.
        for (line, pattern) in [
            ("user élodie from 1.2.3.4 x", 0),
            ("\u{212a}elvin=\u{663}\u{664} ", 2),
            ("éé \u{663}", 3),
            ("  żółw ok !!", 4),
        ] {
            let (ascii, unicode) = both(&s, line);
            assert_eq!(ascii, None, "{line:?}: the ASCII twin is not for this line");
            assert_eq!(unicode.map(|(p, _)| p), Some(pattern), "{line:?}");
            assert_eq!(s.first(line), Ok(unicode), "{line:?}");
        }
    }

    #[test]
    fn the_automaton_for_other_bytes_is_built_on_the_first_line_that_needs_it() {
        let s = scanner(&WIDE);
        for line in [
            "USER bob from 192.0.2.1 port 22",
            "host [web]: bad w0rd",
            "nothing",
        ] {
            s.first(line).unwrap();
        }
        assert!(s.automata.multi.get().is_none(), "ASCII lines built it");
        assert_eq!(s.first("éé \u{663}"), Ok(Some((3, 7))));
        assert!(matches!(
            s.automata.multi.get(),
            Some(Some(Multi::Engine(_)))
        ));
        let kept = s.automata.hirs.lock().unwrap();
        assert!(kept.is_empty(), "the patterns are kept after the build");
    }

    /// Without Unicode word boundaries the automaton for other bytes is a lazy DFA of its
    /// own: on lines with such bytes it names the first pattern that matches, and its end, as
    /// each pattern run alone by the `regex` crate does.
    #[test]
    fn the_lazy_automaton_for_other_bytes_agrees_with_each_pattern_alone() {
        const NARROW: [&str; 5] = [
            r"^(?i)user \w+ from (\d{1,3}(?:\.\d{1,3}){3})",
            r"^é+ \d",
            r"^\s*[[:alpha:]\pL]+ ok \W+$",
            r"^.{3} \w+",
            r"^[^\d\s]+ \p{Greek}?x",
        ];
        let s = scanner(&NARROW);
        assert!(matches!(s.automata.multi(), Some(Multi::Lazy(_))));
        let alone: Vec<regex::Regex> = NARROW
            .iter()
            .map(|p| regex::Regex::new(p).unwrap())
            .collect();
        let mut matched = 0;
        for line in [
            "user élodie from 1.2.3.4 x",
            "USER \u{212a}im from 10.0.0.1",
            "éé \u{663}",
            "  żółw ok !!",
            "  żółw ok !!x",
            "αβγ δ",
            "żółw \u{3b1}x",
            "\u{fffd}\u{fffd}\u{fffd} x",
            "ab",
        ] {
            let expected = alone
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.find(line).map(|m| (i, m.end())));
            matched += usize::from(expected.is_some());
            assert_eq!(s.first(line), Ok(expected), "{line:?}");
        }
        assert_eq!(matched, 7);
    }

    #[test]
    fn every_builtin_filters_twin_agrees_on_its_fixture_lines_and_their_cuts() {
        let mut lines = 0;
        for b in BUILTIN {
            let cases = fixture(b.name);
            let mut modes: Vec<Option<String>> = cases.iter().map(|c| c.mode.clone()).collect();
            modes.sort();
            modes.dedup();
            for mode in modes {
                let options: Vec<(String, String)> = mode
                    .iter()
                    .map(|m| ("mode".to_owned(), m.clone()))
                    .collect();
                let filter = b.compile_with(&options).unwrap();
                let Some(s) = &filter.scanner else { continue };
                for case in cases.iter().filter(|c| c.mode == mode && c.line.is_ascii()) {
                    // The line, and every cut of it: ends land inside fields and tags.
                    for cut in (1..=case.line.len()).rev().step_by(3) {
                        let text = &case.line[..cut];
                        let (ascii, unicode) = both(s, text);
                        assert_eq!(ascii, unicode, "{} ({mode:?}): {text:?}", b.name);
                        lines += 1;
                    }
                }
            }
        }
        assert!(lines > 10_000, "only {lines} lines compared");
    }
}
