//! The netfilter socket: sending a batch as one datagram, matching every ack to its
//! sequence number, and the requests that read back (sets, elements, counters).

use super::*;

/// A set of our table, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    pub name: String,
    /// `flags interval`: its elements are start/end pairs.
    pub interval: bool,
}

/// A netfilter netlink socket bound to one table name and family.
pub struct Socket {
    sock: mnl::Socket,
    /// The send buffer size we asked for (the kernel grants at least this).
    sndbuf: usize,
    table: String,
    family: u16,
    next_seq: u32,
    /// Transactions committed through this socket.
    commits: u64,
}

/// `NFTA_GEN_ID` (linux/netfilter/nf_tables.h): the generation, big-endian, in
/// `NFT_MSG_NEWGEN`.
const NFTA_GEN_ID: u16 = 1;

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
            commits: 0,
        })
    }

    /// Starts a transaction on this socket's table.
    pub fn batch(&self) -> Batch {
        Batch::new(&self.table, self.family, self.next_seq)
    }

    /// Transactions this socket committed.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The ruleset's generation in this namespace: the kernel adds one for every committed
    /// transaction, whoever commits it.
    pub fn generation(&mut self) -> Result<u32, NetlinkError> {
        let mut generation = None;
        self.request(
            libc::NFT_MSG_GETGEN as u16,
            0,
            "read the ruleset generation",
            |_| {},
            |nlh| {
                // SAFETY: `nlh` is a complete message the kernel sent, `nlmsg_len` bytes long,
                // inside the receive buffer that outlives this call.
                let msg = unsafe {
                    std::slice::from_raw_parts(nlh.cast::<u8>(), (*nlh).nlmsg_len as usize)
                };
                // nlmsghdr (16 bytes) and nfgenmsg (4), then the attributes.
                for (attr, payload) in attributes(msg, 20) {
                    if attr == NFTA_GEN_ID {
                        generation = payload.try_into().ok().map(u32::from_be_bytes);
                    }
                }
                Ok(())
            },
        )?;
        generation.ok_or(NetlinkError::Malformed("generation"))
    }

    /// Sends the batch as one datagram and waits for every ack. All or nothing.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.commit_batch(batch);
        if result.is_ok() {
            self.commits += 1;
        }
        result
    }

    fn commit_batch(&mut self, batch: Batch) -> Result<(), NetlinkError> {
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
        let mut recv = recv_buffer();
        'acks: while !pending.is_empty() {
            let n = recv_into(&self.sock, &mut recv)?;
            for msg in mnl::NlMessages::new(received(&recv, n)) {
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
    pub fn dump_set(&mut self, set: &str) -> Result<Vec<Elem>, NetlinkError> {
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

    /// The sets in our table (empty if the table does not exist).
    pub fn list_sets(&mut self) -> Result<Vec<SetInfo>, NetlinkError> {
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
                    let flags = sys::nftnl_set_get_u32(set.as_ptr(), sys::NFTNL_SET_FLAGS as u16);
                    if !t.is_null() && !n.is_null() && CStr::from_ptr(t) == table.as_c_str() {
                        names.push(SetInfo {
                            name: CStr::from_ptr(n).to_string_lossy().into_owned(),
                            interval: flags & NFT_SET_INTERVAL != 0,
                        });
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
        let mut recv = recv_buffer();
        loop {
            let n = recv_into(&self.sock, &mut recv)?;
            for msg in mnl::NlMessages::new(received(&recv, n)) {
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
}
