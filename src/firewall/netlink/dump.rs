//! What dumps read back: set elements (the same [`Elem`] that batches write) and counter
//! values.

use super::*;

/// Packets and bytes of a named counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

pub(super) fn parse_elems(
    nlh: *const libc::nlmsghdr,
    out: &mut Vec<Elem>,
) -> Result<(), NetlinkError> {
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
            Elem {
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
