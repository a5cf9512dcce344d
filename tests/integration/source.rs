//! The file follower on a real filesystem (no root needed).

use std::time::Duration;

use banctl::source::{FileFollower, LineBatch};

use crate::daemon::{Scratch, append};

fn lines(s: &[&str]) -> Vec<String> {
    s.iter().map(|l| l.to_string()).collect()
}

/// Collects lines until `want` arrived (or 5 s passed).
async fn collect(follower: &mut FileFollower, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(5), follower.next()).await {
            Ok(Ok(batches)) => got.extend(batches.into_iter().flat_map(|b: LineBatch| b.lines)),
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
    let mut follower = FileFollower::new(&[log.display().to_string()]).unwrap();

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
    let mut follower = FileFollower::new(&[pattern]).unwrap();
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
