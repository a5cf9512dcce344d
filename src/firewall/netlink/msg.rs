//! Building messages: the safe description of nf_tables objects ([`Expr`], [`SetSpec`],
//! [`Elem`]) turned into libnftnl objects and written, one after the other, into a [`Batch`].

use super::*;

/// The data type of a set's keys (`NFTA_SET_KEY_TYPE`, as `nft` numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
}

impl KeyType {
    fn type_and_len(self) -> (u32, u32) {
        match self {
            KeyType::Ipv4Addr => (7, 4),
            KeyType::Ipv6Addr => (8, 16),
            KeyType::InetProto => (12, 1),
            KeyType::InetService => (13, 2),
        }
    }
}

/// Netfilter hooks for base chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Forward,
}

/// Which header a payload expression loads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network,
    Transport,
}

/// Metadata a meta expression loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    NfProto,
    L4Proto,
}

/// A rule expression; all loads go to register 1 and all matches read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta(MetaKey),
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
    },
    CmpEq(Vec<u8>),
    /// Lookup in a named set, or (with `id`) in an anonymous set of the same batch.
    Lookup {
        set: String,
        id: Option<u32>,
    },
    /// The route type of the destination address (`fib daddr type`), as a host-order u32.
    FibDaddrType,
    /// The destination port of the connection as first seen, before any DNAT
    /// (`ct original proto-dst`).
    CtOriginalProtoDst,
    /// Count into the named counter object.
    CounterRef(String),
    Drop,
}

/// One set element: a key, and for interval sets, whether it closes an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub key: Vec<u8>,
    pub interval_end: bool,
    pub timeout_ms: Option<u64>,
    pub expiration_ms: Option<u64>,
}

impl Elem {
    pub fn key(key: Vec<u8>) -> Elem {
        Elem {
            key,
            interval_end: false,
            timeout_ms: None,
            expiration_ms: None,
        }
    }

    pub fn end(key: Vec<u8>) -> Elem {
        Elem {
            key,
            interval_end: true,
            timeout_ms: None,
            expiration_ms: None,
        }
    }
}

/// What to do with set elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    /// Add; an element that exists already is left as it is (not an error).
    Add,
    /// Add; an element that exists already fails the batch with EEXIST (`NLM_F_EXCL`).
    AddNew,
    /// Delete; a missing element fails the batch with ENOENT.
    Delete,
}

/// A set to create.
#[derive(Debug, Clone)]
pub struct SetSpec<'a> {
    pub name: &'a str,
    pub key: KeyType,
    pub interval: bool,
    pub timeout: bool,
    /// `Some(id)` makes an anonymous constant set, referenced in the batch by this id.
    pub anonymous_id: Option<u32>,
    pub comment: Option<&'a str>,
    /// How often the kernel sweeps expired elements out of the set, in milliseconds
    /// (`gc-interval`); `None` for the kernel's default (one second).
    pub gc_interval_ms: Option<u32>,
}

/// nftnl "udata" TLV holding one comment (as `nft` writes it: type, length, NUL-terminated text).
pub(super) fn comment_udata(kind: u8, comment: &str) -> Vec<u8> {
    let text: Vec<u8> = comment.bytes().filter(|b| *b != 0).take(127).collect();
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(kind);
    out.push((text.len() + 1) as u8);
    out.extend_from_slice(&text);
    out.push(0);
    out
}

/// A contiguous, 8-byte aligned netlink message buffer.
pub(super) struct MsgBuf {
    words: Vec<u64>,
    len: usize,
}

impl MsgBuf {
    pub(super) fn new() -> MsgBuf {
        MsgBuf {
            words: Vec::new(),
            len: 0,
        }
    }

    /// Lets `build` write one message at the end; keeps it (aligned) and returns its length.
    pub(super) fn push(&mut self, build: impl FnOnce(*mut c_char)) -> usize {
        let need = (self.len + MAX_MSG).div_ceil(8);
        if self.words.len() < need {
            self.words.resize(need.max(self.words.len() * 2), 0);
        }
        // SAFETY: `len + MAX_MSG` bytes are allocated and zeroed; libnftnl writes at most one
        // message (`nft_nlmsg_maxsize` = MAX_MSG) from this pointer.
        let start = unsafe { self.words.as_mut_ptr().cast::<u8>().add(self.len) };
        build(start.cast());
        // SAFETY: `build` wrote an nlmsghdr at `start`, which is 4-byte aligned.
        let msg_len = unsafe { (*start.cast::<libc::nlmsghdr>()).nlmsg_len } as usize;
        let msg_len = msg_len.min(MAX_MSG);
        self.len += msg_len.next_multiple_of(4);
        msg_len
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of `words` are initialised (zeroed, then written).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// One nf_tables transaction under construction.
pub struct Batch {
    buf: MsgBuf,
    table: CString,
    family: u16,
    next_seq: u32,
    /// Sequence number and description of every message that asked for an ack.
    ops: Vec<(u32, String)>,
    next_set_id: u32,
}

impl Batch {
    pub(super) fn new(table: &str, family: u16, first_seq: u32) -> Batch {
        let mut batch = Batch {
            buf: MsgBuf::new(),
            table: cstring(table),
            family,
            next_seq: first_seq,
            ops: Vec::new(),
            next_set_id: 1,
        };
        let seq = batch.take_seq();
        // SAFETY: writes one batch-begin message into the space `push` provides.
        batch.buf.push(|p| unsafe {
            sys::nftnl_batch_begin(p, seq);
        });
        batch
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// Whether the batch holds any operation besides its framing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// A fresh id for an anonymous set.
    pub fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    fn header(
        &mut self,
        msg_type: u16,
        flags: u16,
        op: String,
        payload: impl FnOnce(*mut libc::nlmsghdr),
    ) {
        let seq = self.take_seq();
        let family = self.family;
        let flags = flags | libc::NLM_F_ACK as u16;
        let msg_type = msg_type | ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8);
        self.buf.push(|p| {
            // SAFETY: `p` has room for one message; the header is written first, the payload
            // builder then appends attributes to it.
            let nlh = unsafe { sys::nftnl_nlmsg_build_hdr(p, msg_type, family, flags, seq) };
            payload(nlh);
        });
        self.ops.push((seq, op));
    }

    /// `add table` (idempotent), with a comment.
    pub fn add_table(&mut self, comment: &str) {
        let t = Owned::new(unsafe_alloc(sys::nftnl_table_alloc), sys::nftnl_table_free);
        let udata = comment_udata(NFTNL_UDATA_TABLE_COMMENT, comment);
        // SAFETY: `t` is a live table object; strings and data are copied by libnftnl.
        unsafe {
            sys::nftnl_table_set_str(
                t.as_ptr(),
                sys::NFTNL_TABLE_NAME as u16,
                self.table.as_ptr(),
            );
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                u32::from(self.family),
            );
            sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, 0);
            sys::nftnl_table_set_data(
                t.as_ptr(),
                sys::NFTNL_TABLE_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
        }
        let op = format!("add table {:?}", self.table);
        self.header(
            libc::NFT_MSG_NEWTABLE as u16,
            libc::NLM_F_CREATE as u16,
            op,
            |nlh| {
                // SAFETY: `nlh` is the header just written; `t` outlives this call.
                unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, t.as_ptr()) }
            },
        );
    }

    /// `add chain` as a filter base chain with policy accept (idempotent).
    pub fn add_base_chain(&mut self, name: &str, hook: Hook, priority: i32, comment: &str) {
        let c = Owned::new(unsafe_alloc(sys::nftnl_chain_alloc), sys::nftnl_chain_free);
        let cname = cstring(name);
        let udata = comment_udata(NFTNL_UDATA_CHAIN_COMMENT, comment);
        let hooknum = match hook {
            Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
            Hook::Forward => libc::NF_INET_FORWARD,
        } as u32;
        // SAFETY: `c` is a live chain object; strings and data are copied by libnftnl.
        unsafe {
            let p = c.as_ptr();
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_TABLE as u16, self.table.as_ptr());
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_NAME as u16, cname.as_ptr());
            sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(self.family));
            sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_HOOKNUM as u16, hooknum);
            sys::nftnl_chain_set_s32(p, sys::NFTNL_CHAIN_PRIO as u16, priority);
            sys::nftnl_chain_set_str(p, sys::NFTNL_CHAIN_TYPE as u16, c"filter".as_ptr());
            sys::nftnl_chain_set_u32(p, sys::NFTNL_CHAIN_POLICY as u16, NF_ACCEPT);
            sys::nftnl_chain_set_data(
                p,
                sys::NFTNL_CHAIN_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
        }
        let op = format!("add chain {name}");
        self.header(
            libc::NFT_MSG_NEWCHAIN as u16,
            libc::NLM_F_CREATE as u16,
            op,
            |nlh| {
                // SAFETY: `nlh` is the header just written; `c` outlives this call.
                unsafe { sys::nftnl_chain_nlmsg_build_payload(nlh, c.as_ptr()) }
            },
        );
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, name: &str) {
        let r = self.rule_object(name);
        let op = format!("flush chain {name}");
        self.header(libc::NFT_MSG_DELRULE as u16, 0, op, |nlh| {
            // SAFETY: `nlh` is the header just written; `r` outlives this call.
            unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, r.as_ptr()) }
        });
    }

    fn rule_object(&self, chain: &str) -> Owned<sys::nftnl_rule> {
        let r = Owned::new(unsafe_alloc(sys::nftnl_rule_alloc), sys::nftnl_rule_free);
        let cname = cstring(chain);
        // SAFETY: `r` is a live rule object; strings are copied by libnftnl.
        unsafe {
            sys::nftnl_rule_set_u32(
                r.as_ptr(),
                sys::NFTNL_RULE_FAMILY as u16,
                u32::from(self.family),
            );
            sys::nftnl_rule_set_str(
                r.as_ptr(),
                sys::NFTNL_RULE_TABLE as u16,
                self.table.as_ptr(),
            );
            sys::nftnl_rule_set_str(r.as_ptr(), sys::NFTNL_RULE_CHAIN as u16, cname.as_ptr());
        }
        r
    }

    /// `add rule` at the end of `chain`.
    pub fn add_rule(&mut self, chain: &str, exprs: &[Expr], comment: &str) {
        let r = self.rule_object(chain);
        for expr in exprs {
            // SAFETY: the rule takes ownership of each expression it is given.
            unsafe { sys::nftnl_rule_add_expr(r.as_ptr(), build_expr(expr)) };
        }
        let udata = comment_udata(NFTNL_UDATA_RULE_COMMENT, comment);
        // SAFETY: `r` is a live rule object; the data is copied.
        unsafe {
            sys::nftnl_rule_set_data(
                r.as_ptr(),
                sys::NFTNL_RULE_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
        }
        let op = format!("add rule to chain {chain} ({comment})");
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16;
        self.header(libc::NFT_MSG_NEWRULE as u16, flags, op, |nlh| {
            // SAFETY: `nlh` is the header just written; `r` outlives this call.
            unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, r.as_ptr()) }
        });
    }

    /// A named counter object (`counter name "…"`), idempotent.
    pub fn add_counter(&mut self, name: &str, comment: &str) {
        let o = self.counter_object(name);
        let udata = comment_udata(NFTNL_UDATA_OBJ_COMMENT, comment);
        // SAFETY: `o` is a live object; the data is copied.
        unsafe {
            sys::nftnl_obj_set_data(
                o.as_ptr(),
                sys::NFTNL_OBJ_USERDATA as u16,
                udata.as_ptr().cast(),
                udata.len() as u32,
            );
        }
        let op = format!("add counter {name}");
        self.header(
            libc::NFT_MSG_NEWOBJ as u16,
            libc::NLM_F_CREATE as u16,
            op,
            |nlh| {
                // SAFETY: `nlh` is the header just written; `o` outlives this call.
                unsafe { sys::nftnl_obj_nlmsg_build_payload(nlh, o.as_ptr()) }
            },
        );
    }

    /// Deletes a named counter object.
    pub fn del_counter(&mut self, name: &str) {
        let o = self.counter_object(name);
        let op = format!("delete counter {name}");
        self.header(libc::NFT_MSG_DELOBJ as u16, 0, op, |nlh| {
            // SAFETY: `nlh` is the header just written; `o` outlives this call.
            unsafe { sys::nftnl_obj_nlmsg_build_payload(nlh, o.as_ptr()) }
        });
    }

    fn counter_object(&self, name: &str) -> Owned<sys::nftnl_obj> {
        let o = Owned::new(unsafe_alloc(sys::nftnl_obj_alloc), sys::nftnl_obj_free);
        let cname = cstring(name);
        // SAFETY: `o` is a live object; strings are copied by libnftnl.
        unsafe {
            sys::nftnl_obj_set_str(o.as_ptr(), sys::NFTNL_OBJ_TABLE as u16, self.table.as_ptr());
            sys::nftnl_obj_set_str(o.as_ptr(), sys::NFTNL_OBJ_NAME as u16, cname.as_ptr());
            sys::nftnl_obj_set_u32(
                o.as_ptr(),
                sys::NFTNL_OBJ_FAMILY as u16,
                u32::from(self.family),
            );
            sys::nftnl_obj_set_u32(o.as_ptr(), sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
        }
        o
    }

    fn set_object(&self, spec: &SetSpec<'_>) -> Owned<sys::nftnl_set> {
        let s = Owned::new(unsafe_alloc(sys::nftnl_set_alloc), sys::nftnl_set_free);
        let name = match spec.anonymous_id {
            Some(_) => cstring("__set%d"),
            None => cstring(spec.name),
        };
        let (key_type, key_len) = spec.key.type_and_len();
        // SAFETY: `s` is a live set object; strings are copied by libnftnl.
        unsafe {
            let p = s.as_ptr();
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, u32::from(self.family));
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, key_len);
            if let Some(id) = spec.anonymous_id {
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
            }
        }
        s
    }

    /// `add set` (idempotent for a named set with the same properties).
    pub fn add_set(&mut self, spec: &SetSpec<'_>) {
        let s = self.set_object(spec);
        let mut flags = 0;
        if spec.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if spec.timeout {
            flags |= NFT_SET_TIMEOUT;
        }
        if spec.anonymous_id.is_some() {
            flags |= NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
        }
        let udata = spec
            .comment
            .map(|c| comment_udata(NFTNL_UDATA_SET_COMMENT, c));
        // The kernel requires a transaction-local id on every new set, named or not.
        let id = spec.anonymous_id.unwrap_or_else(|| self.set_id());
        // SAFETY: `s` is a live set object; the data is copied.
        unsafe {
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_ID as u16, id);
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_FLAGS as u16, flags);
            if let Some(ms) = spec.gc_interval_ms {
                sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_GC_INTERVAL as u16, ms);
            }
            if let Some(udata) = &udata {
                sys::nftnl_set_set_data(
                    s.as_ptr(),
                    sys::NFTNL_SET_USERDATA as u16,
                    udata.as_ptr().cast(),
                    udata.len() as u32,
                );
            }
        }
        let op = format!("add set {}", spec.name);
        self.header(
            libc::NFT_MSG_NEWSET as u16,
            libc::NLM_F_CREATE as u16,
            op,
            |nlh| {
                // SAFETY: `nlh` is the header just written; `s` outlives this call.
                unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, s.as_ptr()) }
            },
        );
    }

    /// `delete set`.
    pub fn del_set(&mut self, name: &str, key: KeyType) {
        let spec = SetSpec {
            name,
            key,
            interval: false,
            timeout: false,
            anonymous_id: None,
            comment: None,
            gc_interval_ms: None,
        };
        let s = self.set_object(&spec);
        let op = format!("delete set {name}");
        self.header(libc::NFT_MSG_DELSET as u16, 0, op, |nlh| {
            // SAFETY: `nlh` is the header just written; `s` outlives this call.
            unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, s.as_ptr()) }
        });
    }

    /// Adds or deletes elements of a set, in as many messages as needed.
    pub fn set_elements(&mut self, spec: &SetSpec<'_>, elems: &[Elem], op: ElemOp, what: &str) {
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let s = self.set_object(spec);
            for elem in chunk {
                let e = unsafe_alloc(sys::nftnl_set_elem_alloc);
                if e.is_null() {
                    std::process::abort();
                }
                // SAFETY: `e` is a fresh element; the key is copied; `s` takes ownership of `e`.
                unsafe {
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_KEY as u16,
                        elem.key.as_ptr().cast::<c_void>(),
                        elem.key.len() as u32,
                    );
                    if elem.interval_end {
                        sys::nftnl_set_elem_set_u32(
                            e,
                            sys::NFTNL_SET_ELEM_FLAGS as u16,
                            NFT_SET_ELEM_INTERVAL_END,
                        );
                    }
                    if let Some(t) = elem.timeout_ms {
                        sys::nftnl_set_elem_set_u64(e, sys::NFTNL_SET_ELEM_TIMEOUT as u16, t);
                    }
                    if let Some(x) = elem.expiration_ms {
                        sys::nftnl_set_elem_set_u64(e, sys::NFTNL_SET_ELEM_EXPIRATION as u16, x);
                    }
                    sys::nftnl_set_elem_add(s.as_ptr(), e);
                }
            }
            let (msg_type, flags, verb) = match op {
                ElemOp::Add => (libc::NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE, "add"),
                ElemOp::AddNew => (
                    libc::NFT_MSG_NEWSETELEM,
                    libc::NLM_F_CREATE | libc::NLM_F_EXCL,
                    "add",
                ),
                ElemOp::Delete => (libc::NFT_MSG_DELSETELEM, 0, "delete"),
            };
            let op = format!("{verb} {what} in set {}", spec.name);
            self.header(msg_type as u16, flags as u16, op, |nlh| {
                // SAFETY: `nlh` is the header just written; `s` (and its elements) outlive it.
                unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.as_ptr()) }
            });
        }
    }

    pub(super) fn finish(mut self) -> (MsgBuf, Vec<(u32, String)>, u32) {
        let seq = self.take_seq();
        // SAFETY: writes one batch-end message into the space `push` provides.
        self.buf.push(|p| unsafe {
            sys::nftnl_batch_end(p, seq);
        });
        (self.buf, self.ops, self.next_seq)
    }
}

#[cfg(test)]
impl Batch {
    /// A batch bound to no socket, its sequence numbers from `first_seq`.
    pub(in crate::firewall) fn detached(table: &str, first_seq: u32) -> Batch {
        Batch::new(table, libc::NFPROTO_INET as u16, first_seq)
    }

    /// The finished batch, as the one datagram that would be sent.
    pub(in crate::firewall) fn into_bytes(self) -> Vec<u8> {
        self.finish().0.bytes().to_vec()
    }
}

pub(super) fn build_expr(expr: &Expr) -> *mut sys::nftnl_expr {
    let name: &CStr = match expr {
        Expr::Meta(_) => c"meta",
        Expr::Payload { .. } => c"payload",
        Expr::CmpEq(_) => c"cmp",
        Expr::Lookup { .. } => c"lookup",
        Expr::FibDaddrType => c"fib",
        Expr::CtOriginalProtoDst => c"ct",
        Expr::CounterRef(_) => c"objref",
        Expr::Drop => c"immediate",
    };
    // SAFETY: `name` is a NUL-terminated expression type known to libnftnl.
    let e = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
    if e.is_null() {
        std::process::abort();
    }
    // SAFETY: `e` is a live expression of the type the attributes below belong to; all
    // strings and data are copied by libnftnl.
    unsafe {
        match expr {
            Expr::Meta(key) => {
                let key = match key {
                    MetaKey::NfProto => libc::NFT_META_NFPROTO,
                    MetaKey::L4Proto => libc::NFT_META_L4PROTO,
                };
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_KEY as u16, key as u32);
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, NFT_REG_1);
            }
            Expr::Payload { base, offset, len } => {
                let base = match base {
                    PayloadBase::Network => libc::NFT_PAYLOAD_NETWORK_HEADER,
                    PayloadBase::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER,
                };
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, NFT_REG_1);
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base as u32);
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, *offset);
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, *len);
            }
            Expr::CmpEq(data) => {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_SREG as u16, NFT_REG_1);
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_OP as u16, NFT_CMP_EQ);
                sys::nftnl_expr_set(
                    e,
                    sys::NFTNL_EXPR_CMP_DATA as u16,
                    data.as_ptr().cast(),
                    data.len() as u32,
                );
            }
            Expr::Lookup { set, id } => {
                let set = cstring(if id.is_some() { "__set%d" } else { set });
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, NFT_REG_1);
                sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, set.as_ptr());
                if let Some(id) = id {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, *id);
                }
            }
            Expr::FibDaddrType => {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FIB_DREG as u16, NFT_REG_1);
                sys::nftnl_expr_set_u32(
                    e,
                    sys::NFTNL_EXPR_FIB_RESULT as u16,
                    NFT_FIB_RESULT_ADDRTYPE,
                );
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FIB_FLAGS as u16, NFTA_FIB_F_DADDR);
            }
            Expr::CtOriginalProtoDst => {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_DREG as u16, NFT_REG_1);
                sys::nftnl_expr_set_u32(
                    e,
                    sys::NFTNL_EXPR_CT_KEY as u16,
                    libc::NFT_CT_PROTO_DST as u32,
                );
                sys::nftnl_expr_set_u8(e, sys::NFTNL_EXPR_CT_DIR as u16, IP_CT_DIR_ORIGINAL);
            }
            Expr::CounterRef(name) => {
                let name = cstring(name);
                sys::nftnl_expr_set_u32(
                    e,
                    sys::NFTNL_EXPR_OBJREF_IMM_TYPE as u16,
                    NFT_OBJECT_COUNTER,
                );
                sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_OBJREF_IMM_NAME as u16, name.as_ptr());
            }
            Expr::Drop => {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_DREG as u16, NFT_REG_VERDICT);
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_VERDICT as u16, NF_DROP as u32);
            }
        }
    }
    e
}
