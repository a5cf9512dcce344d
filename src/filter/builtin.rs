//! Filters shipped with banctl, written from each service's real log format.
//!
//! Every pattern is anchored at both ends, and text an attacker controls (a user
//! name) is only ever matched *before* the fixed text that precedes the real peer
//! address, so the greedy match always picks the address the service printed last.

use super::{Filter, Pattern};

/// A built-in filter: its name, a one-line description and its patterns.
#[derive(Debug)]
pub struct Builtin {
    pub name: &'static str,
    pub description: &'static str,
    pub failregex: &'static [&'static str],
    pub ignoreregex: &'static [&'static str],
}

impl Builtin {
    pub fn by_name(name: &str) -> Option<&'static Builtin> {
        BUILTIN.iter().find(|b| b.name == name)
    }

    /// The compiled filter. Built-in patterns are tested to compile.
    pub fn compile(&self) -> Filter {
        Filter::new(
            self.failregex
                .iter()
                .filter_map(|p| Pattern::fail(p).ok())
                .collect(),
            self.ignoreregex
                .iter()
                .filter_map(|p| Pattern::ignore(p).ok())
                .collect(),
        )
    }
}

/// Syslog (`Nov 21 10:00:00 host`) or RFC 3339 (`2026-11-21T10:00:00.123+01:00 host`)
/// prefix, then the sshd program name and pid, as in `/var/log/auth.log` and `/var/log/secure`.
macro_rules! sshd_prefix {
    () => {
        r"^(?:(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) \S+ )?sshd(?:-session)?\[\d+\]: "
    };
}

pub static BUILTIN: &[Builtin] = &[Builtin {
    name: "sshd",
    description: "OpenSSH server: failed passwords and keys, invalid users, pre-auth disconnects",
    failregex: &[
        concat!(
            sshd_prefix!(),
            r"Failed (?:password|publickey|keyboard-interactive/pam|none) for (?:invalid user )?.* from <HOST> port \d+(?: ssh2)?(?:: \S+ \S+)?$"
        ),
        concat!(
            sshd_prefix!(),
            r"Invalid user .* from <HOST>(?: port \d+)?$"
        ),
        concat!(
            sshd_prefix!(),
            r"(?:Connection closed|Disconnected) by (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]$"
        ),
        concat!(
            sshd_prefix!(),
            r"error: maximum authentication attempts exceeded for (?:invalid user )?.* from <HOST> port \d+ ssh2 \[preauth\]$"
        ),
        concat!(
            sshd_prefix!(),
            r"pam_unix\(sshd:auth\): authentication failure; logname=\S* uid=\d+ euid=\d+ tty=\S* ruser=\S* rhost=<HOST>(?:\s+user=.*)?$"
        ),
    ],
    ignoreregex: &[],
}];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Filter, Pattern};

    fn sshd() -> Filter {
        let b = Builtin::by_name("sshd").unwrap();
        Filter::new(
            b.failregex
                .iter()
                .map(|p| Pattern::fail(p).unwrap())
                .collect(),
            b.ignoreregex
                .iter()
                .map(|p| Pattern::ignore(p).unwrap())
                .collect(),
        )
    }

    fn host(line: &str) -> Option<String> {
        sshd().find(line).map(|h| h.addr.to_string())
    }

    #[test]
    fn sshd_hits() {
        let cases = [
            (
                "Nov 21 10:00:00 web sshd[812]: Failed password for root from 203.0.113.5 port 50122 ssh2",
                "203.0.113.5",
            ),
            (
                "2026-11-21T10:00:00.123456+01:00 web sshd[812]: Failed password for invalid user admin from 2001:db8::5 port 50122 ssh2",
                "2001:db8::5",
            ),
            (
                "Nov  1 10:00:00 web sshd-session[90]: Invalid user oracle from 203.0.113.6 port 40000",
                "203.0.113.6",
            ),
            (
                "Nov 21 10:00:00 web sshd[1]: Connection closed by invalid user test 203.0.113.7 port 4 [preauth]",
                "203.0.113.7",
            ),
            (
                "Nov 21 10:00:00 web sshd[1]: error: maximum authentication attempts exceeded for root from 203.0.113.8 port 22 ssh2 [preauth]",
                "203.0.113.8",
            ),
            (
                "Nov 21 10:00:00 web sshd[1]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.9  user=root",
                "203.0.113.9",
            ),
            (
                "sshd[812]: Failed publickey for git from 203.0.113.10 port 1 ssh2: RSA SHA256:abc",
                "203.0.113.10",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(host(line).as_deref(), Some(want), "{line}");
        }
    }

    #[test]
    fn sshd_benign() {
        for line in [
            "Nov 21 10:00:00 web sshd[812]: Accepted publickey for root from 203.0.113.5 port 50122 ssh2: ED25519 SHA256:x",
            "Nov 21 10:00:00 web sshd[812]: Server listening on 0.0.0.0 port 22.",
            "Nov 21 10:00:00 web cron[812]: Failed password for root from 203.0.113.5 port 50122 ssh2",
        ] {
            assert_eq!(host(line), None, "{line}");
        }
    }

    /// A user name is attacker-controlled: it must never supply the banned address.
    #[test]
    fn sshd_user_name_cannot_inject_an_address() {
        let lines = [
            "Nov 21 10:00:00 web sshd[1]: Failed password for invalid user x from 198.51.100.9 from 203.0.113.5 port 22 ssh2",
            "Nov 21 10:00:00 web sshd[1]: Failed password for invalid user x from 198.51.100.9 port 22 ssh2 from 203.0.113.5 port 22 ssh2",
            "Nov 21 10:00:00 web sshd[1]: Invalid user x from 198.51.100.9 from 203.0.113.5 port 22",
            "Nov 21 10:00:00 web sshd[1]: Connection closed by invalid user 198.51.100.9 port 1 [preauth] 203.0.113.5 port 4 [preauth]",
            "Nov 21 10:00:00 web sshd[1]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.5  user=x rhost=198.51.100.9",
        ];
        for line in lines {
            assert_eq!(host(line).as_deref(), Some("203.0.113.5"), "{line}");
        }
    }
}
