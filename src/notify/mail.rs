//! Mail on ban and unban (fail2ban's `action_mw`/`action_mwl`): one message per event over
//! SMTP, to the local MTA by default, through `lettre`.
//!
//! The subject holds only typed values (event, address, jail, host name, ban number). The log
//! lines go into the body as text: `lettre` chooses the transfer encoding and escapes a line
//! of a lone `.`, so no log text can end the message or start an SMTP command.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, Mailboxes, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, EventKind, NotifyError};
use crate::duration::format_duration;

/// Where `mail` notifiers deliver unless `smtp` says otherwise: the local MTA.
pub const DEFAULT_SMTP: &str = "localhost:25";

/// A validated mail notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailTarget {
    pub to: Vec<Mailbox>,
    pub from: Mailbox,
    /// The SMTP server's host name (or address) and port.
    pub host: String,
    pub port: u16,
    /// Whether the session must be upgraded with STARTTLS (and the server's certificate
    /// verified against the system's roots) before anything is sent.
    pub starttls: bool,
    /// User name for SMTP AUTH and the file holding its password (read at each delivery, so
    /// a changed password needs no reload).
    pub credentials: Option<(String, PathBuf)>,
}

/// Why a `mail` notifier's settings are invalid; each names the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailConfigError {
    #[error("{0:?} is not a mail address ({1})")]
    Address(String, String),
    #[error("{0:?} is not host:port")]
    Server(String),
    #[error(
        "a user name and password would cross the network in clear to {0}: set `starttls = true`"
    )]
    ClearCredentials(String),
}

/// Reads `name <user@host>` or `user@host`.
pub fn mailbox(text: &str) -> Result<Mailbox, MailConfigError> {
    text.parse().map_err(|e: lettre::address::AddressError| {
        MailConfigError::Address(text.into(), e.to_string())
    })
}

/// Reads `host:port` (`[::1]:25` for an IPv6 address); a bare host means port 25.
pub fn server(text: &str) -> Result<(String, u16), MailConfigError> {
    let bad = || MailConfigError::Server(text.into());
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (text, 25),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let valid = port != 0 && (host.parse::<IpAddr>().is_ok() || crate::addr::is_host_name(host));
    if valid {
        Ok((host.to_owned(), port))
    } else {
        Err(bad())
    }
}

/// Whether `host` is this machine (credentials may travel to it without TLS).
pub fn is_local(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl MailTarget {
    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), MailConfigError> {
        if self.credentials.is_some() && !self.starttls && !is_local(&self.host) {
            return Err(MailConfigError::ClearCredentials(self.host.clone()));
        }
        Ok(())
    }

    /// How logs and metrics name it.
    pub fn name(&self) -> String {
        let to: Vec<String> = self.to.iter().map(|m| m.email.to_string()).collect();
        format!("mail {} via {}:{}", to.join(","), self.host, self.port)
    }
}

/// The message for `event`.
pub fn message(target: &MailTarget, event: &Event) -> Result<Message, NotifyError> {
    let mut builder = Message::builder()
        .from(target.from.clone())
        .subject(subject(event))
        .header(ContentType::TEXT_PLAIN);
    for to in &target.to {
        builder = builder.to(to.clone());
    }
    builder.body(body(event)).map_err(|e| NotifyError::Smtp {
        message: e.to_string(),
        retry: false,
    })
}

fn subject(event: &Event) -> String {
    let host = if event.hostname.is_empty() {
        String::new()
    } else {
        format!("{}: ", event.hostname)
    };
    match event.event {
        EventKind::Ban => {
            let nth = event
                .ban_count
                .map_or(String::new(), |n| format!(" (ban #{n})"));
            format!(
                "[banctl] {host}banned {} in {}{nth}",
                event.prefix, event.jail
            )
        }
        EventKind::Unban => format!("[banctl] {host}unbanned {} in {}", event.prefix, event.jail),
    }
}

fn body(event: &Event) -> String {
    let mut out = String::new();
    let verb = match event.event {
        EventKind::Ban => "banned",
        EventKind::Unban => "unbanned",
    };
    out.push_str(&format!(
        "banctl on {host} {verb} {prefix} in jail {jail}.\n\n",
        host = if event.hostname.is_empty() {
            "this host"
        } else {
            &event.hostname
        },
        prefix = event.prefix,
        jail = event.jail,
    ));
    out.push_str(&format!("address:  {}\n", event.address));
    if event.prefix.addr() != event.address || !event.prefix.is_host() {
        out.push_str(&format!("covers:   {}\n", event.prefix));
    }
    if event.event == EventKind::Ban {
        let length = event.bantime_s.map_or("permanent".to_owned(), |s| {
            format_duration(Duration::from_secs(s))
        });
        out.push_str(&format!("for:      {length}\n"));
        if let Some(n) = event.ban_count {
            out.push_str(&format!("ban #:    {n}\n"));
        }
    }
    out.push_str(&format!("reason:   {}\n", event.reason));
    let when = jiff::Timestamp::from_second(event.time as i64)
        .map_or_else(|_| event.time.to_string(), |t| t.to_string());
    out.push_str(&format!("time:     {when}\n"));
    if !event.matched.is_empty() {
        out.push_str(&format!(
            "\nThe log lines that counted ({}):\n\n",
            event.matched.len()
        ));
        for line in &event.matched {
            // Attacker-controlled: indented, and control characters shown escaped (a bare CR
            // is a line end to some mail servers).
            out.push_str("    ");
            for c in line.chars() {
                if c.is_control() && c != '\t' {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\nTo lift it: banctl unban {} --jail {}\n",
        event.prefix, event.jail
    ));
    out
}

/// Sends one message for `event`; the whole exchange is bounded by `timeout`.
pub async fn send(
    target: &MailTarget,
    event: &Event,
    timeout: Duration,
) -> Result<(), NotifyError> {
    let message = message(target, event)?;
    let tls = if target.starttls {
        let parameters =
            TlsParameters::new(target.host.clone()).map_err(|e| NotifyError::Smtp {
                message: e.to_string(),
                retry: false,
            })?;
        Tls::Required(parameters)
    } else {
        Tls::None
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.host)
        .port(target.port)
        .tls(tls)
        .timeout(Some(timeout))
        .hello_name(hello_name(&event.hostname));
    if let Some((user, file)) = &target.credentials {
        let password = std::fs::read_to_string(file).map_err(|e| NotifyError::Smtp {
            message: format!("password_file {}: {e}", file.display()),
            retry: false,
        })?;
        let password = password.trim_end_matches(['\r', '\n']).to_owned();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    let transport = builder.build();
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Err(_) => Err(NotifyError::Timeout(timeout)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(NotifyError::Smtp {
            retry: !e.is_permanent(),
            message: e.to_string(),
        }),
    }
}

fn hello_name(hostname: &str) -> ClientId {
    if crate::addr::is_host_name(hostname) {
        ClientId::Domain(hostname.to_owned())
    } else {
        ClientId::Domain("localhost".to_owned())
    }
}

/// The recipients of a `mail` key: one address or a comma-separated list.
pub fn recipients(text: &str) -> Result<Vec<Mailbox>, MailConfigError> {
    let boxes: Mailboxes = text.parse().map_err(|e: lettre::address::AddressError| {
        MailConfigError::Address(text.into(), e.to_string())
    })?;
    Ok(boxes.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::BanTime;

    fn event() -> Event {
        let mut e = Event::new(
            EventKind::Ban,
            "sshd",
            "192.0.2.7".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
            Some(BanTime::Finite(Duration::from_secs(600))),
            Some(2),
            "failures",
            vec![
                "Failed password for root from 192.0.2.7".into(),
                ".".into(),
                "MAIL FROM:<x@evil> Subject: injected".into(),
            ],
        );
        e.hostname = "web1".into();
        e.time = 1_763_700_000;
        e
    }

    fn target() -> MailTarget {
        MailTarget {
            to: recipients("root@localhost, Admin <admin@example.org>").unwrap(),
            from: mailbox("banctl@web1").unwrap(),
            host: "localhost".into(),
            port: 25,
            starttls: false,
            credentials: None,
        }
    }

    #[test]
    fn the_subject_holds_typed_values_and_the_body_the_lines() {
        let text = String::from_utf8(message(&target(), &event()).unwrap().formatted()).unwrap();
        assert!(
            text.contains("Subject: [banctl] web1: banned 192.0.2.7 in sshd (ban #2)\r\n"),
            "{text}"
        );
        assert!(
            text.contains("To: root@localhost, Admin <admin@example.org>\r\n"),
            "{text}"
        );
        assert!(text.contains("for:      10m"), "{text}");
        assert!(
            text.contains("    Failed password for root from 192.0.2.7"),
            "{text}"
        );
        // The lines are indented, so none of them is a lone dot or a header.
        assert!(!text.contains("\r\n.\r\n"), "{text}");
        assert!(!text.contains("\r\nMAIL FROM"), "{text}");
    }

    /// With `starttls = true`, a server that offers no STARTTLS gets nothing: no sender, no
    /// recipient, no message in clear.
    #[tokio::test(flavor = "current_thread")]
    async fn starttls_required_sends_nothing_in_clear() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            stream.write_all(b"220 plain.test ESMTP\r\n").unwrap();
            let mut heard = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                heard.push(line.trim_end().to_owned());
                let answer: &[u8] = if line.starts_with("EHLO") {
                    b"250-plain.test\r\n250 SIZE 1000000\r\n"
                } else if line.starts_with("QUIT") {
                    b"221 bye\r\n"
                } else {
                    b"250 OK\r\n"
                };
                if stream.write_all(answer).is_err() {
                    break;
                }
            }
            heard
        });
        let mut target = target();
        target.host = "127.0.0.1".into();
        target.port = port;
        target.starttls = true;
        let sent = send(&target, &event(), Duration::from_secs(5)).await;
        let error = sent.expect_err("sent without STARTTLS").to_string();
        assert!(error.contains("STARTTLS is not supported"), "{error}");
        let heard = server.join().unwrap();
        assert!(
            !heard
                .iter()
                .any(|l| l.starts_with("MAIL") || l.starts_with("RCPT") || l.starts_with("DATA")),
            "{heard:?}"
        );
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(server("localhost").unwrap(), ("localhost".into(), 25));
        assert_eq!(server("[::1]:2525").unwrap(), ("::1".into(), 2525));
        assert_eq!(
            server("mx.example.org:587").unwrap(),
            ("mx.example.org".into(), 587)
        );
        assert!(server("mx example:25").is_err());
        assert!(server("mx:0").is_err());
        assert!(recipients("not an address").is_err());
        let mut remote = target();
        remote.host = "mx.example.org".into();
        remote.credentials = Some(("u".into(), "/etc/banctl/smtp.pass".into()));
        assert!(matches!(
            remote.validate(),
            Err(MailConfigError::ClearCredentials(_))
        ));
        remote.starttls = true;
        assert_eq!(remote.validate(), Ok(()));
    }
}
