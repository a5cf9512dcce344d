//! What `banctl test` reports: each line's verdict and the totals, as `fail2ban-regex` does.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{Filter, Hit, Memory};

/// What a filter makes of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No failregex matched.
    Missed,
    /// Failregex `pattern` matched a host name only: reported, never resolved nor banned.
    Name { pattern: usize, name: String },
    /// Failregex `pattern` matched without a failure (`<F-NOFAIL>`, or no host): counted as
    /// ignored, as fail2ban-regex counts it.
    NoFailure { pattern: usize },
    /// A failure, discarded by ignoreregex number `by`.
    Ignored { hit: Hit, by: usize },
    /// A failure: the daemon would count it.
    Matched(Hit),
}

/// What `banctl test` does with a failure that names a host instead of an address
/// (fail2ban-regex's `--usedns`).
#[derive(Default)]
pub enum Names {
    /// `no`: such a line is missed.
    Miss,
    /// `warn`: counted apart, never resolved (what the daemon does by default).
    #[default]
    Report,
    /// `yes`: resolved with this function (each name once); a name with addresses is a
    /// failure of each of them, one that has none is missed.
    Resolve(Resolver),
}

/// Looks a host name up: its addresses, none when it has none.
pub type Resolver = Box<dyn FnMut(&str) -> Vec<IpAddr> + Send>;

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Names::Miss => "Miss",
            Names::Report => "Report",
            Names::Resolve(_) => "Resolve",
        })
    }
}

/// Totals over the lines given to [`Report::add`].
#[derive(Debug, Default)]
pub struct Report {
    pub lines: usize,
    pub matched: usize,
    pub ignored: usize,
    pub missed: usize,
    /// Lines that matched with a host name only, not resolved ([`Names::Report`]).
    pub names: usize,
    /// Matched lines whose host name was resolved ([`Names::Resolve`]).
    pub resolved: usize,
    /// Missed lines whose host name has no address ([`Names::Resolve`]).
    pub unresolved: usize,
    names_as: Names,
    /// Each name looked up, and its addresses.
    lookups: HashMap<String, Vec<IpAddr>>,
    /// Lines matched per failregex.
    pub per_failregex: Vec<usize>,
    /// Lines discarded per ignoreregex.
    pub per_ignoreregex: Vec<usize>,
    /// Failures per address.
    pub per_address: Tally,
    /// What the filter remembers between the lines (multi-line filters).
    memory: Memory,
}

impl Report {
    pub fn new(filter: &Filter) -> Report {
        Report {
            per_failregex: vec![0; filter.patterns().len()],
            per_ignoreregex: vec![0; filter.ignore_patterns().len()],
            ..Report::default()
        }
    }

    /// The same report, treating host names as `names` says.
    pub fn with_names(mut self, names: Names) -> Report {
        self.names_as = names;
        self
    }

    /// The addresses a host name resolved to (empty: none, or not looked up).
    pub fn addresses_of(&self, name: &str) -> &[IpAddr] {
        self.lookups.get(name).map_or(&[], Vec::as_slice)
    }

    /// Counts `n` lines that no failregex matches, unseen ([`Filter::next_candidate`] skipped
    /// them).
    pub fn add_missed(&mut self, n: usize) {
        self.lines += n;
        self.missed += n;
    }

    /// Examines one line, counts it, and returns its verdict.
    pub fn add(&mut self, filter: &Filter, line: &str) -> Verdict {
        let verdict = filter.examine_in(line, &mut self.memory);
        self.lines += 1;
        match &verdict {
            Verdict::Missed => self.missed += 1,
            // As fail2ban-regex counts it: the failregex's hit, the line ignored.
            Verdict::NoFailure { pattern } => {
                self.ignored += 1;
                self.per_failregex[*pattern] += 1;
            }
            Verdict::Name { pattern, name } => match &mut self.names_as {
                Names::Miss => self.missed += 1,
                Names::Report => {
                    self.names += 1;
                    self.per_failregex[*pattern] += 1;
                }
                Names::Resolve(resolve) => {
                    let addrs = self
                        .lookups
                        .entry(name.clone())
                        .or_insert_with(|| resolve(name));
                    if addrs.is_empty() {
                        self.missed += 1;
                        self.unresolved += 1;
                    } else {
                        self.matched += 1;
                        self.resolved += 1;
                        self.per_failregex[*pattern] += 1;
                        for addr in addrs.iter() {
                            self.per_address.add(*addr, 1);
                        }
                    }
                }
            },
            Verdict::Ignored { by, .. } => {
                self.ignored += 1;
                self.per_ignoreregex[*by] += 1;
            }
            Verdict::Matched(hit) => {
                self.matched += 1;
                self.per_failregex[hit.pattern] += 1;
                self.per_address.add(hit.addr, 1);
            }
        }
        verdict
    }

    /// Adds the counts of `other`, a report of other lines of the same filter.
    pub fn merge(&mut self, other: Report) {
        self.lines += other.lines;
        self.matched += other.matched;
        self.ignored += other.ignored;
        self.missed += other.missed;
        self.names += other.names;
        self.resolved += other.resolved;
        self.unresolved += other.unresolved;
        self.lookups.extend(other.lookups);
        let add = |to: &mut Vec<usize>, from: Vec<usize>| {
            to.iter_mut().zip(from).for_each(|(n, more)| *n += more);
        };
        add(&mut self.per_failregex, other.per_failregex);
        add(&mut self.per_ignoreregex, other.per_ignoreregex);
        self.per_address.merge(other.per_address);
    }

    /// Addresses by failures, most first (ties by address), at most `n`.
    pub fn top_addresses(&mut self, n: usize) -> Vec<(IpAddr, usize)> {
        top_of(self.per_address.counts().iter().copied(), n)
    }

    /// The summary `banctl test` prints.
    pub fn render(&mut self, filter: &Filter) -> String {
        let mut out = format!(
            "Lines: {} in all: {} matched, {} ignored, {} missed\n",
            self.lines, self.matched, self.ignored, self.missed
        );
        if self.names > 0 {
            out.push_str(&format!(
                "       {} matched a host name only: not resolved (--usedns warn), never banned\n",
                self.names
            ));
        }
        if self.resolved > 0 {
            out.push_str(&format!(
                "       {} of the matched by a host name, resolved (--usedns yes); the daemon resolves names only in jails with usedns = \"yes\"\n",
                self.resolved
            ));
        }
        if self.unresolved > 0 {
            out.push_str(&format!(
                "       {} of the missed by a host name that has no address\n",
                self.unresolved
            ));
        }
        let mut section = |title: String, patterns: &[super::Pattern], hits: &[usize]| {
            out.push_str(&title);
            for (i, (p, n)) in patterns.iter().zip(hits).enumerate() {
                out.push_str(&format!("  {:>2}) [{n}] {}\n", i + 1, p.source()));
            }
        };
        section(
            format!("\nFailregex: {} matched\n", self.matched),
            filter.patterns(),
            &self.per_failregex,
        );
        if !self.per_ignoreregex.is_empty() {
            section(
                format!("\nIgnoreregex: {} ignored\n", self.ignored),
                filter.ignore_patterns(),
                &self.per_ignoreregex,
            );
        }
        // Folded once: the count and the top both read it.
        let counts = self.per_address.counts();
        out.push_str(&format!("\nAddresses: {} distinct\n", counts.len()));
        for (addr, n) in top_of(counts.iter().copied(), 10) {
            out.push_str(&format!("  {addr}  {n} failure(s)\n"));
        }
        out
    }
}

/// Of `all` (each address once), the `n` with the most failures, most first (ties by
/// address). A large log names 100,000s of addresses: one pass keeps the best `n` so far,
/// without copying the rest (O(len × n) at worst: for a short top, as the summary's ten).
/// The order is total (each address once), so these are the `n` a full sort puts first.
fn top_of(all: impl IntoIterator<Item = (IpAddr, usize)>, n: usize) -> Vec<(IpAddr, usize)> {
    let order = |a: &(IpAddr, usize), b: &(IpAddr, usize)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    let mut best: Vec<(IpAddr, usize)> = Vec::with_capacity(n + 1);
    for entry in all {
        if best.len() == n && best.last().is_none_or(|worst| order(&entry, worst).is_ge()) {
            continue;
        }
        let at = best.partition_point(|b| order(b, &entry).is_lt());
        best.insert(at, entry);
        best.truncate(n);
    }
    best
}

/// Failures per address, counted in bulk. Each failure is appended; the appended ones are
/// sorted and folded into the sorted counts once they are as many (at least [`Tally::PAGE`]).
/// So the work per failure is sequential (no hash probe, which is a cache miss per failure
/// in a table of 100,000s of addresses), amortised O(log n), and memory stays within about
/// twice the distinct addresses plus a page.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Distinct addresses, in order, with their counts.
    counted: Vec<(IpAddr, usize)>,
    /// Not yet folded in.
    pending: Vec<(IpAddr, usize)>,
}

impl Tally {
    const PAGE: usize = 1 << 16;

    pub fn add(&mut self, addr: IpAddr, n: usize) {
        self.pending.push((addr, n));
        if self.pending.len() >= self.counted.len().max(Tally::PAGE) {
            self.fold();
        }
    }

    /// Folds the pending into the counted, in place: the counted grow at their end and the
    /// two runs are merged from the back, so no second list of every address is allocated
    /// (each fold would otherwise fault in fresh pages for all of them).
    fn fold(&mut self) {
        sort_by_address(&mut self.pending);
        let old = self.counted.len();
        // Room for every pending entry; the values written here are overwritten below.
        self.counted.extend_from_slice(&self.pending);
        let (counted, pending) = (&mut self.counted, &self.pending);
        // `counted[..i]` and `pending[..j]` are still to merge; `counted[w..]` is merged,
        // ascending, each address once. `w >= i + j` holds throughout, so a write at
        // `w - 1` never lands on an entry still to be read.
        let (mut i, mut j, mut w) = (old, pending.len(), counted.len());
        while i > 0 || j > 0 {
            let next = if j == 0 || (i > 0 && counted[i - 1].0 > pending[j - 1].0) {
                i -= 1;
                counted[i]
            } else {
                j -= 1;
                pending[j]
            };
            match counted.get_mut(w) {
                Some(last) if last.0 == next.0 => last.1 += next.1,
                _ => {
                    w -= 1;
                    counted[w] = next;
                }
            }
        }
        counted.drain(..w);
        self.pending.clear();
    }

    /// Adds the counts of `other`.
    pub fn merge(&mut self, other: Tally) {
        for (addr, n) in other.counted.into_iter().chain(other.pending) {
            self.add(addr, n);
        }
    }

    /// Every address with its count, in address order (the pending folded in first).
    pub fn counts(&mut self) -> &[(IpAddr, usize)] {
        if !self.pending.is_empty() {
            self.fold();
        }
        &self.counted
    }

    /// The count of `addr` (0 when it has none).
    pub fn get(&mut self, addr: IpAddr) -> usize {
        let counts = self.counts();
        counts
            .binary_search_by_key(&addr, |(a, _)| *a)
            .map_or(0, |i| counts[i].1)
    }
}

/// Sorts in [`IpAddr`]'s order (IPv4 first, then each family by value), comparing integers
/// rather than octet arrays.
fn sort_by_address(counts: &mut [(IpAddr, usize)]) {
    counts.sort_unstable_by_key(|(addr, _)| match addr {
        IpAddr::V4(a) => (false, u128::from(a.to_bits())),
        IpAddr::V6(a) => (true, a.to_bits()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Pattern;

    #[test]
    fn host_names_as_fail2ban_regex_usedns_says() {
        // fail2ban's <HOST> takes a name too.
        let source = r"^fail from <HOST>$";
        let (expanded, _) = crate::fail2ban::translate(source);
        let filter = Filter::new(
            vec![Pattern::translated(source, &expanded).unwrap()],
            vec![],
        );
        let lines = [
            "fail from localhost",
            "fail from nowhere.invalid",
            "fail from localhost",
        ];
        let run = |names: Names| {
            let mut report = Report::new(&filter).with_names(names);
            for line in lines {
                report.add(&filter, line);
            }
            report
        };
        let no = run(Names::Miss);
        assert_eq!((no.matched, no.missed, no.names), (0, 3, 0));
        let warn = run(Names::Report);
        assert_eq!((warn.matched, warn.missed, warn.names), (0, 0, 3));
        let mut asked = Vec::new();
        let mut yes = run(Names::Resolve(Box::new(move |name: &str| {
            asked.push(name.to_owned());
            assert_eq!(
                asked.iter().filter(|n| *n == name).count(),
                1,
                "{name} looked up twice"
            );
            match name {
                "localhost" => vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                _ => vec![],
            }
        })));
        assert_eq!(
            (yes.matched, yes.missed, yes.resolved, yes.unresolved),
            (2, 1, 2, 1)
        );
        assert_eq!(yes.per_address.get("127.0.0.1".parse().unwrap()), 2);
        assert_eq!(yes.addresses_of("localhost").len(), 2);
        assert!(
            yes.render(&filter)
                .contains("2 of the matched by a host name, resolved")
        );
    }

    /// The top of many addresses is the top a full sort gives, ties broken by address.
    #[test]
    fn top_addresses_are_the_first_of_a_full_sort() {
        let mut report = Report::default();
        for i in 0..5000u32 {
            let addr = IpAddr::from((i.wrapping_mul(2_654_435_761)).to_be_bytes());
            report.per_address.add(addr, (i % 97) as usize);
        }
        let mut all = report.per_address.counts().to_vec();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for n in [0, 1, 10, 4999, 5000, 6000] {
            assert_eq!(report.top_addresses(n), all[..n.min(all.len())], "n = {n}");
        }
    }

    /// The bulk tally counts what a map would, across folds and merges, in address order.
    #[test]
    fn the_tally_counts_what_a_map_counts() {
        let mut map: HashMap<IpAddr, usize> = HashMap::new();
        let (mut one, mut other) = (Tally::default(), Tally::default());
        let mut x = 7u64;
        for i in 0..300_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Some 50,000 addresses of each family, many repeated.
            let k = (x >> 33) % 50_000;
            let addr = match x & 1 {
                0 => IpAddr::from((k as u32).to_be_bytes()),
                _ => IpAddr::from((u128::from(k) << 64).to_be_bytes()),
            };
            let n = 1 + (i % 3) as usize;
            *map.entry(addr).or_default() += n;
            if i % 5 == 0 {
                other.add(addr, n)
            } else {
                one.add(addr, n)
            }
        }
        one.merge(other);
        let mut expected: Vec<(IpAddr, usize)> = map.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(one.counts(), expected.as_slice());
        assert_eq!(one.counts().len(), expected.len());
        let (addr, n) = expected[expected.len() / 2];
        assert_eq!(one.get(addr), n);
        assert_eq!(one.get("192.0.2.1".parse().unwrap()), 0);
    }

    #[test]
    fn counts_matched_ignored_and_missed() {
        let filter = Filter::new(
            vec![
                Pattern::fail(r"^fail from <HOST>$").unwrap(),
                Pattern::fail(r"^bad user \S+ from <HOST>$").unwrap(),
            ],
            vec![Pattern::ignore(r"^bad user monitor ").unwrap()],
        );
        let mut report = Report::new(&filter);
        for line in [
            "fail from 192.0.2.1",
            "fail from 192.0.2.1",
            "bad user root from 2001:db8::1",
            "bad user monitor from 192.0.2.9",
            "all good",
        ] {
            report.add(&filter, line);
        }
        assert_eq!(
            (report.lines, report.matched, report.ignored, report.missed),
            (5, 3, 1, 1)
        );
        assert_eq!(report.per_failregex, [2, 1]);
        assert_eq!(report.per_ignoreregex, [1]);
        let text = report.render(&filter);
        assert!(
            text.starts_with("Lines: 5 in all: 3 matched, 1 ignored, 1 missed\n"),
            "{text}"
        );
        assert!(text.contains("   1) [2] ^fail from <HOST>$\n"), "{text}");
        assert!(text.contains("  192.0.2.1  2 failure(s)\n"), "{text}");
    }
}
