//! The ban model shared by the engine, the enforcer (nftables), the ledger (the state store),
//! the control protocol and the notifiers.
//!
//! - [`Ban`]: what to enforce: a jail, an address or prefix, for how long.
//! - [`Restore`]: a ban put back with the time it has left.
//! - [`Element`]: a ban as the enforcer holds it (its timeout and time left).
//! - [`StoredBan`]: a ban as the ledger keeps it: when, which ban of the address, why.
//! - [`Overlaps`]: what a round of bans found in the way; [`widest_of_round`], [`place`] and
//!   [`fit`]: how bans are fitted to sets that hold no overlapping prefixes.

use std::collections::{BTreeMap, HashSet};

/// The hasher of sets of this host's own bans (a restore's million): fast, randomly seeded.
pub(crate) type FastHash = foldhash::fast::RandomState;
use std::time::{Duration, SystemTime};

use crate::addr::IpNet;
use crate::duration::BanTime;

/// A ban to write: which jail, which address or prefix, for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub jail: String,
    pub net: IpNet,
    pub time: BanTime,
}

/// A ban put back (after a restart, a reboot, or a removal by someone else) with the time it
/// has left, so that `nft list` shows its full timeout and the true expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub ban: Ban,
    /// Time left; `None` for the whole ban time (and for permanent bans).
    pub expires_in: Option<Duration>,
}

impl Restore {
    /// A new ban, for its whole ban time.
    pub fn whole(ban: Ban) -> Restore {
        Restore {
            ban,
            expires_in: None,
        }
    }
}

/// A ban as the enforcer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub net: IpNet,
    /// The timeout it was added with; `None` for a permanent ban.
    pub timeout: Option<Duration>,
    /// Time left before the enforcer lifts it; `None` for a permanent ban.
    pub expires_in: Option<Duration>,
}

impl Element {
    /// The same ban written again (into another set), with the time it has left.
    pub fn into_restore(self, jail: &str) -> Restore {
        Restore {
            ban: Ban {
                jail: jail.to_owned(),
                net: self.net,
                time: self.timeout.map_or(BanTime::Permanent, BanTime::Finite),
            },
            expires_in: self.expires_in,
        }
    }
}

/// What a round of bans found in the way: a jail's bans of one family hold no overlapping
/// elements (the enforcer keeps it so, across its sets).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overlaps {
    /// Bans not written, each (its index in the round, the wider prefix already banned in
    /// its set, or banned by the same round).
    pub covered: Vec<(usize, IpNet)>,
    /// Elements removed because a ban of the round covers them: (jail, prefix).
    pub replaced: Vec<(String, IpNet)>,
}

/// Where a ban decision came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A jail's failures.
    Failures,
    /// `banctl ban`.
    Manual,
    /// A recidive jail: the bans of the other jails.
    Recidive,
    /// Found in the enforcer but not in the ledger (a crash between the two writes, or added
    /// by hand).
    Kernel,
    /// Another host of the fleet, by name.
    Remote(String),
}

impl Origin {
    /// How the ledger keeps it: `failures`, `manual`, `recidive`, `kernel`, `remote:HOST`.
    pub fn to_text(&self) -> String {
        match self {
            Origin::Failures => "failures".into(),
            Origin::Manual => "manual".into(),
            Origin::Recidive => "recidive".into(),
            Origin::Kernel => "kernel".into(),
            Origin::Remote(host) => format!("remote:{host}"),
        }
    }

    /// The inverse of [`Origin::to_text`]; unknown text is a jail's failures.
    pub fn from_text(text: &str) -> Origin {
        match text {
            "manual" => Origin::Manual,
            "recidive" => Origin::Recidive,
            "kernel" => Origin::Kernel,
            _ => match text.strip_prefix("remote:") {
                Some(host) => Origin::Remote(host.to_owned()),
                None => Origin::Failures,
            },
        }
    }

    /// The `reason` of a ban event (notifiers): `failures`, `manual`, `recidive` or `remote`.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Origin::Failures | Origin::Kernel => "failures",
            Origin::Manual => "manual",
            Origin::Recidive => "recidive",
            Origin::Remote(_) => "remote",
        }
    }
}

/// A ban as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBan {
    pub jail: String,
    pub net: IpNet,
    pub banned_at: SystemTime,
    pub time: BanTime,
    /// Which ban of this address this is (1 for the first), as escalation counted it.
    pub count: u32,
    /// Why: the matched lines, or "manual", or "found in the kernel".
    pub reason: String,
    /// Who decided it.
    pub origin: Origin,
}

impl StoredBan {
    /// When the ban ends; `None` for a permanent ban.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self.time {
            BanTime::Finite(d) => Some(self.banned_at + d),
            BanTime::Permanent => None,
        }
    }

    /// Time left at `now`: `Some(None)` for a permanent ban, `None` once expired.
    pub fn remaining(&self, now: SystemTime) -> Option<Option<Duration>> {
        time_left(self.banned_at, self.time, now)
    }

    /// What to enforce.
    pub fn to_ban(&self) -> Ban {
        Ban {
            jail: self.jail.clone(),
            net: self.net,
            time: self.time,
        }
    }

    /// The ban put back at `now` with the time it has left; `None` once expired.
    pub fn to_restore(&self, now: SystemTime) -> Option<Restore> {
        self.remaining(now).map(|left| Restore {
            expires_in: left,
            ..Restore::whole(self.to_ban())
        })
    }
}

/// Time left at `now` of a ban of `time` from `banned_at`: `Some(None)` for a permanent ban,
/// `None` once expired.
pub fn time_left(
    banned_at: SystemTime,
    time: BanTime,
    now: SystemTime,
) -> Option<Option<Duration>> {
    match time {
        BanTime::Permanent => Some(None),
        BanTime::Finite(d) => (banned_at + d)
            .duration_since(now)
            .ok()
            .filter(|d| !d.is_zero())
            .map(Some),
    }
}

/// The bans of a round that no other ban of the round covers (nor equals, earlier in the
/// round), by index; the others join `covered` with the ban that covers them. Prefixes
/// either nest or are disjoint: a ban is covered when one of its own prefixes, at a length
/// some ban of the round has, is a ban of the round.
pub fn widest_of_round<'a>(
    bans: impl Iterator<Item = &'a Ban> + Clone,
    covered: &mut Vec<(usize, IpNet)>,
) -> Vec<usize> {
    let (lengths, nested) = lengths_of(bans.clone());
    widest_by_sets(bans, &lengths, nested, covered)
}

/// [`widest_of_round`] for bans that repeat none (each (jail, prefix) at most once, as a
/// ledger holds them). Without nesting none is covered: every one is kept, with no set to
/// build (a restore: a million bans).
fn widest_of_distinct<'a>(
    bans: impl Iterator<Item = &'a Ban> + Clone,
    covered: &mut Vec<(usize, IpNet)>,
) -> Vec<usize> {
    let (lengths, nested) = lengths_of(bans.clone());
    if !nested {
        return (0..bans.count()).collect();
    }
    widest_by_sets(bans, &lengths, nested, covered)
}

/// The (is IPv4, prefix length)s of the bans, sorted, and whether a family has two of them
/// (only then can a ban cover another; a round of single addresses, the usual one, has one
/// per family).
fn lengths_of<'a>(bans: impl Iterator<Item = &'a Ban>) -> (Vec<(bool, u8)>, bool) {
    // At most 2 × 129 of them, so a scan of the few found so far beats sorting them all.
    let mut lengths: Vec<(bool, u8)> = Vec::new();
    for b in bans {
        let key = (b.net.is_ipv4(), b.net.prefix_len());
        if !lengths.contains(&key) {
            lengths.push(key);
        }
    }
    lengths.sort_unstable();
    let nested = lengths.windows(2).any(|w| w[0].0 == w[1].0);
    (lengths, nested)
}

/// [`widest_of_round`] for any round: sets of the round's prefixes and of those seen.
/// `lengths`: the round's (is IPv4, prefix length)s, sorted; `nested`: whether a family has
/// two of them.
fn widest_by_sets<'a>(
    bans: impl Iterator<Item = &'a Ban> + Clone,
    lengths: &[(bool, u8)],
    nested: bool,
    covered: &mut Vec<(usize, IpNet)>,
) -> Vec<usize> {
    // A restore holds up to a million bans, all this host's own: a fast hash, not SipHash.
    let nets: HashSet<(&str, IpNet), FastHash> = if nested {
        bans.clone().map(|b| (b.jail.as_str(), b.net)).collect()
    } else {
        HashSet::default()
    };
    let mut seen: HashSet<(&str, IpNet), FastHash> =
        HashSet::with_capacity_and_hasher(lengths.len(), FastHash::default());
    let mut kept = Vec::new();
    for (i, ban) in bans.enumerate() {
        let family = ban.net.is_ipv4();
        let wider = lengths
            .iter()
            .filter(|(f, len)| nested && *f == family && *len < ban.net.prefix_len())
            .map(|&(_, len)| IpNet::new(ban.net.addr(), len))
            .find(|w| nets.contains(&(ban.jail.as_str(), *w)));
        match wider {
            Some(w) => covered.push((i, w)),
            None if !seen.insert((ban.jail.as_str(), ban.net)) => covered.push((i, ban.net)),
            None => kept.push(i),
        }
    }
    kept
}

/// Bans to put back, fitted to what the kernel holds (`kernel`: each jail's elements, as
/// the enforcer's snapshot gives them). `fits`: absent and overlapping nothing, for
/// the layout; `wider`: covering elements that are there, for
/// a ban round, which replaces them; left out are bans that an element or a wider
/// ban of the list already covers (that one enforces them). `items` hold each (jail,
/// prefix) at most once, as the ledger does.
pub fn fit(kernel: &BTreeMap<String, Vec<Element>>, items: Vec<Restore>) -> Fitted {
    debug_assert!(
        {
            let mut seen = HashSet::new();
            items.iter().all(|r| seen.insert((&r.ban.jail, r.ban.net)))
        },
        "a ban to put back twice"
    );
    let mut covered = Vec::new();
    let kept = widest_of_distinct(items.iter().map(|r| &r.ban), &mut covered);
    let mut sorted: BTreeMap<(&str, bool), Vec<IpNet>> = BTreeMap::new();
    for (jail, elements) in kernel {
        for e in elements {
            sorted
                .entry((jail.as_str(), e.net.is_ipv4()))
                .or_default()
                .push(e.net);
        }
    }
    for nets in sorted.values_mut() {
        nets.sort();
    }
    let mut fitted = Fitted::default();
    // `kept` is in increasing order: the items are taken in one pass, none copied.
    let mut kept = kept.into_iter().peekable();
    for (i, r) in items.into_iter().enumerate() {
        if kept.next_if_eq(&i).is_none() {
            continue;
        }
        let nets = sorted
            .get(&(r.ban.jail.as_str(), r.ban.net.is_ipv4()))
            .map_or(&[][..], Vec::as_slice);
        match place(nets, &r.ban.net) {
            Place::Over(inside) if inside.is_empty() => fitted.fits.push(r),
            Place::Over(_) => fitted.wider.push(r),
            Place::Same | Place::Inside(_) => fitted.covered += 1,
        }
    }
    fitted.covered += covered.len();
    fitted
}

/// Bans to put back, split by [`fit`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub fits: Vec<Restore>,
    pub wider: Vec<Restore>,
    /// How many were left out, covered.
    pub covered: usize,
}

/// Where a ban stands against the disjoint, sorted prefixes of its set.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    /// The same prefix is there.
    Same,
    /// A wider prefix covers it.
    Inside(IpNet),
    /// It covers these (possibly none).
    Over(Vec<IpNet>),
}

pub fn place(nets: &[IpNet], net: &IpNet) -> Place {
    // The prefixes are disjoint: at most one starts at or before `net` and contains it.
    let after = nets.partition_point(|n| n.addr() <= net.addr());
    if let Some(before) = after.checked_sub(1).map(|k| nets[k]) {
        if before == *net {
            return Place::Same;
        }
        if before.covers(net) {
            return Place::Inside(before);
        }
    }
    let first = nets.partition_point(|n| n.addr() < net.addr());
    Place::Over(
        nets[first..]
            .iter()
            .take_while(|n| net.contains(n.addr()))
            .copied()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut for rounds in increasing order gives what the sets give, on rounds with
    /// repeats, nesting, two jails and both families, sorted or not.
    #[test]
    fn a_round_that_repeats_no_ban_keeps_what_the_sets_keep() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut below = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..2_000 {
            // Every other round has single addresses only: the case with no set to build.
            let prefixes = round % 2 == 1;
            let mut seen = HashSet::new();
            let bans: Vec<Ban> = (0..1 + below(12))
                .map(|_| {
                    let jail = ["a", "b"][below(2) as usize];
                    let host = below(6) as u8;
                    let net = match (below(2), below(4)) {
                        (0, 0) if prefixes => IpNet::new([10, 0, 0, 0].into(), 24),
                        (0, _) => IpNet::host([10, 0, 0, host].into()),
                        (_, 0) if prefixes => {
                            IpNet::new([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0].into(), 64)
                        }
                        _ => IpNet::host([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host)].into()),
                    };
                    Ban {
                        jail: jail.into(),
                        net,
                        time: BanTime::Permanent,
                    }
                })
                .filter(|b| seen.insert((b.jail.clone(), b.net)))
                .collect();
            let mut lengths: Vec<(bool, u8)> = bans
                .iter()
                .map(|b| (b.net.is_ipv4(), b.net.prefix_len()))
                .collect();
            lengths.sort_unstable();
            lengths.dedup();
            let nested = lengths.windows(2).any(|w| w[0].0 == w[1].0);
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            assert_eq!(
                (widest_of_distinct(bans.iter(), &mut fast), fast),
                (
                    widest_by_sets(bans.iter(), &lengths, nested, &mut slow),
                    slow
                ),
                "round {round}: {bans:?}"
            );
        }
    }
}
