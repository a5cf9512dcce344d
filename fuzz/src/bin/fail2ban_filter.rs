//! A fail2ban filter file (INI dialect, Python regexes, tags), then the filter it makes on
//! lines. The file is read from disk, as fail2ban's are (includes resolve next to it).
fn main() {
    let dir = std::env::temp_dir().join(format!("banctl-fuzz-f2b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("fuzz.conf");
    afl::fuzz!(|data: &[u8]| {
        if std::fs::write(&path, data).is_err() {
            return;
        }
        if let Ok(filter) = banctl::fail2ban::read_filter(&path, &[]) {
            let text = String::from_utf8_lossy(data);
            let (_, own) = banctl_fuzz::head_and_lines(&text);
            for line in banctl_fuzz::LINES.iter().copied().chain(own) {
                let _ = filter.filter.examine(line);
            }
        }
    });
}
