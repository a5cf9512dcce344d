//! The engine against an in-memory enforcer that behaves like the kernel's interval sets (no
//! overlaps, timeouts on a clock the test moves) and an in-memory ledger. No root, no kernel.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::ban::{Place, place, widest_of_round};
use crate::config::Config;
use crate::filter::{CandidateSearch, Filter};
use crate::firewall::JailRules;
use crate::source::{Failure, LineBatch, Lines, Timing};
use crate::state::Store;

const T0: Duration = Duration::from_secs(1_800_000_000);

/// The test's clock, shared with the fake enforcer (whose elements expire on it).
#[derive(Clone)]
struct Clock(Rc<Cell<SystemTime>>);

impl Clock {
    fn new() -> Clock {
        Clock(Rc::new(Cell::new(SystemTime::UNIX_EPOCH + T0)))
    }
    fn now(&self) -> SystemTime {
        self.0.get()
    }
    fn advance(&self, by: Duration) {
        self.0.set(self.0.get() + by);
    }
}

#[derive(Debug)]
struct FakeError {
    missing: bool,
    message: String,
}

impl std::fmt::Display for FakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FakeError {}

/// An element: its prefix, timeout and when it ends.
#[derive(Debug, Clone)]
struct Held {
    net: IpNet,
    timeout: Option<Duration>,
    ends: Option<SystemTime>,
}

/// Per jail, what the kernel's two interval sets would hold.
struct FakeEnforcer {
    clock: Clock,
    sets: BTreeMap<String, Vec<Held>>,
    /// Batches written (declares and ban rounds), to check "one change, one batch".
    batches: usize,
}

impl FakeEnforcer {
    fn new(clock: &Clock) -> FakeEnforcer {
        FakeEnforcer {
            clock: clock.clone(),
            sets: BTreeMap::new(),
            batches: 0,
        }
    }

    fn live(&self, jail: &str) -> Vec<Held> {
        let now = self.clock.now();
        self.sets
            .get(jail)
            .into_iter()
            .flatten()
            .filter(|h| h.ends.is_none_or(|end| end > now))
            .cloned()
            .collect()
    }

    fn missing(jail: &str) -> FakeError {
        FakeError {
            missing: true,
            message: format!("no sets for jail {jail}"),
        }
    }
}

impl Enforcer for FakeEnforcer {
    type Error = FakeError;

    fn declare(&mut self, jails: &[JailRules], restore: &[Restore]) -> Result<(), FakeError> {
        self.batches += 1;
        self.sets
            .retain(|name, _| jails.iter().any(|j| j.name == *name));
        for j in jails {
            self.sets.entry(j.name.clone()).or_default();
        }
        self.write(restore).map(drop)
    }

    fn ban(&mut self, items: &[Restore]) -> Result<Overlaps, FakeError> {
        self.batches += 1;
        self.write(items)
    }

    fn unban(&mut self, items: &[(String, IpNet)]) -> Result<(), FakeError> {
        self.batches += 1;
        for (jail, net) in items {
            if !self.live(jail).iter().any(|h| h.net == *net) {
                return Err(FakeError {
                    missing: false,
                    message: format!("{net} not in {jail}"),
                });
            }
        }
        for (jail, net) in items {
            if let Some(set) = self.sets.get_mut(jail) {
                set.retain(|h| h.net != *net);
            }
        }
        Ok(())
    }

    fn snapshot(&mut self, jails: &[&str]) -> Result<BTreeMap<String, Vec<Element>>, FakeError> {
        let mut out = BTreeMap::new();
        for jail in jails {
            out.insert((*jail).to_owned(), self.list(jail).unwrap_or_default());
        }
        Ok(out)
    }

    fn list(&mut self, jail: &str) -> Result<Vec<Element>, FakeError> {
        if !self.sets.contains_key(jail) {
            return Err(FakeEnforcer::missing(jail));
        }
        let now = self.clock.now();
        Ok(self
            .live(jail)
            .into_iter()
            .map(|h| Element {
                net: h.net,
                timeout: h.timeout,
                expires_in: h
                    .ends
                    .map(|end| end.duration_since(now).unwrap_or_default()),
            })
            .collect())
    }

    fn dropped(&mut self, _jail: &str) -> Result<(u64, u64), FakeError> {
        Ok((0, 0))
    }

    fn jails_present(&mut self) -> Result<Vec<String>, FakeError> {
        Ok(self.sets.keys().cloned().collect())
    }

    fn is_missing(error: &FakeError) -> bool {
        error.missing
    }

    fn changes(&mut self) -> Result<Changes, FakeError> {
        Ok(Changes {
            all: self.batches as u32,
            ours: self.batches as u64,
        })
    }
}

impl FakeEnforcer {
    /// Adds elements as the kernel would: a covered one is left out, a wider one replaces
    /// the narrower ones, the same one is renewed.
    fn write(&mut self, items: &[Restore]) -> Result<Overlaps, FakeError> {
        let now = self.clock.now();
        let mut overlaps = Overlaps::default();
        let kept = widest_of_round(items.iter().map(|r| &r.ban), &mut overlaps.covered);
        for i in kept {
            let r = &items[i];
            if !self.sets.contains_key(&r.ban.jail) {
                return Err(FakeEnforcer::missing(&r.ban.jail));
            }
            let mut nets: Vec<IpNet> = self.live(&r.ban.jail).iter().map(|h| h.net).collect();
            nets.sort();
            let timeout = match r.ban.time {
                BanTime::Finite(d) => Some(d),
                BanTime::Permanent => None,
            };
            let held = Held {
                net: r.ban.net,
                timeout,
                ends: timeout.map(|t| now + r.expires_in.unwrap_or(t)),
            };
            let set = self.sets.get_mut(&r.ban.jail).expect("checked");
            set.retain(|h| h.ends.is_none_or(|end| end > now));
            match place(&nets, &r.ban.net) {
                Place::Same => {
                    set.retain(|h| h.net != r.ban.net);
                    set.push(held);
                }
                Place::Inside(wider) => overlaps.covered.push((i, wider)),
                Place::Over(inside) => {
                    set.retain(|h| !inside.contains(&h.net));
                    overlaps
                        .replaced
                        .extend(inside.into_iter().map(|n| (r.ban.jail.clone(), n)));
                    set.push(held);
                }
            }
        }
        Ok(overlaps)
    }
}

fn jails(toml: &str) -> Vec<JailConfig> {
    Config::parse(std::path::Path::new("engine-test.toml"), toml)
        .unwrap_or_else(|e| panic!("{e}"))
        .jails
}

/// `web` (3 failures in 10 minutes ban for an hour, escalating ×2) and `ssh` (2 failures,
/// 10 minutes), single addresses for IPv4, /64 for IPv6, nothing ignored; extra keys after.
fn config(extra: &str) -> Vec<JailConfig> {
    jails(&format!(
        "[defaults]\nignoreself = false\nfailregex = ['^fail <HOST>$']\nlogpath = \"/dev/null\"\n\
         [jails.web]\nmaxretry = 3\nfindtime = \"10m\"\nbantime = \"1h\"\nescalation = {{ factor = 2 }}\n\
         [jails.ssh]\nmaxretry = 2\nfindtime = \"10m\"\nbantime = \"10m\"\n{extra}"
    ))
}

type TestEngine = Engine<FakeEnforcer, Store>;

fn engine(configs: Vec<JailConfig>, clock: &Clock) -> TestEngine {
    let jails = configs.into_iter().map(Jail::new).collect();
    let mut engine = Engine::new(
        jails,
        FakeEnforcer::new(clock),
        Store::in_memory().unwrap(),
        Duration::from_secs(30 * 86_400),
        clock.now(),
    );
    engine.start(clock.now()).unwrap();
    engine
}

/// A new engine over the same enforcer and ledger, as after a restart.
fn restart(
    engine: TestEngine,
    configs: Vec<JailConfig>,
    clock: &Clock,
) -> (TestEngine, (usize, usize)) {
    let jails = configs.into_iter().map(Jail::new).collect();
    let mut next = Engine::new(
        jails,
        engine.enforcer,
        engine.ledger,
        engine.history,
        clock.now(),
    );
    let restored = next.start(clock.now()).unwrap();
    (next, restored)
}

/// `lines` read live now by jail `jail`.
fn feed(engine: &mut TestEngine, jail: &str, lines: &[String], clock: &Clock) {
    let j = engine.jail_index(jail).unwrap();
    let batch = LineBatch {
        sources: vec![0],
        lines: lines.iter().collect(),
        read_at: clock.now(),
        timing: Timing::Live,
        resume: Some(("file:/dev/null".into(), "0:0:1:0:0".into())),
        cut: 0,
        examined: Vec::new(),
    };
    let routed = [j];
    engine.on_lines(&[(&batch, &routed)], clock.now());
}

fn fail(addr: &str, n: usize) -> Vec<String> {
    vec![format!("fail {addr}"); n]
}

fn banned(engine: &mut TestEngine, jail: &str) -> Vec<(String, Option<u64>)> {
    engine
        .enforcer
        .list(jail)
        .unwrap()
        .into_iter()
        .map(|e| (e.net.to_string(), e.timeout.map(|t| t.as_secs())))
        .collect()
}

#[test]
fn failures_reach_maxretry_and_escalate_with_the_history() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    feed(&mut e, "web", &fail("192.0.2.1", 2), &clock);
    assert!(banned(&mut e, "web").is_empty());
    feed(&mut e, "web", &fail("192.0.2.1", 1), &clock);
    assert_eq!(banned(&mut e, "web"), [("192.0.2.1".into(), Some(3600))]);
    let notices = e.take_notices();
    assert!(
        matches!(&notices[..], [Notice::Banned { ban, reason: "failures", matched, .. }] if ban.count == 1 && matched.is_empty()),
        "{notices:?}"
    );
    // The second ban of the address, after the first ran out: twice as long, ban number 2.
    clock.advance(Duration::from_secs(3601));
    e.report_expired(clock.now());
    assert!(matches!(
        &e.take_notices()[..],
        [Notice::Unbanned {
            reason: "expired",
            ..
        }]
    ));
    feed(&mut e, "web", &fail("192.0.2.1", 3), &clock);
    assert_eq!(banned(&mut e, "web"), [("192.0.2.1".into(), Some(7200))]);
    let listed = e.list(Some("web"), clock.now()).unwrap();
    assert_eq!(listed[0].count, Some(2));
    // Failures older than findtime never count.
    let mut old = LineBatch {
        sources: vec![0],
        lines: fail("192.0.2.2", 3).into_iter().collect(),
        read_at: clock.now() - Duration::from_secs(3600),
        timing: Timing::Stamped,
        resume: None,
        cut: 0,
        examined: Vec::new(),
    };
    let web = [e.jail_index("web").unwrap()];
    e.on_lines(&[(&old, &web)], clock.now());
    old.read_at = clock.now();
    assert_eq!(banned(&mut e, "web").len(), 1);
}

/// A `recidive` jail over the others: two bans within a day ban for a week.
const RECIDIVE: &str =
    "[jails.recidive]\nrecidive = true\nmaxretry = 2\nfindtime = \"1d\"\nbantime = \"1w\"\n";

#[test]
fn recidive_bans_an_address_banned_again_and_again_elsewhere() {
    let clock = Clock::new();
    let mut e = engine(config(RECIDIVE), &clock);
    feed(&mut e, "ssh", &fail("192.0.2.9", 2), &clock);
    assert!(banned(&mut e, "recidive").is_empty());
    clock.advance(Duration::from_secs(601));
    feed(&mut e, "ssh", &fail("192.0.2.9", 2), &clock);
    assert_eq!(
        banned(&mut e, "recidive"),
        [("192.0.2.9".into(), Some(7 * 86_400))]
    );
    let reasons: Vec<&str> = e
        .take_notices()
        .iter()
        .filter_map(|n| match n {
            Notice::Banned { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["failures", "failures", "recidive"]);
    let origins: Vec<String> = e
        .ledger
        .active(clock.now())
        .unwrap()
        .iter()
        .map(|b| format!("{} {}", b.jail, b.origin.to_text()))
        .collect();
    assert!(
        origins.contains(&"recidive recidive".to_owned()),
        "{origins:?}"
    );
}

/// A jail nobody hears of still bans, counts its bans in the history and feeds recidive:
/// only the notice is left out, and the heard jails' notices are whole.
#[test]
fn the_bans_of_an_unheard_jail_are_made_and_kept_but_not_told() {
    let clock = Clock::new();
    let mut e = engine(config(RECIDIVE), &clock);
    e.set_unheard(["ssh".to_owned()].into());
    feed(&mut e, "ssh", &fail("192.0.2.9", 2), &clock);
    feed(&mut e, "web", &fail("198.51.100.4", 3), &clock);
    clock.advance(Duration::from_secs(601));
    feed(&mut e, "ssh", &fail("192.0.2.9", 2), &clock);
    assert_eq!(banned(&mut e, "ssh"), [("192.0.2.9".into(), Some(600))]);
    assert_eq!(
        banned(&mut e, "recidive"),
        [("192.0.2.9".into(), Some(7 * 86_400))]
    );
    let told: Vec<(String, &str)> = e
        .take_notices()
        .iter()
        .filter_map(|n| match n {
            Notice::Banned { ban, reason, .. } => Some((ban.jail.clone(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        [
            ("web".to_owned(), "failures"),
            ("recidive".to_owned(), "recidive")
        ]
    );
    let stored = e.ledger.active(clock.now()).unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
}

#[test]
fn a_restart_keeps_bans_and_failures_and_a_reboot_restores_the_time_left() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    feed(&mut e, "web", &fail("192.0.2.1", 3), &clock);
    feed(&mut e, "web", &fail("192.0.2.2", 2), &clock);
    clock.advance(Duration::from_secs(300));
    // A restart: the kernel still holds the ban, nothing to restore; the two failures of
    // 192.0.2.2 are back, so one more bans.
    let (mut e, (restored, adopted)) = restart(e, config(""), &clock);
    assert_eq!((restored, adopted), (0, 0));
    feed(&mut e, "web", &fail("192.0.2.2", 1), &clock);
    assert_eq!(banned(&mut e, "web").len(), 2);
    // A reboot: the kernel is empty; both come back with the time they have left.
    e.enforcer.sets.clear();
    clock.advance(Duration::from_secs(600));
    let (mut e, (restored, _)) = restart(e, config(""), &clock);
    assert_eq!(restored, 2);
    let left: BTreeMap<String, u64> = e
        .list(Some("web"), clock.now())
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.element.net.to_string(),
                l.element.expires_in.unwrap().as_secs(),
            )
        })
        .collect();
    assert_eq!(left["192.0.2.1"], 3600 - 900);
    assert_eq!(left["192.0.2.2"], 3600 - 600);
    // A ban someone else added by hand is adopted.
    e.enforcer
        .write(&[Restore {
            ban: Ban {
                jail: "ssh".into(),
                net: "198.51.100.7".parse().unwrap(),
                time: BanTime::Finite(Duration::from_secs(60)),
            },
            expires_in: None,
        }])
        .unwrap();
    let (_, (_, adopted)) = restart(e, config(""), &clock);
    assert_eq!(adopted, 1);
}

#[test]
fn a_removal_by_someone_else_is_repaired_in_one_batch() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    feed(&mut e, "web", &fail("192.0.2.1", 3), &clock);
    feed(&mut e, "ssh", &fail("2001:db8:1::5", 2), &clock);
    e.enforcer.sets.clear();
    let before = e.enforcer.batches;
    e.repair(Some(4242), clock.now());
    assert_eq!(
        e.enforcer.batches,
        before + 1,
        "layout and bans in one batch"
    );
    assert_eq!(e.repairs, 1);
    assert_eq!(banned(&mut e, "web"), [("192.0.2.1".into(), Some(3600))]);
    assert_eq!(
        banned(&mut e, "ssh"),
        [("2001:db8:1::/64".into(), Some(600))]
    );
    // A jail's sets gone between two rounds: the next ban declares the layout again.
    e.enforcer.sets.remove("web");
    feed(&mut e, "web", &fail("192.0.2.3", 3), &clock);
    assert_eq!(banned(&mut e, "web"), [("192.0.2.3".into(), Some(3600))]);
}

#[test]
fn manual_bans_overlaps_and_unbans() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    let now = clock.now();
    let net = |s: &str| -> IpNet { s.parse().unwrap() };
    assert!(matches!(
        e.manual_ban("nope", net("192.0.2.1"), None, now),
        Err(EngineError::UnknownJail(_))
    ));
    assert!(matches!(
        e.manual_ban("web", net("10.0.0.0/8"), None, now),
        Err(EngineError::TooBroad { min: 16, .. })
    ));
    let b = e
        .manual_ban("ssh", net("2001:db8:5::7"), None, now)
        .unwrap();
    assert_eq!(
        (b.time, b.covered_by),
        (BanTime::Finite(Duration::from_secs(600)), None)
    );
    // Failures inside the /64 of a manual /128: the /64 replaces it, in the same round as a
    // ban of another address.
    let mut lines = fail("2001:db8:5::8", 2);
    lines.extend(fail("192.0.2.1", 2));
    feed(&mut e, "ssh", &lines, &clock);
    let mut now_banned = banned(&mut e, "ssh");
    now_banned.sort();
    assert_eq!(
        now_banned,
        [
            ("192.0.2.1".into(), Some(600)),
            ("2001:db8:5::/64".into(), Some(600))
        ]
    );
    // A ban the /64 covers: recorded, nothing written, said so.
    let b = e
        .manual_ban(
            "ssh",
            net("2001:db8:5::9"),
            Some(BanTime::Finite(Duration::from_secs(7200))),
            now,
        )
        .unwrap();
    assert_eq!(b.covered_by, Some(net("2001:db8:5::/64")));
    assert_eq!(banned(&mut e, "ssh").len(), 2);
    // Unbanning an address of the /64 lifts it; the bans of their own inside come back.
    let lifted = e.unban(net("2001:db8:5::8"), None, clock.now()).unwrap();
    assert_eq!(lifted.len(), 1);
    let mut now_banned: Vec<String> = banned(&mut e, "ssh").into_iter().map(|(n, _)| n).collect();
    now_banned.sort();
    assert_eq!(now_banned, ["192.0.2.1", "2001:db8:5::7", "2001:db8:5::9"]);
    assert!(matches!(
        e.unban(net("203.0.113.1"), Some("ssh"), clock.now()),
        Err(EngineError::NotBanned { .. })
    ));
    let all = e.unban_all(None, clock.now()).unwrap();
    assert_eq!(all.len(), 3);
    assert!(banned(&mut e, "ssh").is_empty());
    // Nothing comes back at a restart.
    let (mut e, (restored, _)) = restart(e, config(""), &clock);
    assert_eq!(restored, 0);
    assert!(banned(&mut e, "ssh").is_empty());
}

#[test]
fn a_wider_ban_that_ends_gives_back_what_it_covered() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    let net = |s: &str| -> IpNet { s.parse().unwrap() };
    e.manual_ban(
        "web",
        net("2001:db8:6::1"),
        Some(BanTime::Finite(Duration::from_secs(7200))),
        clock.now(),
    )
    .unwrap();
    e.manual_ban(
        "web",
        net("2001:db8:6::/64"),
        Some(BanTime::Finite(Duration::from_secs(60))),
        clock.now(),
    )
    .unwrap();
    assert_eq!(
        banned(&mut e, "web"),
        [("2001:db8:6::/64".into(), Some(60))]
    );
    clock.advance(Duration::from_secs(62));
    e.report_expired(clock.now());
    assert_eq!(
        banned(&mut e, "web"),
        [("2001:db8:6::1".into(), Some(7200))]
    );
}

#[test]
fn reload_keeps_windows_of_jails_that_stay_and_drops_jails_that_go() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    feed(&mut e, "web", &fail("192.0.2.1", 2), &clock);
    feed(&mut e, "ssh", &fail("192.0.2.2", 2), &clock);
    let own: Arc<[IpNet]> = Vec::new().into();
    let web_only = jails(
        "[jails.web]\nignoreself = false\nfailregex = ['^fail <HOST>$']\nlogpath = \"/dev/null\"\nmaxretry = 3\n",
    );
    let changes = e
        .reload(web_only.clone(), e.history, &own, clock.now())
        .unwrap();
    assert_eq!(
        (changes.added, changes.removed),
        (Vec::<String>::new(), vec!["ssh".to_owned()])
    );
    assert!(!e.enforcer.sets.contains_key("ssh"));
    feed(&mut e, "web", &fail("192.0.2.1", 1), &clock);
    assert_eq!(banned(&mut e, "web").len(), 1);
}

#[test]
fn a_disabled_jail_keeps_its_bans_for_when_it_comes_back() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    feed(&mut e, "ssh", &fail("192.0.2.2", 2), &clock);
    feed(&mut e, "ssh", &fail("192.0.2.3", 2), &clock);
    assert_eq!(banned(&mut e, "ssh").len(), 2);
    e.take_notices();
    let own: Arc<[IpNet]> = Vec::new().into();
    let everything = config("");
    let web_only: Vec<JailConfig> = everything
        .iter()
        .filter(|c| c.name == "web")
        .cloned()
        .collect();
    let changes = e.reload(web_only, e.history, &own, clock.now()).unwrap();
    assert_eq!((changes.lifted, changes.restored), (2, 0));
    assert!(!e.enforcer.sets.contains_key("ssh"));
    // Neither a restart nor the hourly purge forgets them, nor announces them as expired.
    clock.advance(Duration::from_secs(120));
    e.purge(clock.now());
    e.report_expired(clock.now());
    assert!(e.take_notices().is_empty());
    let web_only: Vec<JailConfig> = everything
        .iter()
        .filter(|c| c.name == "web")
        .cloned()
        .collect();
    let (mut e, _) = restart(e, web_only, &clock);
    // Enabled again: back in one batch, with the time they have left (10 min - 2 min).
    let batches = e.enforcer.batches;
    let changes = e.reload(everything, e.history, &own, clock.now()).unwrap();
    assert_eq!(
        (changes.added, changes.lifted, changes.restored),
        (vec!["ssh".to_owned()], 0, 2)
    );
    assert_eq!(e.enforcer.batches, batches + 1);
    let left: Vec<Option<Duration>> = e
        .enforcer
        .list("ssh")
        .unwrap()
        .iter()
        .map(|el| el.expires_in)
        .collect();
    assert_eq!(left, [Some(Duration::from_secs(480)); 2]);
}

/// A remote ban of `origin`'s jail `jail`, started `ago` before now, for `secs` seconds.
fn remote(origin: &str, jail: &str, net: &str, ago: u64, secs: u64, clock: &Clock) -> RemoteBan {
    RemoteBan {
        origin: origin.into(),
        jail: jail.into(),
        net: net.parse().unwrap(),
        started: clock.now() - Duration::from_secs(ago),
        time: BanTime::Finite(Duration::from_secs(secs)),
        count: 1,
        reason: format!("from {origin}"),
    }
}

fn fleet_engine(clock: &Clock, max_per_minute: u32) -> TestEngine {
    // This host: `web` and `ssh`, plus the `fleet` jail [fleet] adds; ignores 198.51.100.0/24
    // in web; its own address is 192.0.2.250.
    let configs = jails(
        "[defaults]\nignoreself = false\nfailregex = ['^fail <HOST>$']\nlogpath = \"/dev/null\"\n\
         [jails.web]\nmaxretry = 3\nbantime = \"1h\"\nignoreip = [\"198.51.100.0/24\"]\n\
         escalation = { factor = 2 }\n\
         [jails.ssh]\nmaxretry = 2\nbantime = \"10m\"\n\
         [fleet]\nname = \"me\"\nservers = [\"nats://127.0.0.1:4222\"]\n",
    );
    assert!(
        configs
            .iter()
            .any(|c| c.name == "fleet" && c.logpaths.is_empty())
    );
    let mut e = engine(configs, clock);
    let own: Arc<[IpNet]> = vec!["192.0.2.250".parse().unwrap()].into();
    e.set_remote_policy(Some(RemotePolicy {
        name: "me".into(),
        apply: crate::config::Apply::SameJail,
        min_prefix: crate::config::PrefixLens { v4: 24, v6: 48 },
        max_per_minute,
        own,
    }));
    e
}

#[test]
fn remote_bans_land_in_the_same_jail_or_the_fleet_jail_with_the_time_they_have_left() {
    let clock = Clock::new();
    let mut e = fleet_engine(&clock, 100);
    let round = e.on_remote(
        vec![
            remote("a", "web", "203.0.113.1", 600, 3600, &clock),
            remote("a", "nginx", "203.0.113.2", 0, 600, &clock),
            // Expired on the way: skipped, not refused.
            remote("b", "web", "203.0.113.3", 700, 600, &clock),
            // This host's own ban coming back: skipped.
            remote("me", "web", "203.0.113.4", 0, 600, &clock),
        ],
        &[],
        clock.now(),
    );
    assert_eq!((round.applied, round.skipped, round.refused), (2, 2, 0));
    let web = e.enforcer.list("web").unwrap();
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].expires_in, Some(Duration::from_secs(3000)));
    assert_eq!(web[0].timeout, Some(Duration::from_secs(3600)));
    assert_eq!(banned(&mut e, "fleet"), [("203.0.113.2".into(), Some(600))]);
    let listed = e.list(Some("web"), clock.now()).unwrap();
    assert_eq!(listed[0].origin, Some(Origin::Remote("a".into())));
    // Remote bans are not this host's decisions: nothing for the fleet to hear of again.
    assert!(e.take_notices().iter().all(|n| !n.is_local_decision()));
    // A restart puts them back from the ledger with their origin and time left.
    clock.advance(Duration::from_secs(60));
    let configs = e.jails.iter().map(|j| j.config().clone()).collect();
    let (mut e, (restored, _)) = restart(e, configs, &clock);
    assert_eq!(restored, 0, "still in the kernel");
    e.enforcer.sets.values_mut().for_each(Vec::clear);
    e.reconcile(clock.now()).unwrap();
    let web = e.enforcer.list("web").unwrap();
    assert_eq!(web[0].expires_in, Some(Duration::from_secs(2940)));
}

#[test]
fn remote_bans_that_this_host_must_not_trust_are_refused_and_counted() {
    let clock = Clock::new();
    let mut e = fleet_engine(&clock, 3);
    let round = e.on_remote(
        vec![
            remote("a", "web", "10.0.0.0/16", 0, 600, &clock),
            remote("a", "web", "198.51.100.7", 0, 600, &clock),
            remote("a", "ssh", "192.0.2.250", 0, 600, &clock),
            remote("a", "ssh", "192.0.2.0/24", 0, 600, &clock),
            remote("a", "ssh", "127.0.0.1", 0, 600, &clock),
            remote("b", "web", "203.0.113.1", 0, 600, &clock),
            remote("b", "web", "203.0.113.2", 0, 600, &clock),
            remote("b", "web", "203.0.113.3", 0, 600, &clock),
            remote("b", "web", "203.0.113.4", 0, 600, &clock),
        ],
        &[],
        clock.now(),
    );
    assert_eq!((round.applied, round.refused), (3, 6));
    let counts = e.remote_counts();
    let refused: Vec<(&str, &str, u64)> = counts
        .refused
        .iter()
        .map(|(o, why, n)| (o.as_str(), why.as_str(), *n))
        .collect();
    assert_eq!(
        refused,
        [
            ("a", "too_broad", 1),
            ("a", "ignored", 1),
            ("a", "own_address", 3),
            ("b", "rate_limited", 1)
        ]
    );
    // Bans b made the next minute are heard again.
    clock.advance(Duration::from_secs(60));
    let round = e.on_remote(
        vec![remote("b", "web", "203.0.113.4", 0, 600, &clock)],
        &[],
        clock.now(),
    );
    assert_eq!(round.applied, 1);
}

#[test]
fn remote_lifts_take_back_bans_whoever_made_them_and_a_ban_in_force_is_not_shortened() {
    let clock = Clock::new();
    let mut e = fleet_engine(&clock, 100);
    feed(&mut e, "web", &fail("203.0.113.9", 3), &clock);
    e.on_remote(
        vec![
            remote("a", "web", "203.0.113.7", 0, 3600, &clock),
            remote("b", "ssh", "203.0.113.7", 0, 600, &clock),
            // Shorter than the local ban in force: kept as it is.
            remote("b", "web", "203.0.113.9", 0, 60, &clock),
        ],
        &[],
        clock.now(),
    );
    let web = e.list(Some("web"), clock.now()).unwrap();
    let local = web
        .iter()
        .find(|b| b.element.net.to_string() == "203.0.113.9");
    assert_eq!(local.unwrap().origin, Some(Origin::Failures));
    assert_eq!(
        local.unwrap().element.timeout,
        Some(Duration::from_secs(3600))
    );
    // b withdraws its ssh ban: only that one goes.
    let withdrawn = RemoteLift::Withdrawn {
        origin: "b".into(),
        jail: "ssh".into(),
        net: "203.0.113.7".parse().unwrap(),
    };
    let round = e.on_remote(Vec::new(), &[withdrawn], clock.now());
    assert_eq!(round.lifted, 1);
    assert!(banned(&mut e, "ssh").is_empty());
    assert_eq!(banned(&mut e, "web").len(), 2);
    e.take_notices();
    // An admin's unban on c: every ban of the address goes, this host's own included.
    let unban = |net: &str| RemoteLift::Unban {
        origin: "c".into(),
        net: net.parse().unwrap(),
        jail: None,
    };
    let round = e.on_remote(
        Vec::new(),
        &[unban("203.0.113.7"), unban("203.0.113.9")],
        clock.now(),
    );
    assert_eq!(round.lifted, 2);
    assert!(banned(&mut e, "web").is_empty());
    // Lifts from the fleet are not published again.
    assert!(e.take_notices().iter().all(|n| !n.is_local_decision()));
    // unban --origin: every ban one host made here, nothing else.
    e.on_remote(
        vec![
            remote("a", "web", "203.0.113.20", 0, 600, &clock),
            remote("a", "nginx", "203.0.113.21", 0, 600, &clock),
            remote("b", "web", "203.0.113.22", 0, 600, &clock),
        ],
        &[],
        clock.now(),
    );
    let lifted = e.unban_origin("a", clock.now()).unwrap();
    assert_eq!(lifted.len(), 2);
    assert_eq!(banned(&mut e, "web"), [("203.0.113.22".into(), Some(600))]);
    assert!(banned(&mut e, "fleet").is_empty());
}

#[test]
fn bans_from_the_fleet_count_in_the_escalation_of_local_bans() {
    let clock = Clock::new();
    let mut e = fleet_engine(&clock, 100);
    // Banned on two other hosts, for 10 minutes each, an hour apart.
    for (origin, ago) in [("a", 7200), ("b", 3600)] {
        let round = e.on_remote(
            vec![remote(origin, "web", "203.0.113.5", ago, 600, &clock)],
            &[],
            clock.now() - Duration::from_secs(ago),
        );
        assert_eq!(round.applied, 1);
    }
    // Now it fails here: its third ban, escalated twice (1h × 2²).
    feed(&mut e, "web", &fail("203.0.113.5", 3), &clock);
    assert_eq!(
        banned(&mut e, "web"),
        [("203.0.113.5".into(), Some(4 * 3600))]
    );
    let listed = e.list(Some("web"), clock.now()).unwrap();
    assert_eq!(listed[0].count, Some(3));
    assert_eq!(listed[0].origin, Some(Origin::Failures));
}

/// Caught-up lines are dated by a date at their start only: a whole ctime date inside the
/// message (which `banctl test` reads as fail2ban does) may be the attacker's, and an old one
/// must not take failures out of the window.
#[test]
fn a_date_inside_the_message_never_dates_a_caught_up_failure() {
    let clock = Clock::new();
    let mut e = engine(
        config("[jails.app]\nfailregex = ['^app: (?:\\S+ ){7}fail <HOST>$']\nmaxretry = 3\n"),
        &clock,
    );
    let lines = vec!["app: user at Sat Nov 21 10:00:00 2020 fail 192.0.2.3".to_owned(); 3];
    let batch = LineBatch {
        sources: vec![0],
        lines: lines.into_iter().collect(),
        read_at: clock.now(),
        timing: Timing::CatchUp,
        resume: None,
        cut: 0,
        examined: Vec::new(),
    };
    let app = [e.jail_index("app").unwrap()];
    e.on_lines(&[(&batch, &app)], clock.now());
    assert_eq!(
        banned(&mut e, "app").len(),
        1,
        "the failures were dated 2020"
    );
}

/// Behind a backlog, a round's failures and position wait for a later save, together: a crash
/// then loses both (its lines are read again), never one without the other. A ban is saved at
/// once, and the round after the backlog saves what waited.
#[test]
fn behind_a_backlog_failures_and_positions_are_saved_together() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    e.set_backlog(true);
    feed(&mut e, "web", &fail("192.0.2.1", 2), &clock);
    assert_eq!(e.ledger.position("file:/dev/null").unwrap(), None);
    // A crash here: the next start has neither the two failures nor the position.
    let (mut e, _) = restart(e, config(""), &clock);
    feed(&mut e, "web", &fail("192.0.2.1", 1), &clock);
    assert!(banned(&mut e, "web").is_empty());
    assert!(e.ledger.position("file:/dev/null").unwrap().is_some());
    // A ban is saved in its own round, backlog or not.
    e.set_backlog(true);
    feed(&mut e, "web", &fail("192.0.2.7", 3), &clock);
    let saved = e.ledger.active(clock.now()).unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let (mut e, _) = restart(e, config(""), &clock);
    // Waiting failures are saved by the first round without a backlog.
    e.set_backlog(true);
    feed(&mut e, "web", &fail("192.0.2.2", 2), &clock);
    e.set_backlog(false);
    feed(&mut e, "web", &fail("192.0.2.3", 1), &clock);
    let (mut e, _) = restart(e, config(""), &clock);
    feed(&mut e, "web", &fail("192.0.2.2", 1), &clock);
    assert_eq!(banned(&mut e, "web").len(), 2);
}

/// A saved window is what its last change left: a later failure of the same round or of a
/// round waiting behind a backlog replaces it, and a manual ban that makes the jail forget it
/// saves it empty.
#[test]
fn each_saved_window_is_what_its_last_change_left() {
    let clock = Clock::new();
    let mut e = engine(config(""), &clock);
    e.set_backlog(true);
    feed(&mut e, "web", &fail("192.0.2.1", 1), &clock);
    feed(&mut e, "web", &fail("192.0.2.1", 1), &clock);
    feed(&mut e, "web", &fail("192.0.2.9", 2), &clock);
    e.set_backlog(false);
    feed(&mut e, "web", &fail("198.51.100.1", 2), &clock);
    let nine: IpNet = "192.0.2.9".parse().unwrap();
    e.manual_ban("web", nine, None, clock.now()).unwrap();
    e.unban(nine, None, clock.now()).unwrap();
    let (mut e, _) = restart(e, config(""), &clock);
    // Two failures each are back, so one more bans; 192.0.2.9 starts again from none.
    feed(&mut e, "web", &fail("192.0.2.1", 1), &clock);
    feed(&mut e, "web", &fail("198.51.100.1", 1), &clock);
    feed(&mut e, "web", &fail("192.0.2.9", 2), &clock);
    let mut now_banned: Vec<String> = banned(&mut e, "web").into_iter().map(|(n, _)| n).collect();
    now_banned.sort();
    assert_eq!(now_banned, ["192.0.2.1", "198.51.100.1"]);
    feed(&mut e, "web", &fail("192.0.2.9", 1), &clock);
    assert_eq!(banned(&mut e, "web").len(), 3);
}

/// Failures found before the loop (on a source's thread) count exactly as the failures a jail
/// finds itself; a list made by another build of the filter (one from before a reload) is
/// never trusted, whatever it says.
#[test]
fn failures_found_before_the_loop_count_as_those_the_jail_finds() {
    let lines: Vec<String> = [
        "fail 192.0.2.1",
        "nofail 192.0.2.2",
        "x fail 192.0.2.3",
        "fail 192.0.2.1",
        "fail 192.0.2.4 tail",
        "",
        "fail 192.0.2.1",
        "fail 192.0.2.5",
        "fail 192.0.2.5\u{0}",
        "fail 192.0.2.5",
    ]
    .map(String::from)
    .into();
    /// What the daemon's hook finds with `filter`.
    fn found_by(filter: &Filter, lines: &Lines) -> Vec<(usize, Failure)> {
        let listed = lines.candidates(|b, from| filter.next_candidate(b, from));
        failures_in(lines, listed, |line| filter.examine(line))
    }
    let id = |filter: &Filter| filter.candidate_search().unwrap().id();
    // Each way of preparing the batch, given the jail's own filter and another build's search.
    type Prepared = fn(&Filter, &CandidateSearch, &Lines) -> Vec<(u64, Vec<(usize, Failure)>)>;
    let ways: [(&str, Prepared); 4] = [
        ("none", |_, _, _| Vec::new()),
        ("the jail's", |own, _, lines| {
            let id = own.candidate_search().unwrap().id();
            vec![(id, found_by(own, lines))]
        }),
        ("another build's, finding nothing", |_, other, _| {
            vec![(other.id(), Vec::new())]
        }),
        (
            "another build's, naming an address, then the jail's",
            |own, other, lines| {
                let planted = Failure::Addr("203.0.113.9".parse().unwrap());
                let id = own.candidate_search().unwrap().id();
                vec![
                    (other.id(), vec![(1, planted.clone()), (5, planted)]),
                    (id, found_by(own, lines)),
                ]
            },
        ),
    ];
    let mut outcomes = Vec::new();
    for (way, prepared) in ways {
        let clock = Clock::new();
        let mut e = engine(config(""), &clock);
        let j = e.jail_index("web").unwrap();
        let own = e.jails()[j].config().filter.clone();
        let rebuilt = config("");
        let other = rebuilt[0].filter.candidate_search().unwrap();
        assert_ne!(
            id(&own),
            other.id(),
            "a filter built again has a search of its own"
        );
        let lines: Lines = lines.iter().collect();
        let batch = LineBatch {
            sources: vec![0],
            examined: prepared(&own, other, &lines),
            lines,
            read_at: clock.now(),
            timing: Timing::Live,
            resume: None,
            cut: 0,
        };
        e.on_lines(&[(&batch, &[j])], clock.now());
        let counters = *e.jails()[j].counters();
        outcomes.push((way, banned(&mut e, "web"), counters));
    }
    let (_, bans, counters) = &outcomes[0];
    assert_eq!(bans, &[("192.0.2.1".to_owned(), Some(3600))]);
    assert_eq!((counters.matched, counters.failures), (5, 5));
    for (way, b, c) in &outcomes[1..] {
        assert_eq!((b, c), (bans, counters), "prepared: {way}");
    }
}
