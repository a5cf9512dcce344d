//! The seam between log sources and the daemon: a [`Source`] starts reading from its saved
//! positions (opaque text the daemon stores and hands back) and sends [`LineBatch`]es whose
//! `sources` are routing indexes; the daemon knows neither a source's position format nor how
//! it reads.
//!
//! Two kinds today: [`Files`] (every logpath pattern, one inotify follower) and [`Journal`]
//! (one systemd journal match set, a thread). A new kind (Docker's json-file logs, stdin, a
//! fleet feed) is one more implementation and one more config variant.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::journal::{self, JournalSpec};
use super::{FileFollower, FilePosition, LineBatch, ReadBuffers, Resume, SourceError};

/// Where saved positions come from (the state store).
pub trait Positions {
    /// The saved position of the source `key`.
    fn position(&self, key: &str) -> Option<String>;
    /// Every saved position whose key starts with `prefix`.
    fn positions(&self, prefix: &str) -> Vec<(String, String)>;
}

/// How sources start.
pub struct StartFrom<'a> {
    pub positions: &'a dyn Positions,
    /// Whether a source without a saved position reads back what it already holds.
    pub readback: bool,
    /// Done to every batch on the source's thread before it is sent.
    pub prepare: Prepare,
    /// Buffers the daemon gives back, for the reads of sources that can use them.
    pub buffers: ReadBuffers,
}

/// What the daemon does to a batch on the source's thread, before the batch joins the line
/// queue: it finds the jails' failures ([`LineBatch::examined`]) there, off the main loop and
/// while the lines are in the cache the read left them in. The source knows nothing of what
/// it does.
pub type Prepare = Arc<dyn Fn(&mut LineBatch) + Send + Sync>;

/// A log source.
pub trait Source: Send {
    /// What `banctl status` calls each of its routing slots, in order.
    fn names(&self) -> Vec<String>;

    /// Starts reading; batches go to `tx`, their `sources` in `first..first + names().len()`.
    fn start(
        &self,
        first: usize,
        from: &StartFrom,
        tx: mpsc::Sender<LineBatch>,
    ) -> Result<Running, SourceError>;
}

/// A started source; stopped when dropped.
pub enum Running {
    Task(JoinHandle<Result<(), SourceError>>),
    Thread {
        stop: Arc<AtomicBool>,
        handle: std::thread::JoinHandle<()>,
    },
}

impl Running {
    /// Whether it stopped by itself (an error), so that it can be started again.
    pub fn is_finished(&self) -> bool {
        match self {
            Running::Task(task) => task.is_finished(),
            Running::Thread { handle, .. } => handle.is_finished(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Task(task) => task.abort(),
            // A journal thread notices within its wait (500 ms); nothing waits for it.
            Running::Thread { stop, .. } => stop.store(true, Ordering::Relaxed),
        }
    }
}

/// Every logpath pattern, followed with inotify by one task on a thread of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub patterns: Vec<String>,
}

impl Source for Files {
    fn names(&self) -> Vec<String> {
        self.patterns.iter().map(|p| format!("file:{p}")).collect()
    }

    fn start(
        &self,
        first: usize,
        from: &StartFrom,
        tx: mpsc::Sender<LineBatch>,
    ) -> Result<Running, SourceError> {
        let saved = from
            .positions
            .positions("file:")
            .into_iter()
            .filter_map(|(key, text)| match FilePosition::decode(&text) {
                Some(position) => Some((key, position)),
                None => {
                    tracing::warn!(source = key, position = text, "unreadable saved position");
                    None
                }
            })
            .collect();
        let resume = Resume {
            saved,
            readback: from.readback,
        };
        // The files are read and cut into lines on a thread of their own, with a runtime of
        // its own: reading the next batch overlaps the jails' work on the last one, on a
        // second core when one is free. The follower is made inside that runtime, so that
        // its inotify stream and timers are driven there.
        let runtime = crate::thread_runtime().map_err(SourceError::Thread)?;
        let follower = {
            let _inside = runtime.enter();
            FileFollower::numbered(&self.patterns, &resume, first)?
                .with_buffers(from.buffers.clone())
        };
        // `ended` drops, and so the thread returns, when the task ends or is aborted.
        let (ended, task_gone) = tokio::sync::oneshot::channel::<()>();
        let prepare = from.prepare.clone();
        let task = runtime.spawn(async move {
            let _ended = ended;
            super::run_files(follower, tx, prepare).await
        });
        std::thread::Builder::new()
            .name("banctl-files".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = task_gone.await;
                });
            })
            .map_err(SourceError::Thread)?;
        Ok(Running::Task(task))
    }
}

/// One journal match set, read by a thread of its own (journal handles are not `Send`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub spec: JournalSpec,
    /// How far back a first start reads (the longest `findtime` of the jails reading it),
    /// so that an attack in progress is counted.
    pub back: Duration,
}

impl Source for Journal {
    fn names(&self) -> Vec<String> {
        vec![self.spec.key()]
    }

    fn start(
        &self,
        first: usize,
        from: &StartFrom,
        tx: mpsc::Sender<LineBatch>,
    ) -> Result<Running, SourceError> {
        let start = match from.positions.position(&self.spec.key()) {
            Some(cursor) => journal::Start::After(cursor),
            None => {
                let back = if from.readback {
                    self.back
                } else {
                    Duration::ZERO
                };
                journal::Start::Since(
                    SystemTime::now()
                        .checked_sub(back)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                )
            }
        };
        tracing::info!(source = self.spec.key(), ?start, "following the journal");
        let stop = Arc::new(AtomicBool::new(false));
        let handle = journal::spawn(
            self.spec.clone(),
            first,
            start,
            (tx, from.prepare.clone()),
            stop.clone(),
        )?;
        Ok(Running::Thread { stop, handle })
    }
}

/// Where a logpath pattern stands now: what `banctl status` shows for it, and what
/// `check-config` and a reload warn about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum PathState {
    /// At least one matching file is open for reading.
    Following,
    /// The directory is there, no file matches yet: followed once one appears.
    WaitingForFile,
    /// Not even the directory is there yet: followed once it and a file appear.
    WaitingForDirectory,
    /// Files match but none can be read (the reason).
    Unreadable(String),
}

impl std::fmt::Display for PathState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathState::Following => f.write_str("following"),
            PathState::WaitingForFile => f.write_str("waiting for the file"),
            PathState::WaitingForDirectory => f.write_str("waiting for the directory"),
            PathState::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// The state of logpath `pattern` (a path or a glob) now.
pub fn path_state(pattern: &str) -> PathState {
    let files: Vec<std::path::PathBuf> = glob::glob(pattern)
        .map(|paths| paths.flatten().filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    if files.is_empty() {
        // The longest leading part without glob characters: the directory to wait for.
        let fixed: std::path::PathBuf = std::path::Path::new(pattern)
            .components()
            .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
            .collect();
        let dir = if fixed.as_os_str() == pattern {
            fixed.parent().map(std::path::Path::to_path_buf)
        } else {
            Some(fixed)
        };
        return match dir {
            Some(d) if d.is_dir() => PathState::WaitingForFile,
            _ => PathState::WaitingForDirectory,
        };
    }
    let mut why = String::new();
    for f in &files {
        match std::fs::File::open(f) {
            Ok(_) => return PathState::Following,
            Err(e) => why = format!("{}: {e}", f.display()),
        }
    }
    PathState::Unreadable(why)
}

/// What the systemd unit's sandbox hides of `path`, and the drop-in that shows it; empty when
/// it hides nothing.
pub fn sandbox_hint(path: &str) -> &'static str {
    if path.starts_with("/home/") || path.starts_with("/root/") || path == "/root" {
        " (the systemd unit has ProtectHome=yes: `systemctl edit banctl` and add \
         `[Service]` `ProtectHome=read-only`)"
    } else if path.starts_with("/tmp/") || path.starts_with("/var/tmp/") {
        " (the systemd unit has PrivateTmp=yes and sees its own /tmp: log elsewhere, or \
         `systemctl edit banctl` and add `[Service]` `PrivateTmp=no`)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_states_say_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("banctl-pathstate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        assert_eq!(path_state(&format!("{d}/a.log")), PathState::WaitingForFile);
        assert_eq!(path_state(&format!("{d}/*.log")), PathState::WaitingForFile);
        assert_eq!(
            path_state(&format!("{d}/sub/a.log")),
            PathState::WaitingForDirectory
        );
        assert_eq!(
            path_state(&format!("{d}/sub*/a.log")),
            PathState::WaitingForFile,
            "the fixed part exists"
        );
        std::fs::write(dir.join("a.log"), "").unwrap();
        assert_eq!(path_state(&format!("{d}/*.log")), PathState::Following);
        assert!(sandbox_hint("/home/u/app.log").contains("ProtectHome"));
        assert!(sandbox_hint("/tmp/x.log").contains("PrivateTmp"));
        assert_eq!(sandbox_hint("/var/log/auth.log"), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
