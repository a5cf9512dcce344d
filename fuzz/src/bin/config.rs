//! A banctl configuration file: validation never panics, whatever the text.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = banctl::config::Config::parse(std::path::Path::new("fuzz.toml"), text);
        }
    });
}
