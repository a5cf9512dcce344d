//! Addresses and prefixes: the unit that is banned.
//!
//! An [`IpNet`] is always normalised: host bits are zero and an IPv4-mapped IPv6
//! address (`::ffff:192.0.2.1`) is stored as the IPv4 address it carries, so one
//! attacker can never appear under two spellings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 prefix with zeroed host bits. A single address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

/// Why a text is not an address or prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("prefix length {len} is out of range for {family} (max {max})")]
    BadPrefixLen {
        len: String,
        family: &'static str,
        max: u8,
    },
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d`; leaves every other address alone.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl IpNet {
    /// The prefix of length `len` that contains `addr` (clamped to the family's width).
    pub fn new(addr: IpAddr, len: u8) -> IpNet {
        let addr = canonical(addr);
        let len = len.min(max_len(addr));
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        IpNet { addr, len }
    }

    /// The single-address prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> IpNet {
        let addr = canonical(addr);
        IpNet {
            addr,
            len: max_len(addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn is_host(&self) -> bool {
        self.len == max_len(self.addr)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.addr.is_ipv4() && IpNet::new(addr, self.len).addr == self.addr
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn covers(&self, other: &IpNet) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// The last address of the prefix.
    pub fn last(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
            }
        }
    }

    /// Loopback addresses (127.0.0.0/8, ::1): local clients, never attackers.
    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }

    /// The smallest prefix covering the inclusive range `first..=last`, if the range
    /// is exactly one prefix (as the kernel stores `/n` elements of an interval set).
    pub fn from_range(first: IpAddr, last: IpAddr) -> Option<IpNet> {
        let len = match (first, last) {
            (IpAddr::V4(f), IpAddr::V4(l)) => {
                let span = u32::from(l).checked_sub(u32::from(f))?;
                32 - (span.checked_add(1).map_or(32, |n| n.trailing_zeros()))
            }
            (IpAddr::V6(f), IpAddr::V6(l)) => {
                let span = u128::from(l).checked_sub(u128::from(f))?;
                128 - (span.checked_add(1).map_or(128, |n| n.trailing_zeros()))
            }
            _ => return None,
        };
        let net = IpNet {
            addr: first,
            len: len as u8,
        };
        (IpNet::new(first, len as u8).addr == first && net.last() == last).then_some(net)
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> IpNet {
        IpNet::host(addr)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// Prefixes as sorted, merged ranges per family, for asking whether one address is in any
/// of them: a binary search, where a list of prefixes is a walk with a mask per entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl AddrSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> AddrSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match (net.addr, net.last()) {
                (IpAddr::V4(first), IpAddr::V4(last)) => v4.push((first.to_bits(), last.to_bits())),
                (IpAddr::V6(first), IpAddr::V6(last)) => v6.push((first.to_bits(), last.to_bits())),
                _ => unreachable!("a prefix's first and last addresses are of one family"),
            }
        }
        AddrSet {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    /// Whether `addr` lies in one of the prefixes: [`IpNet::contains`] of any of them.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match canonical(addr) {
            IpAddr::V4(a) => in_ranges(&self.v4, a.to_bits()),
            IpAddr::V6(a) => in_ranges(&self.v6, a.to_bits()),
        }
    }
}

/// The ranges sorted, overlapping ones joined: disjoint, in order.
fn merged<T: Copy + Ord>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Whether `x` lies in one of `ranges` (disjoint, in order).
fn in_ranges<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < x);
    ranges.get(i).is_some_and(|r| r.0 <= x)
}

/// Whether `name` is a host name worth a DNS lookup (RFC 1123 labels, the last one not all
/// digits). Anything else gets no lookup: `198.51.10` or `1` would be read by the system's
/// resolver as the numeric addresses 198.51.0.10 and 0.0.0.1, not as names.
pub fn is_host_name(name: &str) -> bool {
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/64`, `[2001:db8::1]`, `::ffff:192.0.2.1`.
/// Host bits set in a prefix (`192.0.2.7/24`) are cleared, as `nft` does.
impl FromStr for IpNet {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<IpNet, AddrError> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr_text = addr_text
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr_text);
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| AddrError::BadAddress(text.to_owned()))?;
        let mapped = matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        let addr_canon = canonical(addr);
        let Some(len_text) = len_text else {
            return Ok(IpNet::host(addr_canon));
        };
        let (family, max) = if addr.is_ipv4() {
            ("IPv4", 32)
        } else {
            ("IPv6", 128)
        };
        let len: u8 =
            len_text
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| AddrError::BadPrefixLen {
                    len: len_text.to_owned(),
                    family,
                    max,
                })?;
        // A prefix written on a mapped address counts its bits in IPv6 terms.
        let len = if mapped { len.saturating_sub(96) } else { len };
        Ok(IpNet::new(addr_canon, len))
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_addr_set_holds_what_its_prefixes_contain() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Addresses near one another, so that prefixes overlap, nest and touch.
        let addr = |next: &mut dyn FnMut() -> u64| -> IpAddr {
            let low = (next() % 1024) as u32;
            match next() % 3 {
                0 => IpAddr::V4(Ipv4Addr::from(0xc633_6400 | low)),
                1 => IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(low))),
                // IPv4-mapped: the IPv4 address it carries.
                _ => IpAddr::V6(Ipv4Addr::from(0xc633_6400 | low).to_ipv6_mapped()),
            }
        };
        for _ in 0..300 {
            let nets: Vec<IpNet> = (0..next() % 8)
                .map(|_| {
                    let a = addr(&mut next);
                    let width = if canonical(a).is_ipv4() { 32 } else { 128 };
                    // Mostly long prefixes, now and then /0.
                    let len = if next() % 10 == 0 {
                        0
                    } else {
                        width - (next() % 11) as u8
                    };
                    IpNet::new(a, len)
                })
                .collect();
            let set = AddrSet::new(nets.iter().copied());
            for _ in 0..200 {
                let a = addr(&mut next);
                assert_eq!(
                    set.contains(a),
                    nets.iter().any(|n| n.contains(a)),
                    "{a} in {nets:?}"
                );
            }
            for n in &nets {
                for a in [n.addr(), n.last()] {
                    assert!(set.contains(a), "{a} ends {n}");
                }
            }
        }
        // The very ends of each family.
        let all = AddrSet::new(["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        assert!(all.contains("255.255.255.255".parse().unwrap()));
        assert!(all.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        assert!(!AddrSet::default().contains("::".parse().unwrap()));
    }

    #[test]
    fn host_names_are_told_from_numbers() {
        for name in [
            "localhost",
            "mail.example.org",
            "a-b.example",
            "xn--bcher-kva.example.",
        ] {
            assert!(is_host_name(name), "{name}");
        }
        for not in [
            "198.51.10",
            "1",
            "0x7f.1",
            "a..b",
            "-a.example",
            "a b",
            "",
            "ex_ample.org",
        ] {
            assert!(!is_host_name(not), "{not}");
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7");
        assert_eq!(net("192.0.2.7/24").to_string(), "192.0.2.0/24");
        assert_eq!(net("[2001:db8::1]").to_string(), "2001:db8::1");
        assert_eq!(net("2001:db8:1::5/64").to_string(), "2001:db8:1::/64");
        assert_eq!(net("::ffff:198.51.100.9").to_string(), "198.51.100.9");
        assert_eq!(
            net("::ffff:198.51.100.0/120").to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "::1/129",
            "example.org",
            "1.2.3.4/x",
            "[1.2.3.4",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn containment() {
        assert!(net("10.0.0.0/8").contains("10.200.0.1".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("::ffff:b00:1".parse().unwrap()));
        assert!(net("10.0.0.0/8").contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(net("2001:db8:1::/64").covers(&net("2001:db8:1::5")));
        assert!(!net("2001:db8:1::/64").covers(&net("2001:db8::/32")));
    }

    #[test]
    fn ranges_round_trip() {
        for s in [
            "192.0.2.9",
            "192.0.2.0/24",
            "0.0.0.0/0",
            "2001:db8:1::/64",
            "::/0",
            "255.255.255.255",
        ] {
            let n = net(s);
            assert_eq!(IpNet::from_range(n.addr(), n.last()), Some(n), "{s}");
        }
        let a = "192.0.2.1".parse().unwrap();
        let b = "192.0.2.6".parse().unwrap();
        assert_eq!(IpNet::from_range(a, b), None);
    }
}
