//! Failure windows on disk: a log of rounds, folded into a table now and then.
//!
//! A round appends one row to `window_log`: every window it changed, encoded in one blob.
//! Writing each changed window as a row of its own was about half of the daemon's CPU while
//! it caught up on a large log (16,384 B-tree writes a round); one blob is one write. The log
//! is folded into `windows` (one row per address, the last state of each) when it grows past
//! [`FOLD_BYTES`], in the round's own transaction, and before each purge. What a start reads
//! is `windows` with the log replayed over it, in order.
//!
//! A log entry: the jail name (one length byte, then the name), the address (one length
//! byte, 4 or 16, then its bytes), the number of times (u32 LE), then the times (u32 LE
//! each, oldest first). No times: the window was emptied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rusqlite::{Transaction, params};

use super::{Window, encode_times};

/// Log bytes after which a round also folds the log into `windows`: a start replays at most
/// this much, and the fold's row writes are spread over many rounds' worth of windows.
pub(super) const FOLD_BYTES: usize = 8 << 20;

/// The windows of a round as one log entry.
pub(super) fn encode_round(windows: &[Window<'_>]) -> Vec<u8> {
    let size: usize = windows
        .iter()
        .map(|w| 2 + w.jail.len() + 16 + 4 + 4 * w.times.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    let mut sorted = Vec::new();
    for w in windows {
        // Jail names are at most 32 ASCII bytes (the config checks them); the cut only keeps
        // the length byte true for a name that could not come from a config.
        let jail = &w.jail.as_bytes()[..w.jail.len().min(255)];
        out.push(jail.len() as u8);
        out.extend_from_slice(jail);
        match w.addr {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(16);
                out.extend_from_slice(&a.octets());
            }
        }
        // Caught-up lines may come out of date order.
        let times = if w.times.is_sorted() {
            w.times
        } else {
            sorted.clear();
            sorted.extend_from_slice(w.times);
            sorted.sort_unstable();
            &sorted
        };
        out.extend_from_slice(&(times.len() as u32).to_le_bytes());
        for t in times {
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    out
}

/// Calls `each` with every window of a log entry, in order: (jail, address, times; empty
/// when emptied). A malformed entry (not written by this build) stops the reading there and
/// returns false; what came before it stands.
pub(super) fn decode_round(mut blob: &[u8], mut each: impl FnMut(&str, IpAddr, &[u32])) -> bool {
    let mut times = Vec::new();
    while !blob.is_empty() {
        let Some((jail, addr, rest)) = entry_head(blob) else {
            return false;
        };
        let Some((&count, rest)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let count = u32::from_le_bytes(count) as usize;
        let Some((raw, rest)) = count
            .checked_mul(4)
            .filter(|n| *n <= rest.len())
            .map(|n| rest.split_at(n))
        else {
            return false;
        };
        times.clear();
        times.extend(
            raw.as_chunks::<4>()
                .0
                .iter()
                .map(|c| u32::from_le_bytes(*c)),
        );
        each(jail, addr, &times);
        blob = rest;
    }
    true
}

/// The jail and address at the start of an entry, and what follows them.
fn entry_head(blob: &[u8]) -> Option<(&str, IpAddr, &[u8])> {
    let (&len, rest) = blob.split_first()?;
    let (jail, rest) = rest.split_at_checked(usize::from(len))?;
    let jail = std::str::from_utf8(jail).ok()?;
    let (&len, rest) = rest.split_first()?;
    let (addr, rest) = rest.split_at_checked(usize::from(len))?;
    let addr = match len {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    Some((jail, addr, rest))
}

/// The log's windows, the last state of each, by jail and address. Flat, without an
/// allocation per window: a fold replays up to [`FOLD_BYTES`] of entries (some 400,000
/// windows), and a map of small allocations left that much of the heap resident after it.
#[derive(Default)]
struct Replayed {
    jails: Vec<String>,
    /// (jail index, address, start and length of its times in `times`): in log order, then
    /// by [`Replayed::settle`] one per window.
    entries: Vec<(u32, IpAddr, u32, u32)>,
    times: Vec<u32>,
}

impl Replayed {
    fn push(&mut self, jail: &str, addr: IpAddr, times: &[u32]) {
        // A few jails: a list.
        let j = match self.jails.iter().position(|name| name == jail) {
            Some(j) => j,
            None => {
                self.jails.push(jail.to_owned());
                self.jails.len() - 1
            }
        };
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.entries
            .push((len(j), addr, len(self.times.len()), len(times.len())));
        self.times.extend_from_slice(times);
    }

    /// Keeps each window's last entry, in (jail, address) order.
    fn settle(&mut self) {
        // Stable: a window's entries keep the log's order, so the last one is the newest.
        self.entries.sort_by_key(|&(j, addr, ..)| (j, addr));
        self.entries.dedup_by(|later, kept| {
            let same = (later.0, later.1) == (kept.0, kept.1);
            if same {
                *kept = *later;
            }
            same
        });
    }

    /// (jail, address, times): no times for a window emptied.
    fn windows(&self) -> impl Iterator<Item = (&str, IpAddr, &[u32])> {
        self.entries.iter().map(|&(j, addr, start, len)| {
            let (start, len) = (start as usize, len as usize);
            (
                self.jails[j as usize].as_str(),
                addr,
                &self.times[start..start + len],
            )
        })
    }
}

/// Replays every log entry, oldest first.
fn replay(tx: &rusqlite::Connection) -> rusqlite::Result<Replayed> {
    let mut out = Replayed::default();
    let mut stmt = tx.prepare("SELECT entries FROM window_log ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let ok = decode_round(row.get_ref(0)?.as_blob()?, |jail, addr, times| {
            out.push(jail, addr, times);
        });
        if !ok {
            tracing::warn!("a failure-window log entry this build did not write was passed over");
        }
    }
    out.settle();
    Ok(out)
}

/// Folds the log into `windows` and empties it, inside the caller's transaction.
pub(super) fn fold(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let replayed = replay(tx)?;
    let mut clear = tx.prepare_cached("DELETE FROM windows WHERE jail = ?1 AND addr = ?2")?;
    let mut put = tx.prepare_cached(super::PUT_WINDOW)?;
    // By address, not by the table's text key: sorting the text (an allocation each) cost
    // more than the writes' locality gained (1M windows, paired).
    for (jail, addr, times) in replayed.windows() {
        let addr = addr.to_string();
        match encode_times(times) {
            Some((last, blob)) => put.execute(params![jail, addr, last, blob])?,
            None => clear.execute(params![jail, addr])?,
        };
    }
    tx.execute("DELETE FROM window_log", [])?;
    Ok(())
}

/// The saved windows: `windows` with the log replayed over it, by jail and address text.
pub(super) fn saved(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<Vec<(String, IpAddr, Vec<u32>)>> {
    let mut all: BTreeMap<(String, String), (IpAddr, Vec<u32>)> = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT jail, addr, times FROM windows")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        // A row this build did not write is passed over, not trusted.
        let (Ok(addr), Some(times)) = (
            row.get_ref(1)?.as_str()?.parse::<IpAddr>(),
            super::decode_times(row.get_ref(2)?.as_blob()?),
        ) else {
            continue;
        };
        all.insert((row.get(0)?, addr.to_string()), (addr, times));
    }
    for (jail, addr, times) in replay(conn)?.windows() {
        let key = (jail.to_owned(), addr.to_string());
        if times.is_empty() {
            all.remove(&key);
        } else {
            all.insert(key, (addr, times.to_vec()));
        }
    }
    Ok(all
        .into_iter()
        .map(|((jail, _), (addr, times))| (jail, addr, times))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(blob: &[u8]) -> (bool, Vec<(String, IpAddr, Vec<u32>)>) {
        let mut out = Vec::new();
        let ok = decode_round(blob, |j, a, t| out.push((j.to_owned(), a, t.to_vec())));
        (ok, out)
    }

    #[test]
    fn a_replay_keeps_each_windows_last_state_by_jail_and_address() {
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.9".parse().unwrap(), "192.0.2.1".parse().unwrap());
        let mut r = Replayed::default();
        r.push("web", a, &[1]);
        r.push("ssh", a, &[2, 3]);
        r.push("web", b, &[4]);
        r.push("web", a, &[5, 6]);
        r.push("ssh", a, &[]);
        r.push("web", b, &[7]);
        r.settle();
        let got: Vec<(&str, IpAddr, Vec<u32>)> = r
            .windows()
            .map(|(j, addr, t)| (j, addr, t.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                ("web", b, vec![7]),
                ("web", a, vec![5, 6]),
                ("ssh", a, vec![]),
            ]
        );
    }

    #[test]
    fn a_round_reads_back_as_written_times_sorted() {
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::7".parse().unwrap());
        let windows = [
            Window {
                jail: "ssh",
                addr: a,
                times: &[30, 10, 20],
            },
            Window {
                jail: "web-app_2",
                addr: b,
                times: &[],
            },
            Window {
                jail: "ssh",
                addr: b,
                times: &[u32::MAX],
            },
        ];
        let blob = encode_round(&windows);
        assert_eq!(
            decoded(&blob),
            (
                true,
                vec![
                    ("ssh".to_owned(), a, vec![10, 20, 30]),
                    ("web-app_2".to_owned(), b, vec![]),
                    ("ssh".to_owned(), b, vec![u32::MAX]),
                ]
            )
        );
        assert_eq!(decoded(&[]), (true, vec![]));
    }

    /// A cut or altered entry never panics and never yields a window it does not hold
    /// whole: every prefix of a valid blob decodes to the windows it holds entirely.
    #[test]
    fn a_cut_or_altered_entry_stops_the_reading_without_a_panic() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let windows = [
            Window {
                jail: "ssh",
                addr: a,
                times: &[1, 2],
            },
            Window {
                jail: "ssh",
                addr: a,
                times: &[3],
            },
        ];
        let blob = encode_round(&windows);
        let first = encode_round(&windows[..1]).len();
        for cut in 0..blob.len() {
            let (ok, got) = decoded(&blob[..cut]);
            let whole = usize::from(cut >= first);
            assert_eq!(got.len(), whole, "cut at {cut}");
            assert_eq!(ok, cut == 0 || cut == first, "cut at {cut}");
        }
        for at in 0..blob.len() {
            for byte in [0, 3, 5, 17, 0xff] {
                let mut bad = blob.clone();
                bad[at] = byte;
                let _ = decoded(&bad);
            }
        }
    }
}
