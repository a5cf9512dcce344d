//! nf_tables over netlink: messages built by libnftnl (`nftnl_sys`), sent on an mnl socket.
//!
//! **Invariant:** this is the only module of banctl with `unsafe`. Everything it exposes is a
//! safe description ([`Batch`] operations, [`Expr`], [`Elem`]); raw libnftnl objects never
//! leave it.
//!
//! A [`Batch`] is one contiguous buffer `BEGIN, msg…, END` sent with a single `sendto`
//! (the kernel wants the whole transaction in one datagram; `mnl::Socket::send_all` would
//! split it per page and fail with ENOBUFS). Every message asks for an ack, and every ack is
//! matched to its sequence number, so an error names the operation that caused it. A batch
//! with one failing message commits nothing.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;

/// Elements per NEWSETELEM message: keeps each message far below the 64 KiB limit of the
/// element-list attribute (a v6 element with timeout and expiration is under 80 bytes).
const ELEMS_PER_MSG: usize = 512;
/// Room reserved for one message while libnftnl writes it (`nft_nlmsg_maxsize`).
const MAX_MSG: usize = 65_536 + 4_096;
/// Receive buffer: acks are small; a dump part is at most a few pages.
const RECV_BUF: usize = 256 * 1024;
/// Kernel netlink buffers we ask for, so that big batches and their acks fit.
const SOCK_BUF: libc::c_int = 8 * 1024 * 1024;

// Kernel constants, verbatim names (linux/netfilter/nf_tables.h, linux/netlink.h).
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const IP_CT_DIR_ORIGINAL: u8 = 0;
const NF_DROP: i32 = 0;
const NF_ACCEPT: u32 = 1;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLM_F_CAPPED: u16 = 0x100;
const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;
const NFTNL_UDATA_CHAIN_COMMENT: u8 = 0;
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTNL_UDATA_SET_COMMENT: u8 = 7;
const NFTNL_UDATA_OBJ_COMMENT: u8 = 0;

/// An error from the kernel or the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    #[error("cannot open a netfilter netlink socket: {0} (banctl needs CAP_NET_ADMIN)")]
    Open(#[source] io::Error),
    #[error("sending to netlink failed: {0}")]
    Send(#[source] io::Error),
    #[error("receiving from netlink failed: {0}")]
    Recv(#[source] io::Error),
    #[error("{op}: {source}{}", ext.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: String,
        source: io::Error,
        ext: Option<String>,
    },
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The errno the kernel answered, if this is a kernel error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

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
}

/// Owned libnftnl object, freed on drop.
struct Owned<T> {
    ptr: NonNull<T>,
    free: unsafe extern "C" fn(*const T),
}

impl<T> Owned<T> {
    fn new(ptr: *mut T, free: unsafe extern "C" fn(*const T)) -> Owned<T> {
        // libnftnl returns NULL only when malloc fails; there is nothing sane left to do.
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::process::abort());
        Owned { ptr, free }
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from the matching libnftnl allocator and is freed exactly once.
        unsafe { (self.free)(self.ptr.as_ptr()) }
    }
}

fn cstring(s: &str) -> CString {
    // Names and comments are validated by the config; an interior NUL is cut, never a panic.
    CString::new(s.split('\0').next().unwrap_or_default()).unwrap_or_default()
}

/// nftnl "udata" TLV holding one comment (as `nft` writes it: type, length, NUL-terminated text).
fn comment_udata(kind: u8, comment: &str) -> Vec<u8> {
    let text: Vec<u8> = comment.bytes().filter(|b| *b != 0).take(127).collect();
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(kind);
    out.push((text.len() + 1) as u8);
    out.extend_from_slice(&text);
    out.push(0);
    out
}

/// A contiguous, 8-byte aligned netlink message buffer.
struct MsgBuf {
    words: Vec<u64>,
    len: usize,
}

impl MsgBuf {
    fn new() -> MsgBuf {
        MsgBuf {
            words: Vec::new(),
            len: 0,
        }
    }

    /// Lets `build` write one message at the end; keeps it (aligned) and returns its length.
    fn push(&mut self, build: impl FnOnce(*mut c_char)) -> usize {
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

    fn bytes(&self) -> &[u8] {
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
    fn new(table: &str, family: u16, first_seq: u32) -> Batch {
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

    fn finish(mut self) -> (MsgBuf, Vec<(u32, String)>, u32) {
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
    pub(super) fn detached(table: &str, first_seq: u32) -> Batch {
        Batch::new(table, libc::NFPROTO_INET as u16, first_seq)
    }

    /// The finished batch, as the one datagram that would be sent.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.finish().0.bytes().to_vec()
    }
}

/// Calls a libnftnl allocator.
fn unsafe_alloc<T>(alloc: unsafe extern "C" fn() -> *mut T) -> *mut T {
    // SAFETY: libnftnl allocators take no arguments and return NULL or a fresh object.
    unsafe { alloc() }
}

fn build_expr(expr: &Expr) -> *mut sys::nftnl_expr {
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

/// A set element read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedElem {
    pub key: Vec<u8>,
    pub interval_end: bool,
    pub timeout_ms: Option<u64>,
    pub expiration_ms: Option<u64>,
}

/// Packets and bytes of a named counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// A netfilter netlink socket bound to one table name and family.
pub struct Socket {
    sock: mnl::Socket,
    /// The send buffer size we asked for (the kernel grants at least this).
    sndbuf: usize,
    table: String,
    family: u16,
    next_seq: u32,
    recv: Vec<u64>,
}

impl Socket {
    /// Opens the socket for `table` in the `inet` family.
    pub fn open(table: &str) -> Result<Socket, NetlinkError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NetlinkError::Open)?;
        let fd = raw_fd(&sock);
        for (level, name, value) in [
            (libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1),
            (libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1),
        ] {
            setsockopt(fd, level, name, value).map_err(NetlinkError::Open)?;
        }
        // Larger buffers help big batches; the *FORCE variants need CAP_NET_ADMIN, which
        // banctl has whenever it can change the ruleset at all. Fall back to the plain ones.
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if setsockopt(fd, libc::SOL_SOCKET, force, SOCK_BUF).is_err() {
                setsockopt(fd, libc::SOL_SOCKET, plain, SOCK_BUF).map_err(NetlinkError::Open)?;
            }
        }
        let timeout = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: `fd` is a live socket; the option value is a properly sized timeval.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        // Sequence numbers start at a time-derived value, as libmnl users do, so replies to an
        // earlier process's requests can never be mistaken for ours.
        let next_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Socket {
            sock,
            sndbuf: SOCK_BUF as usize,
            table: table.to_owned(),
            family: libc::NFPROTO_INET as u16,
            next_seq,
            recv: vec![0; RECV_BUF / 8],
        })
    }

    /// Starts a transaction on this socket's table.
    pub fn batch(&self) -> Batch {
        Batch::new(&self.table, self.family, self.next_seq)
    }

    /// Sends the batch as one datagram and waits for every ack. All or nothing.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (buf, ops, next_seq) = batch.finish();
        self.next_seq = next_seq;
        // The kernel takes a batch only as one datagram, which must fit the send buffer.
        if buf.bytes().len() + 64 * 1024 > self.sndbuf {
            let want = buf.bytes().len() + 64 * 1024;
            let want = libc::c_int::try_from(want)
                .map_err(|_| NetlinkError::Send(io::Error::other("batch too large")))?;
            setsockopt(
                raw_fd(&self.sock),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                want,
            )
            .map_err(NetlinkError::Send)?;
            self.sndbuf = want as usize;
        }
        let sent = self.sock.send(buf.bytes()).map_err(NetlinkError::Send)?;
        if sent != buf.bytes().len() {
            return Err(NetlinkError::Send(io::Error::other(
                "short send of a netlink batch",
            )));
        }
        let mut pending: HashMap<u32, String> = ops.into_iter().collect();
        let mut first_error = None;
        'acks: while !pending.is_empty() {
            let n = self.recv_some()?;
            for msg in mnl::NlMessages::new(received(&self.recv, n)) {
                let msg = msg.map_err(NetlinkError::Recv)?;
                let header = parse_header(msg)?;
                if header.msg_type != libc::NLMSG_ERROR as u16 {
                    continue;
                }
                let (errno, seq, ext) = parse_error(msg, header.flags)?;
                let op = pending.remove(&seq);
                if errno != 0 {
                    // An error for a sequence we did not ack-request is about the batch framing
                    // (e.g. EPERM on BEGIN): the kernel processed nothing and sends nothing more.
                    let framing = op.is_none();
                    let op = op.unwrap_or_else(|| "netlink batch".to_owned());
                    first_error.get_or_insert(NetlinkError::Kernel {
                        op,
                        source: io::Error::from_raw_os_error(errno),
                        ext,
                    });
                    if framing {
                        break 'acks;
                    }
                }
                // After an error the kernel still answers the rest of the batch; reading every
                // answer keeps the socket free of stale replies.
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// All elements of a set, as the kernel stores them (intervals as start/end pairs).
    pub fn dump_set(&mut self, set: &str) -> Result<Vec<DumpedElem>, NetlinkError> {
        let s = Owned::new(unsafe_alloc(sys::nftnl_set_alloc), sys::nftnl_set_free);
        let (table, name) = (cstring(&self.table), cstring(set));
        // SAFETY: `s` is a live set object; strings are copied.
        unsafe {
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(
                s.as_ptr(),
                sys::NFTNL_SET_FAMILY as u16,
                u32::from(self.family),
            );
        }
        let mut out = Vec::new();
        self.dump(
            libc::NFT_MSG_GETSETELEM as u16,
            &format!("list set {set}"),
            // SAFETY: `nlh` is a fresh header; `s` outlives the call.
            |nlh| unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.as_ptr()) },
            |nlh| parse_elems(nlh, &mut out),
        )?;
        Ok(out)
    }

    /// Names of the sets in our table (empty if the table does not exist).
    pub fn list_sets(&mut self) -> Result<Vec<String>, NetlinkError> {
        let s = Owned::new(unsafe_alloc(sys::nftnl_set_alloc), sys::nftnl_set_free);
        let table = cstring(&self.table);
        // SAFETY: `s` is a live set object; the string is copied.
        unsafe {
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        }
        let mut names = Vec::new();
        let result = self.dump(
            libc::NFT_MSG_GETSET as u16,
            "list sets",
            // SAFETY: `nlh` is a fresh header; `s` outlives the call.
            |nlh| unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, s.as_ptr()) },
            |nlh| {
                let set = Owned::new(unsafe_alloc(sys::nftnl_set_alloc), sys::nftnl_set_free);
                // SAFETY: `nlh` is a complete NEWSET message from the kernel; `set` is live
                // and the name pointer stays valid until `set` is freed.
                unsafe {
                    if sys::nftnl_set_nlmsg_parse(nlh, set.as_ptr()) < 0 {
                        return Err(NetlinkError::Malformed("set"));
                    }
                    let t = sys::nftnl_set_get_str(set.as_ptr(), sys::NFTNL_SET_TABLE as u16);
                    let n = sys::nftnl_set_get_str(set.as_ptr(), sys::NFTNL_SET_NAME as u16);
                    if !t.is_null() && !n.is_null() && CStr::from_ptr(t) == table.as_c_str() {
                        names.push(CStr::from_ptr(n).to_string_lossy().into_owned());
                    }
                }
                Ok(())
            },
        );
        match result {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
            other => other.map(|()| names),
        }
    }

    /// Reads a named counter of our table.
    pub fn counter(&mut self, name: &str) -> Result<CounterValue, NetlinkError> {
        let o = Owned::new(unsafe_alloc(sys::nftnl_obj_alloc), sys::nftnl_obj_free);
        let (table, cname) = (cstring(&self.table), cstring(name));
        // SAFETY: `o` is a live object; strings are copied.
        unsafe {
            sys::nftnl_obj_set_str(o.as_ptr(), sys::NFTNL_OBJ_TABLE as u16, table.as_ptr());
            sys::nftnl_obj_set_str(o.as_ptr(), sys::NFTNL_OBJ_NAME as u16, cname.as_ptr());
            sys::nftnl_obj_set_u32(o.as_ptr(), sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
        }
        let mut value = CounterValue::default();
        self.request(
            libc::NFT_MSG_GETOBJ as u16,
            0,
            &format!("get counter {name}"),
            // SAFETY: `nlh` is a fresh header; `o` outlives the call.
            |nlh| unsafe { sys::nftnl_obj_nlmsg_build_payload(nlh, o.as_ptr()) },
            |nlh| {
                let obj = Owned::new(unsafe_alloc(sys::nftnl_obj_alloc), sys::nftnl_obj_free);
                // SAFETY: `nlh` is a complete NEWOBJ message; `obj` is live.
                unsafe {
                    if sys::nftnl_obj_nlmsg_parse(nlh, obj.as_ptr()) < 0 {
                        return Err(NetlinkError::Malformed("counter"));
                    }
                    value.packets =
                        sys::nftnl_obj_get_u64(obj.as_ptr(), sys::NFTNL_OBJ_CTR_PKTS as u16);
                    value.bytes =
                        sys::nftnl_obj_get_u64(obj.as_ptr(), sys::NFTNL_OBJ_CTR_BYTES as u16);
                }
                Ok(())
            },
        )?;
        Ok(value)
    }

    fn dump(
        &mut self,
        msg_type: u16,
        op: &str,
        payload: impl FnOnce(*mut libc::nlmsghdr),
        on_msg: impl FnMut(*const libc::nlmsghdr) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        self.request(msg_type, libc::NLM_F_DUMP as u16, op, payload, on_msg)
    }

    /// Sends one request and feeds every reply message to `on_msg` until the request is done.
    fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        op: &str,
        payload: impl FnOnce(*mut libc::nlmsghdr),
        mut on_msg: impl FnMut(*const libc::nlmsghdr) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let mut buf = MsgBuf::new();
        let family = self.family;
        let msg_type = msg_type | ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8);
        let flags = flags | libc::NLM_F_ACK as u16;
        buf.push(|p| {
            // SAFETY: `p` has room for one message; header first, then the payload.
            let nlh = unsafe { sys::nftnl_nlmsg_build_hdr(p, msg_type, family, flags, seq) };
            payload(nlh);
        });
        self.sock.send(buf.bytes()).map_err(NetlinkError::Send)?;
        let mut result = Ok(());
        loop {
            let n = self.recv_some()?;
            for msg in mnl::NlMessages::new(received(&self.recv, n)) {
                let msg = msg.map_err(NetlinkError::Recv)?;
                let header = parse_header(msg)?;
                if header.seq != seq {
                    continue;
                }
                match header.msg_type {
                    t if t == libc::NLMSG_DONE as u16 => return result,
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let (errno, _, ext) = parse_error(msg, header.flags)?;
                        if errno != 0 {
                            return Err(NetlinkError::Kernel {
                                op: op.to_owned(),
                                source: io::Error::from_raw_os_error(errno),
                                ext,
                            });
                        }
                        // The ack closes a non-dump request.
                        return result;
                    }
                    _ => {
                        if result.is_ok() {
                            result = on_msg(msg.as_ptr().cast());
                        }
                    }
                }
            }
        }
    }

    fn recv_some(&mut self) -> Result<usize, NetlinkError> {
        recv_into(&self.sock, &mut self.recv)
    }
}

/// A socket subscribed to the kernel's nf_tables notifications (what `nft monitor` shows).
pub struct Monitor {
    sock: mnl::Socket,
    recv: Vec<u64>,
}

// SAFETY: a Monitor exclusively owns its mnl socket (a heap object holding a file descriptor,
// with no thread-local or shared state); moving it to another thread moves that ownership, and
// every use goes through `&mut self`.
unsafe impl Send for Monitor {}

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: libc::c_int = 7;

impl Monitor {
    pub fn open() -> Result<Monitor, NetlinkError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NetlinkError::Open)?;
        let fd = raw_fd(&sock);
        setsockopt(
            fd,
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            NFNLGRP_NFTABLES,
        )
        .map_err(NetlinkError::Open)?;
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCK_BUF).is_err() {
            setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCK_BUF)
                .map_err(NetlinkError::Open)?;
        }
        Ok(Monitor {
            sock,
            recv: vec![0; RECV_BUF / 8],
        })
    }

    /// Waits up to `timeout` for notifications; returns the nf_tables ones, empty on timeout.
    pub fn next(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<Notification>, NetlinkError> {
        let fd = raw_fd(&self.sock);
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for a live socket.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            // A signal (SIGCHLD of a notifier program) cut the wait short: nothing arrived.
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Vec::new());
            }
            return Err(NetlinkError::Recv(e));
        }
        if ready == 0 {
            return Ok(Vec::new());
        }
        let n = recv_into(&self.sock, &mut self.recv)?;
        let mut out = Vec::new();
        for msg in mnl::NlMessages::new(received(&self.recv, n)) {
            let msg = msg.map_err(NetlinkError::Recv)?;
            let header = parse_header(msg)?;
            if header.msg_type >> 8 == libc::NFNL_SUBSYS_NFTABLES as u16 {
                out.push(Notification::parse(header.msg_type & 0xff, msg));
            }
        }
        Ok(out)
    }
}

/// One nf_tables notification: what happened, to which table, and for the end of a
/// transaction (`NFT_MSG_NEWGEN`), which process committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `NFT_MSG_*`.
    pub kind: u16,
    /// `NFPROTO_*` of the object.
    pub family: u8,
    /// The table the object belongs to (absent for `NFT_MSG_NEWGEN`).
    pub table: Option<String>,
    /// For `NFT_MSG_NEWGEN`: the pid of the committing process.
    pub pid: Option<u32>,
}

/// `NFTA_*_TABLE` (the table name) is attribute 1 of tables, chains, rules, sets, elements and
/// objects; `NFTA_GEN_PROC_PID` is attribute 2 of `NFT_MSG_NEWGEN`, big-endian.
const ATTR_TABLE: u16 = 1;
const ATTR_GEN_PID: u16 = 2;

impl Notification {
    fn parse(kind: u16, msg: &[u8]) -> Notification {
        // nlmsghdr (16 bytes), then nfgenmsg: family, version, res_id (4 bytes).
        const NFGENMSG: usize = 16;
        let family = msg.get(NFGENMSG).copied().unwrap_or_default();
        let mut n = Notification {
            kind,
            family,
            table: None,
            pid: None,
        };
        for (attr, payload) in attributes(msg, NFGENMSG + 4) {
            if kind == NFT_MSG_NEWGEN {
                if attr == ATTR_GEN_PID {
                    n.pid = payload.try_into().ok().map(u32::from_be_bytes);
                }
            } else if attr == ATTR_TABLE {
                n.table = Some(c_string(payload));
            }
        }
        n
    }

    /// Whether this notification removes something (a table, chain, rule, set, element or
    /// object).
    pub fn is_removal(&self) -> bool {
        [
            libc::NFT_MSG_DELTABLE,
            libc::NFT_MSG_DELCHAIN,
            libc::NFT_MSG_DELRULE,
            libc::NFT_MSG_DELSET,
            libc::NFT_MSG_DELSETELEM,
            libc::NFT_MSG_DELOBJ,
        ]
        .iter()
        .any(|&t| u16::try_from(t) == Ok(self.kind))
    }
}

/// `NFT_MSG_NEWGEN`: the kernel sends it once a transaction has committed.
pub const NFT_MSG_NEWGEN: u16 = libc::NFT_MSG_NEWGEN as u16;

/// Receives one datagram into an 8-byte aligned buffer; returns its length. A signal that
/// interrupts the wait is not an error.
fn recv_into(sock: &mnl::Socket, words: &mut [u64]) -> Result<usize, NetlinkError> {
    // SAFETY: the byte view covers exactly the u64 buffer, which is nlmsghdr-aligned, and lives
    // only for this call.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    loop {
        match sock.recv_raw(bytes) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map_err(NetlinkError::Recv),
        }
    }
}

/// The first `n` bytes of the receive buffer.
fn received(words: &[u64], n: usize) -> &[u8] {
    let n = n.min(words.len() * 8);
    // SAFETY: the view covers at most the initialised u64 buffer and borrows it.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), n) }
}

fn raw_fd(sock: &mnl::Socket) -> RawFd {
    // SAFETY: the mnl socket is live for as long as `sock` is borrowed.
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a live socket and the value is a properly sized int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

struct Header {
    msg_type: u16,
    flags: u16,
    seq: u32,
}

/// The netlink attributes from offset `at` to the end of `msg`: (type without its flag bits,
/// payload). Stops at the first malformed one.
fn attributes(msg: &[u8], mut at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(read_u16(msg, at)?);
        let kind = read_u16(msg, at + 2)?;
        let payload = msg.get(at + 4..at.checked_add(len)?).filter(|_| len >= 4)?;
        at += len.next_multiple_of(4);
        Some((kind & 0x3fff, payload))
    })
}

/// A NUL-terminated attribute string.
fn c_string(payload: &[u8]) -> String {
    let text = payload.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse_header(msg: &[u8]) -> Result<Header, NetlinkError> {
    let malformed = || NetlinkError::Malformed("short header");
    Ok(Header {
        msg_type: read_u16(msg, 4).ok_or_else(malformed)?,
        flags: read_u16(msg, 6).ok_or_else(malformed)?,
        seq: read_u32(msg, 8).ok_or_else(malformed)?,
    })
}

/// `struct nlmsgerr` → (positive errno or 0, sequence of the request, extended-ack text).
fn parse_error(msg: &[u8], flags: u16) -> Result<(i32, u32, Option<String>), NetlinkError> {
    const HDR: usize = 16;
    let malformed = || NetlinkError::Malformed("short error message");
    let error = read_u32(msg, HDR).ok_or_else(malformed)? as i32;
    let orig_len = read_u32(msg, HDR + 4).ok_or_else(malformed)? as usize;
    let seq = read_u32(msg, HDR + 4 + 8).ok_or_else(malformed)?;
    let mut ext = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let orig = if flags & NLM_F_CAPPED != 0 {
            HDR
        } else {
            orig_len.next_multiple_of(4)
        };
        for (kind, payload) in attributes(msg, HDR + 4 + orig) {
            if kind == NLMSGERR_ATTR_MSG {
                ext = Some(c_string(payload));
            }
        }
    }
    Ok((error.saturating_neg(), seq, ext))
}

fn parse_elems(nlh: *const libc::nlmsghdr, out: &mut Vec<DumpedElem>) -> Result<(), NetlinkError> {
    let s = Owned::new(unsafe_alloc(sys::nftnl_set_alloc), sys::nftnl_set_free);
    // SAFETY: `nlh` points to a complete NEWSETELEM message inside the receive buffer.
    if unsafe { sys::nftnl_set_elems_nlmsg_parse(nlh, s.as_ptr()) } < 0 {
        return Err(NetlinkError::Malformed("set elements"));
    }
    // SAFETY: `s` is a live set; the iterator is destroyed below, before `s` is freed.
    let iter = unsafe { sys::nftnl_set_elems_iter_create(s.as_ptr()) };
    if iter.is_null() {
        std::process::abort();
    }
    loop {
        // SAFETY: the iterator walks the elements owned by `s`, which outlives it.
        let e = unsafe { sys::nftnl_set_elems_iter_next(iter) };
        if e.is_null() {
            break;
        }
        let mut len = 0u32;
        // SAFETY: `e` is a live element of `s`; the key pointer is valid for `len` bytes while
        // `s` lives, and is copied at once.
        let elem = unsafe {
            let key = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
            let key = if key.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(key.cast::<u8>(), len as usize).to_vec()
            };
            let has = |attr: u32| sys::nftnl_set_elem_is_set(e, attr as u16);
            DumpedElem {
                key,
                interval_end: has(sys::NFTNL_SET_ELEM_FLAGS)
                    && sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
                        & NFT_SET_ELEM_INTERVAL_END
                        != 0,
                timeout_ms: has(sys::NFTNL_SET_ELEM_TIMEOUT)
                    .then(|| sys::nftnl_set_elem_get_u64(e, sys::NFTNL_SET_ELEM_TIMEOUT as u16)),
                expiration_ms: has(sys::NFTNL_SET_ELEM_EXPIRATION)
                    .then(|| sys::nftnl_set_elem_get_u64(e, sys::NFTNL_SET_ELEM_EXPIRATION as u16)),
            }
        };
        out.push(elem);
    }
    // SAFETY: `iter` came from `nftnl_set_elems_iter_create` and is destroyed exactly once.
    unsafe { sys::nftnl_set_elems_iter_destroy(iter) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_udata_is_a_tlv_with_nul() {
        assert_eq!(comment_udata(7, "ab"), vec![7, 3, b'a', b'b', 0]);
        let long = "x".repeat(300);
        let u = comment_udata(0, &long);
        assert_eq!(u[1] as usize, 128);
        assert_eq!(u.len(), 130);
    }

    #[test]
    fn error_message_parse() {
        // nlmsghdr(16) + error(-2) + original header(16, capped) + ext-ack MSG attribute.
        let mut msg = vec![0u8; 16];
        msg.extend_from_slice(&(-2i32).to_ne_bytes());
        let mut orig = vec![0u8; 16];
        orig[8..12].copy_from_slice(&77u32.to_ne_bytes());
        msg.extend_from_slice(&orig);
        let text = b"no such set\0";
        msg.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        msg.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        msg.extend_from_slice(text);
        let (errno, seq, ext) = parse_error(&msg, NLM_F_ACK_TLVS | NLM_F_CAPPED).unwrap();
        assert_eq!((errno, seq, ext.as_deref()), (2, 77, Some("no such set")));
    }

    #[test]
    fn short_replies_are_errors_not_panics() {
        assert!(parse_error(&[0u8; 10], 0).is_err());
        assert!(parse_header(&[0u8; 3]).is_err());
    }
}
