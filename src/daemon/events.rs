//! What the daemon tells the outside: the engine's notices as events for the notifiers, and
//! the figures a metrics scrape reports.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::Daemon;
use crate::engine::Notice;
use crate::fleet::Outgoing;
use crate::metrics::{JailFigures, Snapshot};
use crate::notify::{Event, EventKind, MAX_MATCHED};

impl Daemon {
    /// Fits the engine to who listens: jails whose bans a notifier hears of keep their
    /// matched lines (up to `maxretry`); the bans of jails that neither a notifier nor the
    /// fleet link hears of are not told at all.
    pub(super) fn fit_to_listeners(&mut self) {
        let mut unheard = std::collections::HashSet::new();
        for jail in self.engine.jails_mut() {
            let heard = self.notifications.wants(EventKind::Ban, jail.name());
            jail.keep_matched(match heard {
                true => (jail.config().maxretry as usize).min(MAX_MATCHED),
                false => 0,
            });
            if !heard && self.fleet.is_none() {
                unheard.insert(jail.name().to_owned());
            }
        }
        self.engine.set_unheard(unheard);
    }

    /// Hands what the engine did since the last call to the notifiers.
    pub(super) fn announce(&mut self) {
        for notice in self.engine.take_notices() {
            if let Some(fleet) = self.fleet.as_ref().filter(|_| notice.is_local_decision()) {
                fleet.send(outgoing(&notice));
            }
            // A catch-up brings 100,000 bans: no event is built that nobody hears.
            let (kind, jail) = match &notice {
                Notice::Banned { ban, .. } => (EventKind::Ban, &ban.jail),
                Notice::Unbanned { jail, .. } => (EventKind::Unban, jail),
            };
            if !self.notifications.wants(kind, jail) {
                continue;
            }
            let event = match notice {
                Notice::Banned {
                    ban,
                    address,
                    matched,
                    reason,
                } => Event::new(
                    EventKind::Ban,
                    &ban.jail,
                    address,
                    ban.net,
                    Some(ban.time),
                    Some(ban.count),
                    reason,
                    matched,
                ),
                Notice::Unbanned {
                    jail,
                    net,
                    time,
                    count,
                    reason,
                } => Event::new(
                    EventKind::Unban,
                    &jail,
                    net.addr(),
                    net,
                    time,
                    count,
                    reason,
                    Vec::new(),
                ),
            };
            self.notifications.send(event);
        }
    }

    /// One line for `systemctl status`: jails and bans in force.
    pub(super) fn summary(&self) -> String {
        self.engine.summary(SystemTime::now())
    }

    /// The figures of one metrics scrape.
    pub(super) fn snapshot(&mut self) -> Snapshot {
        let active = self.engine.active_by_jail(SystemTime::now());
        let mut jails = Vec::with_capacity(self.engine.jails().len());
        for j in 0..self.engine.jails().len() {
            let name = self.engine.jails()[j].name().to_owned();
            let dropped = match self.engine.dropped(j) {
                Ok(counts) => Some(counts),
                Err(e) => {
                    tracing::warn!(error = %e, jail = name, "metrics: reading the drop counter");
                    None
                }
            };
            let jail = &self.engine.jails()[j];
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
            netlink_errors: self.engine.enforcer_errors,
            pattern_give_ups: crate::filter::bounded::gave_up(),
            line_queue_full: crate::source::queue_full(),
            repairs: self.engine.repairs,
            notifications_sent: stats.sent.load(Ordering::Relaxed),
            notifications_failed: stats.failed.load(Ordering::Relaxed),
            notifications_dropped: stats.dropped.load(Ordering::Relaxed),
            sources_not_following: self
                .sources
                .names()
                .iter()
                .filter_map(|n| n.strip_prefix("file:"))
                .filter(|p| crate::source::path_state(p) != crate::source::PathState::Following)
                .count() as u64,
            fleet: self.fleet.as_ref().map(|f| crate::metrics::FleetFigures {
                link: f.status(),
                counts: self.engine.remote_counts(),
            }),
        }
    }
}

/// A decision of this host as the fleet hears of it.
fn outgoing(notice: &Notice) -> Outgoing {
    match notice {
        Notice::Banned { ban, .. } => Outgoing::Ban {
            jail: ban.jail.clone(),
            net: ban.net,
            time: ban.time,
            count: ban.count,
            reason: ban.reason.clone(),
        },
        // An admin's unban lets the address in everywhere, whatever jail banned it there.
        Notice::Unbanned { net, .. } => Outgoing::Unban {
            net: *net,
            jail: None,
        },
    }
}
