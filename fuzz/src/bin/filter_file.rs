//! A banctl filter file (TOML), then the filter it makes on lines.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(file) = banctl::filter::parse_filter_file("fuzz.toml", text) {
            for line in banctl_fuzz::LINES {
                let _ = file.filter.examine(line);
            }
        }
    });
}
