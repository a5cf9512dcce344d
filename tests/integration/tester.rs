//! `banctl test`: a filter against a log file or one line, as fail2ban-regex does.

use std::process::Command;

use crate::daemon::{BIN, Scratch};

fn banctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn test_command_summarises_prints_and_emits_json() {
    let scratch = Scratch::new("tester");
    let log = scratch.write(
        "auth.log",
        "Nov 21 10:00:00 web sshd[7]: Invalid user admin from 203.0.113.5 port 4022\n\
         Nov 21 10:00:01 web sshd[7]: Failed password for root from 203.0.113.5 port 4023 ssh2\n\
         Nov 21 10:00:02 web sshd[8]: Accepted publickey for ops from 198.51.100.2 port 5000 ssh2\n\
         Nov 21 10:00:03 web sshd[9]: Invalid user x from 203.0.113.5 from 192.0.2.66 port 1\n",
    );
    let log = log.to_str().unwrap();
    let (code, out, _) = banctl(&["test", log, "sshd", "--print-missed"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("Lines: 4 in all: 3 matched, 0 ignored, 1 missed\n"),
        "{out}"
    );
    assert!(
        out.contains("missed       3: Nov 21 10:00:02 web sshd[8]: Accepted"),
        "{out}"
    );
    // The injected address in the user name never wins over the one sshd printed.
    assert!(
        out.contains("  203.0.113.5  2 failure(s)\n  192.0.2.66  1 failure(s)\n"),
        "{out}"
    );

    let (code, json, _) = banctl(&["test", log, "sshd", "--json"]);
    assert_eq!(code, Some(0));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["match"], true);
    assert_eq!(lines[0]["host"], "203.0.113.5");
    assert_eq!(lines[2]["host"], "192.0.2.66");

    // One line instead of a file, and a banctl filter file.
    let filter = scratch.write(
        "tightvnc.toml",
        "description = \"TightVNC\"\nfailregex = ['^.* authentication failed from <HOST>$']\n",
    );
    let (code, out, _) = banctl(&[
        "test",
        "21/11/2026 10:00:00 Connection from 192.0.2.7: authentication failed from 192.0.2.7",
        filter.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Input:  (one line)"), "{out}");
    assert!(out.contains("Lines: 1 in all: 1 matched"), "{out}");

    let bad = scratch.write("bad.toml", "failregex = ['^no address$']\n");
    let (code, _, err) = banctl(&["test", log, bad.to_str().unwrap()]);
    assert_eq!(code, Some(banctl::cli::exit::CONFIG));
    assert!(err.contains("bad.toml:1: failregex[0]:"), "{err}");
    let (code, _, err) = banctl(&["test", log, "no-such-filter"]);
    assert_eq!(code, Some(banctl::cli::exit::CONFIG));
    assert!(err.contains("neither a built-in filter"), "{err}");
}

/// fail2ban-regex's option names work: --print-all-matched, --print-all-missed.
#[test]
fn fail2ban_regex_option_names_are_taken() {
    let scratch = Scratch::new("tester-f2b-options");
    let log = scratch.write(
        "app.log",
        "Nov 30 10:00:00 web app[1]: login failed for bob from 192.0.2.9\n\
         Nov 30 10:00:01 web app[1]: login ok for bob from 192.0.2.9\n",
    );
    let log = log.display().to_string();
    let regex = r"login failed for \S+ from <HOST>$";
    let (code, out, err) = banctl(&["test", &log, regex, "--print-all-matched"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("matched      1:") && out.contains("[192.0.2.9]"),
        "{out}"
    );
    let (code, out, err) = banctl(&["test", &log, regex, "--print-all-missed"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("missed       2: Nov 30 10:00:01"), "{out}");
}

/// `--print-all-ignored` and `-v`, and a no-failure match (`<F-NOFAIL>`: sshd's `Failed
/// publickey`) counted as ignored, as fail2ban-regex counts it.
#[test]
fn ignored_lines_and_verbose_output_are_shown() {
    let scratch = Scratch::new("tester-ignored");
    let log = scratch.write(
        "auth.log",
        "Nov 30 10:00:00 web sshd[7]: Failed publickey for root from 192.0.2.5 port 22 ssh2: RSA SHA256:abc\n\
         Nov 30 10:00:01 web sshd[8]: Failed password for root from 192.0.2.6 port 22 ssh2\n\
         Nov 30 10:00:02 web sshd[9]: Failed password for monitor from 192.0.2.7 port 22 ssh2\n",
    );
    let filter = scratch.write(
        "f.conf",
        "[Definition]\nfailregex = ^\\s*\\S+ sshd\\[\\d+\\]: Failed (?:<F-NOFAIL>publickey</F-NOFAIL>|password) for \\S+ from <HOST> port \\d+ ssh2\nignoreregex = for monitor from\n",
    );
    let log = log.display().to_string();
    let filter = filter.display().to_string();
    let (code, out, err) = banctl(&["test", &log, &filter, "--print-all-ignored"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("ignored      1: Nov 30 10:00:00 web sshd[7]: Failed publickey for root from 192.0.2.5 port 22 ssh2: RSA SHA256:abc  [no failure] failregex 1\n"),
        "{out}"
    );
    assert!(
        out.contains("ignored      3: Nov 30 10:00:02 web sshd[9]: Failed password for monitor from 192.0.2.7 port 22 ssh2  [192.0.2.7] ignoreregex 1\n"),
        "{out}"
    );
    assert!(!out.contains("matched      2"), "{out}");
    assert!(
        out.contains("Lines: 3 in all: 1 matched, 2 ignored, 0 missed\n"),
        "{out}"
    );
    let (code, out, err) = banctl(&["test", &log, &filter, "-v"]);
    assert_eq!(code, Some(0), "{err}");
    for expected in [
        "ignored      1:",
        "matched      2:",
        "[192.0.2.6] failregex 1",
        "ignored      3:",
    ] {
        assert!(out.contains(expected), "{expected} in\n{out}");
    }
    // A path that is not there is an error, not a line to match.
    let (code, _, err) = banctl(&["test", "/var/log/no-such.log", "sshd"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/var/log/no-such.log: no such file"), "{err}");
}

/// LOG `systemd-journal[journalpath=DIR]`: the journal's entries as the daemon reads them,
/// chosen by `--journalmatch` (or the filter's journalmatch), dated by their own time.
#[test]
fn the_journal_is_a_log_to_test() {
    use crate::journal::{Entry, can_write_journals, write_journal};
    if !can_write_journals() {
        return;
    }
    let scratch = Scratch::new("tester-journal");
    let dir = scratch.path("journal");
    std::fs::create_dir_all(&dir).unwrap();
    let entries: Vec<Entry<'_>> = [
        (
            "ssh.service",
            "Failed password for root from 192.0.2.5 port 22 ssh2",
        ),
        (
            "ssh.service",
            "Failed password for root from 192.0.2.6 port 22 ssh2",
        ),
        (
            "other.service",
            "Failed password for root from 192.0.2.9 port 22 ssh2",
        ),
    ]
    .iter()
    .enumerate()
    .map(|(i, (unit, message))| Entry {
        at_us: 1_764_500_000_000_000 + i as u128 * 1_000_000,
        unit,
        ident: "sshd",
        message,
    })
    .collect();
    write_journal(
        &dir.join("test.journal"),
        "fedcba9876543210fedcba9876543210",
        &entries,
    );
    let log = format!("systemd-journal[journalpath={}]", dir.display());
    let (code, out, err) = banctl(&[
        "test",
        &log,
        "sshd",
        "--journalmatch",
        "_SYSTEMD_UNIT=ssh.service",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let hits: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 2, "{out}");
    assert_eq!(hits[0]["host"], "192.0.2.5");
    assert_eq!(hits[1]["host"], "192.0.2.6");
    assert_eq!(
        hits[0]["time"].as_f64().unwrap().floor() as i64,
        1_764_500_000
    );
    let (code, out, err) = banctl(&["test", &log, "sshd"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Input:  the systemd journal\n"), "{out}");
    assert!(out.contains("Lines: 3 in all: 3 matched"), "{out}");
    assert!(out.contains("[3] journal entry time"), "{out}");
}

/// A log larger than one read (lines of 1 KB, the last one without its newline, CRLF
/// endings, invalid UTF-8): the lines the literal search skips are counted as missed, matches
/// keep their line numbers across reads, and the same log on standard input gives the same.
#[test]
fn a_large_log_is_counted_and_numbered_across_reads() {
    let scratch = Scratch::new("tester-large");
    let mut text = Vec::new();
    let pad = "x".repeat(1000);
    for i in 0..3000u32 {
        text.extend_from_slice(format!("Nov 30 10:00:00 web CRON[2]: noise {pad}\n").as_bytes());
        let end: &[u8] = if i % 2 == 0 { b"\n" } else { b"\r\n" };
        // A user name in UTF-8, and once with invalid UTF-8: replaced, the line still counts.
        let user: &[u8] = if i == 1500 {
            b"r\xff\xfet"
        } else {
            "r\u{fc}\u{fc}t".as_bytes()
        };
        text.extend_from_slice(
            format!("Nov 30 10:00:01 web sshd[{i}]: Failed password for ").as_bytes(),
        );
        text.extend_from_slice(user);
        text.extend_from_slice(format!(" from 192.0.2.{} port 22 ssh2", i % 250 + 1).as_bytes());
        if i < 2999 {
            text.extend_from_slice(end);
        }
    }
    let log = scratch.path("big.log");
    std::fs::write(&log, &text).unwrap();
    let log = log.to_str().unwrap();
    let (code, out, err) = banctl(&["test", log, "sshd", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let numbers: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, (1..=3000).map(|i| 2 * i).collect::<Vec<u64>>());
    let (_, summary, _) = banctl(&["test", log, "sshd"]);
    assert!(
        summary.contains("Lines: 6000 in all: 3000 matched, 0 ignored, 3000 missed\n"),
        "{summary}"
    );
    let (_, missed, _) = banctl(&["test", log, "sshd", "--print-missed"]);
    assert_eq!(
        missed.lines().filter(|l| l.starts_with("missed ")).count(),
        3000
    );
    let stdin = Command::new(BIN)
        .args(["test", "-", "sshd"])
        .stdin(std::fs::File::open(log).unwrap())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stdin.stdout).replace("(standard input)", log),
        summary
    );
}

/// A line longer than several reads (3 MB) is one line: the lines around it keep their
/// numbers, and one that fails after it is counted.
#[test]
fn a_line_longer_than_a_read_is_one_line() {
    let scratch = Scratch::new("tester-long-line");
    let fail = |i: u32| {
        format!(
            "Nov 30 10:00:01 web sshd[{i}]: Failed password for root from 192.0.2.{i} port 22 ssh2\n"
        )
    };
    let mut text = fail(1);
    text.push_str(&format!(
        "Nov 30 10:00:00 web CRON[2]: {}\n",
        "x".repeat(3 << 20)
    ));
    text.push_str(&fail(3));
    text.push_str(&fail(4));
    let log = scratch.path("long.log");
    std::fs::write(&log, &text).unwrap();
    let (code, out, err) = banctl(&["test", log.to_str().unwrap(), "sshd", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<(u64, String)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["host"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [(1, "192.0.2.1"), (3, "192.0.2.3"), (4, "192.0.2.4")]
            .map(|(n, h)| (n, h.to_owned()))
            .to_vec()
    );
    let (_, summary, _) = banctl(&["test", log.to_str().unwrap(), "sshd"]);
    assert!(
        summary.contains("Lines: 4 in all: 3 matched, 0 ignored, 1 missed\n"),
        "{summary}"
    );
}

/// With no line matched, the summary names the first line's date format: that line is read
/// even when the filter's literals rule it out.
#[test]
fn the_first_lines_date_is_named_when_nothing_matched() {
    let scratch = Scratch::new("tester-first-date");
    let log = scratch.write(
        "cron.log",
        "Nov 30 10:00:00 web CRON[2]: session opened\nNov 30 10:00:01 web CRON[3]: session opened\n",
    );
    let (code, out, err) = banctl(&["test", log.to_str().unwrap(), "sshd"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("Lines: 2 in all: 0 matched, 0 ignored, 2 missed\n"),
        "{out}"
    );
    assert!(
        out.contains("Dates: no line matched; the first line's: syslog (Mon DD hh:mm:ss)\n"),
        "{out}"
    );
}

/// The arguments the wrong way round: a log is never parsed as a filter file (a large one
/// took gigabytes), and the error says which order is right.
#[test]
fn a_log_named_as_the_filter_is_refused_with_the_right_order() {
    let scratch = Scratch::new("tester-swapped");
    let line = "Nov 30 10:00:00 web sshd[2]: Invalid user x from 192.0.2.9 port 22\n";
    let log = scratch.write("auth.log", &line.repeat(20_000));
    let log = log.to_str().unwrap();
    let (code, _, err) = banctl(&["test", "sshd", log]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("is no filter file (at most 1048576)"), "{err}");
    assert!(
        err.contains(&format!(
            "the log comes first, then the filter: banctl test {log} sshd"
        )),
        "{err}"
    );
    let (code, out, err) = banctl(&["test", log, "sshd"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("20000 matched"), "{out}");
}

/// A file of more than twice [the part size](8 MiB) is read in parts, one per core: the
/// summary is byte for byte the one of the same file read on one core, with lines that
/// straddle every possible cut (CRLF, invalid UTF-8, host names, no final newline).
#[test]
fn a_file_read_in_parts_gives_the_summary_of_one_read() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cores >= 2, "this test needs two cores to read in parts");
    let scratch = Scratch::new("tester-parts");
    let mut text = Vec::with_capacity(24 << 20);
    let mut i = 0u32;
    while text.len() < 20 << 20 {
        let pid = i % 9973;
        let line: Vec<u8> = match i % 7 {
            0 => format!("Nov 30 10:00:01 web sshd[{pid}]: Invalid user u{i} from 198.51.100.{} port 22\n", i % 200).into_bytes(),
            1 => format!("2026-11-30T10:00:02.123+01:00 web sshd[{pid}]: Failed password for root from 2001:db8::{:x} port 2 ssh2\r\n", i % 5000).into_bytes(),
            2 => {
                let mut l = format!("Nov 30 10:00:03 web sshd[{pid}]: Failed password for r").into_bytes();
                l.extend_from_slice(b"\xff\xfe");
                l.extend_from_slice(format!("t from 192.0.2.{} port 22 ssh2\n", i % 250).as_bytes());
                l
            }
            3 => format!("Nov 30 10:00:04 web sshd[{pid}]: Invalid user x from host{}.invalid port 22\n", i % 30).into_bytes(),
            4 => format!("Nov 30 10:00:05 web sshd[{pid}]: Accepted publickey for deploy from 192.0.2.{} port 22 ssh2\n", i % 250).into_bytes(),
            _ => format!("Nov 30 10:00:06 web CRON[{pid}]: (root) CMD (run-parts /etc/cron.hourly) {}\n", "y".repeat((i % 300) as usize)).into_bytes(),
        };
        text.extend_from_slice(&line);
        i += 1;
    }
    text.extend_from_slice(
        b"Nov 30 10:00:07 web sshd[1]: Invalid user last from 203.0.113.9 port 22",
    );
    let log = scratch.path("parts.log");
    std::fs::write(&log, &text).unwrap();
    let log = log.to_str().unwrap();
    // A failregex of fail2ban's syntax takes host names too.
    let names = r"sshd\[\d+\]: Invalid user \S+ from <HOST> port \d+$";
    for (filter, usedns) in [("sshd", "warn"), (names, "warn"), (names, "no")] {
        let args = ["test", log, filter, "--usedns", usedns];
        // The summary, and whether the file was read in parts.
        let run = |mut command: Command| {
            let out = command
                .args(args)
                .env("BANCTL_LOG", "debug")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{stderr}");
            let in_parts = stderr.contains("reading the file in parts");
            (String::from_utf8_lossy(&out.stdout).into_owned(), in_parts)
        };
        let (parts, in_parts) = run(Command::new(BIN));
        assert!(in_parts, "not read in parts");
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "0", BIN]);
        let (one, in_parts) = run(taskset);
        assert!(!in_parts, "read in parts on one core");
        assert_eq!(parts, one);
        assert!(
            parts.contains(&format!("Lines: {} in all", i + 1)),
            "{parts}"
        );
        if filter == names && usedns == "warn" {
            assert!(parts.contains("matched a host name only"), "{parts}");
        }
    }
}
