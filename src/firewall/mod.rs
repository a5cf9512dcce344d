//! The firewall: banctl's nftables table, written over netlink.
//!
//! **Invariant:** only this module talks to the kernel's nf_tables, and every logical change
//! (a layout, a set of bans, an unban) is exactly one netlink batch: it happens entirely or
//! not at all. No process is ever spawned.
//!
//! **Invariant:** the kernel owns ban expiry. A ban is a set element with a timeout; banctl
//! keeps no timer per ban.

pub mod layout;
// The one module allowed `unsafe` (libnftnl); each block says why it is sound.
#[allow(unsafe_code)]
mod netlink;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;
use std::time::Duration;

pub use layout::{Family, JailRules, PortRange, Protocol, Shape};
pub use netlink::{CounterValue, Monitor, NFT_MSG_NEWGEN, NetlinkError, Notification};

use crate::addr::IpNet;
pub use crate::ban::{Ban, Element, Fitted, Overlaps, Restore, fit};
use crate::ban::{Place, place, widest_of_round};
use crate::duration::BanTime;
use layout::{FORWARD_CHAIN, FORWARD_PRIORITY, PREROUTING_CHAIN, PREROUTING_PRIORITY, TABLE};
use netlink::{Batch, Elem, ElemOp, Expr, Hook, KeyType, MetaKey, PayloadBase, SetInfo, SetSpec};

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
    ///
    /// A table written before address sets had one interval set per family, under the name
    /// the address set has now: each such set is replaced in the same batch, its elements
    /// moved into the new sets with the time they have left.
    pub fn apply_layout(
        &mut self,
        jails: &[JailRules],
        restore: &[Restore],
    ) -> Result<(), FirewallError> {
        let existing = self.sock.list_sets()?;
        let mut moved = Vec::new();
        for info in existing.iter().filter(|info| is_old_layout(info)) {
            let Some((jail, family, _)) = layout::parse_set_name(&info.name) else {
                continue;
            };
            if jails.iter().any(|j| j.name == jail) {
                let elements = self.read_set(&info.name, family, true)?;
                moved.extend(elements.into_iter().map(|e| e.into_restore(jail)));
            }
        }
        if !moved.is_empty() {
            tracing::info!(
                bans = moved.len(),
                "moving the bans of an older table into address and prefix sets"
            );
        }
        let mut batch = self.sock.batch();
        layout_batch(&mut batch, jails, &existing, &[restore, &moved]);
        Ok(self.sock.commit(batch)?)
    }

    /// Writes bans, all in one batch. A ban of an address that is already banned replaces its
    /// timeout. A family's two sets hold no overlapping elements between them, so a ban that
    /// an element (or a wider ban of the same round) already covers is not written, and a ban
    /// wider than elements already there replaces them; [`Overlaps`] says which. One
    /// overlapping ban never costs the others of its round.
    ///
    /// Fast path: when no ban meets an element of its family's other set (read first), one
    /// exclusive add of every element. If any already exists or overlaps one in its own set,
    /// the kernel refuses the whole batch (EEXIST, nothing committed); both sets of each
    /// family the round touches are then read, and one batch deletes the narrower elements,
    /// writes bans that exist again as add, delete, add (which leaves exactly the new element
    /// on every kernel: a plain re-add keeps the old timeout on some) and adds the rest.
    pub fn ban(&mut self, bans: &[Ban]) -> Result<Overlaps, FirewallError> {
        let items: Vec<Restore> = bans.iter().cloned().map(Restore::whole).collect();
        self.restore(&items)
    }

    /// Like [`Firewall::ban`], each ban with the time it has left (a ban put back).
    pub fn restore(&mut self, items: &[Restore]) -> Result<Overlaps, FirewallError> {
        let mut overlaps = Overlaps::default();
        let kept = widest_of_round(items.iter().map(|r| &r.ban), &mut overlaps.covered);
        let chosen: Vec<&Restore> = kept.iter().map(|&i| &items[i]).collect();
        let mut read = ReadSets::new();
        if self.clear_of_other_shape(&chosen, &mut read)? {
            match self.write_elements(&restore_by_set(&chosen), &[ElemOp::AddNew]) {
                Err(FirewallError::Netlink(e)) if e.errno() == Some(libc::EEXIST) => {}
                other => return other.map(|()| overlaps),
            }
        }
        // Both sets of each family this round touches (those the check read are not read
        // again: nothing was committed since), and fit the round to what they hold together.
        let mut existing: BTreeMap<(&str, Family), Vec<IpNet>> = BTreeMap::new();
        for &r in &chosen {
            if let Entry::Vacant(slot) = existing.entry((&r.ban.jail, Family::of(&r.ban.net))) {
                let &(jail, family) = slot.key();
                let mut nets = Vec::new();
                for shape in Shape::BOTH {
                    nets.extend_from_slice(self.read_once(&mut read, jail, family, shape)?);
                }
                nets.sort();
                slot.insert(nets);
            }
        }
        let (mut again, mut fresh) = (Vec::new(), Vec::new());
        for i in kept {
            let r = &items[i];
            let nets = &existing[&(r.ban.jail.as_str(), Family::of(&r.ban.net))];
            match place(nets, &r.ban.net) {
                Place::Same => again.push(r),
                Place::Inside(wider) => overlaps.covered.push((i, wider)),
                Place::Over(inside) => {
                    let jail = &r.ban.jail;
                    overlaps
                        .replaced
                        .extend(inside.into_iter().map(|net| (jail.clone(), net)));
                    fresh.push(r);
                }
            }
        }
        let removed = group_by_set(
            overlaps
                .replaced
                .iter()
                .map(|(jail, net)| (jail, net, None, None)),
        );
        let mut batch = self.sock.batch();
        batch_elements(&mut batch, &removed, &[ElemOp::Delete]);
        let refresh = [ElemOp::Add, ElemOp::Delete, ElemOp::Add];
        batch_elements(&mut batch, &restore_by_set(&again), &refresh);
        batch_elements(&mut batch, &restore_by_set(&fresh), &[ElemOp::Add]);
        self.sock.commit(batch)?;
        Ok(overlaps)
    }

    /// Whether no ban of `round` meets an element of its family's other set: the kernel
    /// refuses an overlap within one set (EEXIST), but an address inside a banned prefix,
    /// or a prefix over banned addresses, sits in the other set. Those sets are read (for a
    /// round of addresses, the prefix sets: small, mostly empty) into `read` and compared
    /// here.
    fn clear_of_other_shape<'k>(
        &mut self,
        round: &[&'k Restore],
        read: &mut ReadSets<'k>,
    ) -> Result<bool, FirewallError> {
        for r in round {
            let net = &r.ban.net;
            let (family, other) = (Family::of(net), Shape::of(net).other());
            let nets = self.read_once(read, &r.ban.jail, family, other)?;
            if !matches!(place(nets, net), Place::Over(inside) if inside.is_empty()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What `jail`'s set of `family` and `shape` holds, as sorted prefixes (for [`place`]):
    /// from `read` when this round has read it already, else read now and kept there.
    fn read_once<'r, 'k>(
        &mut self,
        read: &'r mut ReadSets<'k>,
        jail: &'k str,
        family: Family,
        shape: Shape,
    ) -> Result<&'r [IpNet], NetlinkError> {
        Ok(match read.entry((jail, family, shape)) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => {
                let name = layout::set_name(jail, family, shape);
                let elements = self.read_set(&name, family, shape == Shape::Prefix)?;
                let mut nets: Vec<IpNet> = elements.into_iter().map(|e| e.net).collect();
                nets.sort();
                slot.insert(nets)
            }
        })
    }

    /// The elements of one set, read back into bans: an interval set's start/end pairs
    /// become prefixes, a hash set's keys single addresses.
    fn read_set(
        &mut self,
        name: &str,
        family: Family,
        interval: bool,
    ) -> Result<Vec<Element>, NetlinkError> {
        let raw = self.sock.dump_set(name)?;
        Ok(if interval {
            pair_intervals(raw, family)
        } else {
            addresses(raw, family)
        })
    }

    /// The bans of `jail` in whichever of its sets `sets` lists, each family sorted by
    /// address. A set removed since the listing holds nothing.
    fn read_jail(&mut self, sets: &[SetInfo], jail: &str) -> Result<Vec<Element>, NetlinkError> {
        let mut out = Vec::new();
        for family in Family::BOTH {
            let start = out.len();
            for shape in Shape::BOTH {
                let name = layout::set_name(jail, family, shape);
                let Some(info) = sets.iter().find(|s| s.name == name) else {
                    continue;
                };
                match self.read_set(&name, family, info.interval) {
                    Ok(elements) => out.extend(elements),
                    Err(e) if e.errno() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            out[start..].sort_unstable_by_key(|e| e.net);
        }
        Ok(out)
    }

    /// One batch applying `ops`, in order, to every set's elements.
    fn write_elements(&mut self, by_set: &SetElems, ops: &[ElemOp]) -> Result<(), FirewallError> {
        let mut batch = self.sock.batch();
        batch_elements(&mut batch, by_set, ops);
        Ok(self.sock.commit(batch)?)
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
            out.insert((*jail).to_owned(), self.read_jail(&sets, jail)?);
        }
        Ok(out)
    }

    /// Every ban of a jail, IPv4 then IPv6, each sorted by address, as the kernel holds
    /// them now.
    pub fn list(&mut self, jail: &str) -> Result<Vec<Element>, FirewallError> {
        let sets = self.sock.list_sets().map_err(FirewallError::from_dump)?;
        let has = |family| {
            let name = layout::set_name(jail, family, Shape::Addr);
            sets.iter().any(|s| s.name == name)
        };
        if !Family::BOTH.into_iter().all(has) {
            return Err(FirewallError::NoTable);
        }
        self.read_jail(&sets, jail)
            .map_err(FirewallError::from_dump)
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
        let has = |name: &str| sets.iter().any(|s| s.name == name);
        let mut jails: Vec<String> = sets
            .iter()
            .filter_map(|s| match layout::parse_set_name(&s.name) {
                Some((jail, Family::V4, Shape::Addr)) => Some(jail),
                _ => None,
            })
            .filter(|j| has(&layout::set_name(j, Family::V6, Shape::Addr)))
            .map(str::to_owned)
            .collect();
        jails.sort();
        Ok(jails)
    }
}

/// The layout's messages: table, chains, per-jail counters, sets and rules, the removal of
/// jails no longer configured and of sets of the older layout (`existing`: the sets in the
/// kernel now), and the bans of `restore`.
fn layout_batch(
    batch: &mut Batch,
    jails: &[JailRules],
    existing: &[SetInfo],
    restore: &[&[Restore]],
) {
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
            for shape in Shape::BOTH {
                let name = jail.set_name(family, shape);
                if shape == Shape::Addr
                    && existing.iter().any(|s| s.name == name && is_old_layout(s))
                {
                    // Its rules went with the flushes above; its bans are in `restore`.
                    batch.del_set(&name, key_type(family));
                }
                let what = match shape {
                    Shape::Addr => "addresses",
                    Shape::Prefix => "prefixes",
                };
                let comment = format!(
                    "banctl jail {}: banned IP{} source {what}",
                    jail.name,
                    family.suffix()
                );
                batch.add_set(&ban_set_spec(&name, family, shape, Some(&comment)));
            }
        }
        for family in Family::BOTH {
            for shape in Shape::BOTH {
                let exprs = rule_exprs(batch, jail, family, shape, Hook::Prerouting);
                batch.add_rule(PREROUTING_CHAIN, &exprs, &jail.comment());
                if jail.forward {
                    let exprs = rule_exprs(batch, jail, family, shape, Hook::Forward);
                    batch.add_rule(FORWARD_CHAIN, &exprs, &jail.comment());
                }
            }
        }
    }
    let mut stale = Vec::new();
    for info in existing {
        let Some((jail, family, _)) = layout::parse_set_name(&info.name) else {
            continue;
        };
        if !jails.iter().any(|j| j.name == jail) {
            batch.del_set(&info.name, key_type(family));
            stale.push(jail);
        }
    }
    stale.sort_unstable();
    stale.dedup();
    for jail in stale {
        // Add-then-delete removes the counter whether or not it still exists.
        let counter = counter_name(jail);
        batch.add_counter(&counter, "");
        batch.del_counter(&counter);
    }
    let restore: Vec<&Restore> = restore.iter().flat_map(|part| part.iter()).collect();
    batch_elements(batch, &restore_by_set(&restore), &[ElemOp::Add]);
}

/// A set of the layout before address sets: `<jail>_v4` or `_v6` with interval elements.
fn is_old_layout(set: &SetInfo) -> bool {
    set.interval && matches!(layout::parse_set_name(&set.name), Some((_, _, Shape::Addr)))
}

/// Adds `ops`, in order, on every set's elements to `batch`.
fn batch_elements(batch: &mut Batch, by_set: &SetElems, ops: &[ElemOp]) {
    for op in ops {
        for ((name, family, shape), (elems, what)) in by_set {
            let spec = ban_set_spec(name, *family, *shape, None);
            batch.set_elements(&spec, elems, *op, what);
        }
    }
}

/// Who removed part of our table: a process id, or `None` when notifications were lost.
pub type RemovedBy = Option<u32>;

/// Follows the kernel's nf_tables notifications on a thread of its own and reports every
/// transaction of another process that removed something from our table (or a lost
/// notification, after which the ruleset must be checked).
pub fn watch_removals(
    mut monitor: Monitor,
    tx: tokio::sync::mpsc::Sender<RemovedBy>,
) -> std::io::Result<()> {
    let ours = |pid: u32| std::path::Path::new(&format!("/proc/self/task/{pid}")).exists();
    let spawned = std::thread::Builder::new()
        .name("banctl-ruleset-watch".into())
        .spawn(move || {
            // Whether the transaction being announced removed something of ours.
            let mut touched = false;
            loop {
                // Every notification is looked at (a datagram may hold several transactions);
                // one report per datagram is enough, since a repair checks everything.
                let mut report = None;
                match monitor.next(Duration::from_secs(1)) {
                    Ok(notes) => {
                        for n in notes {
                            if n.kind == NFT_MSG_NEWGEN {
                                let theirs = n.pid.is_some_and(|pid| !ours(pid));
                                if std::mem::take(&mut touched) && theirs {
                                    report = Some(n.pid);
                                }
                            } else {
                                touched |= n.is_removal()
                                    && n.family == libc::NFPROTO_INET as u8
                                    && n.table.as_deref() == Some(TABLE);
                            }
                        }
                    }
                    // The socket overflowed: what happened is unknown, so check everything.
                    Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                        touched = false;
                        report = Some(None);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ruleset watch stopped");
                        return;
                    }
                }
                if let Some(by) = report {
                    if tx.blocking_send(by).is_err() {
                        return;
                    }
                } else if tx.is_closed() {
                    return;
                }
            }
        });
    spawned.map(drop)
}

/// The nftables table is the engine's enforcer.
impl crate::engine::Enforcer for Firewall {
    type Error = FirewallError;

    fn changes(&mut self) -> Result<crate::engine::Changes, FirewallError> {
        Ok(crate::engine::Changes {
            all: self.sock.generation()?,
            ours: self.sock.commits(),
        })
    }

    fn declare(&mut self, jails: &[JailRules], restore: &[Restore]) -> Result<(), FirewallError> {
        self.apply_layout(jails, restore)
    }

    fn ban(&mut self, items: &[Restore]) -> Result<Overlaps, FirewallError> {
        self.restore(items)
    }

    fn unban(&mut self, items: &[(String, IpNet)]) -> Result<(), FirewallError> {
        Firewall::unban(self, items)
    }

    fn snapshot(
        &mut self,
        jails: &[&str],
    ) -> Result<BTreeMap<String, Vec<Element>>, FirewallError> {
        Firewall::snapshot(self, jails)
    }

    fn list(&mut self, jail: &str) -> Result<Vec<Element>, FirewallError> {
        Firewall::list(self, jail)
    }

    fn dropped(&mut self, jail: &str) -> Result<(u64, u64), FirewallError> {
        Firewall::dropped(self, jail).map(|c| (c.packets, c.bytes))
    }

    fn jails_present(&mut self) -> Result<Vec<String>, FirewallError> {
        self.jails_in_kernel()
    }

    /// The kernel's ENOENT: our table or a set is gone.
    fn is_missing(error: &FirewallError) -> bool {
        match error {
            FirewallError::Netlink(e) => e.errno() == Some(libc::ENOENT),
            FirewallError::NoTable => true,
        }
    }
}

fn timeout_ms(time: BanTime) -> Option<u64> {
    match time {
        BanTime::Finite(d) => Some(d.as_millis().min(u128::from(u64::MAX)) as u64),
        BanTime::Permanent => None,
    }
}

/// The sets a round has read, by jail, family and shape, each as sorted prefixes.
type ReadSets<'k> = BTreeMap<(&'k str, Family, Shape), Vec<IpNet>>;

/// A ban set: its name, family and shape.
type SetKey = (String, Family, Shape);
type SetElems = BTreeMap<SetKey, (Vec<Elem>, String)>;

/// Elements per set, so that a round of bans packs many elements into each message, with a
/// description naming the first few addresses, for error messages.
/// Items are (jail, address or prefix, timeout, expiration) with times in milliseconds.
fn group_by_set<'a>(
    items: impl Iterator<Item = (&'a String, &'a IpNet, Option<u64>, Option<u64>)>,
) -> SetElems {
    /// A set's elements, the first few of its prefixes and how many there are.
    struct Group<'a> {
        jail: &'a str,
        family: Family,
        shape: Shape,
        elems: Vec<Elem>,
        first: Vec<&'a IpNet>,
        count: usize,
    }
    // A round touches a few sets, a restore a few per jail, and consecutive items mostly
    // share one: a scan from the last one used, with no set name built per item.
    let mut groups: Vec<Group<'a>> = Vec::new();
    let mut last = 0;
    for (jail, net, timeout_ms, expiration_ms) in items {
        let (family, shape) = (Family::of(net), Shape::of(net));
        let is_it = |g: &Group<'_>| g.family == family && g.shape == shape && g.jail == jail;
        if !groups.get(last).is_some_and(is_it) {
            last = match groups.iter().position(is_it) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        jail,
                        family,
                        shape,
                        elems: Vec::new(),
                        first: Vec::new(),
                        count: 0,
                    });
                    groups.len() - 1
                }
            };
        }
        let group = &mut groups[last];
        push_net_elems(&mut group.elems, net, timeout_ms, expiration_ms);
        if group.first.len() < 3 {
            group.first.push(net);
        }
        group.count += 1;
    }
    groups
        .into_iter()
        .map(|g| {
            let shown: Vec<String> = g.first.iter().map(ToString::to_string).collect();
            let more = match g.count {
                n if n > 3 => format!(" and {} more", n - 3),
                _ => String::new(),
            };
            let key = (
                layout::set_name(g.jail, g.family, g.shape),
                g.family,
                g.shape,
            );
            (key, (g.elems, format!("{}{more}", shown.join(", "))))
        })
        .collect()
}

fn restore_by_set(restore: &[&Restore]) -> SetElems {
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

fn key_type(family: Family) -> KeyType {
    match family {
        Family::V4 => KeyType::Ipv4Addr,
        Family::V6 => KeyType::Ipv6Addr,
    }
}

/// The sweep of an address set walks every element: each second (the kernel's default) that
/// cost 3.6 % of a core with a million bans. An expired element never matches a packet and
/// is replaced by a new ban of its address; sweeping it a minute later only frees memory
/// later.
const HASH_GC_INTERVAL_MS: u32 = 60_000;

fn ban_set_spec<'a>(
    name: &'a str,
    family: Family,
    shape: Shape,
    comment: Option<&'a str>,
) -> SetSpec<'a> {
    SetSpec {
        name,
        key: key_type(family),
        interval: shape == Shape::Prefix,
        timeout: true,
        anonymous_id: None,
        comment,
        gc_interval_ms: (shape == Shape::Addr).then_some(HASH_GC_INTERVAL_MS),
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

/// A single address is one hash-set element. A prefix is an interval-set element pair: the
/// start carries the timeout; the end (one past the last address, flagged INTERVAL_END) must
/// carry none. A prefix reaching the end of the address space has no end element.
/// Appends them to `elems`.
fn push_net_elems(
    elems: &mut Vec<Elem>,
    net: &IpNet,
    timeout_ms: Option<u64>,
    expiration_ms: Option<u64>,
) {
    let mut start = Elem::key(octets(net.addr()));
    start.timeout_ms = timeout_ms;
    start.expiration_ms = expiration_ms;
    elems.push(start);
    if let (Shape::Prefix, Some(end)) = (Shape::of(net), successor(net.last())) {
        elems.push(Elem::end(octets(end)));
    }
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

/// A hash set's elements: single addresses.
fn addresses(raw: Vec<netlink::Elem>, family: Family) -> Vec<Element> {
    raw.into_iter()
        .filter(|e| !e.interval_end)
        .filter_map(|e| {
            Some(Element {
                net: IpNet::host(addr_from_key(&e.key, family)?),
                timeout: e.timeout_ms.map(Duration::from_millis),
                expires_in: e.expiration_ms.map(Duration::from_millis),
            })
        })
        .collect()
}

/// Turns the kernel's start/end elements back into prefixes.
fn pair_intervals(raw: Vec<netlink::Elem>, family: Family) -> Vec<Element> {
    let mut elems: Vec<(IpAddr, netlink::Elem)> = raw
        .into_iter()
        .filter_map(|e| addr_from_key(&e.key, family).map(|a| (a, e)))
        .collect();
    // At equal keys an end sorts before a start: [a, b) followed by [b, c).
    elems.sort_by(|(a, x), (b, y)| a.cmp(b).then(y.interval_end.cmp(&x.interval_end)));
    let mut out = Vec::new();
    let mut open: Option<(IpAddr, netlink::Elem)> = None;
    let max = match family {
        Family::V4 => IpAddr::from([255u8; 4]),
        Family::V6 => IpAddr::from([255u8; 16]),
    };
    let mut close = |start: (IpAddr, netlink::Elem), last: IpAddr| match IpNet::from_range(
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
fn rule_exprs(
    batch: &mut Batch,
    jail: &JailRules,
    family: Family,
    shape: Shape,
    hook: Hook,
) -> Vec<Expr> {
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
            set: jail.set_name(family, shape),
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
        gc_interval_ms: None,
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

    fn dumped(key: &[u8], end: bool, t: Option<u64>) -> netlink::Elem {
        netlink::Elem {
            key: key.to_vec(),
            interval_end: end,
            timeout_ms: t,
            expiration_ms: t,
        }
    }

    fn net_elems(net: &IpNet, timeout_ms: Option<u64>, expiration_ms: Option<u64>) -> Vec<Elem> {
        let mut elems = Vec::new();
        push_net_elems(&mut elems, net, timeout_ms, expiration_ms);
        elems
    }

    #[test]
    fn elements_of_an_address_and_of_a_prefix() {
        // An address: one hash-set element with the timeout.
        let e = net_elems(&"192.0.2.7".parse().unwrap(), Some(5000), None);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, vec![192, 0, 2, 7]);
        assert_eq!((e[0].interval_end, e[0].timeout_ms), (false, Some(5000)));
        // A prefix: the start with the timeout, the end one past its last address.
        let e = net_elems(&"192.0.2.0/24".parse().unwrap(), Some(5000), None);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].key, vec![192, 0, 2, 0]);
        assert_eq!(e[0].timeout_ms, Some(5000));
        assert_eq!(
            (e[1].key.clone(), e[1].interval_end, e[1].timeout_ms),
            (vec![192, 0, 3, 0], true, None)
        );
        // A prefix reaching the end of the address space has no end element.
        assert_eq!(
            net_elems(&"255.255.255.0/24".parse().unwrap(), None, None).len(),
            1
        );
    }

    #[test]
    fn hash_set_elements_read_back_as_addresses() {
        let raw = vec![
            dumped(&[192, 0, 2, 9], false, Some(1000)),
            dumped(&[192, 0, 2, 7], false, None),
        ];
        let got: Vec<(String, Option<Duration>)> = addresses(raw, Family::V4)
            .into_iter()
            .map(|e| (e.net.to_string(), e.timeout))
            .collect();
        assert_eq!(
            got,
            [
                ("192.0.2.9".to_owned(), Some(Duration::from_secs(1))),
                ("192.0.2.7".to_owned(), None)
            ]
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

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ban(jail: &str, target: &str) -> Ban {
        Ban {
            jail: jail.into(),
            net: net(target),
            time: BanTime::Permanent,
        }
    }

    #[test]
    fn a_round_keeps_its_widest_bans() {
        let round = [
            ban("web", "2001:db8:5::7"),
            ban("web", "2001:db8:5::/64"),
            ban("ssh", "2001:db8:5::7"),
            ban("web", "192.0.2.1"),
            ban("web", "2001:db8:5::/64"),
            ban("web", "2001:db8:6::1"),
        ];
        let mut covered = Vec::new();
        let kept = widest_of_round(round.iter(), &mut covered);
        assert_eq!(kept, [1, 2, 3, 5]);
        assert_eq!(
            covered,
            [(0, net("2001:db8:5::/64")), (4, net("2001:db8:5::/64"))]
        );
    }

    #[test]
    fn a_ban_is_placed_against_the_prefixes_of_its_set() {
        let mut nets = vec![
            net("10.0.0.0/24"),
            net("10.0.1.5"),
            net("10.0.1.9"),
            net("10.0.2.0/30"),
        ];
        nets.sort();
        assert_eq!(
            place(&nets, &net("10.0.0.7")),
            Place::Inside(net("10.0.0.0/24"))
        );
        assert_eq!(place(&nets, &net("10.0.1.5")), Place::Same);
        assert_eq!(
            place(&nets, &net("10.0.1.0/24")),
            Place::Over(vec![net("10.0.1.5"), net("10.0.1.9")])
        );
        assert_eq!(place(&nets, &net("10.0.0.0/8")), Place::Over(nets.clone()));
        assert_eq!(place(&nets, &net("10.0.3.1")), Place::Over(vec![]));
        assert_eq!(place(&[], &net("10.0.3.1")), Place::Over(vec![]));
    }

    #[test]
    fn bans_put_back_fit_what_the_kernel_holds() {
        let element = |s: &str| Element {
            net: net(s),
            timeout: None,
            expires_in: None,
        };
        let kernel = BTreeMap::from([(
            "web".to_owned(),
            vec![element("2001:db8:5::/64"), element("192.0.2.7")],
        )]);
        let put = |s: &str| Restore {
            ban: ban("web", s),
            expires_in: None,
        };
        let fitted = fit(
            &kernel,
            vec![
                put("2001:db8:5::7"),
                put("192.0.2.0/24"),
                put("198.51.100.0/24"),
                put("198.51.100.1"),
            ],
        );
        assert_eq!(fitted.fits, [put("198.51.100.0/24")]);
        assert_eq!(fitted.wider, [put("192.0.2.0/24")]);
        assert_eq!(fitted.covered, 2);
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

/// The bytes of a layout batch and of a ban batch, against golden files written from batches
/// the namespace tests showed the kernel accepting (`BANCTL_BLESS=1` rewrites them after a
/// deliberate change), and the messages they hold, by their kernel names.
#[cfg(test)]
mod golden {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/netlink/{name}.hex"))
    }

    fn check(name: &str, bytes: &[u8]) {
        let hex: String = bytes
            .chunks(32)
            .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect();
        let path = fixture(name);
        if std::env::var_os("BANCTL_BLESS").is_some() {
            std::fs::write(&path, &hex).unwrap();
        }
        let golden =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            golden == hex,
            "{name}: the batch's bytes changed (BANCTL_BLESS=1 after checking them against the kernel)"
        );
    }

    /// Each message of a batch: (kernel name of its type, its sequence number).
    fn messages(bytes: &[u8]) -> Vec<(&'static str, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 16 <= bytes.len() {
            let word = |o: usize| u32::from_ne_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
            let len = word(0) as usize;
            let kind = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            let name = match (kind >> 8, kind & 0xff) {
                (0, 0x10) => "NFNL_MSG_BATCH_BEGIN",
                (0, 0x11) => "NFNL_MSG_BATCH_END",
                (10, 0) => "NFT_MSG_NEWTABLE",
                (10, 3) => "NFT_MSG_NEWCHAIN",
                (10, 6) => "NFT_MSG_NEWRULE",
                (10, 8) => "NFT_MSG_DELRULE",
                (10, 9) => "NFT_MSG_NEWSET",
                (10, 11) => "NFT_MSG_DELSET",
                (10, 12) => "NFT_MSG_NEWSETELEM",
                (10, 14) => "NFT_MSG_DELSETELEM",
                (10, 18) => "NFT_MSG_NEWOBJ",
                (10, 20) => "NFT_MSG_DELOBJ",
                _ => "unknown",
            };
            out.push((name, word(8)));
            assert!(
                len >= 16 && at + len <= bytes.len(),
                "message {} is cut",
                out.len()
            );
            at += len.next_multiple_of(4);
        }
        assert_eq!(at, bytes.len(), "trailing bytes");
        out
    }

    #[test]
    fn a_layout_batch_is_byte_for_byte_what_the_kernel_took() {
        let jail = JailRules {
            name: "sshd".into(),
            ports: vec![PortRange {
                first: 22,
                last: 22,
            }],
            protocol: Protocol::Tcp,
            forward: true,
        };
        let mut batch = Batch::detached(TABLE, 1);
        let set = |name: &str, interval| SetInfo {
            name: name.into(),
            interval,
        };
        // A jail no longer configured, and one family of sshd still in the older layout.
        let existing = [
            set("gone_v4", false),
            set("gone_v4_nets", true),
            set("gone_v6", true),
            set("sshd_v4", false),
            set("sshd_v6", true),
        ];
        layout_batch(&mut batch, &[jail], &existing, &[]);
        let bytes = batch.into_bytes();
        let names: Vec<&str> = messages(&bytes).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "NFNL_MSG_BATCH_BEGIN",
                "NFT_MSG_NEWTABLE",
                "NFT_MSG_NEWCHAIN",
                "NFT_MSG_DELRULE",
                "NFT_MSG_NEWCHAIN",
                "NFT_MSG_DELRULE",
                "NFT_MSG_NEWOBJ",
                "NFT_MSG_NEWSET",
                "NFT_MSG_NEWSET",
                "NFT_MSG_DELSET",
                "NFT_MSG_NEWSET",
                "NFT_MSG_NEWSET",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_NEWRULE",
                "NFT_MSG_DELSET",
                "NFT_MSG_DELSET",
                "NFT_MSG_DELSET",
                "NFT_MSG_NEWOBJ",
                "NFT_MSG_DELOBJ",
                "NFNL_MSG_BATCH_END",
            ]
        );
        check("layout", &bytes);
    }

    #[test]
    fn a_ban_batch_is_byte_for_byte_what_the_kernel_took() {
        let ban = |net: &str, secs| Restore {
            ban: Ban {
                jail: "sshd".into(),
                net: net.parse().unwrap(),
                time: BanTime::Finite(Duration::from_secs(secs)),
            },
            expires_in: None,
        };
        let items = [ban("192.0.2.7", 600), ban("2001:db8::/64", 3600)];
        let chosen: Vec<&Restore> = items.iter().collect();
        let mut batch = Batch::detached(TABLE, 100);
        batch_elements(&mut batch, &restore_by_set(&chosen), &[ElemOp::AddNew]);
        let bytes = batch.into_bytes();
        let messages = messages(&bytes);
        let names: Vec<&str> = messages.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "NFNL_MSG_BATCH_BEGIN",
                "NFT_MSG_NEWSETELEM",
                "NFT_MSG_NEWSETELEM",
                "NFNL_MSG_BATCH_END",
            ]
        );
        let seqs: Vec<u32> = messages.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, [100, 101, 102, 103]);
        // The elements' keys and the 600 s timeout (ms, big-endian) are in the bytes: the
        // address alone (a hash-set element, no end), the prefix as start and end.
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(has(&[192, 0, 2, 7]) && !has(&[192, 0, 2, 8]));
        let v6 = |last: u8| [0x20, 1, 0x0d, 0xb8, 0, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(has(&v6(0)) && has(&v6(1)));
        assert!(has(&600_000u64.to_be_bytes()));
        check("ban", &bytes);
    }
}
