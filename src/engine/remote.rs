//! Bans from other hosts of a fleet: which are trusted, where they apply, and lifting them.
//!
//! The engine knows nothing of how they travel (NATS today); it gets each ban with its
//! origin host, the origin's jail, its start (the fleet's clock, not the origin's) and its
//! length, and decides here. A remote ban is refused when it is broader than the fleet's
//! `min_prefix`, when the jail it would go to ignores it (ignoreip, loopback, own
//! addresses), when it covers one of this host's own addresses in any case, and beyond
//! `max_per_minute` bans per origin. Refusals are counted per origin and reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Enforcer, Engine, Ledger, Listed, Notice};
use crate::addr::IpNet;
use crate::ban::{Origin, Restore, StoredBan};
use crate::config::{Apply, FLEET_JAIL, PrefixLens};
use crate::duration::BanTime;

/// Minutes of counts kept per origin for the rate cap.
const RATE_MINUTES: usize = 24 * 60;

/// How this host takes bans from the fleet.
#[derive(Debug, Clone)]
pub struct RemotePolicy {
    /// This host's own name: its own bans coming back are skipped.
    pub name: String,
    pub apply: Apply,
    pub min_prefix: PrefixLens,
    pub max_per_minute: u32,
    /// This host's addresses: never banned from elsewhere, whatever `ignoreself` says.
    pub own: Arc<[IpNet]>,
}

/// A ban made by another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBan {
    pub origin: String,
    /// The jail that banned it on the origin host.
    pub jail: String,
    pub net: IpNet,
    /// When it started, by the fleet's clock (the server's store time).
    pub started: SystemTime,
    pub time: BanTime,
    /// Which ban of the address this is on the origin (its history, which holds the fleet's
    /// bans it took).
    pub count: u32,
    pub reason: String,
}

/// A ban lifted elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteLift {
    /// An admin unbanned `net` on `origin` (in `jail`, or everywhere): lifted here too,
    /// whoever banned it.
    Unban {
        origin: String,
        net: IpNet,
        jail: Option<String>,
    },
    /// The origin withdrew its own ban (`jail` is the origin's jail).
    Withdrawn {
        origin: String,
        jail: String,
        net: IpNet,
    },
}

/// Why a remote ban was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Broader than the fleet's `min_prefix`.
    TooBroad,
    /// The jail it would go to ignores it (ignoreip, ignoreself).
    Ignored,
    /// It covers one of this host's own addresses.
    OwnAddress,
    /// The origin made more than `max_per_minute` bans in one minute (by the fleet's clock).
    RateLimited,
    /// No jail here takes it.
    NoJail,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooBroad => "too_broad",
            Refusal::Ignored => "ignored",
            Refusal::OwnAddress => "own_address",
            Refusal::RateLimited => "rate_limited",
            Refusal::NoJail => "no_jail",
        }
    }
}

/// What one round of remote bans and lifts did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteRound {
    pub applied: usize,
    /// Already in force here for as long or longer, or expired on the way.
    pub skipped: usize,
    pub refused: usize,
    pub lifted: usize,
}

/// Remote bans refused, by (origin, reason), and taken, by origin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteCounts {
    pub refused: Vec<(String, Refusal, u64)>,
    pub taken: Vec<(String, u64)>,
}

/// The engine's state for remote bans.
#[derive(Debug)]
pub(super) struct Remote {
    policy: RemotePolicy,
    /// Per origin: bans by the minute they started (Unix minutes, the fleet's clock), so
    /// that a replay after an outage is held to the same cap as live bans.
    rate: HashMap<String, BTreeMap<u64, u32>>,
    /// Refusals by (origin, reason), for metrics.
    refused: BTreeMap<(String, Refusal), u64>,
    /// Bans taken per origin, for metrics.
    taken: BTreeMap<String, u64>,
}

impl<E: Enforcer, L: Ledger> Engine<E, L> {
    /// Takes bans from other hosts (see the module's doc); `None` takes none.
    pub fn set_remote_policy(&mut self, policy: Option<RemotePolicy>) {
        let old = self.remote.take();
        self.remote = policy.map(|policy| {
            let (rate, refused, taken) = old
                .map(|o| (o.rate, o.refused, o.taken))
                .unwrap_or_default();
            Remote {
                policy,
                rate,
                refused,
                taken,
            }
        });
    }

    /// Remote bans refused and taken, by origin, for status and metrics.
    pub fn remote_counts(&self) -> RemoteCounts {
        let Some(r) = &self.remote else {
            return RemoteCounts::default();
        };
        RemoteCounts {
            refused: r
                .refused
                .iter()
                .map(|((o, why), n)| (o.clone(), *why, *n))
                .collect(),
            taken: r.taken.iter().map(|(o, n)| (o.clone(), *n)).collect(),
        }
    }

    /// Enforces the bans of other hosts that this host trusts, in one batch, each for the time
    /// it has left; records them with their origin. The lifts go first.
    pub fn on_remote(
        &mut self,
        bans: Vec<RemoteBan>,
        lifts: &[RemoteLift],
        now: SystemTime,
    ) -> RemoteRound {
        let mut round = RemoteRound::default();
        if self.remote.is_none() {
            return round;
        }
        // Lifts first: a ban of the round is newer than every lift of the round that could
        // take it back (the link settled those).
        if !lifts.is_empty() {
            round.lifted = self.lift_remote(lifts, now);
        }
        let held = self.held_for(&bans, now);
        let mut stored = Vec::new();
        let mut items = Vec::new();
        for ban in bans {
            match self.admit(&ban, &held, now) {
                Err(Some(refusal)) => {
                    round.refused += 1;
                    tracing::warn!(origin = ban.origin.as_str(), address = %ban.net, reason = refusal.as_str(), "remote ban refused");
                    if let Some(r) = &mut self.remote {
                        *r.refused.entry((ban.origin.clone(), refusal)).or_default() += 1;
                    }
                }
                Err(None) => round.skipped += 1,
                Ok(jail) => {
                    let b = self.remote_stored(ban, jail, now);
                    match b.to_restore(now) {
                        Some(item) => {
                            items.push(item);
                            stored.push(b);
                        }
                        None => round.skipped += 1,
                    }
                }
            }
        }
        // Two bans of one round for one jail and prefix (two origins): keep the longest.
        dedupe_longest(&mut stored, &mut items);
        if !stored.is_empty() {
            match self.commit_items(&stored, &items) {
                Ok(_) => {
                    round.applied = stored.len();
                    if let Some(r) = &mut self.remote {
                        for b in &stored {
                            if let Origin::Remote(o) = &b.origin {
                                *r.taken.entry(o.clone()).or_default() += 1;
                            }
                        }
                    }
                    self.report_bans(&stored, Vec::new());
                    self.save();
                }
                Err(e) => {
                    tracing::error!(error = %e, count = stored.len(), "writing remote bans failed")
                }
            }
        }
        round
    }

    /// When the bans in force here that `bans` may meet end (`None`: permanent), by (jail,
    /// prefix): one read of the ledger for a large round (a catch-up), point reads for a
    /// small one.
    fn held_for(&self, bans: &[RemoteBan], now: SystemTime) -> Held {
        if bans.len() <= 64 {
            return Held::Ask;
        }
        match self.ledger.active(now) {
            Ok(active) => Held::Known(
                active
                    .into_iter()
                    .map(|b| ((b.jail.clone(), b.net), b.expires_at()))
                    .collect(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "reading the state store");
                Held::Ask
            }
        }
    }

    /// When `jail`'s ban of `net` in force ends, if it has one.
    fn held_until(
        &self,
        held: &Held,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Option<Option<SystemTime>> {
        match held {
            Held::Known(map) => map.get(&(jail.to_owned(), *net)).copied(),
            Held::Ask => match self.ledger.in_force(jail, net, now) {
                Ok(found) => found.map(|b| b.expires_at()),
                Err(e) => {
                    tracing::error!(error = %e, "reading the state store");
                    None
                }
            },
        }
    }

    /// The local jail a remote ban goes to, `Err(Some(_))` if it is refused, `Err(None)` if a
    /// ban in force here already lasts as long.
    fn admit(
        &mut self,
        ban: &RemoteBan,
        held: &Held,
        now: SystemTime,
    ) -> Result<String, Option<Refusal>> {
        let Some(remote) = &mut self.remote else {
            return Err(Some(Refusal::NoJail));
        };
        let policy = &remote.policy;
        if ban.origin == policy.name {
            return Err(None);
        }
        if ban.net.prefix_len() < policy.min_prefix.for_addr(ban.net.addr()) {
            return Err(Some(Refusal::TooBroad));
        }
        let overlaps = |own: &IpNet| own.covers(&ban.net) || ban.net.covers(own);
        if ban.net.is_loopback() || policy.own.iter().any(overlaps) {
            return Err(Some(Refusal::OwnAddress));
        }
        let same = (policy.apply == Apply::SameJail)
            .then(|| {
                self.jails
                    .iter()
                    .find(|j| j.name() == ban.jail && !j.config().recidive)
            })
            .flatten();
        let Some(jail) = same.or_else(|| self.jails.iter().find(|j| j.name() == FLEET_JAIL)) else {
            return Err(Some(Refusal::NoJail));
        };
        if jail.ignores(&ban.net) {
            return Err(Some(Refusal::Ignored));
        }
        let minute = ban
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        let minutes = remote.rate.entry(ban.origin.clone()).or_default();
        let count = minutes.entry(minute).or_insert(0);
        if *count >= policy.max_per_minute {
            return Err(Some(Refusal::RateLimited));
        }
        *count += 1;
        // A day of minutes per origin at most.
        while minutes.len() > RATE_MINUTES {
            minutes.pop_first();
        }
        let name = jail.name().to_owned();
        let ends = |time: BanTime, start: SystemTime| match time {
            BanTime::Permanent => None,
            BanTime::Finite(d) => Some(start + d),
        };
        let lasts_as_long = match self.held_until(held, &name, &ban.net, now) {
            Some(held) => match (held, ends(ban.time, ban.started)) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(held), Some(new)) => held >= new,
            },
            None => false,
        };
        if lasts_as_long {
            return Err(None);
        }
        Ok(name)
    }

    /// A remote ban as the ledger keeps it: the origin's time and ban number (escalated
    /// there from its history, which holds the fleet's bans), started by the fleet's clock.
    /// In this host's history it counts for the escalation of later local bans.
    fn remote_stored(&self, ban: RemoteBan, jail: String, now: SystemTime) -> StoredBan {
        StoredBan {
            jail,
            net: ban.net,
            banned_at: ban.started.min(now),
            time: ban.time,
            count: ban.count.max(1),
            reason: ban.reason,
            origin: Origin::Remote(ban.origin),
        }
    }

    /// Lifts what `lifts` name, in one batch; returns how many bans went. One read of the
    /// ledger and one listing per jail touched, whatever the number of lifts (a catch-up
    /// brings many). A jail not configured now (disabled) has its bans in the ledger only.
    fn lift_remote(&mut self, lifts: &[RemoteLift], now: SystemTime) -> usize {
        let active = match self.ledger.active(now) {
            Ok(active) => active,
            Err(e) => {
                tracing::error!(error = %e, "reading the state store: fleet lifts not applied");
                return 0;
            }
        };
        let takes = |lift: &RemoteLift, b: &StoredBan| match lift {
            RemoteLift::Unban { net, jail, .. } => {
                b.net.covers(net) && jail.as_ref().is_none_or(|j| self.maps_to(j, &b.jail))
            }
            RemoteLift::Withdrawn { origin, jail, net } => {
                b.net == *net
                    && matches!(&b.origin, Origin::Remote(o) if o == origin)
                    && self.maps_to(jail, &b.jail)
            }
        };
        let picked: Vec<&StoredBan> = active
            .iter()
            .filter(|b| lifts.iter().any(|lift| takes(lift, b)))
            .collect();
        if picked.is_empty() {
            return 0;
        }
        let mut held: HashMap<&str, Vec<crate::ban::Element>> = HashMap::new();
        for b in &picked {
            if held.contains_key(b.jail.as_str()) || !self.jails.iter().any(|j| j.name() == b.jail)
            {
                continue;
            }
            match self.enforcer.list(&b.jail) {
                Ok(elements) => {
                    held.insert(&b.jail, elements);
                }
                Err(e) => {
                    let e = self.enforcer_failed(&e);
                    tracing::error!(error = %e, "fleet lifts not applied");
                    return 0;
                }
            }
        }
        let mut lifted = Vec::new();
        let mut waiting = Vec::new();
        for b in picked {
            let element = held
                .get(b.jail.as_str())
                .and_then(|elements| elements.iter().find(|e| e.net == b.net));
            match element {
                Some(element) => lifted.push(Listed {
                    jail: b.jail.clone(),
                    element: element.clone(),
                    count: Some(b.count),
                    origin: Some(b.origin.clone()),
                }),
                None => waiting.push((b.jail.clone(), b.net)),
            }
        }
        let count = lifted.len() + waiting.len();
        let from: Vec<&str> = lifts
            .iter()
            .map(|lift| match lift {
                RemoteLift::Unban { origin, .. } | RemoteLift::Withdrawn { origin, .. } => {
                    origin.as_str()
                }
            })
            .collect();
        tracing::info!(?from, count, "bans lifted from the fleet");
        match self.lift(&lifted, &waiting, "remote", now) {
            Ok(()) => count,
            Err(e) => {
                tracing::error!(error = %e, "lifting bans from the fleet failed");
                0
            }
        }
    }

    /// Whether a remote ban of the origin's `jail` lands in local jail `local`.
    fn maps_to(&self, jail: &str, local: &str) -> bool {
        let Some(r) = &self.remote else { return false };
        let has_same = r.policy.apply == Apply::SameJail
            && self
                .jails
                .iter()
                .any(|j| j.name() == jail && !j.config().recidive);
        if has_same {
            local == jail
        } else {
            local == FLEET_JAIL
        }
    }

    /// Lifts every ban that came from `origin`, in one batch.
    pub fn unban_origin(
        &mut self,
        origin: &str,
        now: SystemTime,
    ) -> Result<Vec<Listed>, super::EngineError> {
        let wanted = Origin::Remote(origin.to_owned());
        let all = self.list(None, now)?;
        let removed: Vec<Listed> = all
            .into_iter()
            .filter(|b| b.origin.as_ref() == Some(&wanted))
            .collect();
        let waiting: Vec<(String, IpNet)> = self
            .ledger
            .active(now)
            .map_err(|e| super::EngineError::Ledger(e.to_string()))?
            .into_iter()
            .filter(|b| b.origin == wanted)
            .filter(|b| {
                !removed
                    .iter()
                    .any(|r| r.jail == b.jail && r.element.net == b.net)
            })
            .map(|b| (b.jail, b.net))
            .collect();
        self.lift(&removed, &waiting, "manual", now)?;
        Ok(removed)
    }
}

/// The bans in force a round may meet.
enum Held {
    /// Read: when each ends, by (jail, prefix).
    Known(HashMap<(String, IpNet), Option<SystemTime>>),
    /// Not read: ask the ledger for each.
    Ask,
}

/// Keeps, for each (jail, prefix), the ban that lasts longest (and its item).
fn dedupe_longest(stored: &mut Vec<StoredBan>, items: &mut Vec<Restore>) {
    let mut best: HashMap<(String, IpNet), usize> = HashMap::new();
    for (i, b) in stored.iter().enumerate() {
        let slot = best.entry((b.jail.clone(), b.net)).or_insert(i);
        let longer = match (stored[*slot].expires_at(), b.expires_at()) {
            (Some(_), None) => true,
            (Some(a), Some(c)) => c > a,
            _ => false,
        };
        if longer {
            *slot = i;
        }
    }
    if best.len() == stored.len() {
        return;
    }
    let mut keep: Vec<usize> = best.into_values().collect();
    keep.sort_unstable();
    let pairs: Vec<(StoredBan, Restore)> = keep
        .into_iter()
        .map(|i| (stored[i].clone(), items[i].clone()))
        .collect();
    (*stored, *items) = pairs.into_iter().unzip();
}

impl Notice {
    /// Whether this notice is a decision of this host that the fleet should hear of: a ban
    /// from its own jails or admin, or an admin's unban.
    pub fn is_local_decision(&self) -> bool {
        match self {
            Notice::Banned { ban, .. } => !matches!(ban.origin, Origin::Remote(_) | Origin::Kernel),
            Notice::Unbanned { reason, .. } => *reason == "manual",
        }
    }
}
