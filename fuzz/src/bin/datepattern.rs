//! A fail2ban date pattern (first line) read from lines (the rest).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (pattern, lines) = banctl_fuzz::head_and_lines(text);
        if let Ok(dates) = banctl::filter::DatePattern::new(pattern) {
            for line in lines.into_iter().chain(banctl_fuzz::LINES) {
                let _ = dates.span(line);
            }
        }
    });
}
