//! The kernel's nf_tables notifications (what `nft monitor` shows).

use super::*;

/// A socket subscribed to the kernel's nf_tables notifications (what `nft monitor` shows).
pub struct Monitor {
    sock: mnl::Socket,
}

// SAFETY: a Monitor exclusively owns its mnl socket (a heap object holding a file descriptor,
// with no thread-local or shared state); moving it to another thread moves that ownership, and
// every use goes through `&mut self`.
unsafe impl Send for Monitor {}

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
pub(super) const NFNLGRP_NFTABLES: libc::c_int = 7;

impl Monitor {
    pub fn open() -> Result<Monitor, NetlinkError> {
        let monitor = Monitor::open_unjoined()?;
        monitor.join()?;
        Ok(monitor)
    }

    /// A socket that hears nothing until [`Monitor::join`]: until then the kernel builds no
    /// notification for it (a restore of 100,000 bans would build one per element, fill its
    /// buffer and lose them all).
    pub fn open_unjoined() -> Result<Monitor, NetlinkError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NetlinkError::Open)?;
        let fd = raw_fd(&sock);
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCK_BUF).is_err() {
            setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCK_BUF)
                .map_err(NetlinkError::Open)?;
        }
        Ok(Monitor { sock })
    }

    /// Starts hearing nf_tables notifications (needs CAP_NET_ADMIN).
    pub fn join(&self) -> Result<(), NetlinkError> {
        setsockopt(
            raw_fd(&self.sock),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            NFNLGRP_NFTABLES,
        )
        .map_err(NetlinkError::Open)
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
        let mut recv = recv_buffer();
        let n = recv_into(&self.sock, &mut recv)?;
        let mut out = Vec::new();
        for msg in mnl::NlMessages::new(received(&recv, n)) {
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

/// `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`,
/// `NFTA_SET_ELEM_LIST_TABLE`, `NFTA_OBJ_TABLE`: the table is attribute 1 of every object.
const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_GEN_PROC_PID` (linux/netfilter/nf_tables.h): who committed the transaction
/// (big-endian), in `NFT_MSG_NEWGEN`.
const NFTA_GEN_PROC_PID: u16 = 2;

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
                if attr == NFTA_GEN_PROC_PID {
                    n.pid = payload.try_into().ok().map(u32::from_be_bytes);
                }
            } else if attr == NFTA_TABLE_NAME {
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
