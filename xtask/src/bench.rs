//! `cargo xtask bench`: runs the benchmark programs (banctl's own, then banctl beside fail2ban
//! and fail2ban-rs on the same logs: `benches/peers.rs`), and prints every figure as markdown
//! tables (also saved under `target/bench/`).
//! Figures, not assertions: a missed target is reported, never a failure.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::sys;

pub fn run() -> Result<()> {
    sys::ensure_packages()?;
    let dir = sys::workspace_root().join("target/bench");
    // The binary users get (`cargo build --release`, as `dist` builds it): a bench build's
    // symbols differ from it, so the code order of `build/symbol-order.txt` fits only it.
    // Copied, as `cargo bench` puts its own build at target/release/banctl.
    let release = crate::dist::release_binary()?;
    std::fs::create_dir_all(&dir)?;
    let banctl = dir.join("banctl");
    std::fs::copy(release, &banctl).context("copying the release binary")?;
    let bench = |name: &str, env: &[(&str, &std::path::Path)]| {
        crate::run(
            Command::new(env!("CARGO"))
                .args(["bench", "--bench", name])
                .env("BANCTL_BENCH_BIN", &banctl)
                .envs(env.iter().copied())
                .current_dir(sys::workspace_root()),
        )
    };
    bench("filter", &[])?;
    bench("daemon", &[])?;
    let nats = sys::nats_server()?;
    bench("fleet", &[("BANCTL_NATS_SERVER", &nats)])?;
    let (fail2ban_root, fail2ban_rs) = sys::peers()?;
    bench(
        "peers",
        &[
            ("BANCTL_FAIL2BAN_ROOT", &fail2ban_root),
            ("BANCTL_FAIL2BAN_RS", &fail2ban_rs),
        ],
    )?;
    let mut figures = Vec::new();
    for file in ["filter", "daemon", "fleet"] {
        let text = std::fs::read_to_string(dir.join(format!("{file}.json")))
            .with_context(|| format!("reading target/bench/{file}.json"))?;
        let list: Vec<Value> = serde_json::from_str(&text)?;
        figures.extend(list);
    }
    let peers: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("peers.json"))
            .context("reading target/bench/peers.json")?,
    )?;
    let table = format!("{}\n{}", peers_markdown(&peers), markdown(&figures));
    println!("\n{table}");
    std::fs::write(dir.join("summary.md"), &table)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    println!("saved: target/bench/summary.md, target/bench/results.json");
    Ok(())
}

/// banctl beside fail2ban and fail2ban-rs, measured in the same run: each figure, its target,
/// and how many times better banctl's is (higher is better only for lines/s).
fn peers_markdown(rows: &[Value]) -> String {
    let mut out = String::from(
        "| measure | fail2ban 1.0.2 | fail2ban-rs 1.5.4 | banctl | target | banctl vs fail2ban | banctl vs fail2ban-rs |\n| --- | ---: | ---: | ---: | --- | ---: | ---: |\n",
    );
    for row in rows {
        let unit = row["unit"].as_str().unwrap_or("");
        let cell = |peer: &str| match row[peer].as_f64() {
            Some(v) => format!("{v:.3} {unit}"),
            None => "—".to_owned(),
        };
        let higher_is_better = unit.ends_with("/s");
        let ratio = |peer: &str| match (row["banctl"].as_f64(), row[peer].as_f64()) {
            (Some(b), Some(p)) if b > 0.0 && p > 0.0 => {
                format!("{:.1}x", if higher_is_better { b / p } else { p / b })
            }
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row["measure"].as_str().unwrap_or(""),
            cell("fail2ban"),
            cell("fail2ban-rs"),
            cell("banctl"),
            row["target"].as_str().unwrap_or(""),
            ratio("fail2ban"),
            ratio("fail2ban-rs"),
        ));
    }
    out
}

fn markdown(figures: &[Value]) -> String {
    let mut out = String::from(
        "| measure | value | target | verdict | note |\n| --- | ---: | --- | --- | --- |\n",
    );
    for f in figures {
        let verdict = match f["met"].as_bool() {
            Some(true) => "meets",
            Some(false) => "**misses**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {:.3} {} | {} | {verdict} | {} |\n",
            f["name"].as_str().unwrap_or(""),
            f["value"].as_f64().unwrap_or(0.0),
            f["unit"].as_str().unwrap_or(""),
            f["target"].as_str().unwrap_or(""),
            f["note"].as_str().unwrap_or("").replace('|', "/"),
        ));
    }
    out
}
