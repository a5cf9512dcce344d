//! The engine: ban policy, free of I/O of its own.
//!
//! It counts failures in the jails, decides bans, escalates them from the history, adds
//! recidive bans, reconciles the enforcer with the ledger after a restart, a reboot or a
//! removal by someone else, bans and unbans by hand, lists bans and finds the ones that
//! expired. It talks to the outside through two traits ([`Enforcer`]: nftables today;
//! [`Ledger`]: the SQLite store today), takes the time as an argument, and reports what
//! happened as [`Notice`]s and domain results; the daemon turns those into notifications and
//! control responses.
//!
//! **Architecture invariant:** the engine knows no netlink, no SQL, no socket, no runtime
//! and no clock: every method that depends on time takes `now`.

mod ports;
mod remote;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use ports::{Changes, Enforcer, Ledger, SavedFailures};
pub use remote::{Refusal, RemoteBan, RemoteCounts, RemoteLift, RemotePolicy, RemoteRound};

use crate::addr::IpNet;
use crate::ban::{Ban, Element, FastHash, Origin, Overlaps, Restore, StoredBan};
use crate::config::{JailConfig, UseDns};
use crate::duration::BanTime;
use crate::filter::Verdict;
use crate::filter::date::DateReader;
use crate::jail::{Jail, Outcome, Recorded, Times, Window};
use crate::source::{Failure, LineBatch, Lines, Timing};

/// How far behind `now` expired bans are looked for: the enforcer's timeout started a little
/// after the ledger's `banned_at`, and a wider ban must be gone from the enforcer before the
/// bans it covered are put back.
const EXPIRY_LAG: Duration = Duration::from_secs(1);

/// Why a request of the control layer was not carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("no jail named {0:?}")]
    UnknownJail(String),
    #[error("{target} is broader than jail {jail}'s min_prefix (/{min}): not banned")]
    TooBroad {
        jail: String,
        target: IpNet,
        min: u8,
    },
    #[error("{target} is covered by jail {jail}'s ignoreip or is loopback: not banned")]
    Ignored { jail: String, target: IpNet },
    #[error("{target} is not banned in {scope}")]
    NotBanned { target: IpNet, scope: String },
    /// The enforcer refused or failed (the kernel, for nftables).
    #[error("{0}")]
    Enforcer(String),
    /// The ledger could not be read.
    #[error("{0}")]
    Ledger(String),
}

/// What happened that the outside may want to hear of (notifiers, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A ban in force: `address` is the one whose failures led to it (its prefix may be
    /// wider), `matched` the lines that counted, `reason` `failures`, `manual` or `recidive`.
    Banned {
        ban: StoredBan,
        address: IpAddr,
        matched: Vec<String>,
        reason: &'static str,
    },
    /// A ban lifted: `reason` `manual` (an unban) or `expired`.
    Unbanned {
        jail: String,
        net: IpNet,
        time: Option<BanTime>,
        count: Option<u32>,
        reason: &'static str,
    },
}

/// A ban in force as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub jail: String,
    pub element: Element,
    /// Which ban of the address this is, from the ledger.
    pub count: Option<u32>,
    /// Who decided it, from the ledger.
    pub origin: Option<Origin>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Bans of removed jails that left the enforcer (the ledger keeps them).
    pub lifted: usize,
    /// Bans of added jails put back from the ledger.
    pub restored: usize,
}

/// A manual ban carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banned {
    pub time: BanTime,
    /// A wider ban in force already covers the target: nothing new was enforced.
    pub covered_by: Option<IpNet>,
    /// The target was banned in the jail already: nothing changed (no escalation, no new
    /// time); `time` is that ban's.
    pub already: bool,
}

/// A failure naming a host, not an address, in a jail with `usedns = "yes"`: to resolve, then
/// to count with [`Engine::on_resolved`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameFailure {
    pub jail: String,
    pub name: String,
    pub at: SystemTime,
    pub line: Box<str>,
}

/// A ban a round asks for, and what the notifiers get with it.
struct Wanted {
    ban: Ban,
    address: IpAddr,
    reason: String,
    matched: Vec<String>,
}

/// What the ledger still lacks: the bans, positions and failure windows of rounds whose save
/// has not succeeded yet. Saved together in one transaction, so that a crash never leaves a
/// position ahead of the failures and bans of the lines before it; a save that fails (a full
/// disk) is retried with the next round, and nothing is dropped meanwhile.
#[derive(Debug, Default)]
struct Unsaved {
    bans: Vec<StoredBan>,
    positions: HashMap<String, String>,
    /// The failure windows changed since the last save, per jail name (a few jails: a list):
    /// each change as the failure that made it left the window (empty: forgotten), so that a
    /// save reads none of the jails' tables. (A window a jail evicts later keeps that content
    /// in the ledger, as one evicted after its save does.)
    windows: Vec<(String, WindowChanges)>,
    /// The last save failed (so the next failure is not logged again).
    failing: bool,
}

/// Changes to failure windows, (key, times as the change left them), in the order they
/// were made. A window changed twice is listed twice: the ledger keeps a key's last change.
/// Appending costs nothing per failure, where a map keyed by address cost a hash and a probe
/// each, and regrew from empty after every save.
type WindowChanges = Vec<(IpAddr, Times)>;

impl Unsaved {
    /// The unsaved window changes of jail `name`.
    fn windows_of(&mut self, name: &str) -> &mut WindowChanges {
        let i = match self.windows.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.windows.push((name.to_owned(), WindowChanges::new()));
                self.windows.len() - 1
            }
        };
        &mut self.windows[i].1
    }

    /// How many window changes wait (a window changed twice counts twice).
    fn window_count(&self) -> usize {
        self.windows.iter().map(|(_, keys)| keys.len()).sum()
    }
}

/// How long a backlog of lines may go unsaved (see [`Engine::on_lines`]).
const SAVE_BEHIND: Duration = Duration::from_secs(1);
/// How many failure-window changes may wait behind a backlog: a larger transaction spills
/// the store's page cache and costs more than the commits it saves.
const SAVE_BEHIND_WINDOWS: usize = 16 * 1024;

/// Ban policy over an enforcer and a ledger.
pub struct Engine<E, L> {
    jails: Vec<Jail>,
    enforcer: E,
    ledger: L,
    /// How far back the ban history goes.
    history: Duration,
    unsaved: Unsaved,
    /// More lines are queued behind the round being processed ([`Engine::set_backlog`]).
    backlog: bool,
    /// When a round of lines was last saved.
    lines_saved: SystemTime,
    /// Up to when expired bans were reported.
    expiry_checked: SystemTime,
    notices: Vec<Notice>,
    /// Jails whose bans nobody hears of ([`Engine::set_unheard`]): no ban notice is built
    /// for them (a burst or a fleet's catch-up brings thousands of bans at once).
    unheard: HashSet<String>,
    /// How bans from other hosts are taken, if this host is in a fleet.
    remote: Option<remote::Remote>,
    /// For metrics: enforcer requests that failed, and repairs.
    pub enforcer_errors: u64,
    pub repairs: u64,
}

impl<E: Enforcer, L: Ledger> Engine<E, L> {
    /// An engine over `jails`; call [`Engine::start`] before anything else.
    pub fn new(
        jails: Vec<Jail>,
        enforcer: E,
        ledger: L,
        history: Duration,
        now: SystemTime,
    ) -> Self {
        Engine {
            jails,
            enforcer,
            ledger,
            history,
            unsaved: Unsaved::default(),
            backlog: false,
            lines_saved: now,
            expiry_checked: now,
            notices: Vec::new(),
            unheard: HashSet::new(),
            remote: None,
            enforcer_errors: 0,
            repairs: 0,
        }
    }

    /// Gives the jails back their saved failures, then puts the enforcer in line with the
    /// configuration and the ledger. Returns (bans restored, bans adopted).
    pub fn start(&mut self, now: SystemTime) -> Result<(usize, usize), EngineError> {
        self.restore_failures(now);
        self.reconcile(now)
    }

    pub fn jails(&self) -> &[Jail] {
        &self.jails
    }

    pub fn jails_mut(&mut self) -> &mut [Jail] {
        &mut self.jails
    }

    pub fn ledger(&self) -> &L {
        &self.ledger
    }

    /// Names the jails whose bans nobody hears of: [`Engine::take_notices`] leaves their
    /// bans out from then on (every jail's bans are told until this is called).
    pub fn set_unheard(&mut self, jails: HashSet<String>) {
        self.unheard = jails;
    }

    /// What happened since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The index of the jail named `name`.
    pub fn jail_index(&self, name: &str) -> Result<usize, EngineError> {
        self.jails
            .iter()
            .position(|j| j.name() == name)
            .ok_or_else(|| EngineError::UnknownJail(name.to_owned()))
    }

    /// The jails a request is about: one by name, or all.
    pub fn selected(&self, jail: Option<&str>) -> Result<Vec<usize>, EngineError> {
        match jail {
            Some(name) => self.jail_index(name).map(|i| vec![i]),
            None => Ok((0..self.jails.len()).collect()),
        }
    }

    fn enforcer_failed(&mut self, e: &E::Error) -> EngineError {
        self.enforcer_errors += 1;
        EngineError::Enforcer(e.to_string())
    }

    /// Filters each batch through the jails that read it (`routed`), counts failures, writes
    /// the bans they reach (one batch) and saves the round. Returns the failures that named a
    /// host of a jail with `usedns = "yes"`, to resolve.
    pub fn on_lines(
        &mut self,
        batches: &[(&LineBatch, &[usize])],
        now: SystemTime,
    ) -> Vec<NameFailure> {
        let mut bans = Vec::new();
        let mut names = Vec::new();
        for &(batch, routed) in batches {
            for &j in routed {
                let counters = self.jails[j].counters_mut();
                counters.lines += batch.lines.len() as u64;
                counters.cut += batch.cut;
                // The failures in the batch: found on the source's thread when the batch
                // carries them for this build of the filter, else here.
                let filter = &self.jails[j].config().filter;
                let prepared = filter
                    .candidate_search()
                    .and_then(|s| batch.examined.iter().find(|(id, _)| *id == s.id()));
                let found;
                let failures: &[(usize, Failure)] = match prepared {
                    Some((_, failures)) => failures,
                    None => {
                        // Only the lines the filter may match are looked at, found many at
                        // a time (every line, for a filter that remembers the ones before).
                        let listed = batch
                            .lines
                            .candidates(|b, from| filter.next_candidate(b, from));
                        let jail = &mut self.jails[j];
                        found = failures_in(&batch.lines, listed, |line| jail.examine(line));
                        &found
                    }
                };
                // Dated first, by one reader for the batch (it borrows the jail, which
                // counting changes), then counted in the same order.
                let dates = self.jails[j].config().dates.reader(now);
                let mut dated = Vec::with_capacity(failures.len());
                let mut matched = 0;
                for (i, failure) in failures {
                    let line = batch.lines.get(*i);
                    match failure {
                        Failure::Addr(addr) => {
                            matched += 1;
                            let at = failure_time(self.jails[j].config(), &dates, batch, line, now);
                            dated.extend(at.map(|at| (*i, *addr, at)));
                        }
                        Failure::Name(name) => {
                            let name = name.clone();
                            names.extend(self.on_name(j, name, &dates, batch, line, now));
                        }
                    }
                }
                self.jails[j].counters_mut().matched += matched;
                for (i, addr, at) in dated {
                    self.count(j, addr, at, batch.lines.get(i), &mut bans);
                }
            }
        }
        let banned = !bans.is_empty();
        if banned {
            self.enforce(bans, now);
        }
        // Only once their lines are processed, so a crash re-reads rather than skips.
        for (key, position) in batches.iter().filter_map(|(b, _)| b.resume.as_ref()) {
            self.unsaved.positions.insert(key.clone(), position.clone());
        }
        // Behind a backlog, failure windows and positions are saved together every
        // SAVE_BEHIND or SAVE_BEHIND_WINDOWS at most (an address failing in many rounds is
        // written once, a page of the store once): a crash re-reads those lines, as it would
        // re-read one round.
        let behind = now
            .duration_since(self.lines_saved)
            .is_ok_and(|d| d < SAVE_BEHIND);
        if banned || !self.backlog || !behind || self.unsaved.window_count() >= SAVE_BEHIND_WINDOWS
        {
            self.save();
            self.lines_saved = now;
        }
        names
    }

    /// Says whether more lines wait behind the next round ([`Engine::on_lines`] then saves
    /// less often).
    pub fn set_backlog(&mut self, backlog: bool) {
        self.backlog = backlog;
    }

    /// Counts a failure of `addr` at `at` in jail `j`: a ban joins `bans`, the window it
    /// changed the unsaved ones, as it left it (a key's last change wins). They are saved
    /// with the round's positions: nothing between here and the round's end saves.
    fn count(
        &mut self,
        j: usize,
        addr: IpAddr,
        at: SystemTime,
        line: &str,
        bans: &mut Vec<Wanted>,
    ) {
        let jail = &mut self.jails[j];
        let Recorded { outcome, window } = jail.record_line(addr, at, line);
        match outcome {
            Outcome::Ban(ban) => bans.push(Wanted {
                ban,
                address: addr,
                reason: crate::jail::clip(line).to_owned(),
                matched: jail.take_matched(addr),
            }),
            Outcome::Counted { .. } => {}
            Outcome::Ignored => {
                tracing::debug!(jail = jail.name(), line, "ignored address");
            }
        }
        if let Some((key, times)) = window {
            self.unsaved.windows_of(jail.name()).push((key, times));
        }
    }

    /// A failure of jail `j` naming host `name`: per its `usedns`, nothing, a warning, or a
    /// name to resolve.
    fn on_name(
        &self,
        j: usize,
        name: String,
        dates: &DateReader,
        batch: &LineBatch,
        line: &str,
        now: SystemTime,
    ) -> Option<NameFailure> {
        let jail = &self.jails[j];
        match jail.config().usedns {
            UseDns::No => None,
            UseDns::Warn => {
                tracing::warn!(
                    jail = jail.name(),
                    name,
                    "a failure of a host name, not an address: not resolved nor banned (usedns = \"warn\")"
                );
                None
            }
            UseDns::Yes => {
                failure_time(jail.config(), dates, batch, line, now).map(|at| NameFailure {
                    jail: jail.name().to_owned(),
                    name,
                    at,
                    line: line.into(),
                })
            }
        }
    }

    /// The addresses a failure's host name resolved to: each counts the failure.
    pub fn on_resolved(&mut self, failure: &NameFailure, addrs: &[IpAddr], now: SystemTime) {
        // The jail may be gone (a reload) or its mind changed.
        let Some(j) = self
            .jails
            .iter()
            .position(|jail| jail.name() == failure.jail && jail.config().usedns == UseDns::Yes)
        else {
            return;
        };
        if failure.at + self.jails[j].config().findtime < now {
            return;
        }
        let mut bans = Vec::new();
        for &addr in addrs {
            tracing::info!(jail = failure.jail, name = failure.name, %addr, "failure of a host name counted for its address");
            self.jails[j].counters_mut().matched += 1;
            let at = failure.at.min(now);
            self.count(j, addr, at, &failure.line, &mut bans);
        }
        if !bans.is_empty() {
            self.enforce(bans, now);
        }
        self.save();
    }

    /// Writes what the ledger lacks ([`Unsaved`]) in one transaction; on failure keeps it
    /// for the next try.
    pub fn save(&mut self) {
        let Unsaved {
            bans,
            positions,
            windows,
            failing,
        } = &mut self.unsaved;
        if bans.is_empty() && positions.is_empty() && windows.iter().all(|(_, k)| k.is_empty()) {
            return;
        }
        let positions_now: Vec<(&str, &str)> = positions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let jails = &self.jails;
        let windows_now: Vec<Window> = windows
            .iter()
            .filter_map(|(name, keys)| Some((jails.iter().find(|j| j.name() == name)?, keys)))
            .flat_map(|(jail, keys)| {
                keys.iter().map(|&(addr, ref times)| Window {
                    jail: jail.name(),
                    addr,
                    times,
                })
            })
            .collect();
        match self.ledger.save_round(bans, &positions_now, &windows_now) {
            Ok(()) => {
                if *failing {
                    tracing::warn!("the state store takes writes again: what waited is saved");
                }
                self.unsaved = Unsaved::default();
            }
            Err(e) => {
                if !std::mem::replace(failing, true) {
                    tracing::error!(error = %e, bans = bans.len(), "saving bans, source positions and failures failed: kept, retried with the next round (positions do not advance meanwhile)");
                }
            }
        }
    }

    /// Saves that the jails forgot the failures of these addresses (after a ban or unban).
    fn forget_saved(&mut self, forgotten: &[(usize, Vec<IpAddr>)]) {
        for (j, addrs) in forgotten {
            self.unsaved
                .windows_of(self.jails[*j].name())
                .extend(addrs.iter().map(|&addr| (addr, Times::new())));
        }
        self.save();
    }

    /// How many times `net` was banned since `since`, in `scope` (all jails when empty):
    /// the history, plus bans not saved yet.
    fn previous_bans(&self, net: &IpNet, scope: &[&str], since: SystemTime) -> u32 {
        let saved = self
            .ledger
            .previous_bans(net, scope, since)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "reading the ban history; counting none");
                0
            });
        let unsaved = self
            .unsaved
            .bans
            .iter()
            .filter(|b| b.net == *net && b.banned_at >= since)
            .filter(|b| scope.is_empty() || scope.contains(&b.jail.as_str()))
            .count();
        saved + u32::try_from(unsaved).unwrap_or(u32::MAX)
    }

    /// Gives the jails back the failures saved before a restart.
    fn restore_failures(&mut self, now: SystemTime) {
        let saved = match self.ledger.failures() {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!(error = %e, "reading saved failures: counting starts from zero");
                return;
            }
        };
        let mut restored = 0;
        for (name, addr, times) in saved {
            if let Some(jail) = self.jails.iter_mut().find(|j| j.name() == name) {
                jail.restore(addr, times, now);
                restored += 1;
            }
        }
        tracing::info!(addresses = restored, "failure windows restored");
    }

    /// Escalates, writes (one batch), records and reports bans, then any recidive bans they
    /// cause.
    fn enforce(&mut self, mut bans: Vec<Wanted>, now: SystemTime) {
        // Addresses rotating inside one prefix all ask for the same ban: keep the first.
        let mut seen = HashSet::new();
        bans.retain(|w| seen.insert((w.ban.jail.clone(), w.ban.net)));
        let mut why = Vec::with_capacity(bans.len());
        let bans = bans
            .into_iter()
            .map(|w| {
                why.push((w.address, w.matched));
                (w.ban, w.reason)
            })
            .collect();
        let stored = self.escalate(bans, Origin::Failures, now);
        if let Err(e) = self.commit(&stored) {
            tracing::error!(error = %e, count = stored.len(), "writing bans failed");
            return;
        }
        self.report_bans(&stored, why);
        let recidive = self.recidive(&stored, now);
        if !recidive.is_empty() {
            let stored = self.escalate(recidive, Origin::Recidive, now);
            if let Err(e) = self.commit(&stored) {
                tracing::error!(error = %e, count = stored.len(), "writing recidive bans failed");
                return;
            }
            self.report_bans(&stored, Vec::new());
        }
    }

    /// Notices of bans in force; `why` pairs with `stored` (the address behind each ban and
    /// its lines) or is empty.
    fn report_bans(&mut self, stored: &[StoredBan], why: Vec<(IpAddr, Vec<String>)>) {
        let mut why = why.into_iter();
        for b in stored {
            let (address, matched) = why.next().unwrap_or((b.net.addr(), Vec::new()));
            if self.unheard.contains(&b.jail) {
                continue;
            }
            self.notices.push(Notice::Banned {
                ban: b.clone(),
                address,
                matched,
                reason: b.origin.event_reason(),
            });
        }
    }

    /// Gives each ban its escalated time and its ban number, from the history.
    fn escalate(
        &self,
        bans: Vec<(Ban, String)>,
        origin: Origin,
        now: SystemTime,
    ) -> Vec<StoredBan> {
        let since = now
            .checked_sub(self.history)
            .unwrap_or(std::time::UNIX_EPOCH);
        bans.into_iter()
            .map(|(mut ban, reason)| {
                let escalation = self
                    .jails
                    .iter()
                    .find(|j| j.name() == ban.jail)
                    .and_then(|j| j.config().escalation.as_ref());
                let scope: Vec<&str> = match escalation {
                    Some(e) if e.across_jails => Vec::new(),
                    _ => vec![ban.jail.as_str()],
                };
                let previous = self.previous_bans(&ban.net, &scope, since);
                if let Some(e) = escalation {
                    ban.time = e.bantime(ban.time, previous);
                }
                StoredBan {
                    jail: ban.jail,
                    net: ban.net,
                    banned_at: now,
                    time: ban.time,
                    count: previous + 1,
                    reason,
                    origin: origin.clone(),
                }
            })
            .collect()
    }

    /// Writes bans to the enforcer (one batch); they are saved with the round. A ban that a
    /// wider one in force covers is recorded, not written: it is put back when the wider one
    /// ends (see [`Engine::uncover`]); narrower bans that a new one covers leave the enforcer
    /// and stay in the ledger the same way.
    fn commit(&mut self, stored: &[StoredBan]) -> Result<Overlaps, EngineError> {
        let items: Vec<Restore> = stored.iter().map(|b| Restore::whole(b.to_ban())).collect();
        self.commit_items(stored, &items)
    }

    /// [`Engine::commit`], each ban written with the time `items` gives it (paired by index).
    fn commit_items(
        &mut self,
        stored: &[StoredBan],
        items: &[Restore],
    ) -> Result<Overlaps, EngineError> {
        let overlaps = self.write_bans(items)?;
        for &(i, wider) in &overlaps.covered {
            let b = &stored[i];
            tracing::info!(jail = b.jail.as_str(), address = %b.net, covered_by = %wider, "ban already covered by a wider ban: nothing to write");
        }
        for (jail, net) in &overlaps.replaced {
            tracing::info!(jail = jail.as_str(), address = %net, "ban replaced in the kernel by a wider ban");
        }
        for b in stored {
            match &b.origin {
                // A catch-up brings 100,000 of them: one line per round (the fleet link's).
                Origin::Remote(from) => {
                    tracing::debug!(jail = b.jail.as_str(), address = %b.net, bantime = %b.time, origin = from.as_str(), "remote ban")
                }
                _ => {
                    tracing::info!(jail = b.jail.as_str(), address = %b.net, bantime = %b.time, ban = b.count, "ban")
                }
            }
            if let Some(jail) = self.jails.iter_mut().find(|j| j.name() == b.jail) {
                jail.counters_mut().bans += 1;
            }
        }
        self.unsaved.bans.extend_from_slice(stored);
        Ok(overlaps)
    }

    /// Writes bans; if the enforcer lost its layout, declares it again and retries once.
    fn write_bans(&mut self, items: &[Restore]) -> Result<Overlaps, EngineError> {
        match self.enforcer.ban(items) {
            Ok(overlaps) => return Ok(overlaps),
            Err(e) if E::is_missing(&e) && self.layout_incomplete() => {
                tracing::warn!("banctl's table or sets were missing: restoring the layout");
            }
            Err(e) => return Err(self.enforcer_failed(&e)),
        }
        let rules: Vec<_> = self.jails.iter().map(|j| j.config().rules()).collect();
        if let Err(e) = self.enforcer.declare(&rules, &[]) {
            return Err(self.enforcer_failed(&e));
        }
        self.enforcer
            .ban(items)
            .map_err(|e| self.enforcer_failed(&e))
    }

    /// Whether a configured jail's part is missing from the enforcer (or cannot be listed).
    fn layout_incomplete(&mut self) -> bool {
        match self.enforcer.jails_present() {
            Ok(present) => self
                .jails
                .iter()
                .any(|j| !present.iter().any(|p| p == j.name())),
            Err(_) => true,
        }
    }

    /// Bans by recidive jails: an address banned `maxretry` times within their `findtime`, in
    /// any other jail, counted from the history and the bans not saved yet (which hold `new`).
    fn recidive(&self, new: &[StoredBan], now: SystemTime) -> Vec<(Ban, String)> {
        let mut out = Vec::new();
        let others: Vec<&str> = self
            .jails
            .iter()
            .filter(|j| !j.config().recidive)
            .map(Jail::name)
            .collect();
        for jail in self.jails.iter().filter(|j| j.config().recidive) {
            let c = jail.config();
            let since = now.checked_sub(c.findtime).unwrap_or(std::time::UNIX_EPOCH);
            for b in new.iter().filter(|b| others.contains(&b.jail.as_str())) {
                let active = self.ledger.ban_count(&c.name, &b.net, now).map(|count| {
                    count.or_else(|| {
                        let unsaved = self.unsaved.bans.iter();
                        unsaved
                            .filter(|u| u.jail == c.name && u.net == b.net)
                            .map(|u| u.count)
                            .next_back()
                    })
                });
                let bans = self.previous_bans(&b.net, &others, since);
                match active {
                    Ok(None) if bans >= c.maxretry && !jail.ignores(&b.net) => {
                        let ban = Ban {
                            jail: c.name.clone(),
                            net: b.net,
                            time: c.bantime,
                        };
                        let why = format!(
                            "{bans} bans within {}",
                            crate::duration::format_duration(c.findtime)
                        );
                        if !out.iter().any(|(o, _): &(Ban, String)| o == &ban) {
                            out.push((ban, why));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, jail = c.name.as_str(), "reading the ban history")
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Puts the enforcer in line with the configuration and the ledger, in one batch: the
    /// layout, plus every unexpired ban of the ledger it lacks, with its remaining time (bans
    /// inside a wider one in force stay out). Bans found in the enforcer but not in the
    /// ledger are adopted. Returns (restored, adopted).
    pub fn reconcile(&mut self, now: SystemTime) -> Result<(usize, usize), EngineError> {
        // Before the purge below forgets them.
        self.report_expired(now);
        let took = std::time::Instant::now();
        let names: Vec<&str> = self.jails.iter().map(Jail::name).collect();
        let mut stored = self
            .ledger
            .restorable(now)
            .map_err(|e| EngineError::Ledger(e.to_string()))?;
        // A disabled jail's bans wait in the ledger for it to come back.
        stored.retain(|r| names.contains(&r.ban.jail.as_str()));
        let read_store = took.elapsed();
        let kernel = match self.enforcer.snapshot(&names) {
            Ok(kernel) => kernel,
            Err(e) => return Err(self.enforcer_failed(&e)),
        };
        let read_kernel = took.elapsed();
        let (restore, adopt) = differences(stored, &kernel, now);
        let fitted = crate::ban::fit(&kernel, restore);
        let fit = took.elapsed();
        let rules: Vec<_> = self.jails.iter().map(|j| j.config().rules()).collect();
        let declared = self.enforcer.declare(&rules, &fitted.fits);
        let enforced = took.elapsed();
        // Once the bans are in force: `restorable` leaves out what the purge removes (expired
        // bans, and those of jails not configured), so it changes nothing above.
        if let Err(e) = self.ledger.purge(now, self.history, &names) {
            tracing::error!(error = %e, "purging the state store");
        }
        if let Err(e) = declared {
            return Err(self.enforcer_failed(&e));
        }
        tracing::debug!(
            ?read_store,
            ?read_kernel,
            ?fit,
            declared = ?enforced,
            purged = ?took.elapsed(),
            "reconcile: times since its start"
        );
        if !fitted.wider.is_empty()
            && let Err(e) = self.enforcer.ban(&fitted.wider)
        {
            return Err(self.enforcer_failed(&e));
        }
        if let Err(e) = self.ledger.adopt(&adopt) {
            tracing::error!(error = %e, "recording bans found in the kernel");
        }
        Ok((fitted.fits.len() + fitted.wider.len(), adopt.len()))
    }

    /// See [`Enforcer::changes`]; `None` if the enforcer cannot tell.
    pub fn enforcer_changes(&mut self) -> Option<Changes> {
        match self.enforcer.changes() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "reading the enforcer's change count");
                None
            }
        }
    }

    /// Someone else removed part of the enforcer's state (`by`: a process id), or its
    /// notifications were lost (`None`): put it back.
    pub fn repair(&mut self, by: Option<u32>, now: SystemTime) {
        match self.reconcile(now) {
            Ok((restored, _)) => match by {
                Some(pid) => {
                    self.repairs += 1;
                    tracing::warn!(
                        pid,
                        restored,
                        "another process removed parts of table inet banctl: layout and bans repaired"
                    )
                }
                None => tracing::info!(restored, "ruleset checked after lost notifications"),
            },
            Err(e) => tracing::error!(error = %e, "repairing the ruleset failed"),
        }
    }

    /// Jails and bans in force, for `systemctl status`.
    pub fn summary(&self, now: SystemTime) -> String {
        let bans = match self.ledger.active_count(now) {
            Ok(n) => n.to_string(),
            Err(_) => "?".to_owned(),
        };
        format!("{} jails, {bans} active bans", self.jails.len())
    }

    /// Bans in force per jail, from the ledger.
    pub fn active_by_jail(&self, now: SystemTime) -> HashMap<String, u64> {
        self.ledger.active_by_jail(now).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading active bans");
            HashMap::new()
        })
    }

    /// Forgets what ran out: expired bans, old history, failures out of their windows.
    pub fn purge(&mut self, now: SystemTime) {
        // Before the purge forgets them.
        self.report_expired(now);
        let names: Vec<&str> = self.jails.iter().map(Jail::name).collect();
        match self.ledger.purge(now, self.history, &names) {
            Ok(n) => tracing::debug!(rows = n, "state store purged"),
            Err(e) => tracing::error!(error = %e, "purging the state store"),
        }
        let windows: Vec<(&str, u32)> = self
            .jails
            .iter()
            .map(|j| (j.name(), j.window_start_at(now)))
            .collect();
        match self.ledger.purge_failures(&windows) {
            Ok(n) => tracing::debug!(rows = n, "expired failures purged"),
            Err(e) => tracing::error!(error = %e, "purging saved failures"),
        }
    }

    /// Drops expired failure windows; retries a save that failed.
    pub fn sweep(&mut self, now: SystemTime) {
        for jail in &mut self.jails {
            jail.sweep(now);
        }
        self.save();
    }

    /// Replaces the jails: `configs` in order, jails that keep their name keep their failure
    /// windows and counters. The enforcer's layout is declared first; if it refuses, nothing
    /// changes. Returns (added, removed) jail names.
    pub fn reload(
        &mut self,
        configs: Vec<JailConfig>,
        history: Duration,
        own: &Arc<[IpNet]>,
        now: SystemTime,
    ) -> Result<Reloaded, EngineError> {
        let rules: Vec<_> = configs.iter().map(JailConfig::rules).collect();
        let kept = |name: &str| configs.iter().any(|c| c.name == name);
        let was = |name: &str| self.jails.iter().any(|j| j.name() == name);
        // A jail that goes loses its sets and so its bans in the kernel; the ledger keeps
        // them, and a jail that comes back gets its unexpired ones back in the same batch.
        let active = self.ledger.active(now).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the state store");
            Vec::new()
        });
        let lifted = active
            .iter()
            .filter(|b| was(&b.jail) && !kept(&b.jail))
            .count();
        let back: Vec<Restore> = active
            .iter()
            .filter(|b| kept(&b.jail) && !was(&b.jail))
            .filter_map(|b| b.to_restore(now))
            .collect();
        let fitted = crate::ban::fit(&BTreeMap::new(), back);
        if let Err(e) = self.enforcer.declare(&rules, &fitted.fits) {
            return Err(self.enforcer_failed(&e));
        }
        let mut old: HashMap<String, Jail> = self
            .jails
            .drain(..)
            .map(|j| (j.name().to_owned(), j))
            .collect();
        let before: Vec<String> = old.keys().cloned().collect();
        self.jails = configs
            .into_iter()
            .map(|c| match old.remove(&c.name) {
                Some(jail) => jail.reconfigure(c),
                None => Jail::new(c).with_own_addresses(own.clone()),
            })
            .collect();
        self.history = history;
        let added = self
            .jails
            .iter()
            .map(|j| j.name().to_owned())
            .filter(|j| !before.contains(j))
            .collect();
        let mut removed: Vec<String> = old.into_keys().collect();
        removed.sort();
        Ok(Reloaded {
            added,
            removed,
            lifted,
            restored: fitted.fits.len(),
        })
    }

    /// The bans of jail `j` in the enforcer, with their ban numbers.
    fn bans_of(&mut self, j: usize, now: SystemTime) -> Result<Vec<Listed>, EngineError> {
        let jail = self.jails[j].name().to_owned();
        let elements = match self.enforcer.list(&jail) {
            Ok(elements) => elements,
            Err(e) => return Err(self.enforcer_failed(&e)),
        };
        Ok(elements
            .into_iter()
            .map(|element| {
                let held = self
                    .ledger
                    .in_force(&jail, &element.net, now)
                    .unwrap_or_else(|err| {
                        tracing::error!(error = %err, "reading the state store");
                        None
                    });
                Listed {
                    count: held.as_ref().map(|b| b.count),
                    origin: held.map(|b| b.origin),
                    jail: jail.clone(),
                    element,
                }
            })
            .collect())
    }

    /// The bans in force of one jail or all.
    pub fn list(
        &mut self,
        jail: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Listed>, EngineError> {
        let mut bans = Vec::new();
        for j in self.selected(jail)? {
            bans.extend(self.bans_of(j, now)?);
        }
        Ok(bans)
    }

    /// Packets and bytes dropped by jail `j`'s bans.
    pub fn dropped(&mut self, j: usize) -> Result<(u64, u64), EngineError> {
        let name = self.jails[j].name().to_owned();
        self.enforcer
            .dropped(&name)
            .map_err(|e| self.enforcer_failed(&e))
    }

    /// Bans `target` in `jail` by hand, for `time` (taken as given) or the jail's bantime
    /// (escalated).
    pub fn manual_ban(
        &mut self,
        jail: &str,
        target: IpNet,
        time: Option<BanTime>,
        now: SystemTime,
    ) -> Result<Banned, EngineError> {
        let j = self.jail_index(jail)?;
        let config = self.jails[j].config();
        if config.too_broad(&target) {
            return Err(EngineError::TooBroad {
                jail: jail.to_owned(),
                target,
                min: config.min_prefix.for_addr(target.addr()),
            });
        }
        if self.jails[j].ignores(&target) {
            return Err(EngineError::Ignored {
                jail: jail.to_owned(),
                target,
            });
        }
        match self.ledger.in_force(jail, &target, now) {
            Ok(Some(held)) => {
                tracing::info!(jail, address = %target, "manual ban of an address banned already: nothing changed");
                return Ok(Banned {
                    time: held.time,
                    covered_by: None,
                    already: true,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading the state store"),
        }
        let ban = Ban {
            jail: jail.to_owned(),
            net: target,
            time: time.unwrap_or(config.bantime),
        };
        let mut stored = self.escalate(vec![(ban, "manual ban".to_owned())], Origin::Manual, now);
        if let (Some(time), Some(b)) = (time, stored.first_mut()) {
            // An explicit --time is taken as given, never escalated.
            b.time = time;
        }
        let overlaps = self.commit(&stored)?;
        self.report_bans(&stored, Vec::new());
        let forgotten = self.jails[j].forget(&target);
        self.forget_saved(&[(j, forgotten)]);
        let time = stored.first().map_or(BanTime::Permanent, |b| b.time);
        tracing::info!(jail, address = %target, bantime = %time, "manual ban");
        Ok(Banned {
            time,
            covered_by: overlaps.covered.first().map(|&(_, wider)| wider),
            already: false,
        })
    }

    /// Lifts every ban that equals `target` or covers it, in the selected jails, in one
    /// batch; bans the target covers that wait in the ledger under a wider ban go too.
    pub fn unban(
        &mut self,
        target: IpNet,
        jail: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Listed>, EngineError> {
        let mut removed = Vec::new();
        let mut jails = Vec::new();
        for j in self.selected(jail)? {
            removed.extend(
                self.bans_of(j, now)?
                    .into_iter()
                    .filter(|b| b.element.net.covers(&target)),
            );
            jails.push(self.jails[j].name().to_owned());
        }
        let waiting = self.waiting(&jails, now, |net| target.covers(net));
        if removed.is_empty() && waiting.is_empty() {
            let scope = jail.map_or("any jail".to_owned(), |j| format!("jail {j}"));
            return Err(EngineError::NotBanned { target, scope });
        }
        self.lift(&removed, &waiting, "manual", now)?;
        Ok(removed)
    }

    /// Lifts every ban of the selected jails in one batch.
    pub fn unban_all(
        &mut self,
        jail: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Listed>, EngineError> {
        let removed = self.list(jail, now)?;
        let jails: Vec<String> = self
            .selected(jail)?
            .into_iter()
            .map(|j| self.jails[j].name().to_owned())
            .collect();
        let waiting = self.waiting(&jails, now, |_| true);
        self.lift(&removed, &waiting, "manual", now)?;
        Ok(removed)
    }

    /// Bans in force in the ledger for `jails` whose prefix `pick` takes (among them those a
    /// wider ban keeps out of the enforcer).
    fn waiting(
        &self,
        jails: &[String],
        now: SystemTime,
        pick: impl Fn(&IpNet) -> bool,
    ) -> Vec<(String, IpNet)> {
        match self.ledger.active(now) {
            Ok(active) => active
                .into_iter()
                .filter(|b| jails.contains(&b.jail) && pick(&b.net))
                .map(|b| (b.jail, b.net))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading the state store");
                Vec::new()
            }
        }
    }

    /// Lifts the given bans in one batch and forgets the addresses' failures; `waiting` leave
    /// the ledger only. Ledger bans that a lifted ban covered and that are not lifted go back
    /// into the enforcer.
    fn lift(
        &mut self,
        bans: &[Listed],
        waiting: &[(String, IpNet)],
        reason: &'static str,
        now: SystemTime,
    ) -> Result<(), EngineError> {
        let items: Vec<(String, IpNet)> = bans
            .iter()
            .map(|b| (b.jail.clone(), b.element.net))
            .collect();
        if !items.is_empty()
            && let Err(e) = self.enforcer.unban(&items)
        {
            return Err(self.enforcer_failed(&e));
        }
        // Gone from the ledger too, so that no repair or restart puts them back.
        let gone: Vec<(String, IpNet)> = items.iter().chain(waiting).cloned().collect();
        if let Err(e) = self.ledger.remove(&gone) {
            tracing::error!(error = %e, "removing unbanned addresses from the state store");
        }
        let lifted: Vec<(&str, IpNet)> = items.iter().map(|(j, n)| (j.as_str(), *n)).collect();
        self.uncover(&lifted, now);
        let mut forgotten = Vec::new();
        for b in bans {
            for (j, jail) in self.jails.iter_mut().enumerate() {
                forgotten.push((j, jail.forget(&b.element.net)));
            }
            tracing::info!(jail = b.jail.as_str(), address = %b.element.net, "unban");
            self.count_unban(&b.jail);
            self.notices.push(Notice::Unbanned {
                jail: b.jail.clone(),
                net: b.element.net,
                time: b.element.timeout.map(BanTime::Finite),
                count: b.count,
                reason,
            });
        }
        self.forget_saved(&forgotten);
        Ok(())
    }

    /// Reports the bans that expired since the last look (the enforcer lifted them on its
    /// own; the ledger holds them until its next purge), and puts back the bans they
    /// covered.
    pub fn report_expired(&mut self, now: SystemTime) {
        let now = now.checked_sub(EXPIRY_LAG).unwrap_or(now);
        if now <= self.expiry_checked {
            return;
        }
        let since = std::mem::replace(&mut self.expiry_checked, now);
        let mut expired = match self.ledger.expired(since, now) {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!(error = %e, "reading expired bans");
                return;
            }
        };
        // A disabled jail's bans were not in force here: nothing to announce.
        expired.retain(|b| self.jails.iter().any(|j| j.name() == b.jail));
        let ended: Vec<(&str, IpNet)> = expired.iter().map(|b| (b.jail.as_str(), b.net)).collect();
        self.uncover(&ended, now);
        for b in expired {
            tracing::info!(jail = b.jail.as_str(), address = %b.net, "ban expired");
            self.count_unban(&b.jail);
            self.notices.push(Notice::Unbanned {
                jail: b.jail,
                net: b.net,
                time: Some(b.time),
                count: Some(b.count),
                reason: "expired",
            });
        }
    }

    /// Puts back the ledger's bans that bans which just ended covered: they were kept out of
    /// the enforcer while a wider ban enforced them (interval sets hold no overlaps).
    fn uncover(&mut self, ended: &[(&str, IpNet)], now: SystemTime) {
        let wide: Vec<&(&str, IpNet)> = ended.iter().filter(|(_, net)| !net.is_host()).collect();
        if wide.is_empty() {
            return;
        }
        let active = match self.ledger.active(now) {
            Ok(active) => active,
            Err(e) => {
                tracing::error!(error = %e, "reading the bans a wider ban covered");
                return;
            }
        };
        let back: Vec<Restore> = active
            .iter()
            .filter(|a| {
                wide.iter()
                    .any(|(jail, net)| *jail == a.jail && *net != a.net && net.covers(&a.net))
            })
            .filter_map(|b| b.to_restore(now))
            .collect();
        if back.is_empty() {
            return;
        }
        match self.enforcer.ban(&back) {
            Ok(_) => tracing::info!(
                count = back.len(),
                "bans a wider ban covered are back in the kernel"
            ),
            Err(e) => {
                self.enforcer_errors += 1;
                tracing::error!(error = %e, "putting back the bans a wider ban covered");
            }
        }
    }

    fn count_unban(&mut self, jail: &str) {
        if let Some(jail) = self.jails.iter_mut().find(|j| j.name() == jail) {
            jail.counters_mut().unbans += 1;
        }
    }
}

/// The failures that `examine` (a filter's verdict on one line) finds in the lines `listed` of
/// `lines`, in order: each line's address, or the host name it names. What the engine counts
/// of a batch, wherever it is found (the daemon's sources find it on their threads).
pub fn failures_in(
    lines: &Lines,
    listed: impl IntoIterator<Item = usize>,
    mut examine: impl FnMut(&str) -> Verdict,
) -> Vec<(usize, Failure)> {
    listed
        .into_iter()
        .filter_map(|i| match examine(lines.get(i)) {
            Verdict::Matched(hit) => Some((i, Failure::Addr(hit.addr))),
            Verdict::Name { name, .. } => Some((i, Failure::Name(name))),
            Verdict::Missed | Verdict::NoFailure { .. } | Verdict::Ignored { .. } => None,
        })
        .collect()
}

/// When a failure on `line` of `batch` happened, or `None` when it never counts: older than
/// findtime, or read back without a timestamp. A failure dated in the future (a skewed clock)
/// counts as now.
fn failure_time(
    config: &JailConfig,
    dates: &DateReader,
    batch: &LineBatch,
    line: &str,
    now: SystemTime,
) -> Option<SystemTime> {
    let at = match batch.timing {
        Timing::Live | Timing::Stamped => batch.read_at,
        // A date inside the message may be the attacker's: only one at the line's start.
        Timing::CatchUp => dates
            .find(line)
            .filter(|f| f.format != crate::filter::date::Format::CtimeInside)
            .map_or(batch.read_at, |f| f.at),
        Timing::ReadBack => dates.find(line)?.at,
    };
    (at + config.findtime >= now).then(|| at.min(now))
}

/// A ban found in the enforcer that the ledger does not know, as the ledger will keep it.
fn adopted(jail: &str, e: &Element, now: SystemTime) -> StoredBan {
    let (time, banned_at) = match (e.timeout, e.expires_in) {
        (Some(timeout), Some(left)) => (
            BanTime::Finite(timeout),
            now.checked_sub(timeout.saturating_sub(left)).unwrap_or(now),
        ),
        _ => (BanTime::Permanent, now),
    };
    StoredBan {
        jail: jail.to_owned(),
        net: e.net,
        banned_at,
        time,
        count: 1,
        reason: "found in the kernel".to_owned(),
        origin: Origin::Kernel,
    }
}

/// What the store holds and the kernel lacks (to put back), and
/// what the kernel holds and the store lacks (to adopt). `stored`: the store's bans in
/// force, as they are put back. Sets, not scans: both sides may hold 100,000 bans.
fn differences(
    stored: Vec<Restore>,
    kernel: &BTreeMap<String, Vec<Element>>,
    now: SystemTime,
) -> (Vec<Restore>, Vec<StoredBan>) {
    let mut adopt = Vec::new();
    let mut restore = stored;
    // An empty kernel (after a reboot) lacks everything and holds nothing to adopt: no sets
    // to build.
    if kernel.values().any(|elems| !elems.is_empty()) {
        let in_store: HashSet<(&str, IpNet), FastHash> = restore
            .iter()
            .map(|r| (r.ban.jail.as_str(), r.ban.net))
            .collect();
        adopt = kernel
            .iter()
            .flat_map(|(jail, elems)| elems.iter().map(move |e| (jail, e)))
            .filter(|(jail, e)| !in_store.contains(&(jail.as_str(), e.net)))
            .map(|(jail, e)| adopted(jail, e, now))
            .collect();
        drop(in_store);
        let in_kernel: HashSet<(&str, IpNet), FastHash> = kernel
            .iter()
            .flat_map(|(jail, elems)| elems.iter().map(move |e| (jail.as_str(), e.net)))
            .collect();
        restore.retain(|r| !in_kernel.contains(&(r.ban.jail.as_str(), r.ban.net)));
    }
    (restore, adopt)
}
