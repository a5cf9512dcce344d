//! Jails: count failures per address in a sliding window and decide bans.
//!
//! **Invariant:** a jail never decides to ban an address its config ignores (`ignoreip`,
//! loopback with `ignoreself`), and it does no I/O: the daemon writes the bans it returns.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use smallvec::SmallVec;

use crate::addr::{AddrSet, IpNet};
use crate::ban::Ban;
use crate::config::JailConfig;
use crate::filter::{Hit, Memory, Verdict};

/// What a failure led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; `count` failures of this address are inside the window now.
    Counted { count: usize },
    /// The address reached `maxretry`: ban it.
    Ban(Ban),
    /// The address is never banned by this jail.
    Ignored,
}

/// One jail: its config and its failure window per address.
///
/// Memory is bounded by `max_tracked`: past it, the addresses furthest from a ban (fewest
/// failures in the window, then oldest) are evicted, keeping the ones closest to a ban.
#[derive(Debug)]
pub struct Jail {
    config: JailConfig,
    /// Failure times (Unix seconds, oldest first) inside the window, per address (or per
    /// prefix with `count_by_prefix`, keyed by the prefix's first address).
    failures: HashMap<IpAddr, Times>,
    /// The host's own addresses: never banned with `ignoreself`, nor covered by a prefix ban.
    own: Arc<[IpNet]>,
    /// The single addresses the jail never counts, made from the config and `own`: what
    /// [`Jail::ignores`] says of each address, found by one search.
    never: AddrSet,
    /// The lines behind each window (at most `keep_lines`, newest last), kept only when a
    /// notifier wants them: [`Jail::take_matched`] hands them over with a ban.
    lines: HashMap<IpAddr, VecDeque<Box<str>>>,
    keep_lines: usize,
    counters: Counters,
    /// What the filter remembers between this jail's lines (multi-line filters).
    memory: Memory,
}

/// The failure times of one window: most windows hold a few (up to `maxretry - 1`), kept
/// inline in the table's entry, without an allocation of their own; a longer one spills to
/// the heap. (The table's memory per tracked address is the entry alone.)
pub type Times = SmallVec<[u32; 4]>;

/// A failure [`Jail::record_line`] took: what it led to, and the window it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    /// The key the failure counted under, and that key's failure times (Unix seconds,
    /// oldest first) once it is counted: empty after a ban. `None` when ignored: no window
    /// changed.
    pub window: Option<(IpAddr, Times)>,
}

/// The longest matched line a ban keeps (as its reason in the store, and as the lines its
/// notifiers get).
pub const MAX_MATCHED_LINE: usize = 1024;

/// A matched line as a ban keeps it: cut to [`MAX_MATCHED_LINE`] bytes on a character
/// boundary.
pub fn clip(line: &str) -> &str {
    let mut end = line.len().min(MAX_MATCHED_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// The failures of one address (or prefix key) in one jail's window, as the ledger saves
/// them.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub jail: &'a str,
    pub addr: IpAddr,
    /// Unix seconds, oldest first; empty when the address has no failures left.
    pub times: &'a [u32],
}

/// What a jail saw since the daemon started (kept across reloads), for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lines given to the jail's filter.
    pub lines: u64,
    /// Lines of its sources dropped unread for being longer than the limit.
    pub cut: u64,
    /// Lines its filter found a failure in.
    pub matched: u64,
    /// Failures counted (inside `findtime`, address not ignored).
    pub failures: u64,
    pub bans: u64,
    pub unbans: u64,
}

/// The single addresses a jail of `config` never counts: its `ignoreip`, and with
/// `ignoreself` loopback and the host's addresses `own`. For one address, overlapping a prefix
/// is lying inside it, so this holds exactly the addresses [`JailConfig::ignores`] refuses.
fn never_counted(config: &JailConfig, own: &[IpNet]) -> AddrSet {
    let loopback = [
        IpNet::new(IpAddr::from([127, 0, 0, 0]), 8),
        IpNet::host(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ];
    let mine = config
        .ignoreself
        .then(|| own.iter().copied().chain(loopback))
        .into_iter()
        .flatten();
    AddrSet::new(config.ignoreip.iter().copied().chain(mine))
}

fn unix_secs(t: SystemTime) -> u32 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl Jail {
    pub fn new(config: JailConfig) -> Jail {
        let own: Arc<[IpNet]> = Arc::from([]);
        Jail {
            never: never_counted(&config, &own),
            config,
            failures: HashMap::new(),
            own,
            lines: HashMap::new(),
            keep_lines: 0,
            counters: Counters::default(),
            memory: Memory::default(),
        }
    }

    /// The failure in `line`, if any, with what the lines before said (multi-line filters).
    pub fn find(&mut self, line: &str) -> Option<Hit> {
        self.config.filter.find_in(line, &mut self.memory)
    }

    /// What the filter makes of `line` (a failure, a host name, nothing …), with what the
    /// lines before said.
    pub fn examine(&mut self, line: &str) -> Verdict {
        self.config.filter.examine_in(line, &mut self.memory)
    }

    /// Keeps up to `n` matched lines per address, for [`Jail::take_matched`] (0: none).
    pub fn keep_matched(&mut self, n: usize) {
        self.keep_lines = n;
        if n == 0 {
            self.lines = HashMap::new();
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// The same jail under a new configuration: failure windows are kept.
    pub fn reconfigure(mut self, config: JailConfig) -> Jail {
        self.never = never_counted(&config, &self.own);
        self.config = config;
        self
    }

    /// Tells the jail the host's own addresses.
    pub fn with_own_addresses(mut self, own: Arc<[IpNet]>) -> Jail {
        self.never = never_counted(&self.config, &own);
        self.own = own;
        self
    }

    /// Whether the jail must never ban `net` (ignoreip, loopback, own addresses).
    pub fn ignores(&self, net: &IpNet) -> bool {
        self.config.ignores(net, &self.own)
    }

    /// What a ban of `addr` covers: its `ban_prefix`, unless that prefix would cover an ignored
    /// or own address; then the address alone.
    fn ban_net(&self, addr: IpAddr) -> IpNet {
        let net = IpNet::new(addr, self.config.ban_prefix.for_addr(addr));
        if net.is_host() || !self.ignores(&net) {
            return net;
        }
        tracing::info!(
            jail = self.name(),
            prefix = %net,
            address = %addr,
            "the prefix covers an ignored or own address: banning the address only"
        );
        IpNet::host(addr)
    }

    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Runs the jail's filter on a line; a hit is recorded at `at`.
    pub fn on_line(&mut self, line: &str, at: SystemTime) -> Option<Outcome> {
        let Hit { addr, .. } = self.find(line)?;
        Some(self.record(addr, at))
    }

    /// Records one failure of `addr` at time `at`, found in `line` (kept for notifications when
    /// the jail keeps matched lines). The window it left comes with it, read while it is at
    /// hand: what the ledger saves of it.
    pub fn record_line(&mut self, addr: IpAddr, at: SystemTime, line: &str) -> Recorded {
        let recorded = self.record_window(addr, at);
        if self.keep_lines > 0
            && let Some((key, _)) = &recorded.window
        {
            let lines = self.lines.entry(*key).or_default();
            while lines.len() >= self.keep_lines {
                lines.pop_front();
            }
            lines.push_back(clip(line).into());
        }
        recorded
    }

    /// The lines that led to the ban of `addr` (oldest first), forgotten by the jail.
    pub fn take_matched(&mut self, addr: IpAddr) -> Vec<String> {
        self.lines
            .remove(&self.key_of(addr))
            .map(|lines| lines.into_iter().map(String::from).collect())
            .unwrap_or_default()
    }

    /// Records one failure of `addr` at time `at`.
    pub fn record(&mut self, addr: IpAddr, at: SystemTime) -> Outcome {
        self.record_window(addr, at).outcome
    }

    fn record_window(&mut self, addr: IpAddr, at: SystemTime) -> Recorded {
        if self.never.contains(addr) {
            return Recorded {
                outcome: Outcome::Ignored,
                window: None,
            };
        }
        self.counters.failures += 1;
        let key = self.key_of(addr);
        let now = unix_secs(at);
        let window_start = self.window_start(now);
        let maxretry = self.config.maxretry as usize;
        let (count, mut window) = match self.failures.entry(key) {
            // The first failure of an address (most, in a large log): its window is built
            // here and written to the table once, never read back. The table's slot is
            // usually not in the cache; a store to it does not wait for it, a load would.
            Entry::Vacant(slot) if maxretry > 1 => {
                let window = Times::from_elem(now, 1);
                slot.insert(window.clone());
                (1, window)
            }
            Entry::Vacant(_) => (1, Times::new()),
            Entry::Occupied(mut slot) => {
                let times = slot.get_mut();
                times.retain(|t| *t > window_start);
                times.push(now);
                let count = times.len();
                if count >= maxretry {
                    slot.remove();
                    (count, Times::new())
                } else {
                    (count, times.clone())
                }
            }
        };
        if count >= maxretry {
            return Recorded {
                outcome: Outcome::Ban(Ban {
                    jail: self.config.name.clone(),
                    net: self.ban_net(addr),
                    time: self.config.bantime,
                }),
                window: Some((key, window)),
            };
        }
        if self.failures.len() > self.config.max_tracked {
            self.evict(now);
            // Eviction may have taken this very window.
            window = Times::from_slice(self.window(key));
        }
        Recorded {
            outcome: Outcome::Counted { count },
            window: Some((key, window)),
        }
    }

    /// The address `addr`'s failures are counted under: itself, or with `count_by_prefix` the
    /// first address of its ban prefix.
    pub fn key_of(&self, addr: IpAddr) -> IpAddr {
        if self.config.count_by_prefix {
            self.ban_net(addr).addr()
        } else {
            addr
        }
    }

    /// The failure times (Unix seconds, oldest first) counted under `key`.
    pub fn window(&self, key: IpAddr) -> &[u32] {
        self.failures
            .get(&key)
            .map_or(&[], |times| times.as_slice())
    }

    /// Puts back failures saved before a restart; those outside the window at `now` are gone.
    pub fn restore(&mut self, key: IpAddr, mut times: Vec<u32>, now: SystemTime) {
        let window_start = self.window_start(unix_secs(now));
        times.retain(|t| *t > window_start);
        times.sort_unstable();
        if !times.is_empty() {
            self.failures.insert(key, Times::from_slice(&times));
        }
    }

    /// Where the window of a jail starts at `now` (Unix seconds; failures at or before it are
    /// out).
    pub fn window_start_at(&self, now: SystemTime) -> u32 {
        self.window_start(unix_secs(now))
    }

    fn window_start(&self, now: u32) -> u32 {
        now.saturating_sub(u32::try_from(self.config.findtime.as_secs()).unwrap_or(u32::MAX))
    }

    /// Brings the table back under 90 % of `max_tracked`: first windows that ended, then the
    /// addresses with the fewest failures, oldest first. Amortised O(1) per failure.
    fn evict(&mut self, now: u32) {
        self.sweep_secs(now);
        let target = self.config.max_tracked - self.config.max_tracked / 10;
        let excess = self.failures.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        let mut ranked: Vec<(usize, u32, IpAddr)> = self
            .failures
            .iter()
            .map(|(a, t)| (t.len(), t.last().copied().unwrap_or(0), *a))
            .collect();
        ranked.select_nth_unstable(excess - 1);
        for (_, _, addr) in &ranked[..excess] {
            self.failures.remove(addr);
        }
        tracing::warn!(
            jail = self.name(),
            evicted = excess,
            limit = self.config.max_tracked,
            "failure table full"
        );
    }

    /// Forgets the failures of addresses inside `net` (after a manual ban or unban).
    /// Returns the addresses forgotten.
    pub fn forget(&mut self, net: &IpNet) -> Vec<IpAddr> {
        let gone: Vec<IpAddr> = self
            .failures
            .keys()
            .filter(|addr| net.contains(**addr))
            .copied()
            .collect();
        for addr in &gone {
            self.failures.remove(addr);
            self.lines.remove(addr);
        }
        gone
    }

    /// Drops windows whose every failure is older than `findtime`.
    pub fn sweep(&mut self, now: SystemTime) {
        self.sweep_secs(unix_secs(now));
    }

    fn sweep_secs(&mut self, now: u32) {
        let window_start = self.window_start(now);
        self.failures
            .retain(|_, times| times.last().is_some_and(|t| *t > window_start));
        if !self.lines.is_empty() {
            let failures = &self.failures;
            self.lines.retain(|addr, _| failures.contains_key(addr));
        }
    }

    /// Addresses with at least one failure in the window.
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::duration::BanTime;

    fn jail(extra: &str) -> Jail {
        let text = format!(
            "[jails.j]\nfailregex = ['^fail <HOST>$']\nlogpath = '/x'\nmaxretry = 3\nfindtime = '10m'\nbantime = '1h'\n{extra}"
        );
        Jail::new(
            Config::parse(Path::new("t"), &text)
                .unwrap()
                .jails
                .remove(0),
        )
    }

    #[test]
    fn the_addresses_never_counted_are_those_the_config_ignores() {
        let own: Arc<[IpNet]> = Arc::from(
            ["198.51.100.7", "2001:db8:5::1", "10.9.0.0/16"].map(|n| n.parse::<IpNet>().unwrap()),
        );
        let addresses = [
            "127.0.0.1",
            "127.255.255.255",
            "128.0.0.0",
            "126.255.255.255",
            "::1",
            "::2",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:198.51.100.7",
            "198.51.100.7",
            "198.51.100.6",
            "198.51.100.8",
            "2001:db8:5::1",
            "2001:db8:5::",
            "10.9.255.255",
            "10.10.0.0",
            "10.8.255.255",
            "192.0.2.0",
            "192.0.2.255",
            "192.0.3.0",
            "192.0.1.255",
            "2001:db8:1::",
            "2001:db8:1:ffff:ffff:ffff:ffff:ffff",
            "2001:db8:2::",
            "203.0.113.9",
            "0.0.0.0",
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for extra in [
            "",
            "ignoreself = false",
            "ignoreip = ['192.0.2.0/24', '2001:db8:1::/48', '203.0.113.9']",
            "ignoreip = ['192.0.2.0/24', '192.0.2.128/25', '::ffff:203.0.113.9']\nignoreself = false",
            "ignoreip = ['0.0.0.0/0']",
            "ignoreip = ['::/0', '10.0.0.0/8']\nignoreself = false",
        ] {
            let j = jail(extra).with_own_addresses(own.clone());
            for a in addresses {
                let addr: IpAddr = a.parse().unwrap();
                assert_eq!(
                    j.never.contains(addr),
                    j.ignores(&IpNet::host(addr)),
                    "{a} with {extra:?}"
                );
            }
            // And after a reload, with the own addresses kept.
            let j = j.reconfigure(jail(extra).config);
            for a in addresses {
                let addr: IpAddr = a.parse().unwrap();
                assert_eq!(j.never.contains(addr), j.ignores(&IpNet::host(addr)), "{a}");
            }
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn bans_at_maxretry_within_findtime() {
        let mut j = jail("");
        assert_eq!(
            j.on_line("fail 192.0.2.1", at(0)),
            Some(Outcome::Counted { count: 1 })
        );
        assert_eq!(
            j.on_line("fail 192.0.2.1", at(10)),
            Some(Outcome::Counted { count: 2 })
        );
        assert_eq!(
            j.on_line("fail 192.0.2.9", at(11)),
            Some(Outcome::Counted { count: 1 })
        );
        let Some(Outcome::Ban(ban)) = j.on_line("fail 192.0.2.1", at(20)) else {
            panic!("no ban")
        };
        assert_eq!(ban.net.to_string(), "192.0.2.1");
        assert_eq!(ban.time, BanTime::Finite(Duration::from_secs(3600)));
        // The window starts over after a ban.
        assert_eq!(
            j.on_line("fail 192.0.2.1", at(21)),
            Some(Outcome::Counted { count: 1 })
        );
        assert_eq!(j.on_line("no match", at(22)), None);
    }

    /// Each failure reports the window the table holds after it, whether its address is new
    /// (that window is written once, never read back) or known; a ban leaves none. With
    /// `maxretry = 1` the first failure bans and nothing is kept.
    #[test]
    fn each_failure_reports_the_window_the_table_keeps() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let secs = |t: u64| 1_700_000_000 + t as u32;
        let mut j = jail("");
        let mut expect = Vec::new();
        for (t, outcome) in [
            (0, Outcome::Counted { count: 1 }),
            (5, Outcome::Counted { count: 2 }),
        ] {
            expect.push(secs(t));
            let recorded = j.record_line(a, at(t), "fail 192.0.2.7");
            assert_eq!(recorded.outcome, outcome);
            assert_eq!(recorded.window, Some((a, Times::from_slice(&expect))));
            assert_eq!(j.window(a), expect.as_slice());
        }
        let recorded = j.record_line(a, at(9), "fail 192.0.2.7");
        assert!(matches!(recorded.outcome, Outcome::Ban(_)));
        assert_eq!(recorded.window, Some((a, Times::new())));
        assert_eq!((j.window(a), j.tracked()), (&[][..], 0));

        let mut once = Jail::new(JailConfig {
            maxretry: 1,
            ..j.config().clone()
        });
        for t in [0, 1] {
            let recorded = once.record_line(a, at(t), "fail 192.0.2.7");
            assert!(
                matches!(recorded.outcome, Outcome::Ban(_)),
                "failure at {t}"
            );
            assert_eq!(recorded.window, Some((a, Times::new())));
            assert_eq!(once.tracked(), 0);
        }
    }

    #[test]
    fn window_slides() {
        let mut j = jail("");
        j.record("192.0.2.1".parse().unwrap(), at(0));
        j.record("192.0.2.1".parse().unwrap(), at(300));
        // 601 s after the first failure, it has left the 10 minute window.
        assert_eq!(
            j.record("192.0.2.1".parse().unwrap(), at(601)),
            Outcome::Counted { count: 2 }
        );
        j.sweep(at(2000));
        assert_eq!(j.tracked(), 0);
    }

    #[test]
    fn ignored_addresses_are_never_counted() {
        let mut j = jail("ignoreip = ['198.51.100.0/24']");
        for _ in 0..5 {
            assert_eq!(
                j.on_line("fail 198.51.100.7", at(0)),
                Some(Outcome::Ignored)
            );
            assert_eq!(j.on_line("fail 127.0.0.1", at(0)), Some(Outcome::Ignored));
            assert_eq!(j.on_line("fail ::1", at(0)), Some(Outcome::Ignored));
        }
        assert_eq!(j.tracked(), 0);
        let mut j = jail("ignoreself = false");
        j.record("127.0.0.2".parse().unwrap(), at(0));
        j.record("127.0.0.2".parse().unwrap(), at(0));
        assert!(matches!(
            j.record("127.0.0.2".parse().unwrap(), at(0)),
            Outcome::Ban(_)
        ));
    }

    #[test]
    fn memory_is_bounded_and_eviction_keeps_addresses_closest_to_a_ban() {
        let mut j = jail("max_tracked = 100");
        let close = |i: u32| IpAddr::from([192, 0, 2, i as u8]);
        for i in 0..10 {
            j.record(close(i), at(0));
            j.record(close(i), at(1));
        }
        for i in 0..1000u32 {
            j.record(IpAddr::from([10, 0, (i >> 8) as u8, i as u8]), at(2));
        }
        assert!(j.tracked() <= 100, "{}", j.tracked());
        // Every address with two failures survived: its third failure bans.
        for i in 0..10 {
            assert!(
                matches!(j.record(close(i), at(3)), Outcome::Ban(_)),
                "192.0.2.{i} was evicted"
            );
        }
    }

    #[test]
    fn ipv6_bans_cover_the_prefix_unless_it_holds_an_ignored_or_own_address() {
        let mut j = jail("ignoreip = ['2001:db8:3::77']")
            .with_own_addresses(Arc::from(["2001:db8:4::1".parse::<IpNet>().unwrap()]));
        let ban = |j: &mut Jail, a: &str| {
            let addr: IpAddr = a.parse().unwrap();
            j.record(addr, at(0));
            j.record(addr, at(1));
            match j.record(addr, at(2)) {
                Outcome::Ban(b) => b.net.to_string(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(ban(&mut j, "2001:db8:1::5"), "2001:db8:1::/64");
        assert_eq!(ban(&mut j, "2001:db8:3::5"), "2001:db8:3::5");
        assert_eq!(ban(&mut j, "2001:db8:4::9"), "2001:db8:4::9");
        assert_eq!(ban(&mut j, "192.0.2.9"), "192.0.2.9");
        assert_eq!(
            j.record("2001:db8:4::1".parse().unwrap(), at(3)),
            Outcome::Ignored
        );
    }

    #[test]
    fn matched_lines_are_kept_for_notifications_only_when_asked() {
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let mut j = jail("");
        j.record_line(addr, at(0), "first");
        assert!(j.take_matched(addr).is_empty(), "kept without being asked");
        j.keep_matched(2);
        j.record_line(addr, at(1), "a");
        assert!(matches!(
            j.record_line(addr, at(2), "b").outcome,
            Outcome::Ban(_)
        ));
        // The lines since it was asked, oldest first; handed over once.
        assert_eq!(j.take_matched(addr), ["a", "b"]);
        assert!(j.take_matched(addr).is_empty());
        assert_eq!(j.counters().failures, 3);
        // At most `keep` lines: the newest.
        for (t, line) in [(3, "x"), (4, "y")] {
            j.record_line(addr, at(t), line);
        }
        j.keep_matched(1);
        j.record_line(addr, at(5), "z");
        assert_eq!(j.take_matched(addr), ["z"]);
        // Lines of windows that run out go with them.
        j.record_line("192.0.2.9".parse().unwrap(), at(10), "d");
        j.sweep(at(10_000));
        assert!(j.take_matched("192.0.2.9".parse().unwrap()).is_empty());
    }

    #[test]
    fn failures_can_be_counted_per_prefix() {
        let mut j = jail("count_by_prefix = true");
        j.record("2001:db8:1::1".parse().unwrap(), at(0));
        j.record("2001:db8:1::2".parse().unwrap(), at(1));
        let Outcome::Ban(b) = j.record("2001:db8:1::3".parse().unwrap(), at(2)) else {
            panic!("rotating addresses inside one /64 were not banned")
        };
        assert_eq!(b.net.to_string(), "2001:db8:1::/64");
    }

    #[test]
    fn mapped_and_plain_ipv4_are_one_address() {
        let mut j = jail("");
        j.on_line("fail ::ffff:192.0.2.1", at(0));
        j.on_line("fail 192.0.2.1", at(1));
        assert!(matches!(
            j.on_line("fail [::ffff:192.0.2.1]", at(2)),
            Some(Outcome::Ban(_))
        ));
    }
}
