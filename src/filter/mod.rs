//! Filters: turn a log line into "this address failed", or nothing.
//!
//! A filter is a list of `failregex` patterns, each naming where the peer address is
//! with `<HOST>` (or `<ADDR>`), plus `ignoreregex` patterns that veto a match.
//! **Invariant:** this module does no I/O and never panics on any input line.

mod builtin;

use std::net::IpAddr;

use regex::Regex;

pub use builtin::{BUILTIN, Builtin};

use crate::addr::canonical;

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("pattern has no <HOST> or <ADDR>: the address to ban must be captured")]
    NoHost,
    #[error("pattern has more than one <HOST>/<ADDR>")]
    ManyHosts,
    #[error("invalid regular expression: {0}")]
    Regex(String),
}

/// IPv4 dotted quad; the value is checked by `IpAddr::from_str` after matching.
const IPV4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
/// IPv6 in any compressed form, optionally ending in an embedded IPv4 address.
const IPV6: &str = r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?";

/// Group names for the address: plain, or inside `[brackets]`.
const HOST_GROUP: &str = "host";
const HOST_BRACKETED_GROUP: &str = "host_b";

/// One compiled `failregex`.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles a fail2ban-style pattern: `<HOST>` and `<ADDR>` become an address capture.
    pub fn fail(source: &str) -> Result<Pattern, PatternError> {
        let tags = source.matches("<HOST>").count() + source.matches("<ADDR>").count();
        match tags {
            0 => return Err(PatternError::NoHost),
            1 => {}
            _ => return Err(PatternError::ManyHosts),
        }
        let host =
            format!(r"(?:\[(?P<{HOST_BRACKETED_GROUP}>{IPV6})\]|(?P<{HOST_GROUP}>{IPV4}|{IPV6}))");
        let expanded = source.replace("<HOST>", &host).replace("<ADDR>", &host);
        let regex = Regex::new(&expanded).map_err(|e| PatternError::Regex(e.to_string()))?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// Compiles an `ignoreregex` (no address needed).
    pub fn ignore(source: &str) -> Result<Pattern, PatternError> {
        let regex = Regex::new(source).map_err(|e| PatternError::Regex(e.to_string()))?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    fn host(&self, line: &str) -> Option<IpAddr> {
        let caps = self.regex.captures(line)?;
        let text = caps
            .name(HOST_GROUP)
            .or_else(|| caps.name(HOST_BRACKETED_GROUP))?;
        text.as_str().parse().ok().map(canonical)
    }
}

/// A failure found in a line: the peer address and which pattern matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub addr: IpAddr,
    pub pattern: usize,
}

/// A jail's compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    fail: Vec<Pattern>,
    ignore: Vec<Pattern>,
}

impl Filter {
    pub fn new(fail: Vec<Pattern>, ignore: Vec<Pattern>) -> Filter {
        Filter { fail, ignore }
    }

    /// The first failregex that matches with a valid address, unless an ignoreregex matches.
    pub fn find(&self, line: &str) -> Option<Hit> {
        let hit = self
            .fail
            .iter()
            .enumerate()
            .find_map(|(pattern, p)| p.host(line).map(|addr| Hit { addr, pattern }))?;
        if self.ignore.iter().any(|p| p.regex.is_match(line)) {
            return None;
        }
        Some(hit)
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(fail: &[&str], ignore: &[&str]) -> Filter {
        Filter::new(
            fail.iter().map(|p| Pattern::fail(p).unwrap()).collect(),
            ignore.iter().map(|p| Pattern::ignore(p).unwrap()).collect(),
        )
    }

    fn host(f: &Filter, line: &str) -> Option<String> {
        f.find(line).map(|h| h.addr.to_string())
    }

    #[test]
    fn address_forms() {
        let f = filter(&[r"^login failed from <HOST>$"], &[]);
        assert_eq!(
            host(&f, "login failed from 192.0.2.7"),
            Some("192.0.2.7".into())
        );
        assert_eq!(
            host(&f, "login failed from 2001:db8::7"),
            Some("2001:db8::7".into())
        );
        assert_eq!(
            host(&f, "login failed from [2001:db8::7]"),
            Some("2001:db8::7".into())
        );
        assert_eq!(
            host(&f, "login failed from ::ffff:192.0.2.7"),
            Some("192.0.2.7".into())
        );
        assert_eq!(host(&f, "login failed from 999.1.1.1"), None);
        assert_eq!(host(&f, "login failed from example.org"), None);
        assert_eq!(host(&f, "login failed from [192.0.2.7"), None);
    }

    #[test]
    fn ignoreregex_vetoes() {
        let f = filter(&[r"^fail <HOST>( .*)?$"], &[r"^fail \S+ trusted$"]);
        assert_eq!(host(&f, "fail 192.0.2.1"), Some("192.0.2.1".into()));
        assert_eq!(host(&f, "fail 192.0.2.1 trusted"), None);
    }

    #[test]
    fn pattern_errors() {
        assert_eq!(
            Pattern::fail("no address here").unwrap_err(),
            PatternError::NoHost
        );
        assert_eq!(
            Pattern::fail("<HOST> and <ADDR>").unwrap_err(),
            PatternError::ManyHosts
        );
        assert!(matches!(
            Pattern::fail("(<HOST>").unwrap_err(),
            PatternError::Regex(_)
        ));
    }
}
