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
use super::{FileFollower, FilePosition, LineBatch, Resume, SourceError};

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
}

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

/// Every logpath pattern, followed with inotify by one task.
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
        let follower = FileFollower::numbered(&self.patterns, &resume, first)?;
        Ok(Running::Task(tokio::spawn(super::run_files(follower, tx))))
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
        let handle = journal::spawn(self.spec.clone(), first, start, tx, stop.clone())?;
        Ok(Running::Thread { stop, handle })
    }
}
