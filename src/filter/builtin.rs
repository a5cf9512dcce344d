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

pub static BUILTIN: &[Builtin] = &[
    Builtin {
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
    },
    // nginx's combined access log: `$remote_addr - $remote_user [$time_local] "$request" $status
    // $body_bytes_sent "$http_referer" "$http_user_agent"`. The client address comes first,
    // before anything the client sends; nginx escapes `"` inside the quoted fields.
    Builtin {
        name: "nginx-botsearch",
        description: "nginx access log: scanners probing for well-known admin and exploit paths (404/403)",
        failregex: &[
            r#"^<HOST> - \S+ \[[^\]]+\] "(?:GET|POST|HEAD|PUT) /+(?:wp-login\.php|wp-admin/|xmlrpc\.php|\.env|\.git/|\.aws/|phpmyadmin|pma/|myadmin/|cgi-bin/|boaform/|HNAP1|vendor/phpunit/|actuator/|solr/|owa/auth|\.well-known/security\.txt\.php)[^"]* HTTP/[0-9.]+" 40[34] \d+ "[^"]*" "[^"]*"$"#,
        ],
        ignoreregex: &[],
    },
    // nginx's error log for basic authentication: `2026/11/21 10:00:00 [error] 812#812: *1 user
    // "admin": password mismatch, client: 203.0.113.5, server: …`. The user name is quoted and
    // escaped by nginx; the real client follows it.
    Builtin {
        name: "nginx-http-auth",
        description: "nginx error log: failed HTTP basic authentication (wrong password, unknown user, none given)",
        failregex: &[
            r#"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[error\] \d+#\d+: \*\d+ (?:user "(?:[^"\\]|\\.)*":? (?:password mismatch|was not found in "[^"]*")|no user/password was provided for basic authentication), client: <HOST>, server: \S*, request: "[^"]*"(?:, upstream: "[^"]*")?, host: "[^"]*"(?:, referrer: "[^"]*")?$"#,
        ],
        ignoreregex: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Pattern;

    /// The address `filter` reports for `line`. `compile` skips a pattern that does not
    /// compile: `every_builtin_pattern_compiles` makes sure none is skipped.
    fn found(filter: &str, line: &str) -> Option<String> {
        let filter = Builtin::by_name(filter).unwrap().compile();
        filter.find(line).map(|h| h.addr.to_string())
    }

    #[test]
    fn every_builtin_pattern_compiles() {
        for b in BUILTIN {
            for p in b.failregex {
                assert!(Pattern::fail(p).is_ok(), "{}: {p}", b.name);
            }
            for p in b.ignoreregex {
                assert!(Pattern::ignore(p).is_ok(), "{}: {p}", b.name);
            }
        }
    }

    #[test]
    fn nginx_botsearch() {
        let hit = r#"203.0.113.5 - - [21/Nov/2026:10:00:00 +0000] "GET /wp-login.php HTTP/1.1" 404 153 "-" "Mozilla/5.0""#;
        assert_eq!(
            found("nginx-botsearch", hit).as_deref(),
            Some("203.0.113.5")
        );
        let v6 = r#"2001:db8::5 - - [21/Nov/2026:10:00:00 +0000] "POST //xmlrpc.php HTTP/2.0" 403 0 "-" "x""#;
        assert_eq!(found("nginx-botsearch", v6).as_deref(), Some("2001:db8::5"));
        for benign in [
            r#"203.0.113.5 - - [21/Nov/2026:10:00:00 +0000] "GET /wp-login.php HTTP/1.1" 200 153 "-" "Mozilla/5.0""#,
            r#"203.0.113.5 - - [21/Nov/2026:10:00:00 +0000] "GET /index.html HTTP/1.1" 404 153 "-" "Mozilla/5.0""#,
            r#"203.0.113.5 - - [21/Nov/2026:10:00:00 +0000] "GET /blog/.env-guide HTTP/1.1" 404 1 "-" "x""#,
        ] {
            assert_eq!(found("nginx-botsearch", benign), None, "{benign}");
        }
        // The URL, referrer and user agent are the client's: never the address.
        for hostile in [
            r#"203.0.113.5 - - [21/Nov/2026:10:00:00 +0000] "GET /.env?198.51.100.9 - - [x] HTTP/1.1" 404 1 "198.51.100.9" "198.51.100.9 - -""#,
            r#"203.0.113.5 - 198.51.100.9 [21/Nov/2026:10:00:00 +0000] "GET /.git/config HTTP/1.1" 404 1 "-" "x""#,
        ] {
            assert_eq!(
                found("nginx-botsearch", hostile).as_deref(),
                Some("203.0.113.5"),
                "{hostile}"
            );
        }
    }

    #[test]
    fn nginx_http_auth() {
        let lines = [
            r#"2026/11/21 10:00:00 [error] 812#812: *1 user "admin": password mismatch, client: 203.0.113.5, server: example.com, request: "GET /admin/ HTTP/1.1", host: "example.com""#,
            r#"2026/11/21 10:00:00 [error] 812#812: *2 user "bob" was not found in "/etc/nginx/.htpasswd", client: 203.0.113.5, server: example.com, request: "GET / HTTP/1.1", host: "example.com""#,
            r#"2026/11/21 10:00:00 [error] 812#812: *3 no user/password was provided for basic authentication, client: 203.0.113.5, server: example.com, request: "GET / HTTP/1.1", host: "example.com", referrer: "https://example.com/""#,
            // Injection through the user name and the request.
            r#"2026/11/21 10:00:00 [error] 812#812: *4 user "x\x22, client: 198.51.100.9, server: a": password mismatch, client: 203.0.113.5, server: example.com, request: "GET /?client: 198.51.100.9 HTTP/1.1", host: "example.com""#,
        ];
        for line in lines {
            assert_eq!(
                found("nginx-http-auth", line).as_deref(),
                Some("203.0.113.5"),
                "{line}"
            );
        }
        // Were a quote ever unescaped, the line would not match: never the planted address.
        let unescaped = r#"2026/11/21 10:00:00 [error] 812#812: *4 user "x", client: 198.51.100.9, server: a": password mismatch, client: 203.0.113.5, server: example.com, request: "GET / HTTP/1.1", host: "example.com""#;
        assert_ne!(
            found("nginx-http-auth", unescaped).as_deref(),
            Some("198.51.100.9")
        );
        let benign = r#"2026/11/21 10:00:00 [error] 812#812: *4 open() "/usr/share/nginx/html/favicon.ico" failed (2: No such file or directory), client: 203.0.113.5, server: example.com, request: "GET /favicon.ico HTTP/1.1", host: "example.com""#;
        assert_eq!(found("nginx-http-auth", benign), None);
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
            assert_eq!(found("sshd", line).as_deref(), Some(want), "{line}");
        }
    }

    #[test]
    fn sshd_benign() {
        for line in [
            "Nov 21 10:00:00 web sshd[812]: Accepted publickey for root from 203.0.113.5 port 50122 ssh2: ED25519 SHA256:x",
            "Nov 21 10:00:00 web sshd[812]: Server listening on 0.0.0.0 port 22.",
            "Nov 21 10:00:00 web cron[812]: Failed password for root from 203.0.113.5 port 50122 ssh2",
        ] {
            assert_eq!(found("sshd", line), None, "{line}");
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
            assert_eq!(
                found("sshd", line).as_deref(),
                Some("203.0.113.5"),
                "{line}"
            );
        }
    }
}
