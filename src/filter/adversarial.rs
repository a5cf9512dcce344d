//! Differential test on hostile input: for every built-in filter in every mode, lines made
//! from its fixture by an attacker's edits must get the same verdict from the daemon's path
//! (the multi-pattern automaton and the address placed by [`super::scan::HostSplit`]) as
//! from each pattern's capturing engine tried in turn, the answer the fast path must equal.
//!
//! The edits are what an attacker controls in a log line: copies of the text around the
//! address (overlapping themselves: ` from from `, `'@'@'`), other addresses in every form,
//! quotes and brackets, repeated pieces of the line, very long fields, and cuts.
//!
//! The default run fits `cargo xtask test`; `BANCTL_ADVERSARIAL_LINES=N` (what
//! `cargo xtask fuzz differential` sets, in release) makes it longer, `BANCTL_ADVERSARIAL_SEED`
//! changes the lines.

use super::Filter;
use super::builtin::BUILTIN;
use super::builtin::fixtures::{Case, PLANTED, fixture};

/// Lines generated for the whole library by default.
const DEFAULT_LINES: usize = 120_000;

/// A small deterministic generator (xorshift64), so a failure names a seed that repeats it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A position in `s` on a character boundary.
    fn boundary(&mut self, s: &str) -> usize {
        let mut at = self.below(s.len() + 1);
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}

/// Addresses and address-like text an attacker writes.
const ADDRESSES: [&str; 10] = [
    PLANTED,
    "198.51.100.9:22",
    "[2001:db8::9]",
    "2001:db8::9",
    "::ffff:198.51.100.9",
    "999.1.1.1",
    "198.51.100.9.1",
    "fe80::9%eth0",
    "2001:db8:0:0:0:0:0:9",
    "0.0.0.0",
];

const PUNCTUATION: [&str; 14] = [
    "'", "\"", "[", "]", "(", ")", "@", ":", "<", ">", " ", "'@'", "\\", "\t",
];

/// The text of `line` before and after `addr` (the fixture's expected address), as the
/// literals an attacker copies: up to 24 bytes on each side.
fn edges_of(line: &str, addr: &str) -> Option<(String, String)> {
    let at = line.find(addr)?;
    let (before, after) = (&line[..at], &line[at + addr.len()..]);
    let mut from = before.len().saturating_sub(24);
    while !before.is_char_boundary(from) {
        from += 1;
    }
    let mut to = after.len().min(24);
    while !after.is_char_boundary(to) {
        to -= 1;
    }
    Some((before[from..].to_owned(), after[..to].to_owned()))
}

/// The last `n` bytes of `s` (on a character boundary), or the first `n` with `head`.
fn piece(s: &str, n: usize, head: bool) -> &str {
    if head {
        let mut to = n.min(s.len());
        while !s.is_char_boundary(to) {
            to -= 1;
        }
        &s[..to]
    } else {
        let mut from = s.len().saturating_sub(n);
        while !s.is_char_boundary(from) {
            from += 1;
        }
        &s[from..]
    }
}

/// One attacker edit of `line`; `edges` are texts found around addresses: the literals of
/// the patterns and the seed's own text.
fn edit(rng: &mut Rng, line: &mut String, edges: &[(String, String)]) {
    let (before, after) = rng.pick(edges);
    // Mostly the whole literal, sometimes a piece of it.
    let pre = match rng.below(3) {
        0 => piece(before, 1 + rng.below(before.len().max(1)), false),
        _ => before,
    }
    .to_owned();
    let post = match rng.below(3) {
        0 => piece(after, 1 + rng.below(after.len().max(1)), true),
        _ => after,
    }
    .to_owned();
    let insert = match rng.below(12) {
        // The address in its own literals, as if it were the peer.
        0 | 1 => format!("{pre}{}{post}", rng.pick(&ADDRESSES)),
        // The literal before the address overlapping itself (` from from `).
        2 => {
            let cut = rng.boundary(&pre);
            format!("{}{pre}{}{post}", &pre[..cut], rng.pick(&ADDRESSES))
        }
        // The literal after the address overlapping itself.
        3 => {
            let cut = rng.boundary(&post);
            format!("{post}{}", &post[cut..])
        }
        4 => (*rng.pick(&ADDRESSES)).to_owned(),
        5 => (*rng.pick(&PUNCTUATION)).to_owned(),
        // A piece of the line itself, again.
        6 => {
            let (a, b) = (rng.boundary(line), rng.boundary(line));
            line[a.min(b)..a.max(b)].to_owned()
        }
        // A very long field.
        7 => "x".repeat(rng.below(3000)),
        // Cut the line.
        8 => {
            let at = rng.boundary(line);
            line.truncate(at);
            return;
        }
        // An occurrence of the literal before the address made to overlap a copy of its
        // own start, which hides it from a search that does not look at overlaps.
        9 | 10 => {
            let found: Vec<usize> = line.match_indices(pre.as_str()).map(|(at, _)| at).collect();
            let Some(&at) = found.get(rng.below(found.len())) else {
                return;
            };
            let cut = rng.boundary(&pre);
            line.insert_str(at, &pre[..cut]);
            return;
        }
        _ => "ü".to_owned(),
    };
    let at = rng.boundary(line);
    line.insert_str(at, &insert);
}

/// The seeds of one filter: its fixture lines, and the texts around the address in each,
/// beside the literals around the address tag in its patterns.
fn seeds(
    cases: &[Case],
    mode: &Option<String>,
    filter: &Filter,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut edges: Vec<(String, String)> = filter
        .tag_literals()
        .into_iter()
        .map(|(before, after)| (before.unwrap_or_default(), after.unwrap_or_default()))
        .collect();
    let mut lines = Vec::new();
    for c in cases.iter().filter(|c| &c.mode == mode) {
        if let Some(around) = c.expect.as_deref().and_then(|addr| edges_of(&c.line, addr)) {
            edges.push(around);
        }
        lines.push(c.line.clone());
    }
    edges.push((" from ".to_owned(), " port ".to_owned()));
    edges.sort();
    edges.dedup();
    (lines, edges)
}

#[test]
fn fast_path_equals_capturing_engine_on_adversarial_lines() {
    let total: usize = std::env::var("BANCTL_ADVERSARIAL_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_LINES);
    let seed: u64 = std::env::var("BANCTL_ADVERSARIAL_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5EED_BA7C_7115_0001);
    type Run = (
        &'static str,
        Option<String>,
        Filter,
        Vec<String>,
        Vec<(String, String)>,
    );
    let mut runs: Vec<Run> = Vec::new();
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
            let (lines, edges) = seeds(&cases, &mode, &filter);
            runs.push((b.name, mode, filter, lines, edges));
        }
    }
    let per_run = total / runs.len();
    let mut rng = Rng(seed);
    let (mut lines, mut failures, mut planted, mut examined) = (0usize, 0usize, 0usize, 0usize);
    for (name, mode, fast, seeds, edges) in &runs {
        let slow = fast.clone().one_by_one();
        let (mut block, mut counted) = (Vec::new(), Vec::new());
        for _ in 0..per_run {
            let mut line = rng.pick(seeds).clone();
            for _ in 0..1 + rng.below(5) {
                edit(&mut rng, &mut line, edges);
            }
            let mut bytes = line.into_bytes();
            if rng.below(8) == 0 {
                // Invalid UTF-8 anywhere, even inside a character: replaced when matched.
                let at = rng.below(bytes.len() + 1);
                const BAD: [&[u8]; 4] = [b"\xff", b"\xe2\x80", b"\xc3", b"\x80\x80"];
                let bad = *rng.pick(&BAD);
                bytes.splice(at..at, bad.iter().copied());
            }
            let line = String::from_utf8_lossy(&bytes).into_owned();
            block.extend_from_slice(&bytes);
            block.push(b'\n');
            let verdict = fast.examine(&line);
            counted.push(verdict != super::Verdict::Missed);
            assert_eq!(
                verdict,
                slow.examine(&line),
                "{name} (mode {mode:?}, seed {seed}): the daemon's path and the engine disagree on\n{line}"
            );
            lines += 1;
            if let super::Verdict::Matched(hit) = verdict {
                failures += 1;
                planted += usize::from(hit.addr.to_string() == PLANTED);
            }
        }
        let candidates = super::tests::candidate_lines(fast, &block);
        for (i, counts) in counted.iter().enumerate() {
            assert!(
                !counts || candidates.contains(&i),
                "{name} (mode {mode:?}, seed {seed}): the prefilter skipped line {i}, which a pattern matches:\n{}",
                String::from_utf8_lossy(block.split(|b| *b == b'\n').nth(i).unwrap_or_default())
            );
        }
        examined += candidates.len();
    }
    println!(
        "{lines} adversarial lines over {} filter modes: {failures} failures, {planted} of them at the planted address (as the engine also reads them); the prefilter passed {examined} lines to the automata and no line a pattern matches was skipped",
        runs.len()
    );
    assert!(
        failures > lines / 20,
        "{failures} of {lines} lines were failures: the edits destroy the lines"
    );
}
