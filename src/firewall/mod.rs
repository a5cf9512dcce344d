//! The firewall: banctl's nftables table, written over netlink.
//!
//! **Invariant:** only this module talks to the kernel's nf_tables, and every logical change
//! (a layout, a set of bans, an unban) is exactly one netlink batch: it happens entirely or
//! not at all. No process is ever spawned.
//!
//! **Invariant:** the kernel owns ban expiry. A ban is a set element with a timeout; banctl
//! keeps no timer per ban.

pub mod layout;
mod netlink;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

pub use layout::{Family, JailRules, PortRange, Protocol};
pub use netlink::{CounterValue, Monitor, NFT_MSG_NEWGEN, NetlinkError, Notification};

use crate::addr::IpNet;
use crate::duration::BanTime;
use layout::{FORWARD_CHAIN, FORWARD_PRIORITY, PREROUTING_CHAIN, PREROUTING_PRIORITY, TABLE};
use netlink::{Batch, Elem, ElemOp, Expr, Hook, KeyType, MetaKey, PayloadBase, SetSpec};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "banctl's table `inet {TABLE}` does not exist (is the daemon running, or has it never run?)"
    )]
    NoTable,
}

impl FirewallError {
    fn from_dump(e: NetlinkError) -> FirewallError {
        if e.errno() == Some(libc::ENOENT) {
            FirewallError::NoTable
        } else {
            e.into()
        }
    }
}

/// A ban to write: which jail, which address or prefix, for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub jail: String,
    pub net: IpNet,
    pub time: BanTime,
}

/// A ban put back (after a restart, a reboot, or a removal by someone else) with the time it
/// has left, so that `nft list` shows its full timeout and the true expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub ban: Ban,
    /// Time left; `None` for the whole ban time (and for permanent bans).
    pub expires_in: Option<Duration>,
}

/// A ban as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub net: IpNet,
    /// The timeout it was added with; `None` for a permanent ban.
    pub timeout: Option<Duration>,
    /// Time left before the kernel removes it; `None` for a permanent ban.
    pub expires_in: Option<Duration>,
}

pub fn counter_name(jail: &str) -> String {
    format!("{jail}_dropped")
}

/// The nftables table of banctl.
pub struct Firewall {
    sock: netlink::Socket,
}

impl Firewall {
    pub fn open() -> Result<Firewall, FirewallError> {
        Ok(Firewall {
            sock: netlink::Socket::open(TABLE)?,
        })
    }

    /// Declares the whole layout in one batch: table, chain, per-jail sets, counters and rules,
    /// plus the bans in `restore` (which must be absent from the kernel; see [`Firewall::restore`]).
    /// Existing sets keep their elements, so bans survive a restart or a reload. Sets of jails
    /// that are no longer configured are removed.
    pub fn apply_layout(
        &mut self,
        jails: &[JailRules],
        restore: &[Restore],
    ) -> Result<(), FirewallError> {
        let existing = self.sock.list_sets()?;
        let mut batch = self.sock.batch();
        batch.add_table("banctl: bans written by the banctl daemon; see `banctl list`");
        batch.add_base_chain(
            PREROUTING_CHAIN,
            Hook::Prerouting,
            PREROUTING_PRIORITY,
            "banctl: drops banned sources before conntrack and DNAT, for host and container ports",
        );
        batch.flush_chain(PREROUTING_CHAIN);
        batch.add_base_chain(
            FORWARD_CHAIN,
            Hook::Forward,
            FORWARD_PRIORITY,
            "banctl: drops banned sources in routed traffic (containers, VMs), by original port",
        );
        batch.flush_chain(FORWARD_CHAIN);
        for jail in jails {
            let counter = counter_name(&jail.name);
            batch.add_counter(&counter, &format!("packets dropped by jail {}", jail.name));
            for family in Family::BOTH {
                let name = jail.set_name(family);
                let comment = format!(
                    "banctl jail {}: banned IP{} sources",
                    jail.name,
                    family.suffix()
                );
                batch.add_set(&ban_set_spec(&name, family, Some(&comment)));
            }
            for family in Family::BOTH {
                let exprs = rule_exprs(&mut batch, jail, family, Hook::Prerouting);
                batch.add_rule(PREROUTING_CHAIN, &exprs, &jail.comment());
                if jail.forward {
                    let exprs = rule_exprs(&mut batch, jail, family, Hook::Forward);
                    batch.add_rule(FORWARD_CHAIN, &exprs, &jail.comment());
                }
            }
        }
        for stale in stale_jails(&existing, jails) {
            for family in Family::BOTH {
                let name = layout::set_name(&stale, family);
                if existing.contains(&name) {
                    batch.del_set(&name, key_type(family));
                }
            }
            // Add-then-delete removes the counter whether or not it still exists.
            let counter = counter_name(&stale);
            batch.add_counter(&counter, "");
            batch.del_counter(&counter);
        }
        for ((name, family), (elems, what)) in &restore_by_set(restore) {
            batch.set_elements(&ban_set_spec(name, *family, None), elems, ElemOp::Add, what);
        }
        Ok(self.sock.commit(batch)?)
    }

    /// Writes bans, all in one batch. A ban of an address that is already banned replaces its
    /// timeout.
    ///
    /// Fast path: one exclusive add of every element. If any already exists, the kernel refuses
    /// the whole batch (EEXIST, nothing committed) and the bans are written again as add, delete,
    /// add in one batch, which leaves exactly the new elements on every kernel (a plain re-add
    /// keeps the old timeout on some).
    pub fn ban(&mut self, bans: &[Ban]) -> Result<(), FirewallError> {
        let by_set = group_by_set(
            bans.iter()
                .map(|ban| (&ban.jail, &ban.net, timeout_ms(ban.time), None)),
        );
        match self.write_elements(&by_set, &[ElemOp::AddNew]) {
            Err(FirewallError::Netlink(e)) if e.errno() == Some(libc::EEXIST) => {
                self.write_elements(&by_set, &[ElemOp::Add, ElemOp::Delete, ElemOp::Add])
            }
            other => other,
        }
    }

    /// One batch applying `ops`, in order, to every set's elements.
    fn write_elements(&mut self, by_set: &SetElems, ops: &[ElemOp]) -> Result<(), FirewallError> {
        let mut batch = self.sock.batch();
        for op in ops {
            for ((name, family), (elems, what)) in by_set {
                batch.set_elements(&ban_set_spec(name, *family, None), elems, *op, what);
            }
        }
        Ok(self.sock.commit(batch)?)
    }

    /// Adds bans that are known to be absent (a restore into fresh sets), all in one batch.
    /// Unlike [`Firewall::ban`] this does not replace existing elements, so it is a third of the
    /// work; an element that does exist keeps its timeout.
    pub fn restore(&mut self, bans: &[Restore]) -> Result<(), FirewallError> {
        self.write_elements(&restore_by_set(bans), &[ElemOp::Add])
    }

    /// Removes bans (exact elements), all in one batch. Fails (changing nothing) if one is absent.
    pub fn unban(&mut self, items: &[(String, IpNet)]) -> Result<(), FirewallError> {
        let by_set = group_by_set(items.iter().map(|(jail, net)| (jail, net, None, None)));
        self.write_elements(&by_set, &[ElemOp::Delete])
    }

    /// The bans of each of `jails` in the kernel now; a jail whose sets (or the whole table) are
    /// missing has none.
    pub fn snapshot(
        &mut self,
        jails: &[&str],
    ) -> Result<BTreeMap<String, Vec<Element>>, FirewallError> {
        let sets = match self.sock.list_sets() {
            Ok(sets) => sets,
            Err(e) if e.errno() == Some(libc::ENOENT) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut out = BTreeMap::new();
        for jail in jails {
            let mut elements = Vec::new();
            for family in Family::BOTH {
                let name = layout::set_name(jail, family);
                if sets.contains(&name) {
                    let raw = match self.sock.dump_set(&name) {
                        Ok(raw) => raw,
                        // Removed since the listing: nothing in it.
                        Err(e) if e.errno() == Some(libc::ENOENT) => Vec::new(),
                        Err(e) => return Err(e.into()),
                    };
                    elements.extend(pair_intervals(raw, family));
                }
            }
            out.insert((*jail).to_owned(), elements);
        }
        Ok(out)
    }

    /// Every ban of a jail, IPv4 then IPv6, as the kernel holds them now.
    pub fn list(&mut self, jail: &str) -> Result<Vec<Element>, FirewallError> {
        let mut out = Vec::new();
        for family in Family::BOTH {
            let name = layout::set_name(jail, family);
            let raw = self
                .sock
                .dump_set(&name)
                .map_err(FirewallError::from_dump)?;
            out.extend(pair_intervals(raw, family));
        }
        Ok(out)
    }

    /// Packets and bytes dropped by a jail's rules.
    pub fn dropped(&mut self, jail: &str) -> Result<CounterValue, FirewallError> {
        self.sock
            .counter(&counter_name(jail))
            .map_err(FirewallError::from_dump)
    }

    /// Names of the jails that have sets in the kernel now.
    pub fn jails_in_kernel(&mut self) -> Result<Vec<String>, FirewallError> {
        let sets = self.sock.list_sets()?;
        let mut jails: Vec<String> = sets
            .iter()
            .filter_map(|s| s.strip_suffix("_v4"))
            .filter(|j| sets.contains(&layout::set_name(j, Family::V6)))
            .map(str::to_owned)
            .collect();
        jails.sort();
        Ok(jails)
    }
}

fn timeout_ms(time: BanTime) -> Option<u64> {
    match time {
        BanTime::Finite(d) => Some(d.as_millis().min(u128::from(u64::MAX)) as u64),
        BanTime::Permanent => None,
    }
}

/// A ban set: its name and family.
type SetKey = (String, Family);
type SetElems = BTreeMap<SetKey, (Vec<Elem>, String)>;

/// Elements per set, so that a round of bans packs many elements into each message, with a
/// description naming the first few addresses, for error messages.
/// Items are (jail, address or prefix, timeout, expiration) with times in milliseconds.
fn group_by_set<'a>(
    items: impl Iterator<Item = (&'a String, &'a IpNet, Option<u64>, Option<u64>)>,
) -> SetElems {
    let mut by_set: BTreeMap<SetKey, (Vec<Elem>, Vec<&IpNet>)> = BTreeMap::new();
    for (jail, net, timeout_ms, expiration_ms) in items {
        let entry = by_set
            .entry((layout::set_name(jail, Family::of(net)), Family::of(net)))
            .or_default();
        entry.0.extend(net_elems(net, timeout_ms, expiration_ms));
        entry.1.push(net);
    }
    by_set
        .into_iter()
        .map(|(key, (elems, nets))| {
            let shown: Vec<String> = nets.iter().take(3).map(ToString::to_string).collect();
            let more = match nets.len() {
                n if n > 3 => format!(" and {} more", n - 3),
                _ => String::new(),
            };
            (key, (elems, format!("{}{more}", shown.join(", "))))
        })
        .collect()
}

fn restore_by_set(restore: &[Restore]) -> SetElems {
    group_by_set(restore.iter().map(|r| {
        let timeout = timeout_ms(r.ban.time);
        // Only a finite ban has an expiry; never later than its timeout.
        let expiration = timeout.and(r.expires_in).map(|left| {
            let left = left.as_millis().min(u128::from(u64::MAX)) as u64;
            left.clamp(1, timeout.unwrap_or(left))
        });
        (&r.ban.jail, &r.ban.net, timeout, expiration)
    }))
}

fn stale_jails(existing: &[String], jails: &[JailRules]) -> Vec<String> {
    let mut stale: Vec<String> = existing
        .iter()
        .filter_map(|s| s.strip_suffix("_v4").or_else(|| s.strip_suffix("_v6")))
        .filter(|j| !jails.iter().any(|c| c.name == *j))
        .map(str::to_owned)
        .collect();
    stale.sort();
    stale.dedup();
    stale
}

fn key_type(family: Family) -> KeyType {
    match family {
        Family::V4 => KeyType::Ipv4Addr,
        Family::V6 => KeyType::Ipv6Addr,
    }
}

fn ban_set_spec<'a>(name: &'a str, family: Family, comment: Option<&'a str>) -> SetSpec<'a> {
    SetSpec {
        name,
        key: key_type(family),
        interval: true,
        timeout: true,
        anonymous_id: None,
        comment,
    }
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address after `addr`, or `None` past the end of the family.
fn successor(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// An interval-set element pair for a prefix: the start carries the timeout; the end (one past
/// the last address, flagged INTERVAL_END) must carry none. A prefix reaching the end of the
/// address space has no end element.
fn net_elems(net: &IpNet, timeout_ms: Option<u64>, expiration_ms: Option<u64>) -> Vec<Elem> {
    let mut start = Elem::key(octets(net.addr()));
    start.timeout_ms = timeout_ms;
    start.expiration_ms = expiration_ms;
    let mut elems = vec![start];
    if let Some(end) = successor(net.last()) {
        elems.push(Elem::end(octets(end)));
    }
    elems
}

fn addr_from_key(key: &[u8], family: Family) -> Option<IpAddr> {
    match family {
        Family::V4 => <[u8; 4]>::try_from(key).ok().map(IpAddr::from),
        Family::V6 => <[u8; 16]>::try_from(key).ok().map(IpAddr::from),
    }
}

fn predecessor(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a).checked_sub(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => u128::from(a).checked_sub(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// Turns the kernel's start/end elements back into prefixes.
fn pair_intervals(raw: Vec<netlink::DumpedElem>, family: Family) -> Vec<Element> {
    let mut elems: Vec<(IpAddr, netlink::DumpedElem)> = raw
        .into_iter()
        .filter_map(|e| addr_from_key(&e.key, family).map(|a| (a, e)))
        .collect();
    // At equal keys an end sorts before a start: [a, b) followed by [b, c).
    elems.sort_by(|(a, x), (b, y)| a.cmp(b).then(y.interval_end.cmp(&x.interval_end)));
    let mut out = Vec::new();
    let mut open: Option<(IpAddr, netlink::DumpedElem)> = None;
    let max = match family {
        Family::V4 => IpAddr::from([255u8; 4]),
        Family::V6 => IpAddr::from([255u8; 16]),
    };
    let mut close = |start: (IpAddr, netlink::DumpedElem), last: IpAddr| match IpNet::from_range(
        start.0, last,
    ) {
        Some(net) => out.push(Element {
            net,
            timeout: start.1.timeout_ms.map(Duration::from_millis),
            expires_in: start.1.expiration_ms.map(Duration::from_millis),
        }),
        None => {
            tracing::warn!(first = %start.0, %last, "set holds a range that is not a prefix; ignored")
        }
    };
    for (addr, e) in elems {
        if e.interval_end {
            if let (Some(start), Some(last)) = (open.take(), predecessor(addr)) {
                close(start, last);
            }
        } else if let Some(prev) = open.replace((addr, e)) {
            // Two starts in a row: the first one runs to the end of the address space.
            close(prev, max);
        }
    }
    if let Some(start) = open {
        close(start, max);
    }
    out
}

/// Prerouting: `ip[6] saddr @set  fib daddr type local  meta l4proto P  th dport D  counter drop`;
/// forward: the same with `ct original proto-dst D` for the port and no fib match.
fn rule_exprs(batch: &mut Batch, jail: &JailRules, family: Family, hook: Hook) -> Vec<Expr> {
    let (nfproto, offset, len) = match family {
        Family::V4 => (libc::NFPROTO_IPV4 as u8, 12, 4),
        Family::V6 => (libc::NFPROTO_IPV6 as u8, 8, 16),
    };
    let mut exprs = vec![
        Expr::Meta(MetaKey::NfProto),
        Expr::CmpEq(vec![nfproto]),
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len,
        },
        Expr::Lookup {
            set: jail.set_name(family),
            id: None,
        },
    ];
    // The port a client aimed at: before DNAT in prerouting it is still in the packet; in
    // forward (after DNAT) only conntrack remembers it.
    let port = match hook {
        Hook::Prerouting => {
            exprs.push(Expr::FibDaddrType);
            exprs.push(Expr::CmpEq(
                u32::from(libc::RTN_LOCAL).to_ne_bytes().to_vec(),
            ));
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
            }
        }
        Hook::Forward => Expr::CtOriginalProtoDst,
    };
    exprs.push(Expr::Meta(MetaKey::L4Proto));
    match jail.protocol.numbers() {
        [one] => exprs.push(Expr::CmpEq(vec![*one])),
        many => {
            let id = batch.set_id();
            let spec = anon_spec(KeyType::InetProto, false, id);
            let elems: Vec<Elem> = many.iter().map(|p| Elem::key(vec![*p])).collect();
            batch.add_set(&spec);
            batch.set_elements(&spec, &elems, ElemOp::Add, "protocols");
            exprs.push(Expr::Lookup {
                set: String::new(),
                id: Some(id),
            });
        }
    }
    match jail.ports.as_slice() {
        [] => {}
        [one] if one.first == one.last => {
            exprs.push(port);
            exprs.push(Expr::CmpEq(one.first.to_be_bytes().to_vec()));
        }
        ports => {
            let id = batch.set_id();
            let spec = anon_spec(KeyType::InetService, true, id);
            let mut elems = Vec::new();
            for range in merge_ranges(ports) {
                elems.push(Elem::key(range.first.to_be_bytes().to_vec()));
                if let Some(end) = range.last.checked_add(1) {
                    elems.push(Elem::end(end.to_be_bytes().to_vec()));
                }
            }
            batch.add_set(&spec);
            batch.set_elements(&spec, &elems, ElemOp::Add, "ports");
            exprs.push(port);
            exprs.push(Expr::Lookup {
                set: String::new(),
                id: Some(id),
            });
        }
    }
    exprs.push(Expr::CounterRef(counter_name(&jail.name)));
    exprs.push(Expr::Drop);
    exprs
}

fn anon_spec(key: KeyType, interval: bool, id: u32) -> SetSpec<'static> {
    SetSpec {
        name: "anonymous",
        key,
        interval,
        timeout: false,
        anonymous_id: Some(id),
        comment: None,
    }
}

/// Sorted, non-overlapping, non-adjacent ranges (an interval set rejects overlaps).
fn merge_ranges(ports: &[PortRange]) -> Vec<PortRange> {
    let mut sorted = ports.to_vec();
    sorted.sort();
    let mut out: Vec<PortRange> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(prev) if u32::from(r.first) <= u32::from(prev.last) + 1 => {
                prev.last = prev.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumped(key: &[u8], end: bool, t: Option<u64>) -> netlink::DumpedElem {
        netlink::DumpedElem {
            key: key.to_vec(),
            interval_end: end,
            timeout_ms: t,
            expiration_ms: t,
        }
    }

    #[test]
    fn elements_of_a_prefix() {
        let e = net_elems(&"192.0.2.7".parse().unwrap(), Some(5000), None);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].key, vec![192, 0, 2, 7]);
        assert_eq!(e[0].timeout_ms, Some(5000));
        assert_eq!(
            (e[1].key.clone(), e[1].interval_end, e[1].timeout_ms),
            (vec![192, 0, 2, 8], true, None)
        );
        assert_eq!(
            net_elems(&"255.255.255.255".parse().unwrap(), None, None).len(),
            1
        );
    }

    #[test]
    fn intervals_pair_back_into_prefixes() {
        // Kernel dumps come in any order; adjacent intervals share a key.
        let raw = vec![
            dumped(&[10, 0, 0, 2], true, None),
            dumped(&[10, 0, 0, 1], false, Some(1000)),
            dumped(&[10, 0, 0, 2], false, Some(2000)),
            dumped(&[10, 0, 0, 3], true, None),
            dumped(&[192, 0, 2, 0], false, None),
            dumped(&[192, 0, 3, 0], true, None),
            dumped(&[255, 255, 255, 255], false, None),
        ];
        let got: Vec<String> = pair_intervals(raw, Family::V4)
            .iter()
            .map(|e| e.net.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "192.0.2.0/24", "255.255.255.255"]
        );
    }

    #[test]
    fn ranges_merge() {
        let r = |a, b| PortRange { first: a, last: b };
        assert_eq!(
            merge_ranges(&[r(443, 443), r(80, 80), r(81, 90), r(85, 86)]),
            vec![r(80, 90), r(443, 443)]
        );
    }
}
