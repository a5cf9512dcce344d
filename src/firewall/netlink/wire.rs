//! Netlink on the wire: receiving datagrams, headers, attributes, error messages.

use super::*;

/// `NLA_TYPE_MASK` (linux/netlink.h): an attribute's type without `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = !(1 << 15 | 1 << 14);

/// Receives one datagram into an 8-byte aligned buffer; returns its length. A signal that
/// interrupts the wait is not an error.
pub(super) fn recv_into(sock: &mnl::Socket, words: &mut [u64]) -> Result<usize, NetlinkError> {
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
pub(super) fn received(words: &[u64], n: usize) -> &[u8] {
    let n = n.min(words.len() * 8);
    // SAFETY: the view covers at most the initialised u64 buffer and borrows it.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), n) }
}

pub(super) fn raw_fd(sock: &mnl::Socket) -> RawFd {
    // SAFETY: the mnl socket is live for as long as `sock` is borrowed.
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(sock.as_raw_socket()) }
}

pub(super) fn setsockopt(
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

pub(super) struct Header {
    pub(super) msg_type: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
}

/// The netlink attributes from offset `at` to the end of `msg`: (type without its flag bits,
/// payload). Stops at the first malformed one.
pub(super) fn attributes(msg: &[u8], mut at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(read_u16(msg, at)?);
        let kind = read_u16(msg, at + 2)?;
        let payload = msg.get(at + 4..at.checked_add(len)?).filter(|_| len >= 4)?;
        at += len.next_multiple_of(4);
        Some((kind & NLA_TYPE_MASK, payload))
    })
}

/// A NUL-terminated attribute string.
pub(super) fn c_string(payload: &[u8]) -> String {
    let text = payload.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

pub(super) fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn parse_header(msg: &[u8]) -> Result<Header, NetlinkError> {
    let malformed = || NetlinkError::Malformed("short header");
    Ok(Header {
        msg_type: read_u16(msg, 4).ok_or_else(malformed)?,
        flags: read_u16(msg, 6).ok_or_else(malformed)?,
        seq: read_u32(msg, 8).ok_or_else(malformed)?,
    })
}

/// `struct nlmsgerr` → (positive errno or 0, sequence of the request, extended-ack text).
pub(super) fn parse_error(
    msg: &[u8],
    flags: u16,
) -> Result<(i32, u32, Option<String>), NetlinkError> {
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
