//! Prometheus metrics: `GET /metrics` on a loopback address, in the text exposition format.
//!
//! The server only answers HTTP; the figures come from the daemon's loop ([`Snapshot`], built
//! on request through a bounded channel), so the loop stays the only owner of ban state.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::jail::Counters;

/// Longest request head read; longest time a client may take to send it.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve metrics on {addr}: {source}{}",
    crate::notify::sandbox_hint(source)
)]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// One jail's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailFigures {
    pub name: String,
    pub counters: Counters,
    /// Addresses with failures inside the window.
    pub tracked: usize,
    /// Bans in force (from the state store).
    pub active_bans: u64,
    /// From the jail's named counter in the kernel; `None` when it could not be read.
    pub dropped: Option<(u64, u64)>,
}

/// Everything one scrape reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub jails: Vec<JailFigures>,
    /// Netlink requests the kernel refused or that failed.
    pub netlink_errors: u64,
    /// Times another process's removal of our table, sets or bans was undone.
    pub repairs: u64,
    /// Searches of backtracking patterns that gave up on a long line (see
    /// [`crate::filter::bounded`]).
    pub pattern_give_ups: u64,
    /// Times a source waited for room in the daemon's line queue (lines arrive faster than
    /// the jails take them; reading pauses, nothing is dropped).
    pub line_queue_full: u64,
    pub notifications_sent: u64,
    pub notifications_failed: u64,
    pub notifications_dropped: u64,
    /// Log file patterns no file of which is being read (missing, or unreadable).
    pub sources_not_following: u64,
    /// The fleet link and the remote bans, when this host is in a fleet.
    pub fleet: Option<FleetFigures>,
}

/// What a scrape reports of the fleet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FleetFigures {
    pub link: crate::fleet::LinkStatus,
    pub counts: crate::engine::RemoteCounts,
}

/// A scrape waiting for the loop's snapshot.
pub type Scrape = oneshot::Sender<Snapshot>;

/// `snapshot` in the Prometheus text format.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
        out.push_str(&format!(
            "# HELP banctl_{name} {help}\n# TYPE banctl_{name} {kind}\n"
        ));
        for (labels, value) in rows {
            out.push_str(&format!("banctl_{name}{labels} {value}\n"));
        }
    };
    let per_jail = |value: &dyn Fn(&JailFigures) -> Option<u64>| -> Vec<(String, u64)> {
        snapshot
            .jails
            .iter()
            .filter_map(|j| Some((format!("{{jail=\"{}\"}}", j.name), value(j)?)))
            .collect()
    };
    type Get = fn(&Counters) -> u64;
    let jail_counters: [(&str, &str, Get); 6] = [
        (
            "lines_read_total",
            "Log lines given to the jail's filter.",
            |c| c.lines,
        ),
        (
            "lines_cut_total",
            "Log lines longer than 64 KiB, dropped unread (never a failure).",
            |c| c.cut,
        ),
        (
            "lines_matched_total",
            "Lines the jail's filter found a failure in.",
            |c| c.matched,
        ),
        (
            "failures_total",
            "Failures counted (inside findtime, address not ignored).",
            |c| c.failures,
        ),
        (
            "bans_total",
            "Bans written to the kernel (automatic, manual and recidive).",
            |c| c.bans,
        ),
        ("unbans_total", "Bans lifted by an unban or expired.", |c| {
            c.unbans
        }),
    ];
    for (name, help, get) in jail_counters {
        family(
            name,
            "counter",
            help,
            &per_jail(&|j| Some(get(&j.counters))),
        );
    }
    family(
        "active_bans",
        "gauge",
        "Bans in force.",
        &per_jail(&|j| Some(j.active_bans)),
    );
    family(
        "tracked_addresses",
        "gauge",
        "Addresses with failures inside findtime.",
        &per_jail(&|j| Some(j.tracked as u64)),
    );
    family(
        "dropped_packets_total",
        "counter",
        "Packets from banned sources dropped by the jail's rules.",
        &per_jail(&|j| j.dropped.map(|d| d.0)),
    );
    family(
        "dropped_bytes_total",
        "counter",
        "Bytes of the packets dropped by the jail's rules.",
        &per_jail(&|j| j.dropped.map(|d| d.1)),
    );
    let single = |v: u64| vec![(String::new(), v)];
    family(
        "netlink_errors_total",
        "counter",
        "Netlink requests that failed or that the kernel refused.",
        &single(snapshot.netlink_errors),
    );
    family(
        "pattern_give_ups_total",
        "counter",
        "Lines a backtracking pattern (back-reference, look-around) gave up on: over its time, not matched.",
        &single(snapshot.pattern_give_ups),
    );
    family(
        "line_queue_full_total",
        "counter",
        "Times a log source waited for the daemon: lines arrive faster than the jails take them (nothing is dropped; reading pauses).",
        &single(snapshot.line_queue_full),
    );
    family(
        "sources_not_following",
        "gauge",
        "Log file patterns of which no file is read now (missing file or directory, or unreadable): `banctl status` says which.",
        &single(snapshot.sources_not_following),
    );
    family(
        "repairs_total",
        "counter",
        "Times banctl's table was put back after another process removed parts of it.",
        &single(snapshot.repairs),
    );
    family(
        "notifications_total",
        "counter",
        "Notifications by outcome (sent, failed after retries, dropped with a full queue).",
        &[
            ("{result=\"sent\"}".to_owned(), snapshot.notifications_sent),
            (
                "{result=\"failed\"}".to_owned(),
                snapshot.notifications_failed,
            ),
            (
                "{result=\"dropped\"}".to_owned(),
                snapshot.notifications_dropped,
            ),
        ],
    );
    if let Some(f) = &snapshot.fleet {
        fleet(&mut family, f);
    }
    out
}

/// The fleet's families: the link, and remote bans taken and refused by origin.
fn fleet(family: &mut impl FnMut(&str, &str, &str, &[(String, u64)]), f: &FleetFigures) {
    let single = |v: u64| vec![(String::new(), v)];
    let link = &f.link;
    family(
        "fleet_connected",
        "gauge",
        "1 while the fleet link is connected to a NATS server.",
        &single(u64::from(link.connected)),
    );
    family(
        "fleet_lag",
        "gauge",
        "Fleet stream entries seen but not applied yet.",
        &single(link.stream_last.saturating_sub(link.applied)),
    );
    family(
        "fleet_queued",
        "gauge",
        "Local decisions waiting to be published (the link is down or refused).",
        &single(link.queued),
    );
    family(
        "fleet_published_total",
        "counter",
        "Local decisions the fleet's stream acknowledged.",
        &single(link.published),
    );
    family(
        "fleet_remote_bans_total",
        "counter",
        "Remote bans enforced here, by origin host.",
        &f.counts
            .taken
            .iter()
            .map(|(origin, n)| (format!("{{origin=\"{origin}\"}}"), *n))
            .collect::<Vec<_>>(),
    );
    family(
        "fleet_refused_total",
        "counter",
        "Remote bans refused, by origin host and reason (too_broad, ignored, own_address, rate_limited, no_jail).",
        &f.counts
            .refused
            .iter()
            .map(|(origin, why, n)| {
                (
                    format!("{{origin=\"{origin}\",reason=\"{}\"}}", why.as_str()),
                    *n,
                )
            })
            .collect::<Vec<_>>(),
    );
}

/// Binds the metrics address (before capabilities are dropped, so a port below 1024 works).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })
}

/// Answers scrapes until the loop goes away.
pub async fn serve(listener: TcpListener, loop_tx: mpsc::Sender<Scrape>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if loop_tx.is_closed() {
            return;
        }
        tokio::spawn(answer(stream, loop_tx.clone()));
    }
}

async fn answer(mut stream: TcpStream, loop_tx: mpsc::Sender<Scrape>) {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let response = match head {
        Ok(Ok(head)) if head.starts_with("GET /metrics ") || head.starts_with("GET / ") => {
            let (tx, rx) = oneshot::channel();
            let snapshot = match loop_tx.send(tx).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match snapshot {
                Some(s) => reply("200 OK", "text/plain; version=0.0.4", &render(&s)),
                None => reply("503 Service Unavailable", "text/plain", "stopping\n"),
            }
        }
        Ok(Ok(head)) if head.starts_with("GET ") => {
            reply("404 Not Found", "text/plain", "try /metrics\n")
        }
        Ok(Ok(_)) => reply("405 Method Not Allowed", "text/plain", "GET only\n"),
        Ok(Err(_)) | Err(_) => return,
    };
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        tracing::debug!(error = %e, "metrics: client left");
    }
}

/// The request head, up to its blank line (or [`MAX_REQUEST`] bytes).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn reply(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_figures_only_with_a_fleet() {
        assert!(!render(&Snapshot::default()).contains("fleet"));
        let snapshot = Snapshot {
            fleet: Some(FleetFigures {
                link: crate::fleet::LinkStatus {
                    connected: true,
                    applied: 40,
                    stream_last: 42,
                    queued: 3,
                    ..Default::default()
                },
                counts: crate::engine::RemoteCounts {
                    refused: vec![("web2".into(), crate::engine::Refusal::Ignored, 2)],
                    taken: vec![("web2".into(), 9)],
                },
            }),
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        for line in [
            "banctl_fleet_connected 1",
            "banctl_fleet_lag 2",
            "banctl_fleet_queued 3",
            "banctl_fleet_remote_bans_total{origin=\"web2\"} 9",
            "banctl_fleet_refused_total{origin=\"web2\",reason=\"ignored\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn exposition_format() {
        let snapshot = Snapshot {
            jails: vec![
                JailFigures {
                    name: "sshd".into(),
                    counters: Counters {
                        lines: 10,
                        cut: 1,
                        matched: 4,
                        failures: 3,
                        bans: 1,
                        unbans: 0,
                    },
                    tracked: 2,
                    active_bans: 1,
                    dropped: Some((7, 420)),
                },
                JailFigures {
                    name: "web".into(),
                    dropped: None,
                    ..JailFigures::default()
                },
            ],
            netlink_errors: 1,
            repairs: 2,
            pattern_give_ups: 4,
            line_queue_full: 5,
            notifications_sent: 3,
            sources_not_following: 2,
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        for line in [
            "# TYPE banctl_lines_read_total counter",
            "banctl_lines_read_total{jail=\"sshd\"} 10",
            "banctl_sources_not_following 2",
            "banctl_lines_matched_total{jail=\"sshd\"} 4",
            "banctl_lines_cut_total{jail=\"sshd\"} 1",
            "banctl_failures_total{jail=\"web\"} 0",
            "banctl_active_bans{jail=\"sshd\"} 1",
            "banctl_dropped_packets_total{jail=\"sshd\"} 7",
            "banctl_dropped_bytes_total{jail=\"sshd\"} 420",
            "banctl_netlink_errors_total 1",
            "banctl_repairs_total 2",
            "banctl_pattern_give_ups_total 4",
            "banctl_line_queue_full_total 5",
            "banctl_notifications_total{result=\"sent\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // A counter that could not be read is absent, not zero.
        assert!(!text.contains("banctl_dropped_packets_total{jail=\"web\"}"));
    }
}
