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
    /// Failregex `pattern` matched without a failure (`<F-NOFAIL>`, or no host).
    NoFailure { pattern: usize },
    /// A failure, discarded by ignoreregex number `by`.
    Ignored { hit: Hit, by: usize },
    /// A failure: the daemon would count it.
    Matched(Hit),
}

/// Totals over the lines given to [`Report::add`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: usize,
    pub matched: usize,
    pub ignored: usize,
    pub missed: usize,
    /// Lines that matched with a host name only (never banned).
    pub names: usize,
    /// Lines matched per failregex.
    pub per_failregex: Vec<usize>,
    /// Lines discarded per ignoreregex.
    pub per_ignoreregex: Vec<usize>,
    /// Failures per address.
    pub per_address: HashMap<IpAddr, usize>,
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

    /// Examines one line, counts it, and returns its verdict.
    pub fn add(&mut self, filter: &Filter, line: &str) -> Verdict {
        let verdict = filter.examine_in(line, &mut self.memory);
        self.lines += 1;
        match &verdict {
            Verdict::Missed | Verdict::NoFailure { .. } => self.missed += 1,
            Verdict::Name { pattern, .. } => {
                self.names += 1;
                self.per_failregex[*pattern] += 1;
            }
            Verdict::Ignored { by, .. } => {
                self.ignored += 1;
                self.per_ignoreregex[*by] += 1;
            }
            Verdict::Matched(hit) => {
                self.matched += 1;
                self.per_failregex[hit.pattern] += 1;
                *self.per_address.entry(hit.addr).or_default() += 1;
            }
        }
        verdict
    }

    /// Addresses by failures, most first (ties by address), at most `n`.
    pub fn top_addresses(&self, n: usize) -> Vec<(IpAddr, usize)> {
        let mut all: Vec<(IpAddr, usize)> =
            self.per_address.iter().map(|(a, c)| (*a, *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The summary `banctl test` prints.
    pub fn render(&self, filter: &Filter) -> String {
        let mut out = format!(
            "Lines: {} in all: {} matched, {} ignored, {} missed\n",
            self.lines, self.matched, self.ignored, self.missed
        );
        if self.names > 0 {
            out.push_str(&format!(
                "       {} matched a host name only: never resolved, never banned\n",
                self.names
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
        out.push_str(&format!(
            "\nAddresses: {} distinct\n",
            self.per_address.len()
        ));
        for (addr, n) in self.top_addresses(10) {
            out.push_str(&format!("  {addr}  {n} failure(s)\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Pattern;

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
