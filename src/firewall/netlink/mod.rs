//! nf_tables over netlink: messages built by libnftnl (`nftnl_sys`), sent on an mnl socket.
//!
//! `msg.rs` builds messages into a [`Batch`], `socket.rs` sends batches and matches acks and
//! runs the requests that read back, `dump.rs` parses what they return, `monitor.rs` follows
//! the kernel's notifications, `wire.rs` holds the netlink framing they share.
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
/// Receive buffer, as large as the largest datagram the kernel sends us: a dump part, which
/// netlink sizes to the reader's buffer but never over 32 KiB. Acks are small (they carry no
/// copy of the request: `NETLINK_CAP_ACK`), and nf_tables queues notifications in datagrams
/// of about a page. A larger datagram would fail the read (libmnl: `ENOSPC`), never be cut.
/// A buffer lives for one exchange ([`recv_buffer`]): an idle daemon holds none.
const RECV_BUF: usize = 32 * 1024;
/// A receive buffer for one exchange with the kernel (a request and its replies, a batch and
/// its acks, the notifications ready at once): made then, freed after, so that sockets that
/// wait hold no 32 KiB each. Zeroing it is a few microseconds against a round trip to the
/// kernel.
fn recv_buffer() -> Vec<u64> {
    vec![0; RECV_BUF / 8]
}

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
            NetlinkError::Kernel { source, .. }
            | NetlinkError::Open(source)
            | NetlinkError::Send(source)
            | NetlinkError::Recv(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

mod dump;
mod monitor;
mod msg;
mod socket;
mod wire;

pub use dump::CounterValue;
pub use monitor::{Monitor, NFT_MSG_NEWGEN, Notification};
pub use msg::{Batch, Elem, ElemOp, Expr, Hook, KeyType, MetaKey, PayloadBase, SetSpec};
pub use socket::{SetInfo, Socket};
#[allow(unused_imports)]
use {dump::*, monitor::*, msg::*, socket::*, wire::*};

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

/// Calls a libnftnl allocator.
fn unsafe_alloc<T>(alloc: unsafe extern "C" fn() -> *mut T) -> *mut T {
    // SAFETY: libnftnl allocators take no arguments and return NULL or a fresh object.
    unsafe { alloc() }
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
