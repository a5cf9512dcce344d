//! What the daemon tells the outside: ban and unban events for the notifiers, and the
//! figures a metrics scrape reports.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::Daemon;
use crate::addr::IpNet;
use crate::control::BanInfo;
use crate::duration::BanTime;
use crate::firewall::{Ban, Restore};
use crate::metrics::{JailFigures, Snapshot};
use crate::notify::{Event, EventKind, MAX_MATCHED};
use crate::state::StoredBan;

/// How far behind the clock expired bans are looked for (see [`Daemon::announce_expired`]).
const EXPIRY_LAG: Duration = Duration::from_secs(1);

/// A ban a round of lines asks for: what to write, the address whose failures led to it, the
/// reason the store keeps and the lines the notifiers get.
pub(super) struct Wanted {
    pub ban: Ban,
    pub address: IpAddr,
    pub reason: String,
    pub matched: Vec<String>,
}

impl Daemon {
    /// Jails whose bans a notifier hears of keep their matched lines (up to `maxretry`).
    pub(super) fn keep_matched_lines(&mut self) {
        for jail in &mut self.jails {
            let keep = if self.notifications.wants(EventKind::Ban, jail.name()) {
                (jail.config().maxretry as usize).min(MAX_MATCHED)
            } else {
                0
            };
            jail.keep_matched(keep);
        }
    }

    /// Hands written bans to the notifiers; `why` pairs with `stored` (the address behind each
    /// ban and its lines) or is empty.
    pub(super) fn announce_bans(
        &self,
        stored: &[StoredBan],
        why: Vec<(IpAddr, Vec<String>)>,
        reason: &'static str,
    ) {
        let mut why = why.into_iter();
        for b in stored {
            let (address, matched) = why.next().unwrap_or((b.net.addr(), Vec::new()));
            self.notifications.send(Event::new(
                EventKind::Ban,
                &b.jail,
                address,
                b.net,
                Some(b.time),
                Some(b.count),
                reason,
                matched,
            ));
        }
    }

    /// Counts and announces bans lifted by an unban request.
    pub(super) fn announce_unbans(&mut self, lifted: &[BanInfo]) {
        for b in lifted {
            self.count_unban(&b.jail);
            let time = b
                .bantime_s
                .map(|s| BanTime::Finite(std::time::Duration::from_secs(s)));
            self.notifications.send(Event::new(
                EventKind::Unban,
                &b.jail,
                b.address.addr(),
                b.address,
                time,
                b.ban_count,
                "manual",
                Vec::new(),
            ));
        }
    }

    /// Counts and announces the bans that expired since the last look (the kernel lifted them
    /// on its own); the store still holds them until its next purge.
    ///
    /// Looks a second behind `now`: the kernel's timeout started a little after the store's
    /// `banned_at`, and a wider ban must be gone from the kernel before the bans it covered
    /// are put back ([`Daemon::uncover`]).
    pub(super) fn announce_expired(&mut self, now: SystemTime) {
        let now = now.checked_sub(EXPIRY_LAG).unwrap_or(now);
        if now <= self.expiry_checked {
            return;
        }
        let since = std::mem::replace(&mut self.expiry_checked, now);
        let expired = match self.store.expired(since, now) {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!(error = %e, "reading expired bans");
                return;
            }
        };
        let ended: Vec<(&str, IpNet)> = expired.iter().map(|b| (b.jail.as_str(), b.net)).collect();
        self.uncover(&ended, now);
        for b in expired {
            tracing::info!(jail = b.jail.as_str(), address = %b.net, "ban expired");
            self.count_unban(&b.jail);
            self.notifications.send(Event::new(
                EventKind::Unban,
                &b.jail,
                b.net.addr(),
                b.net,
                Some(b.time),
                Some(b.count),
                "expired",
                Vec::new(),
            ));
        }
    }

    /// Puts back the store's bans that bans which just ended covered: they were kept out of
    /// the kernel while a wider ban enforced them (interval sets hold no overlaps).
    pub(super) fn uncover(&mut self, ended: &[(&str, IpNet)], now: SystemTime) {
        let wide: Vec<&(&str, IpNet)> = ended.iter().filter(|(_, net)| !net.is_host()).collect();
        if wide.is_empty() {
            return;
        }
        let active = match self.store.active(now) {
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
            .filter_map(|b| {
                b.remaining(now).map(|left| Restore {
                    ban: b.to_ban(),
                    expires_in: left,
                })
            })
            .collect();
        if back.is_empty() {
            return;
        }
        match self.firewall.restore(&back) {
            Ok(_) => tracing::info!(
                count = back.len(),
                "bans a wider ban covered are back in the kernel"
            ),
            Err(e) => {
                self.netlink_errors += 1;
                tracing::error!(error = %e, "putting back the bans a wider ban covered");
            }
        }
    }

    fn count_unban(&mut self, jail: &str) {
        if let Some(jail) = self.jails.iter_mut().find(|j| j.name() == jail) {
            jail.counters_mut().unbans += 1;
        }
    }

    /// The figures of one metrics scrape.
    pub(super) fn snapshot(&mut self) -> Snapshot {
        let active = self
            .store
            .active_by_jail(SystemTime::now())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "metrics: reading active bans");
                Default::default()
            });
        let mut jails = Vec::with_capacity(self.jails.len());
        for j in 0..self.jails.len() {
            let name = self.jails[j].name().to_owned();
            let dropped = match self.firewall.dropped(&name) {
                Ok(c) => Some((c.packets, c.bytes)),
                Err(e) => {
                    self.netlink_errors += 1;
                    tracing::warn!(error = %e, jail = name, "metrics: reading the drop counter");
                    None
                }
            };
            let jail = &self.jails[j];
            jails.push(JailFigures {
                active_bans: active.get(&name).copied().unwrap_or(0),
                name,
                counters: *jail.counters(),
                tracked: jail.tracked(),
                dropped,
            });
        }
        let stats = self.notifications.stats();
        Snapshot {
            jails,
            netlink_errors: self.netlink_errors,
            pattern_give_ups: crate::filter::bounded::gave_up(),
            line_queue_full: crate::source::queue_full(),
            repairs: self.repairs,
            notifications_sent: stats.sent.load(Ordering::Relaxed),
            notifications_failed: stats.failed.load(Ordering::Relaxed),
            notifications_dropped: stats.dropped.load(Ordering::Relaxed),
        }
    }
}
