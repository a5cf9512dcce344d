//! Filter throughput: the built-in sshd filter on a generated, mixed 1M-line auth log, one core.
//! Run through `cargo xtask bench` (or `cargo bench --bench filter`).

mod common;

use std::time::Instant;

use banctl::filter::Builtin;
use common::Figure;

const LINES: usize = 1_000_000;

fn main() {
    let log = common::auth_log(LINES, 42);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("auth-1M.log"), &log).unwrap();

    let filter = Builtin::by_name("sshd").expect("sshd filter").compile();
    let lines: Vec<&str> = log.lines().collect();
    // Warm up caches and the regex engines' lazy DFAs, then take the best of three runs.
    let mut hits = 0;
    let mut best = f64::MAX;
    for _ in 0..4 {
        let start = Instant::now();
        hits = lines.iter().filter(|l| filter.find(l).is_some()).count();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let rate = LINES as f64 / best;
    let figure = Figure {
        name: "filter: sshd, mixed 1M-line auth.log",
        value: rate / 1e6,
        unit: "M lines/s",
        target: ">= 5",
        met: Some(rate >= 5e6),
        note: format!("({hits} hits, {:.0} ms per 1M lines)", best * 1000.0),
    };
    figure.print();
    common::save("filter", &[figure]);
}
