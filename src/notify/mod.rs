//! Notifications on ban and unban: webhooks (an HTTP POST of a JSON [`Event`]), programs
//! run directly (an argv, the same JSON on stdin), never through a shell, and mail over SMTP.
//!
//! **Invariants:**
//! - Notifying never delays a ban. The daemon hands events to [`Notifications::send`], which
//!   only queues them (bounded, per notifier; a full queue drops the event and counts it).
//!   Each notifier delivers its events in order on a task of its own, with a timeout per
//!   attempt and bounded retries.
//! - Log text is attacker-controlled: it travels as JSON string values only. It never becomes
//!   part of a URL, a header, an argument or an environment variable; the only values
//!   substituted into a program's arguments are typed (jail name, address, prefix, event).

pub mod exec;
pub mod mail;
pub mod webhook;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::addr::IpNet;
use crate::duration::BanTime;

/// The version of the [`Event`] document; bumped when a field changes meaning or goes away.
pub const EVENT_VERSION: u32 = 1;
/// Events waiting per notifier; beyond it new events are dropped (and counted).
const QUEUE: usize = 1024;
/// The most matched lines an event carries, each cut to [`MAX_LINE`] bytes.
pub const MAX_MATCHED: usize = 20;
pub use crate::jail::MAX_MATCHED_LINE as MAX_LINE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Ban,
    Unban,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Ban => "ban",
            EventKind::Unban => "unban",
        }
    }
}

/// What a notifier receives, as JSON: `{"version":1,"event":"ban","jail":"sshd",…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub version: u32,
    pub event: EventKind,
    pub jail: String,
    /// The address whose failures led to the ban (for an unban: the first of the prefix).
    pub address: IpAddr,
    /// What the ban covers (`192.0.2.7/32`, `2001:db8::/64`).
    pub prefix: IpNet,
    /// The ban's length in seconds; `null` for a permanent ban (or when unknown).
    pub bantime_s: Option<u64>,
    /// Which ban of this address it is (1 for the first), when known.
    pub ban_count: Option<u32>,
    /// `failures`, `manual`, `recidive` for a ban; `manual` or `expired` for an unban.
    pub reason: &'static str,
    /// The log lines that counted towards the ban, oldest first (at most [`MAX_MATCHED`]).
    pub matched: Vec<String>,
    /// When it happened, in seconds since the epoch.
    pub time: u64,
    /// This host's name, for receivers that hear from several hosts.
    pub hostname: String,
}

impl Event {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        event: EventKind,
        jail: &str,
        address: IpAddr,
        prefix: IpNet,
        bantime: Option<BanTime>,
        ban_count: Option<u32>,
        reason: &'static str,
        matched: Vec<String>,
    ) -> Event {
        Event {
            version: EVENT_VERSION,
            event,
            jail: jail.to_owned(),
            address,
            prefix,
            bantime_s: match bantime {
                Some(BanTime::Finite(d)) => Some(d.as_secs()),
                _ => None,
            },
            ban_count,
            reason,
            matched,
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            hostname: hostname(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// This host's name, or `localhost` when it has none (the default sender's domain).
pub fn hostname_or_localhost() -> String {
    Some(hostname())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What to do when the service manager forbids IP sockets (the unit's default), for an error
/// that says so; empty for other errors.
pub fn sandbox_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
        " (the systemd unit allows no IP sockets by default: `systemctl edit banctl` and add \
         RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6 and IPAddressAllow=localhost; \
         see the README, \"Metrics and notifications\")"
    } else {
        ""
    }
}

pub use crate::jail::clip;

/// Where a notifier delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Webhook {
        url: webhook::HttpUrl,
        /// Extra request headers (`Authorization`, …), checked to hold no line breaks.
        headers: Vec<(String, String)>,
        /// Attempts after the first one that failed for a reason worth retrying.
        retries: u32,
    },
    /// A program and its arguments; `{jail}`, `{address}`, `{prefix}` and `{event}` in the
    /// arguments are replaced by the event's typed values.
    Exec { argv: Vec<String> },
    /// A message per event over SMTP (the local MTA by default).
    Mail {
        mail: Box<mail::MailTarget>,
        /// Attempts after the first one that failed for a reason worth retrying.
        retries: u32,
    },
}

/// One validated `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub target: Target,
    pub on_ban: bool,
    pub on_unban: bool,
    /// The jails it hears from; `None`: all of them.
    pub jails: Option<Vec<String>>,
    /// Longest time one attempt (connection and answer, or the program's run) may take.
    pub timeout: Duration,
}

impl NotifyConfig {
    /// Whether it hears of `kind` events of `jail`.
    fn hears(&self, kind: EventKind, jail: &str) -> bool {
        let wanted = match kind {
            EventKind::Ban => self.on_ban,
            EventKind::Unban => self.on_unban,
        };
        wanted
            && self
                .jails
                .as_ref()
                .is_none_or(|jails| jails.iter().any(|j| j == jail))
    }

    /// How logs and metrics name it: the URL or the program.
    pub fn name(&self) -> String {
        match &self.target {
            Target::Webhook { url, .. } => format!("webhook {url}"),
            Target::Exec { argv } => format!("exec {}", argv.first().map_or("", String::as_str)),
            Target::Mail { mail, .. } => mail.name(),
        }
    }
}

/// Deliveries since the daemon started, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{error}{hint}", error = .0, hint = sandbox_hint(.0))]
    Io(#[from] std::io::Error),
    #[error("the receiver answered {status}")]
    Status { status: u16, retry: bool },
    #[error("the receiver's answer is not HTTP: {0:?}")]
    BadResponse(String),
    #[error("exited with {status}: {stderr}")]
    Exit { status: String, stderr: String },
    #[error("SMTP: {message}")]
    Smtp { message: String, retry: bool },
}

impl NotifyError {
    /// Whether another attempt may succeed (a refused request will be refused again).
    fn retryable(&self) -> bool {
        match self {
            NotifyError::Status { retry, .. } | NotifyError::Smtp { retry, .. } => *retry,
            NotifyError::Timeout(_) | NotifyError::Io(_) | NotifyError::BadResponse(_) => true,
            NotifyError::Exit { .. } => false,
        }
    }
}

/// The running notifiers: one queue and one delivery task each. Dropping it closes the
/// queues; the tasks finish what was queued, then end.
pub struct Notifications {
    notifiers: Vec<(Arc<NotifyConfig>, mpsc::Sender<Arc<Event>>)>,
    stats: Arc<Stats>,
}

impl Notifications {
    /// Starts a delivery task per notifier (on the current tokio runtime).
    pub fn start(configs: &[NotifyConfig], stats: Arc<Stats>) -> Notifications {
        let notifiers = configs
            .iter()
            .map(|config| {
                let config = Arc::new(config.clone());
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(config.clone(), rx, stats.clone()));
                (config, tx)
            })
            .collect();
        Notifications { notifiers, stats }
    }

    /// The deliveries counted so far (shared with the notifiers that replace these on reload).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Whether some notifier wants `kind` events of `jail` (so the jail keeps matched lines,
    /// or the daemon looks for expired bans).
    pub fn wants(&self, kind: EventKind, jail: &str) -> bool {
        self.notifiers.iter().any(|(c, _)| c.hears(kind, jail))
    }

    /// Queues `event` for every notifier that wants it; never waits.
    pub fn send(&self, event: Event) {
        let event = Arc::new(event);
        for (config, tx) in self
            .notifiers
            .iter()
            .filter(|(c, _)| c.hears(event.event, &event.jail))
        {
            if let Err(e) = tx.try_send(event.clone()) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "notifier stopped",
                };
                tracing::warn!(
                    notifier = config.name(),
                    jail = event.jail.as_str(),
                    address = %event.prefix,
                    why,
                    "notification dropped"
                );
            }
        }
    }
}

/// Delivers one notifier's events in order, each with its retries, until the queue closes.
async fn deliver(config: Arc<NotifyConfig>, mut rx: mpsc::Receiver<Arc<Event>>, stats: Arc<Stats>) {
    while let Some(event) = rx.recv().await {
        let body = match serde_json::to_vec(&*event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a notification");
                continue;
            }
        };
        let result = match &config.target {
            Target::Webhook {
                url,
                headers,
                retries,
            } => {
                with_retries(*retries, || {
                    webhook::post(url, headers, &body, config.timeout)
                })
                .await
            }
            Target::Exec { argv } => exec::run(argv, &event, &body, config.timeout).await,
            Target::Mail { mail, retries } => {
                with_retries(*retries, || mail::send(mail, &event, config.timeout)).await
            }
        };
        match result {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(notifier = config.name(), event = event.event.as_str(), address = %event.prefix, "notified");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(notifier = config.name(), event = event.event.as_str(), address = %event.prefix, error = %e, "notification failed");
            }
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `retries` more attempts failed;
/// waits 1 s, 2 s, 4 s … (at most 30 s) between attempts.
async fn with_retries<F, Fut>(retries: u32, mut attempt: F) -> Result<(), NotifyError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), NotifyError>>,
{
    let mut wait = Duration::from_secs(1);
    let mut left = retries;
    loop {
        match attempt().await {
            Err(e) if left > 0 && e.retryable() => {
                tracing::debug!(error = %e, retry_in = ?wait, "notification attempt failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
                left -= 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, jail: &str) -> Event {
        Event::new(
            kind,
            jail,
            "192.0.2.7".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
            Some(BanTime::Finite(Duration::from_secs(600))),
            Some(2),
            "failures",
            vec!["Failed password for $(reboot) from 192.0.2.7".into()],
        )
    }

    #[test]
    fn the_event_document_is_stable() {
        let mut e = event(EventKind::Ban, "sshd");
        e.time = 1_763_700_000;
        e.hostname = "web1".into();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"version":1,"event":"ban","jail":"sshd","address":"192.0.2.7","prefix":"192.0.2.7","bantime_s":600,"ban_count":2,"reason":"failures","matched":["Failed password for $(reboot) from 192.0.2.7"],"time":1763700000,"hostname":"web1"}"#
        );
    }

    #[test]
    fn notifiers_choose_events_and_jails() {
        let config = NotifyConfig {
            target: Target::Exec {
                argv: vec!["/bin/true".into()],
            },
            on_ban: true,
            on_unban: false,
            jails: Some(vec!["sshd".into()]),
            timeout: Duration::from_secs(1),
        };
        assert!(config.hears(EventKind::Ban, "sshd"));
        assert!(!config.hears(EventKind::Unban, "sshd"));
        assert!(!config.hears(EventKind::Ban, "nginx"));
    }

    #[test]
    fn lines_are_clipped_on_a_character_boundary() {
        let line = "é".repeat(MAX_LINE);
        let clipped = clip(&line);
        assert!(clipped.len() <= MAX_LINE && clipped.len() >= MAX_LINE - 1);
        assert_eq!(clip("short"), "short");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn retries_are_bounded_and_skip_refusals() {
        let mut calls = 0;
        let result = with_retries(2, || {
            calls += 1;
            async { Err(NotifyError::Timeout(Duration::from_secs(1))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let result = with_retries(5, || {
            calls += 1;
            async {
                Err(NotifyError::Status {
                    status: 404,
                    retry: false,
                })
            }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
