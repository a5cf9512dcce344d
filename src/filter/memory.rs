//! What a filter remembers between the lines of one log, for fail2ban's multi-line filters.
//!
//! - **The line buffer** (`maxlines` > 1): the failregexes see the last `maxlines` lines joined
//!   with `\n`; the lines a match used leave the buffer, so one failure is counted once.
//! - **Sessions** (`<F-MLFID>`): lines with the same multi-line failure id (sshd's
//!   `host sshd[812]:`) belong to one connection. A match remembers its address for the
//!   session (`Connection from <HOST>`, a `<F-NOFAIL>` line); a later failure of the session
//!   that names no address (`Disconnecting: Too many authentication failures`) is a failure of
//!   that address. `<F-MLFGAINED>` (a login) marks the session: its address-less failures no
//!   longer count. `<F-MLFFORGET>` (the connection ended) drops the session after its line.
//!
//! Both are bounded: the buffer holds `maxlines` lines, at most [`MAX_SESSIONS`] sessions are
//! kept (the oldest go first), so no log can grow the daemon's memory without bound.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// The most sessions remembered at once.
pub const MAX_SESSIONS: usize = 4096;

/// The state of one log's filter between lines.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    buffer: VecDeque<String>,
    sessions: HashMap<String, Session>,
    /// Session ids in the order they were opened, for eviction (an id may be stale: it is
    /// skipped when its session was dropped or reopened since).
    opened: VecDeque<(String, u64)>,
    serial: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Session {
    host: Option<IpAddr>,
    gained: bool,
    serial: u64,
}

/// What a match says about its session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Marks {
    /// `<F-NOFAIL>` took part: no failure.
    pub nofail: bool,
    /// `<F-MLFGAINED>` took part: the session logged in.
    pub gained: bool,
    /// `<F-MLFFORGET>` took part: the session ends with this line.
    pub forget: bool,
}

impl Memory {
    /// Adds `text` to the line buffer (keeping the last `maxlines`) and returns the buffer
    /// joined with `\n`.
    pub(super) fn push_line(&mut self, text: &str, maxlines: usize) -> String {
        self.buffer.push_back(text.to_owned());
        while self.buffer.len() > maxlines.max(1) {
            self.buffer.pop_front();
        }
        let parts: Vec<&str> = self.buffer.iter().map(String::as_str).collect();
        parts.join("\n")
    }

    /// Drops the buffered lines that the match `[start, end)` of the joined buffer touched.
    pub(super) fn consume(&mut self, (start, end): (usize, usize)) {
        let mut at = 0;
        let mut kept = VecDeque::with_capacity(self.buffer.len());
        for line in self.buffer.drain(..) {
            let (from, to) = (at, at + line.len());
            at = to + 1;
            let touched = from < end.max(start + 1) && start <= to;
            if !touched {
                kept.push_back(line);
            }
        }
        self.buffer = kept;
    }

    /// What a match of session `id` means: the failing address, if it is a failure. `found`
    /// is the address the match names, if any.
    pub(super) fn session(
        &mut self,
        id: &str,
        found: Option<IpAddr>,
        marks: Marks,
    ) -> Option<IpAddr> {
        let remembered = self.sessions.get(id).copied();
        let host = found.or(remembered.and_then(|s| s.host));
        let gained = marks.gained || remembered.is_some_and(|s| s.gained);
        let failure = match (marks.nofail || marks.gained, found) {
            (true, _) => None,
            (false, Some(addr)) => Some(addr),
            // An address-less failure counts for the session's address, unless it logged in.
            (false, None) if gained => None,
            (false, None) => host,
        };
        if marks.forget {
            self.sessions.remove(id);
        } else if host.is_some() || gained {
            self.remember(
                id,
                Session {
                    host,
                    gained,
                    serial: 0,
                },
            );
        }
        failure
    }

    fn remember(&mut self, id: &str, mut session: Session) {
        if let Some(known) = self.sessions.get_mut(id) {
            session.serial = known.serial;
            *known = session;
            return;
        }
        while self.sessions.len() >= MAX_SESSIONS {
            let Some((old, serial)) = self.opened.pop_front() else {
                break;
            };
            if self.sessions.get(&old).is_some_and(|s| s.serial == serial) {
                self.sessions.remove(&old);
            }
        }
        self.serial += 1;
        session.serial = self.serial;
        self.sessions.insert(id.to_owned(), session);
        self.opened.push_back((id.to_owned(), self.serial));
        // Stale ids (dropped sessions) must not pile up either.
        if self.opened.len() > 2 * MAX_SESSIONS {
            let sessions = &self.sessions;
            self.opened
                .retain(|(id, serial)| sessions.get(id).is_some_and(|s| s.serial == *serial));
        }
    }

    /// How many sessions are remembered.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_buffer_keeps_maxlines_and_loses_what_a_match_used() {
        let mut m = Memory::default();
        assert_eq!(m.push_line("a", 2), "a");
        assert_eq!(m.push_line("bb", 2), "a\nbb");
        assert_eq!(m.push_line("c", 2), "bb\nc");
        // A match of "c" alone (3..4) uses the second line only.
        m.consume((3, 4));
        assert_eq!(m.push_line("d", 2), "bb\nd");
        m.consume((0, 4));
        assert_eq!(m.push_line("e", 2), "e");
    }

    #[test]
    fn sessions_lend_their_address_and_forget() {
        let mut m = Memory::default();
        let nofail = Marks {
            nofail: true,
            ..Marks::default()
        };
        // `Connection from 192.0.2.1`: remembered, no failure.
        assert_eq!(m.session("s1", Some(ip("192.0.2.1")), nofail), None);
        // An address-less failure of the same session counts for it; another session's not.
        assert_eq!(
            m.session("s1", None, Marks::default()),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(m.session("s2", None, Marks::default()), None);
        // A login: the session's address-less failures stop counting.
        let gained = Marks {
            gained: true,
            ..Marks::default()
        };
        assert_eq!(m.session("s1", None, gained), None);
        assert_eq!(m.session("s1", None, Marks::default()), None);
        // Forgotten with its last line.
        let forget = Marks {
            forget: true,
            ..Marks::default()
        };
        assert_eq!(m.session("s3", Some(ip("192.0.2.3")), nofail), None);
        assert_eq!(m.session("s3", None, forget), Some(ip("192.0.2.3")));
        assert_eq!(m.session("s3", None, Marks::default()), None);
    }

    #[test]
    fn sessions_are_bounded() {
        let mut m = Memory::default();
        let nofail = Marks {
            nofail: true,
            ..Marks::default()
        };
        for i in 0..3 * MAX_SESSIONS {
            m.session(&format!("s{i}"), Some(ip("192.0.2.1")), nofail);
        }
        assert_eq!(m.sessions(), MAX_SESSIONS);
        assert!(m.opened.len() <= 2 * MAX_SESSIONS);
        // The newest are kept.
        let last = format!("s{}", 3 * MAX_SESSIONS - 1);
        assert_eq!(
            m.session(&last, None, Marks::default()),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(m.session("s0", None, Marks::default()), None);
    }
}
