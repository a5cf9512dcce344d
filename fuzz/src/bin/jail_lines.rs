//! Log lines through a jail as the daemon runs them: the built-in sshd filter (aggressive
//! mode), dates read, failures counted and bans decided.
use std::time::{Duration, SystemTime};

fn main() {
    let config = banctl::config::Config::parse(
        std::path::Path::new("fuzz.toml"),
        "[jails.sshd]\nfilter = \"sshd[mode=aggressive]\"\nlogpath = \"/dev/null\"\nmaxretry = 2\n",
    )
    .expect("the fuzz jail is valid");
    // Read only: each input gets a fresh jail from it.
    let jail_config =
        std::panic::AssertUnwindSafe(config.jails.into_iter().next().expect("one jail"));
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let mut jail = banctl::jail::Jail::new((*jail_config).clone());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        for line in text.lines().take(256) {
            if let banctl::filter::Verdict::Matched(hit) = jail.examine(line) {
                let at = jail_config.dates.find(line, now).map_or(now, |f| f.at);
                let _ = jail.record_line(hit.addr, at, line);
            }
        }
    });
}
