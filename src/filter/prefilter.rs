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
//! `prefilter_agrees_with_examining_every_line` checks on hostile lines.

use regex_automata::util::prefilter::Prefilter;
use regex_automata::{MatchKind, Span};
use regex_syntax::hir::literal::{ExtractKind, Extractor, Seq};
use regex_syntax::hir::{Hir, HirKind};

/// How many leading bytes of a literal are kept: more only adds needles, not selectivity.
const KEEP: usize = 16;
/// More literals than this for one pattern is no help (most lines would be candidates).
const MAX_PER_PATTERN: usize = 24;

/// The literals one of which every match of a filter's patterns contains.
#[derive(Debug, Clone)]
pub(super) struct Needles {
    search: Prefilter,
}

impl Needles {
    /// `None` when a pattern requires no usable literal: then every line must be examined.
    pub(super) fn new<'h>(patterns: impl IntoIterator<Item = &'h Hir>) -> Option<Needles> {
        let mut all = Vec::new();
        for hir in patterns {
            all.extend(required(hir)?);
        }
        all.sort();
        all.dedup();
        // Needles are searched in the raw bytes: U+FFFD in one would not be where the
        // replaced text has it.
        if all
            .iter()
            .any(|n| n.windows(3).any(|w| w == "\u{FFFD}".as_bytes()))
        {
            return None;
        }
        let search = Prefilter::new(MatchKind::LeftmostFirst, &all)?;
        Some(Needles { search })
    }

    /// Where the first needle at or after `from` starts in `hay`.
    pub(super) fn next(&self, hay: &[u8], from: usize) -> Option<usize> {
        if from >= hay.len() {
            return None;
        }
        self.search
            .find(hay, Span::from(from..hay.len()))
            .map(|s| s.start)
    }
}

/// Literals, one of which every match of `hir` contains (cut to [`KEEP`] bytes); `None` when
/// there is no such small set.
fn required(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let children: &[Hir] = match hir.kind() {
        HirKind::Concat(children) => children,
        HirKind::Capture(c) => return required(&c.sub),
        _ => std::slice::from_ref(hir),
    };
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let mut best: Option<(u32, Vec<Vec<u8>>)> = None;
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
            return Some(Vec::new());
        }
        if literals.len() > MAX_PER_PATTERN || literals.iter().any(|l| l.is_empty()) {
            continue;
        }
        let score = score(literals.iter().map(|l| l.as_bytes()));
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((
                score,
                literals.iter().map(|l| l.as_bytes().to_vec()).collect(),
            ));
        }
    }
    best.map(|(_, literals)| literals)
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
    let mut weakest = u32::MAX;
    for literal in literals {
        count += 1;
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
    weakest.saturating_sub(16 * count.ilog2())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles(pattern: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::parse(pattern).unwrap();
        required(&hir).map(|v| {
            v.into_iter()
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
}
