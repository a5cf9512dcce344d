//! The systemd journal, read in-process through libsystemd's sd-journal (no `journalctl`),
//! which the `sd-journal` crate loads when the first journal is opened: a daemon whose jails
//! read only files never maps it.
//!
//! sd-journal handles are not `Send`, so each journal source runs on a thread of its own that
//! owns its handle and hands lines to the daemon loop over the same bounded channel as files.
//! Each entry becomes one line, `IDENTIFIER[PID]: MESSAGE` (the syslog form filters expect),
//! dated with the entry's own realtime timestamp. After each batch the entry's cursor travels
//! with the lines; the daemon saves it once the lines are processed, and a restart resumes just
//! after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use sd_journal::Journal;
use tokio::sync::mpsc;

use super::{LineBatch, Prepare, SourceError, Timing};

/// Where a journal thread sends its batches, and what it does to each first.
pub type Sink = (mpsc::Sender<LineBatch>, Prepare);

/// Entries handed over at most per batch.
const BATCH: usize = 512;

/// Which journal to read and which entries of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSpec {
    /// journalctl-style matches: `FIELD=value`, and `+` for OR between groups.
    pub matches: Vec<String>,
    /// A journal directory (containers, tests); the system journal when `None`.
    pub directory: Option<PathBuf>,
}

impl JournalSpec {
    /// The key its position is saved under, and how `banctl status` names it.
    pub fn key(&self) -> String {
        let mut key = String::from("journal:");
        if let Some(dir) = &self.directory {
            key.push_str(&format!("{}:", dir.display()));
        }
        key.push_str(&self.matches.join(" "));
        key
    }
}

/// The distinct values of `field` in the journal of the system whose root directory is
/// `root` (`/` for this one): what `banctl init` learns which services log there from. The
/// journal's field index answers without reading entries.
pub fn unique_values(root: &Path, field: &str) -> Result<Vec<String>, SourceError> {
    let fail = |e: &dyn std::fmt::Display| SourceError::Journal {
        source_key: format!("journal of {}", root.display()),
        message: e.to_string(),
    };
    let mut journal = if root == Path::new("/") {
        Journal::open_system()
    } else {
        Journal::open_directory(root, true)
    }
    .map_err(|e| fail(&e))?;
    let mut values: Vec<String> = journal
        .unique_values(field)
        .map_err(|e| fail(&e))?
        .iter()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
}

/// Where to start reading.
#[derive(Debug, Clone)]
pub enum Start {
    /// Just after this cursor (a restart).
    After(String),
    /// At this time (the first start reads `findtime` back).
    Since(SystemTime),
}

fn error(spec: &JournalSpec, e: impl std::fmt::Display) -> SourceError {
    SourceError::Journal {
        source_key: spec.key(),
        message: e.to_string(),
    }
}

fn open(spec: &JournalSpec) -> Result<Journal, SourceError> {
    let mut journal = match &spec.directory {
        Some(dir) => Journal::open_directory(dir, false)
            .map_err(|e| error(spec, format!("opening {}: {e}", dir.display())))?,
        None => Journal::open_system().map_err(|e| error(spec, e))?,
    };
    for m in &spec.matches {
        if m == "+" {
            journal.add_disjunction().map_err(|e| error(spec, e))?;
            continue;
        }
        let Some((field, value)) = m.split_once('=') else {
            return Err(error(spec, format!("match {m:?} is not FIELD=value or +")));
        };
        journal
            .add_match(field, value.as_bytes())
            .map_err(|e| error(spec, e))?;
    }
    Ok(journal)
}

fn seek(journal: &mut Journal, spec: &JournalSpec, start: &Start) -> Result<(), SourceError> {
    match start {
        Start::After(cursor) => {
            journal.seek_cursor(cursor).map_err(|e| error(spec, e))?;
            // Seeking puts the read pointer *on* the saved entry (when it still exists): step
            // over it, since it was processed before the restart.
            if journal.next_entry().map_err(|e| error(spec, e))?
                && !journal.test_cursor(cursor).map_err(|e| error(spec, e))?
            {
                journal.previous_entry().map_err(|e| error(spec, e))?;
            }
        }
        Start::Since(at) => journal.seek_time(*at).map_err(|e| error(spec, e))?,
    }
    Ok(())
}

/// Sends a batch, waiting (counted) while the daemon's queue is full; `false` once the
/// daemon is gone.
fn send((tx, prepare): &Sink, mut batch: LineBatch) -> bool {
    prepare(&mut batch);
    match tx.try_send(batch) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(batch)) => {
            super::note_queue_full();
            tx.blocking_send(batch).is_ok()
        }
    }
}

/// A field of the current entry as text (invalid UTF-8 replaced, never dropped).
fn field(journal: &mut Journal, name: &str) -> Option<String> {
    let value = journal.data(name).ok()??;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// The current entry as a syslog-style line.
fn line(journal: &mut Journal) -> String {
    let message = field(journal, "MESSAGE").unwrap_or_default();
    let ident = field(journal, "SYSLOG_IDENTIFIER").or_else(|| field(journal, "_COMM"));
    let pid = field(journal, "SYSLOG_PID").or_else(|| field(journal, "_PID"));
    match (ident, pid) {
        (Some(i), Some(p)) => format!("{i}[{p}]: {message}"),
        (Some(i), None) => format!("{i}: {message}"),
        _ => message,
    }
}

/// Every entry `spec` selects, oldest first, as the daemon reads them (`IDENT[PID]: MESSAGE`
/// and the entry's time), until `each` says stop: what `banctl test systemd-journal` reads.
pub fn read_all(
    spec: &JournalSpec,
    mut each: impl FnMut(String, SystemTime) -> bool,
) -> Result<(), SourceError> {
    let mut journal = open(spec)?;
    journal.seek_head().map_err(|e| error(spec, e))?;
    while journal.next_entry().map_err(|e| error(spec, e))? {
        let at = journal.time().unwrap_or_else(|_| SystemTime::now());
        if !each(line(&mut journal), at) {
            break;
        }
    }
    Ok(())
}

/// Opens the journal (so that a bad match or directory fails the start, not a thread), then
/// follows it on its own thread until `stop` is set or the receiver is gone.
pub fn spawn(
    spec: JournalSpec,
    source: usize,
    start: Start,
    tx: Sink,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, SourceError> {
    // Validate on this thread; the follower opens its own handle (handles are not Send).
    drop(open(&spec)?);
    let name = format!("banctl-journal-{source}");
    let key = spec.key();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Err(e) = follow(&spec, source, &start, &tx, &stop) {
                tracing::error!(error = %e, "journal source stopped");
            }
        })
        .map_err(|e| SourceError::Journal {
            source_key: key,
            message: format!("cannot start its thread: {e}"),
        })
}

fn follow(
    spec: &JournalSpec,
    source: usize,
    start: &Start,
    tx: &Sink,
    stop: &AtomicBool,
) -> Result<(), SourceError> {
    let mut journal = open(spec)?;
    seek(&mut journal, spec, start)?;
    let key = spec.key();
    loop {
        let mut batch: Option<LineBatch> = None;
        while !stop.load(Ordering::Relaxed) && journal.next_entry().map_err(|e| error(spec, e))? {
            let at = journal.time().unwrap_or_else(|_| SystemTime::now());
            let text = line(&mut journal);
            let cursor = journal.cursor().map_err(|e| error(spec, e))?;
            // One batch holds entries of one second, so every line keeps its own time.
            let same_second = batch.as_ref().is_some_and(|b| {
                b.lines.len() < BATCH
                    && b.read_at
                        .duration_since(at)
                        .or_else(|_| at.duration_since(b.read_at))
                        .is_ok_and(|d| d < Duration::from_secs(1))
            });
            if !same_second
                && let Some(full) = batch.take()
                && !send(tx, full)
            {
                return Ok(());
            }
            let b = batch.get_or_insert_with(|| LineBatch {
                sources: vec![source],
                lines: super::Lines::new(),
                read_at: at,
                timing: Timing::Stamped,
                resume: None,
                cut: 0,
                examined: Vec::new(),
            });
            if text.len() > super::MAX_LINE {
                b.cut += 1;
                super::note_cut_line(&key);
            } else {
                b.lines.push(&text);
            }
            b.resume = Some((key.clone(), cursor));
        }
        if let Some(last) = batch.take()
            && !send(tx, last)
        {
            return Ok(());
        }
        if tx.0.is_closed() || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match journal.wait(Duration::from_millis(500)) {
            // A signal (SIGCHLD of a notifier program) cut the wait short.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => {
                other.map_err(|e| error(spec, e))?;
            }
        }
    }
}
