//! A control request line, decoded as the daemon decodes it, and the permission check.
fn main() {
    let access = banctl::control::Access::default();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(request) = banctl::control::decode_request(data) {
            let _ = access.allows(1000, &[1000], &request);
        }
    });
}
