//! The two seams of the engine: where bans are enforced, and where they are remembered.
//!
//! Today the [`Enforcer`] is the nftables table (`firewall::Firewall`) and the [`Ledger`] is
//! the SQLite state store (`state::Store`); the engine knows neither, only these traits.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::addr::IpNet;
use crate::ban::{Element, Overlaps, Restore, StoredBan};
use crate::firewall::JailRules;
use crate::jail::Window;

/// Saved failure windows: (jail, key, Unix seconds of each failure).
pub type SavedFailures = Vec<(String, IpAddr, Vec<u32>)>;

/// Where bans take effect. Every method is one logical change, all or nothing.
pub trait Enforcer {
    type Error: std::error::Error;

    /// Declares what the jails need (for nftables: table, sets, rules), keeping the bans of
    /// jails that stay and dropping those of jails that go, and puts back `restore` (bans
    /// known to be absent and overlapping nothing), all at once.
    fn declare(&mut self, jails: &[JailRules], restore: &[Restore]) -> Result<(), Self::Error>;

    /// Enforces bans (each with its time left); a ban already there is renewed. Overlaps are
    /// resolved, never refused: see [`Overlaps`].
    fn ban(&mut self, items: &[Restore]) -> Result<Overlaps, Self::Error>;

    /// Lifts exactly these bans (jail, prefix); fails, changing nothing, if one is absent.
    fn unban(&mut self, items: &[(String, IpNet)]) -> Result<(), Self::Error>;

    /// The bans of each jail now; a jail whose part is missing has none.
    fn snapshot(&mut self, jails: &[&str]) -> Result<BTreeMap<String, Vec<Element>>, Self::Error>;

    /// The bans of one jail now.
    fn list(&mut self, jail: &str) -> Result<Vec<Element>, Self::Error>;

    /// Packets and bytes dropped by a jail's bans.
    fn dropped(&mut self, jail: &str) -> Result<(u64, u64), Self::Error>;

    /// The jails whose parts are in place now.
    fn jails_present(&mut self) -> Result<Vec<String>, Self::Error>;

    /// Whether `error` says that the layout (or a jail's part of it) is gone, so that
    /// declaring it again is the cure.
    fn is_missing(error: &Self::Error) -> bool;

    /// How many changes the enforcer has seen from anyone, and how many of them were this
    /// enforcer's: compared over a stretch without a watcher, they tell whether someone else
    /// changed its state meanwhile.
    fn changes(&mut self) -> Result<Changes, Self::Error>;
}

/// See [`Enforcer::changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Changes by anyone, wrapping (nftables: the ruleset generation).
    pub all: u32,
    /// Changes this enforcer made.
    pub ours: u64,
}

impl Changes {
    /// Changes by others between `self` and `later`.
    pub fn others_until(self, later: Changes) -> u64 {
        let all = u64::from(later.all.wrapping_sub(self.all));
        all.saturating_sub(later.ours - self.ours)
    }
}

/// What banctl promised: bans in force, their history, failure windows and where sources
/// resume.
pub trait Ledger {
    type Error: std::error::Error;

    /// One round, in one transaction: new bans (recorded and added to the history), where
    /// sources resume (opaque to the engine), and the failure windows the round changed, in
    /// the order they changed: a window listed twice keeps its last state.
    fn save_round(
        &mut self,
        bans: &[StoredBan],
        positions: &[(&str, &str)],
        windows: &[Window<'_>],
    ) -> Result<(), Self::Error>;

    /// Records bans found in the enforcer, without counting them in the history.
    fn adopt(&mut self, bans: &[StoredBan]) -> Result<(), Self::Error>;

    /// Forgets bans in force (an unban); the history keeps them.
    fn remove(&mut self, items: &[(String, IpNet)]) -> Result<(), Self::Error>;

    /// Every ban in force at `now`, each (jail, prefix) once.
    fn active(&self, now: SystemTime) -> Result<Vec<StoredBan>, Self::Error>;

    /// Every ban in force at `now`, each (jail, prefix) once, as it is put back
    /// ([`StoredBan::to_restore`]): what a restart reads, a million bans for some, without
    /// what only listings need. The engine relies on the once: it looks for no repeats.
    fn restorable(&self, now: SystemTime) -> Result<Vec<Restore>, Self::Error>;

    /// Bans that ran out after `since`, up to `until`.
    fn expired(&self, since: SystemTime, until: SystemTime) -> Result<Vec<StoredBan>, Self::Error>;

    /// How many bans each jail has in force.
    fn active_by_jail(&self, now: SystemTime) -> Result<HashMap<String, u64>, Self::Error>;

    /// How many bans are in force.
    fn active_count(&self, now: SystemTime) -> Result<u64, Self::Error>;

    /// The ban number of `net`'s ban in force in `jail`, if it has one.
    fn ban_count(
        &self,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Result<Option<u32>, Self::Error>;

    /// `net`'s ban in force in `jail`, if it has one.
    fn in_force(
        &self,
        jail: &str,
        net: &IpNet,
        now: SystemTime,
    ) -> Result<Option<StoredBan>, Self::Error>;

    /// How many times `net` was banned since `since`, in `jails` (all when empty).
    fn previous_bans(
        &self,
        net: &IpNet,
        jails: &[&str],
        since: SystemTime,
    ) -> Result<u32, Self::Error>;

    /// Drops expired bans, history older than `history`, and bans of jails not listed once
    /// they are older than `history` (until then a re-enabled jail gets them back).
    fn purge(
        &mut self,
        now: SystemTime,
        history: Duration,
        jails: &[&str],
    ) -> Result<usize, Self::Error>;

    /// The saved failure windows: (jail, key, Unix seconds).
    fn failures(&self) -> Result<SavedFailures, Self::Error>;

    /// Drops the windows whose newest failure is at or before their jail's window start, and
    /// those of jails not listed.
    fn purge_failures(&mut self, windows: &[(&str, u32)]) -> Result<usize, Self::Error>;
}
