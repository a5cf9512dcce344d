//! The file follower on a real filesystem (no root needed).

use std::time::Duration;

use banctl::source::{FileFollower, FilePosition, LineBatch, Resume, Timing};

use crate::daemon::{Scratch, append};

fn lines(s: &[&str]) -> Vec<String> {
    s.iter().map(|l| l.to_string()).collect()
}

/// Collects lines until `want` arrived (or 5 s passed).
async fn collect(follower: &mut FileFollower, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(5), follower.next()).await {
            Ok(Ok(batches)) => got.extend(
                batches
                    .into_iter()
                    .flat_map(|b: LineBatch| b.lines.iter().map(String::from).collect::<Vec<_>>()),
            ),
            Ok(Err(e)) => panic!("follower failed: {e}"),
            Err(_) => break,
        }
    }
    got
}

#[tokio::test]
async fn starts_at_end_and_survives_rename_rotation() {
    let dir = Scratch::new("rotation");
    let log = dir.path("app.log");
    append(
        &log,
        &lines(&["old line, written before the daemon started"]),
    );
    let mut follower = FileFollower::new(&[log.display().to_string()], &Resume::default()).unwrap();

    append(&log, &lines(&["one"]));
    assert_eq!(collect(&mut follower, 1).await, ["one"]);

    // logrotate: rename, a late write by the logger to the renamed file, then a new file.
    std::fs::rename(&log, dir.path("app.log.1")).unwrap();
    append(
        &dir.path("app.log.1"),
        &lines(&["two (late write to the rotated file)"]),
    );
    append(&log, &lines(&["three", "four"]));
    assert_eq!(
        collect(&mut follower, 3).await,
        ["two (late write to the rotated file)", "three", "four"]
    );

    // The new file is followed from now on.
    append(&log, &lines(&["five"]));
    assert_eq!(collect(&mut follower, 1).await, ["five"]);
}

#[tokio::test]
async fn glob_picks_up_files_created_later_and_truncation_restarts() {
    let dir = Scratch::new("glob");
    let pattern = dir.path("log_*.log").display().to_string();
    let mut follower = FileFollower::new(&[pattern], &Resume::default()).unwrap();
    let later = dir.path("log_20261122.log");
    append(&later, &lines(&["from a file created after start"]));
    assert_eq!(
        collect(&mut follower, 1).await,
        ["from a file created after start"]
    );
    append(&dir.path("other.txt"), &lines(&["not matching the glob"]));

    // copytruncate: the file shrinks, reading restarts at its start.
    std::fs::write(&later, "").unwrap();
    append(&later, &lines(&["after truncation"]));
    assert_eq!(collect(&mut follower, 1).await, ["after truncation"]);
}

/// Collects batches until `want` lines arrived (or 5 s passed, or `wait` more for rescans).
async fn batches(follower: &mut FileFollower, want: usize, wait: Duration) -> Vec<LineBatch> {
    let mut got = Vec::new();
    let mut lines = 0;
    while lines < want {
        match tokio::time::timeout(wait, follower.next()).await {
            Ok(Ok(more)) => {
                lines += more.iter().map(|b| b.lines.len()).sum::<usize>();
                got.extend(more);
            }
            Ok(Err(e)) => panic!("follower failed: {e}"),
            Err(_) => break,
        }
    }
    got
}

fn texts(batches: &[LineBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| b.lines.iter().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// The saved positions after `batches`, as the daemon would keep them.
fn saved(batches: &[LineBatch], readback: bool) -> Resume {
    let mut resume = Resume {
        readback,
        ..Resume::default()
    };
    for (key, text) in batches.iter().filter_map(|b| b.resume.clone()) {
        resume
            .saved
            .insert(key, FilePosition::decode(&text).expect("position"));
    }
    resume
}

/// Nothing more arrives within `d`.
async fn quiet(follower: &mut FileFollower, d: Duration) -> Vec<String> {
    match tokio::time::timeout(d, follower.next()).await {
        Ok(Ok(more)) => texts(&more),
        _ => Vec::new(),
    }
}

fn write_bytes(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test]
async fn partial_long_and_invalid_lines_keep_their_framing() {
    let dir = Scratch::new("framing");
    let log = dir.path("app.log");
    std::fs::write(&log, "").unwrap();
    let mut follower = FileFollower::new(&[log.display().to_string()], &Resume::default()).unwrap();

    write_bytes(&log, b"a partial ");
    assert_eq!(
        quiet(&mut follower, Duration::from_millis(300)).await,
        Vec::<String>::new()
    );
    write_bytes(&log, b"line\n");
    assert_eq!(collect(&mut follower, 1).await, ["a partial line"]);

    // A 1 MiB line, written in one go: dropped whole and counted (a cut could end inside
    // attacker text, issue 21), the next line intact.
    let mut big = vec![b'x'; 1024 * 1024];
    big.extend_from_slice(b"\nafter the long line\n");
    write_bytes(&log, &big);
    let mut got: Vec<LineBatch> = Vec::new();
    while got.iter().map(|b| b.lines.len()).sum::<usize>() < 1 {
        match tokio::time::timeout(Duration::from_secs(5), follower.next()).await {
            Ok(Ok(batches)) => got.extend(batches),
            other => panic!("no line after the long one: {:?}", other.map(|r| r.is_ok())),
        }
    }
    assert_eq!(texts(&got), ["after the long line"]);
    assert_eq!(got.iter().map(|b| b.cut).sum::<u64>(), 1);

    write_bytes(&log, b"bad \xff\xfe byte from 198.51.100.7\r\n");
    assert_eq!(
        collect(&mut follower, 1).await,
        ["bad \u{fffd}\u{fffd} byte from 198.51.100.7"]
    );
}

#[tokio::test]
async fn missing_file_and_directory_are_waited_for() {
    let dir = Scratch::new("missing");
    let in_dir = dir.path("app.log");
    let nested = dir.path("later/app.log");
    let mut follower = FileFollower::new(
        &[in_dir.display().to_string(), nested.display().to_string()],
        &Resume::default(),
    )
    .unwrap();
    append(&in_dir, &lines(&["the file appeared"]));
    assert_eq!(collect(&mut follower, 1).await, ["the file appeared"]);

    // Its directory did not exist either: found by the periodic rescan (every 5 s).
    std::fs::create_dir(dir.path("later")).unwrap();
    append(&nested, &lines(&["the directory appeared"]));
    let got = texts(&batches(&mut follower, 1, Duration::from_secs(12)).await);
    assert_eq!(got, ["the directory appeared"]);
    append(&nested, &lines(&["and is followed"]));
    assert_eq!(collect(&mut follower, 1).await, ["and is followed"]);
}

#[tokio::test]
async fn delete_and_recreate_reads_both_files() {
    let dir = Scratch::new("recreate");
    let log = dir.path("app.log");
    std::fs::write(&log, "").unwrap();
    let mut follower = FileFollower::new(&[log.display().to_string()], &Resume::default()).unwrap();
    append(&log, &lines(&["one"]));
    assert_eq!(collect(&mut follower, 1).await, ["one"]);
    append(&log, &lines(&["two, just before the delete"]));
    std::fs::remove_file(&log).unwrap();
    append(&log, &lines(&["three, in the new file"]));
    assert_eq!(
        collect(&mut follower, 2).await,
        ["two, just before the delete", "three, in the new file"]
    );
    append(&log, &lines(&["four"]));
    assert_eq!(collect(&mut follower, 1).await, ["four"]);
}

#[tokio::test]
async fn restart_resumes_exactly_across_rotation_and_truncation() {
    let dir = Scratch::new("resume");
    let log = dir.path("app.log");
    let pattern = [log.display().to_string()];
    append(
        &log,
        &lines(&["before the first start 1", "before the first start 2"]),
    );

    // First start without read-back: from the end.
    let mut f = FileFollower::new(&pattern, &Resume::default()).unwrap();
    append(&log, &lines(&["a1", "a2"]));
    let got = batches(&mut f, 2, Duration::from_secs(5)).await;
    assert_eq!(texts(&got), ["a1", "a2"]);
    assert!(got.iter().all(|b| b.timing == Timing::Live));
    drop(f);

    // Written while stopped, plus a partial line: exactly the new complete lines.
    append(&log, &lines(&["b1", "b2"]));
    write_bytes(&log, b"b3 part");
    let mut f = FileFollower::new(&pattern, &saved(&got, true)).unwrap();
    let got = batches(&mut f, 2, Duration::from_secs(5)).await;
    assert_eq!(texts(&got), ["b1", "b2"]);
    assert!(got.iter().all(|b| b.timing == Timing::CatchUp));
    assert_eq!(
        quiet(&mut f, Duration::from_millis(300)).await,
        Vec::<String>::new()
    );
    drop(f);

    // The partial line completed and the file rotated while stopped: the old file is found by
    // its inode and finished first, then the new one is read from its start.
    write_bytes(&log, b", completed\n");
    std::fs::rename(&log, dir.path("app.log.1")).unwrap();
    append(&log, &lines(&["c1 in the new file"]));
    let mut f = FileFollower::new(&pattern, &saved(&got, true)).unwrap();
    let got = batches(&mut f, 2, Duration::from_secs(5)).await;
    assert_eq!(texts(&got), ["b3 part, completed", "c1 in the new file"]);
    // Live again afterwards, and the position follows the new file.
    append(&log, &lines(&["c2"]));
    let live = batches(&mut f, 1, Duration::from_secs(5)).await;
    assert_eq!(texts(&live), ["c2"]);
    assert_eq!(live[0].timing, Timing::Live);
    drop(f);

    // copytruncate while stopped: the file is shorter than the saved offset.
    std::fs::write(&log, "d1 after truncation\n").unwrap();
    let mut f = FileFollower::new(&pattern, &saved(&live, true)).unwrap();
    let got = batches(&mut f, 1, Duration::from_secs(5)).await;
    assert_eq!(texts(&got), ["d1 after truncation"]);
    drop(f);

    // Truncated and rewritten past the saved offset: the first line tells.
    std::fs::write(&log, "e1 a different first line, longer than before\ne2\n").unwrap();
    let mut f = FileFollower::new(&pattern, &saved(&got, true)).unwrap();
    let got = batches(&mut f, 2, Duration::from_secs(5)).await;
    assert_eq!(
        texts(&got),
        ["e1 a different first line, longer than before", "e2"]
    );
    drop(f);

    // First start with read-back: the existing lines, marked as read back.
    let mut f = FileFollower::new(
        &pattern,
        &Resume {
            readback: true,
            ..Resume::default()
        },
    )
    .unwrap();
    let got = batches(&mut f, 2, Duration::from_secs(5)).await;
    assert_eq!(
        texts(&got),
        ["e1 a different first line, longer than before", "e2"]
    );
    assert!(got.iter().all(|b| b.timing == Timing::ReadBack));
}

/// A file whose first line is longer than the identifying head, truncated live: read from its
/// start once, then followed (not re-read from the start at every append).
#[tokio::test]
async fn truncation_of_a_file_with_a_long_first_line_reads_it_once() {
    let dir = Scratch::new("longhead");
    let log = dir.path("app.log");
    std::fs::write(&log, format!("{}\n", "h".repeat(300))).unwrap();
    let mut follower = FileFollower::new(&[log.display().to_string()], &Resume::default()).unwrap();
    append(&log, &lines(&["before"]));
    assert_eq!(collect(&mut follower, 1).await, ["before"]);
    std::fs::write(&log, "").unwrap();
    append(&log, &lines(&["after truncation"]));
    assert_eq!(collect(&mut follower, 1).await, ["after truncation"]);
    append(&log, &lines(&["next"]));
    assert_eq!(collect(&mut follower, 1).await, ["next"]);
    assert_eq!(
        quiet(&mut follower, Duration::from_millis(300)).await,
        Vec::<String>::new()
    );
}
