//! Webhooks: one HTTP/1.1 POST per event, `Connection: close`, the JSON event as the body.
//!
//! Plain `http://` only: a webhook usually goes to a relay on this host or the local network
//! (Alertmanager, ntfy, n8n, a chat bridge). For an `https://` receiver, an `exec` notifier
//! runs `curl` with the event on its stdin (README, "Notifications").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::NotifyError;

/// The longest status line read from a receiver.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// An `http://host[:port]/path?query` URL, as a webhook needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// As written: a name, an IPv4 address or a bracketed IPv6 address.
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    target: String,
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<HttpUrl, String> {
        if url.starts_with("https://") {
            return Err(
                "https is not built in: point the webhook at a local relay over http, or use an \
                 exec notifier running curl (see the README)"
                    .into(),
            );
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or("a webhook URL starts with http://")?;
        if let Some(bad) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{bad:?} is not allowed in a URL"));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported: use `headers`".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{port:?} is not a port"))?,
            ),
            _ => (authority, 80),
        };
        let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        if !valid_host || port == 0 {
            return Err(format!("{authority:?} is not a host[:port]"));
        }
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            target,
        })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.target)
    }
}

impl HttpUrl {
    /// The host to connect to: brackets of an IPv6 literal removed.
    fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Posts `body` to `url`; succeeds on a 2xx answer. The whole exchange is bounded by `timeout`.
pub async fn post(
    url: &HttpUrl,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), NotifyError> {
    let exchange = async {
        let mut stream = TcpStream::connect((url.connect_host(), url.port)).await?;
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: banctl/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            url.target,
            url.host,
            url.port,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut message = request.into_bytes();
        message.extend_from_slice(body);
        stream.write_all(&message).await?;
        read_status(&mut stream).await
    };
    let status = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NotifyError::Timeout(timeout))??;
    match status {
        200..=299 => Ok(()),
        // Worth another attempt: the receiver is busy, restarting or rate-limiting.
        408 | 429 | 500..=599 => Err(NotifyError::Status {
            status,
            retry: true,
        }),
        _ => Err(NotifyError::Status {
            status,
            retry: false,
        }),
    }
}

/// Reads the status code from `HTTP/1.x NNN reason`.
async fn read_status(stream: &mut TcpStream) -> Result<u16, NotifyError> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() >= MAX_STATUS_LINE {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(status))) if v.starts_with("HTTP/1.") => Ok(status),
        _ => Err(NotifyError::BadResponse(line.chars().take(80).collect())),
    }
}

/// Whether `name: value` is a header this module may send: a token name, no line breaks.
pub fn valid_header(name: &str, value: &str) -> Result<(), String> {
    let reserved = ["host", "content-length", "content-type", "connection"];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("{name:?} is not a header name"));
    }
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name} is set by banctl"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("the value of {name} holds a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url: HttpUrl = "http://127.0.0.1:8080/hooks/ban?x=1".parse().unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:8080/hooks/ban?x=1");
        let url: HttpUrl = "http://[::1]:9000".parse().unwrap();
        assert_eq!((url.connect_host(), url.port), ("::1", 9000));
        assert_eq!(url.target, "/");
        let url: HttpUrl = "http://relay.lan?token=a".parse().unwrap();
        assert_eq!((url.port, url.target.as_str()), (80, "/?token=a"));
        for bad in [
            "https://example.com/",
            "ftp://x",
            "http://",
            "http://user:pw@host/",
            "http://host:99999/",
            "http://host/a b",
            "http://host/\r\nX-Injected: 1",
            "http://[::1/",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert!(valid_header("Authorization", "Bearer abc").is_ok());
        assert!(valid_header("X-Token", "a\r\nEvil: 1").is_err());
        assert!(valid_header("Bad Name", "x").is_err());
        assert!(valid_header("content-length", "1").is_err());
    }
}
