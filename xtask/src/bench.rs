//! `cargo xtask bench`: runs the benchmark programs, compares with fail2ban where it is
//! installed, and prints every figure as a markdown table (also saved under `target/bench/`).
//! Figures, not assertions: a missed target is reported, never a failure.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::sys;

/// Lines of the generated auth log handed to fail2ban-regex (it is ~100x slower).
const FAIL2BAN_SLICE: usize = 100_000;

pub fn run() -> Result<()> {
    sys::ensure_packages()?;
    crate::cargo(&["bench", "--bench", "filter"])?;
    crate::cargo(&["bench", "--bench", "daemon"])?;
    let nats = sys::nats_server()?;
    crate::run(
        Command::new(env!("CARGO"))
            .args(["bench", "--bench", "fleet"])
            .env("BANCTL_NATS_SERVER", &nats)
            .current_dir(sys::workspace_root()),
    )?;
    let dir = sys::workspace_root().join("target/bench");
    let mut figures = Vec::new();
    for file in ["filter", "daemon", "fleet"] {
        let text = std::fs::read_to_string(dir.join(format!("{file}.json")))
            .with_context(|| format!("reading target/bench/{file}.json"))?;
        let list: Vec<Value> = serde_json::from_str(&text)?;
        figures.extend(list);
    }
    if let Some(f) = fail2ban(&dir, &figures)? {
        figures.extend(f);
    }
    let table = markdown(&figures);
    println!("\n{table}");
    std::fs::write(dir.join("summary.md"), &table)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    println!("saved: target/bench/summary.md, target/bench/results.json");
    Ok(())
}

/// fail2ban-regex with Debian's stock filters on the same logs (a slice), and the ratios.
fn fail2ban(dir: &Path, figures: &[Value]) -> Result<Option<Vec<Value>>> {
    let available = Command::new("fail2ban-regex")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        println!("fail2ban-regex is not installed (apt-get install fail2ban): comparison skipped");
        return Ok(None);
    }
    let mut out = Vec::new();
    for (ours, log, conf) in [
        ("filter: sshd", "auth-1M.log", "sshd.conf"),
        (
            "filter: nginx-botsearch",
            "access-1M.log",
            "nginx-botsearch.conf",
        ),
    ] {
        let filter = Path::new("/etc/fail2ban/filter.d").join(conf);
        if !filter.exists() {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(log))
            .with_context(|| format!("reading the generated {log}"))?;
        let slice: String = text
            .lines()
            .take(FAIL2BAN_SLICE)
            .flat_map(|l| [l, "\n"])
            .collect();
        let path = dir.join(format!("slice-{log}"));
        std::fs::write(&path, slice)?;
        let start = Instant::now();
        let run = Command::new("fail2ban-regex")
            .arg(&path)
            .arg(&filter)
            .output()?;
        let secs = start.elapsed().as_secs_f64();
        let summary = String::from_utf8_lossy(&run.stdout);
        let matched = summary
            .lines()
            .find(|l| l.starts_with("Lines:"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let rate = FAIL2BAN_SLICE as f64 / secs / 1e6;
        let banctl = figures
            .iter()
            .find(|f| f["name"].as_str().is_some_and(|n| n.starts_with(ours)))
            .and_then(|f| f["value"].as_f64())
            .unwrap_or(0.0);
        out.push(
            json!({"name": format!("fail2ban-regex: stock {conf}, same log"), "value": rate,
            "unit": "M lines/s", "target": "-", "met": null,
            "note": format!("{FAIL2BAN_SLICE} lines in {secs:.2} s incl. start-up; {matched}")}),
        );
        out.push(
            json!({"name": format!("banctl / fail2ban, {conf}"), "value": banctl / rate,
            "unit": "x", "target": "-", "met": null, "note": ""}),
        );
    }
    Ok(Some(out))
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
