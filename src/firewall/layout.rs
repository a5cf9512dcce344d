//! The nftables layout banctl owns, described as plain data (no I/O, no `unsafe`).
//!
//! ```text
//! table inet banctl
//!   set <jail>_v4      { type ipv4_addr; flags timeout; }            # single addresses
//!   set <jail>_v4_nets { type ipv4_addr; flags interval, timeout; }  # shorter prefixes
//!   set <jail>_v6      { type ipv6_addr; flags timeout; }
//!   set <jail>_v6_nets { type ipv6_addr; flags interval, timeout; }
//!   chain prerouting { type filter hook prerouting priority raw - 5; policy accept;
//!     ip  saddr @<jail>_v4      fib daddr type local meta l4proto tcp th dport { 22 } counter drop
//!     ip  saddr @<jail>_v4_nets fib daddr type local meta l4proto tcp th dport { 22 } counter drop
//!     (the same two for ip6 and the _v6 sets) }
//!   chain forward { type filter hook forward priority filter - 5; policy accept;
//!     ip  saddr @<jail>_v4      meta l4proto tcp ct original proto-dst { 22 } counter drop
//!     … (one rule per set, as in prerouting) }
//! ```
//!
//! Single addresses, nearly every ban, live in a hash set: one element each, where an interval
//! set stores two (start and end) in a tree. A packet's lookup does not grow with the number
//! of bans (with a million, a dropped packet cost about 1.5–2 µs less, measured), and a burst
//! notifies half as many elements. Prefixes need the interval set. Both sets of a family are one ban list to everything outside
//! [`crate::firewall`]: an address inside a banned prefix is covered by it, as if in one set.
//!
//! The prerouting rule only drops traffic addressed to this host (`fib daddr type local`):
//! host services, and published container ports, whose destination is still the host's address
//! before DNAT. A router's transit traffic is left alone there; the forward rule (per jail,
//! `forward = true` by default) covers what is reached by routing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const TABLE: &str = "banctl";
pub const PREROUTING_CHAIN: &str = "prerouting";
/// `raw - 5`: before conntrack (-200) and before every DNAT (-100), so the port is the
/// one the user sees, for host services and published container ports alike.
pub const PREROUTING_PRIORITY: i32 = -300 - 5;
pub const FORWARD_CHAIN: &str = "forward";
/// `filter - 5`: routed traffic, before the usual filter chains (Docker's included).
pub const FORWARD_PRIORITY: i32 = -5;

/// An inclusive range of destination ports (`22` is `22-22`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    #[error("{0:?} is not a port: write a number from 1 to 65535 or a range like \"8000-8100\"")]
    Syntax(String),
    #[error("port range {0:?} is reversed")]
    Reversed(String),
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(text: &str) -> Result<PortRange, PortError> {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| PortError::Syntax(text.to_owned()))
        };
        let range = match text.split_once('-') {
            Some((a, b)) => PortRange {
                first: port(a)?,
                last: port(b)?,
            },
            None => PortRange::single(port(text)?),
        };
        if range.first > range.last {
            return Err(PortError::Reversed(text.to_owned()));
        }
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Transport protocols a jail's rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Both,
}

impl Protocol {
    /// IANA protocol numbers (`meta l4proto`).
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[libc::IPPROTO_TCP as u8],
            Protocol::Udp => &[libc::IPPROTO_UDP as u8],
            Protocol::Both => &[libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8],
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Protocol, String> {
        match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "both" | "tcp+udp" => Ok(Protocol::Both),
            _ => Err(format!(
                "{text:?} is not a protocol: write \"tcp\", \"udp\" or \"both\""
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "both",
        })
    }
}

/// IP family of a ban set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(net: &crate::addr::IpNet) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Which of a family's two sets holds a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// A single address (`/32`, `/128`): the hash set `<jail>_v4`.
    Addr,
    /// A shorter prefix: the interval set `<jail>_v4_nets`.
    Prefix,
}

impl Shape {
    pub const BOTH: [Shape; 2] = [Shape::Addr, Shape::Prefix];

    pub fn of(net: &crate::addr::IpNet) -> Shape {
        if net.is_host() {
            Shape::Addr
        } else {
            Shape::Prefix
        }
    }

    pub fn other(self) -> Shape {
        match self {
            Shape::Addr => Shape::Prefix,
            Shape::Prefix => Shape::Addr,
        }
    }
}

/// What the firewall needs to know about one jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailRules {
    pub name: String,
    /// Empty means every port.
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    /// Also drop banned sources in routed traffic (containers and VMs reached by their own
    /// address), matching the port as first seen (`ct original proto-dst`).
    pub forward: bool,
}

impl JailRules {
    pub fn set_name(&self, family: Family, shape: Shape) -> String {
        set_name(&self.name, family, shape)
    }

    /// The comment on the jail's rules, as `nft list ruleset` shows it.
    pub fn comment(&self) -> String {
        let ports = if self.ports.is_empty() {
            "all ports".to_owned()
        } else {
            let list: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            format!("port {}", list.join(","))
        };
        format!("banctl jail {}: {} {}", self.name, self.protocol, ports)
    }
}

/// `<jail>_v4`, `<jail>_v4_nets`, `<jail>_v6`, `<jail>_v6_nets`.
pub fn set_name(jail: &str, family: Family, shape: Shape) -> String {
    match shape {
        Shape::Addr => format!("{jail}_{}", family.suffix()),
        Shape::Prefix => format!("{jail}_{}{NETS}", family.suffix()),
    }
}

const NETS: &str = "_nets";

/// The jail, family and shape a set name of ours stands for ([`set_name`] backwards). Jail
/// names may hold `_`, yet no name is two sets: an address set's name ends in `_v4` or
/// `_v6`, a prefix set's in `_nets`.
pub fn parse_set_name(name: &str) -> Option<(&str, Family, Shape)> {
    let (rest, shape) = match name.strip_suffix(NETS) {
        Some(rest) => (rest, Shape::Prefix),
        None => (name, Shape::Addr),
    };
    Family::BOTH.into_iter().find_map(|family| {
        let jail = rest.strip_suffix(family.suffix())?.strip_suffix('_')?;
        (!jail.is_empty()).then_some((jail, family, shape))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_read_back_into_jail_family_and_shape() {
        for jail in ["sshd", "a", "web_v4", "x_v6_nets", "nets", "v4"] {
            for family in Family::BOTH {
                for shape in Shape::BOTH {
                    let name = set_name(jail, family, shape);
                    assert_eq!(parse_set_name(&name), Some((jail, family, shape)), "{name}");
                }
            }
        }
        for other in [
            "v4",
            "_v4",
            "sshd",
            "sshd_nets",
            "sshd_v5",
            "_v6_nets",
            "sshd_v4nets",
        ] {
            assert_eq!(parse_set_name(other), None, "{other}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!("22".parse(), Ok(PortRange::single(22)));
        assert_eq!(
            "8000-8100".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8100
            })
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("65536".parse::<PortRange>().is_err());
        assert!(matches!(
            "90-80".parse::<PortRange>(),
            Err(PortError::Reversed(_))
        ));
        assert!("ssh".parse::<PortRange>().is_err());
    }
}
