//! Skipping lines no failregex can match, many lines at a time.
//!
//! Every match of a pattern contains one of a few literals that the pattern requires: for a
//! pattern `C0 C1 … Cn` (a concatenation), a match of it contains a match of each suffix
//! `Ci … Cn`, and every match of that suffix starts with one of its prefix literals when
//! their set is finite. [`Needles`] picks, for each pattern, the suffix whose literals are
//! the most telling, and searches a whole block of lines for any of them at once (SIMD,
//! gigabytes per second). A line that holds none of them is matched by no pattern: only the
//! lines that hold one go to the automata.
//!
//! The search runs on raw bytes. A line that is not valid UTF-8 is matched after its invalid
//! bytes are replaced by U+FFFD; a needle (valid UTF-8, without U+FFFD) occurs in the
//! replaced text exactly where it occurs in the bytes, since a replacement never swallows a
//! byte that starts a character. So the answer is the same as examining every line, which
//! `adversarial::fast_path_equals_capturing_engine_on_adversarial_lines` checks on hostile lines.
//!
//! Some lines hold a needle but cannot match: a benign message that shares a pattern's most
//! telling words (`Received disconnect from … :11: disconnected by user` beside the pattern
//! for `…:3: …: Auth fail`). So each pattern may also have a second set of literals, from
//! another suffix, one of which its every match holds as well ([`Confirm`]). A line goes to
//! the automata only when, for some pattern whose needle it holds, it also holds one of that
//! pattern's confirming literals (or the pattern has none). The search reports which needle
//! it found, so only that needle's patterns are confirmed; every needle occurrence in a line
//! is looked at before the line is skipped, and a pattern refuted once is not searched again
//! in the same line (a line full of needles costs one pass, not one search per needle).
//! The same replacement argument holds for confirming literals, which the same test checks.

use aho_corasick::packed;
use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use memchr::memmem::Finder;
use regex_syntax::hir::literal::{ExtractKind, Extractor, Seq};
use regex_syntax::hir::{Hir, HirKind};

/// How many leading bytes of a literal are kept: more only adds needles, not selectivity.
const KEEP: usize = 16;
/// More literals than this for one pattern is no help (most lines would be candidates).
const MAX_PER_PATTERN: usize = 24;
/// Up to this many confirming literals are searched one by one; more, with one automaton.
const FEW: usize = 3;
/// A confirming set whose weakest literal weighs less than three letters would pass most
/// lines anyway.
const MIN_CONFIRM_WEIGHT: u32 = 48;

/// The literals one of which every failregex match contains, and which patterns each serves.
#[derive(Debug, Clone)]
pub(super) struct Needles {
    search: Search,
    /// Every distinct needle, by the search's pattern id.
    needles: Vec<Vec<u8>>,
    /// Per needle: the filter's patterns a line holding it may match (those of the needle and
    /// of every needle that is a prefix of it, which occur at the same place).
    patterns: Vec<Vec<usize>>,
    /// Per needle: the longer needles it is a prefix of (the search names only one of the
    /// needles that start at a place; these may start there too).
    longer: Vec<Vec<usize>>,
    /// Per filter pattern: the literals one of which its match also holds, when telling.
    confirm: Vec<Option<Confirm>>,
}

/// The search for needles, reporting which one it found: SIMD when the needles allow it.
#[derive(Debug, Clone)]
enum Search {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Search {
    /// `None` when no automaton can be built.
    fn new(literals: &[Vec<u8>]) -> Option<Search> {
        if literals.is_empty() {
            // No pattern can match: nothing is a candidate.
            return AhoCorasick::new(literals).ok().map(Search::Automaton);
        }
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(literals)
            .build();
        match packed {
            Some(searcher) => Some(Search::Packed(searcher)),
            None => AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .kind(Some(AhoCorasickKind::DFA))
                .build(literals)
                .ok()
                .map(Search::Automaton),
        }
    }

    /// The first literal at or after `from` in `hay`: where it starts, and which it is.
    fn find(&self, hay: &[u8], from: usize) -> Option<(usize, usize)> {
        match self {
            Search::Packed(s) => s
                .find_in(hay, aho_corasick::Span::from(from..hay.len()))
                .map(|m| (m.start(), m.pattern().as_usize())),
            Search::Automaton(ac) => ac
                .find(Input::new(hay).span(from..hay.len()))
                .map(|m| (m.start(), m.pattern().as_usize())),
        }
    }
}

/// A pattern's second set of required literals: a few searched one by one, more at once.
#[derive(Debug, Clone)]
enum Confirm {
    Few(Vec<Finder<'static>>),
    Many(Search),
}

impl Confirm {
    fn new(literals: &[Vec<u8>]) -> Option<Confirm> {
        if literals.len() <= FEW {
            return Some(Confirm::Few(
                literals
                    .iter()
                    .map(|l| Finder::new(l).into_owned())
                    .collect(),
            ));
        }
        Search::new(literals).map(Confirm::Many)
    }

    fn held_by(&self, line: &[u8]) -> bool {
        match self {
            Confirm::Few(finders) => finders.iter().any(|f| f.find(line).is_some()),
            Confirm::Many(search) => search.find(line, 0).is_some(),
        }
    }
}

/// The line a search is in (start, end without its line end), found once per line, and the
/// patterns found not to match it (by index, up to 128; a pattern beyond that is simply
/// confirmed again).
struct Line {
    span: Option<(usize, usize)>,
    refuted: u128,
}

impl Line {
    /// The line around `at`, a position at or after the last one asked about.
    fn around(&mut self, hay: &[u8], at: usize) -> (usize, usize) {
        match self.span {
            Some((start, end)) if at < end => (start, end),
            _ => {
                let start = memchr::memrchr(b'\n', &hay[..at]).map_or(0, |i| i + 1);
                let end = memchr::memchr(b'\n', &hay[at..]).map_or(hay.len(), |i| at + i);
                self.span = Some((start, end));
                self.refuted = 0;
                (start, end)
            }
        }
    }

    fn refutes(&self, p: usize) -> bool {
        p < 128 && self.refuted & (1 << p) != 0
    }

    fn refute(&mut self, p: usize) {
        if p < 128 {
            self.refuted |= 1 << p;
        }
    }
}

impl Needles {
    /// `patterns`: the filter's patterns in order. `None` when a pattern requires no usable
    /// literal: then every line must be examined.
    pub(super) fn new<'h>(patterns: impl IntoIterator<Item = &'h Hir>) -> Option<Needles> {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut served: Vec<Vec<usize>> = Vec::new();
        let mut confirm = Vec::new();
        // Literals are searched in the raw bytes: U+FFFD in one would not be where the
        // replaced text has it.
        let replaced = |l: &[u8]| l.windows(3).any(|w| w == "\u{FFFD}".as_bytes());
        for (p, hir) in patterns.into_iter().enumerate() {
            let Telling {
                needles: own,
                confirm: second,
            } = telling(hir)?;
            for needle in own {
                let id = match needles.iter().position(|n| *n == needle) {
                    Some(id) => id,
                    None => {
                        needles.push(needle);
                        served.push(Vec::new());
                        needles.len() - 1
                    }
                };
                served[id].push(p);
            }
            // Replaced text would not hold U+FFFD where the bytes do (see the needles).
            confirm.push(
                second
                    .filter(|literals| !literals.iter().any(|l| replaced(l)))
                    .and_then(|literals| Confirm::new(&literals)),
            );
        }
        if needles.iter().any(|n| replaced(n)) {
            return None;
        }
        let prefix_of = |a: &[u8], b: &[u8]| b.starts_with(a);
        let patterns = needles
            .iter()
            .map(|n| {
                let mut ps: Vec<usize> = needles
                    .iter()
                    .zip(&served)
                    .filter(|(m, _)| prefix_of(m, n))
                    .flat_map(|(_, ps)| ps.iter().copied())
                    .collect();
                ps.sort_unstable();
                ps.dedup();
                ps
            })
            .collect();
        let longer = needles
            .iter()
            .map(|n| {
                (0..needles.len())
                    .filter(|&j| needles[j].len() > n.len() && prefix_of(n, &needles[j]))
                    .collect()
            })
            .collect();
        let search = Search::new(&needles)?;
        Some(Needles {
            search,
            needles,
            patterns,
            longer,
            confirm,
        })
    }

    /// Where, at or after `from` in `hay` (lines, raw bytes), the next line that a pattern
    /// may match holds a needle: the line holds one of some pattern's needles and one of
    /// that pattern's confirming literals (or the pattern has none).
    pub(super) fn next(&self, hay: &[u8], mut from: usize) -> Option<usize> {
        let mut line = Line {
            span: None,
            refuted: 0,
        };
        while from < hay.len() {
            let (at, id) = self.search.find(hay, from)?;
            let certain = self.patterns[id].iter();
            let possible = self.longer[id]
                .iter()
                .filter(|&&j| hay[at..].starts_with(&self.needles[j]))
                .flat_map(|&j| self.patterns[j].iter());
            for &p in certain.chain(possible) {
                let Some(confirm) = &self.confirm[p] else {
                    return Some(at);
                };
                let (start, end) = line.around(hay, at);
                if line.refutes(p) {
                    continue;
                }
                if confirm.held_by(&hay[start..end]) {
                    return Some(at);
                }
                line.refute(p);
            }
            from = at + 1;
        }
        None
    }
}

/// A pattern's needles, and the confirming literals of another suffix when they tell.
struct Telling {
    needles: Vec<Vec<u8>>,
    confirm: Option<Vec<Vec<u8>>>,
}

/// Literals, one of which every match of `hir` contains (cut to [`KEEP`] bytes), the most
/// telling set of all its suffixes, and the next most telling other set as confirmation;
/// `None` when there is no small set.
fn telling(hir: &Hir) -> Option<Telling> {
    let children: &[Hir] = match hir.kind() {
        HirKind::Concat(children) => children,
        HirKind::Capture(c) => return telling(&c.sub),
        _ => std::slice::from_ref(hir),
    };
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let mut sets: Vec<(u32, Vec<Vec<u8>>)> = Vec::new();
    for i in 0..children.len() {
        let suffix = Hir::concat(children[i..].to_vec());
        let mut seq: Seq = extractor.extract(&suffix);
        seq.keep_first_bytes(KEEP);
        seq.dedup();
        let Some(literals) = seq.literals() else {
            continue;
        };
        if literals.is_empty() {
            // The pattern matches nothing: it needs no needle.
            return Some(Telling {
                needles: Vec::new(),
                confirm: None,
            });
        }
        if literals.len() > MAX_PER_PATTERN || literals.iter().any(|l| l.is_empty()) {
            continue;
        }
        let score = score(literals.iter().map(|l| l.as_bytes()));
        sets.push((
            score,
            literals.iter().map(|l| l.as_bytes().to_vec()).collect(),
        ));
    }
    // The first of equally telling sets, as the needles; then, of the sets whose literals
    // none of the needles holds (a line with the needle would hold those anyway), the one
    // whose weakest literal weighs most: its size costs little once the needle was found.
    let best = (0..sets.len()).rev().max_by_key(|&i| sets[i].0)?;
    let needles = sets.remove(best).1;
    let inside = |l: &[u8]| needles.iter().any(|n| n.windows(l.len()).any(|w| w == l));
    let confirm = sets
        .into_iter()
        .map(|(_, literals)| (weakest(literals.iter().map(Vec::as_slice)), literals))
        .rev()
        .filter(|(weight, literals)| {
            *weight >= MIN_CONFIRM_WEIGHT && !literals.iter().any(|l| inside(l))
        })
        .max_by_key(|(weight, _)| *weight)
        .map(|(_, literals)| literals);
    Some(Telling { needles, confirm })
}

/// Words on most lines of the logs they appear in (every request of an access log, most
/// lines of an auth log): they tell nothing.
const COMMON: [&[u8]; 8] = [
    b"HTTP", b"GET", b"POST", b"HEAD", b"PUT", b"from", b"port", b"user",
];

/// How telling a set of literals is: the weight of its weakest literal, less for each
/// doubling of the set. Letters and digits weigh most (words and numbers tell messages
/// apart) unless they spell a [`COMMON`] word; punctuation less (brackets, quotes and colons
/// frame every line of a log); a space least.
fn score<'a>(literals: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut count = 0u32;
    let weakest = weakest(literals.inspect(|_| count += 1));
    weakest.saturating_sub(16 * count.max(1).ilog2())
}

/// The weight of the weakest of `literals` (see [`score`]).
fn weakest<'a>(literals: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut weakest = u32::MAX;
    for literal in literals {
        let mut weight = 0;
        let mut at = 0;
        while at < literal.len() {
            if let Some(word) = COMMON.iter().find(|w| literal[at..].starts_with(w)) {
                at += word.len();
                continue;
            }
            weight += match literal[at] {
                b' ' => 1,
                b if b.is_ascii_alphanumeric() || !b.is_ascii() => 16,
                _ => 4,
            };
            at += 1;
        }
        weakest = weakest.min(weight);
    }
    weakest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles(pattern: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::parse(pattern).unwrap();
        telling(&hir).map(|t| {
            t.needles
                .into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        })
    }

    #[test]
    fn the_most_telling_literals_are_chosen() {
        assert_eq!(
            needles(r"^\S+ sshd\[\d+\]: (?:Invalid|Illegal) user \S+ from \S+$").unwrap(),
            vec!["]: Invalid user ", "]: Illegal user "]
        );
        // A pattern that can match anything offers nothing.
        assert_eq!(needles(r"^.*$"), None);
        // Case-insensitive: every spelling.
        let any_case = needles(r"(?i)^\d+ no$").unwrap();
        for line in ["1 no", "1 NO", "1 nO", "1 No"] {
            assert!(any_case.iter().any(|n| line.contains(n.as_str())), "{line}");
        }
    }

    /// The lines of `text` a filter of `patterns` sends to the automata.
    fn candidates(patterns: &[&str], text: &str) -> Vec<usize> {
        let hirs: Vec<Hir> = patterns
            .iter()
            .map(|p| regex_syntax::parse(p).unwrap())
            .collect();
        let needles = Needles::new(&hirs).unwrap();
        let block = text.as_bytes();
        let (mut found, mut from) = (Vec::new(), 0);
        while let Some(at) = needles.next(block, from) {
            found.push(memchr::memchr_iter(b'\n', &block[..at]).count());
            from = memchr::memchr(b'\n', &block[at..]).map_or(block.len(), |n| at + n + 1);
        }
        found
    }

    #[test]
    fn a_line_with_a_needle_but_not_its_confirmation_is_skipped() {
        let sshd = r"^\S+ sshd\[\d+\]: Received disconnect from \S+ port \d+:3: [^:]*: Auth fail$";
        let text = "h sshd[1]: Received disconnect from 192.0.2.1 port 22:11: disconnected by user\n\
                    h sshd[1]: Received disconnect from 192.0.2.1 port 22:3: x: Auth fail\n";
        assert_eq!(candidates(&[sshd], text), vec![1]);
        // A line full of needles, none confirmed, is looked at once per needle and skipped.
        let flood = format!("{}\n{text}", "]: Received disconnect from ".repeat(2000));
        assert_eq!(candidates(&[sshd], &flood), vec![2]);
    }

    #[test]
    fn every_needle_starting_at_a_place_is_confirmed() {
        // " abcdef" is a prefix of " abcdefgh": the search names the first pattern's needle
        // where both start, whose confirmation fails; the second pattern's holds.
        let (a, b) = (r"^\d+ abcdef\d+ qqqq$", r"^\d+ abcdefgh\d+ zzzz$");
        assert_eq!(needles(a).unwrap(), vec![" abcdef"]);
        assert_eq!(needles(b).unwrap(), vec![" abcdefgh"]);
        let text = "1 abcdefgh2 zzzz\n1 abcdef2 zzzz\n1 abcdef2 qqqq\n";
        assert_eq!(candidates(&[a, b], text), vec![0, 2]);
        assert_eq!(candidates(&[b, a], text), vec![0, 2]);
        // A later needle of the same line, of another pattern, still makes it a candidate.
        let text = "1 abcdef2 abcdefgh3 zzzz\n";
        assert_eq!(candidates(&[a, r"abcdefgh\d+ zzzz$"], text), vec![0]);
    }
}
