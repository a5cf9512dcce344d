//! Sources: where log lines come from. Today: files followed with inotify.
//!
//! A followed file is read from its end when the daemon starts (a file that appears later is
//! read from its start). Rename rotation is survived: the old file is read to its end when the
//! new one appears at the path, so no line is lost between the two. A line is only emitted
//! once its newline arrived; invalid UTF-8 is replaced, never dropped; an over-long line is cut.

pub mod journal;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;

/// Longest line passed on; the rest of a longer line is dropped with a warning.
pub const MAX_LINE: usize = 64 * 1024;

/// Lines read in one go from one file, for the sources (logpath patterns) it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineBatch {
    /// Indexes of the sources (logpath patterns, then journals) these lines come from.
    pub sources: Vec<usize>,
    pub lines: Vec<String>,
    /// When the lines were written: read time for files, the entries' time for the journal.
    pub read_at: SystemTime,
    /// Where to resume after these lines (a source key and its position), saved once they
    /// have been processed.
    pub resume: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("inotify: {0}")]
    Inotify(#[source] io::Error),
    #[error("invalid logpath pattern {pattern:?}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("journal {source_key}: {message}")]
    Journal { source_key: String, message: String },
}

struct Spec {
    pattern: glob::Pattern,
    dir: PathBuf,
}

/// One open file being followed.
struct Followed {
    path: PathBuf,
    file: File,
    pos: u64,
    sources: Vec<usize>,
    splitter: LineSplitter,
}

/// Splits bytes into lines, holding a partial last line until its newline arrives.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// Inside a line longer than [`MAX_LINE`]: skip until its newline.
    discarding: bool,
}

impl LineSplitter {
    /// Feeds bytes; complete lines are appended to `out` (without their newline).
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while let Some(nl) = memchr(b'\n', bytes) {
            let (line, rest) = (&bytes[..nl], &bytes[nl + 1..]);
            if self.discarding {
                self.discarding = false;
            } else if self.partial.is_empty() {
                out.push(to_text(&line[..line.len().min(MAX_LINE)]));
            } else {
                let room = MAX_LINE.saturating_sub(self.partial.len());
                self.partial
                    .extend_from_slice(&line[..line.len().min(room)]);
                out.push(to_text(&self.partial));
                self.partial.clear();
            }
            bytes = rest;
        }
        if self.discarding {
            return;
        }
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        if self.partial.len() >= MAX_LINE && bytes.len() >= room {
            tracing::warn!(limit = MAX_LINE, "log line longer than the limit: cut");
            out.push(to_text(&self.partial));
            self.partial.clear();
            self.discarding = true;
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

fn to_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Follows every file matching a set of logpath patterns (globs allowed in the file name).
pub struct FileFollower {
    events: EventStream<Vec<u8>>,
    watches: Watches,
    specs: Vec<Spec>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    files: HashMap<WatchDescriptor, Followed>,
}

const DIR_MASK: WatchMask = WatchMask::CREATE.union(WatchMask::MOVED_TO);
const FILE_MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DELETE_SELF);

impl FileFollower {
    /// Starts following: existing files are positioned at their end. Needs a tokio runtime.
    pub fn new(patterns: &[String]) -> Result<FileFollower, SourceError> {
        let inotify = Inotify::init().map_err(SourceError::Inotify)?;
        let watches = inotify.watches();
        let events = inotify
            .into_event_stream(vec![0u8; 16 * 1024])
            .map_err(SourceError::Inotify)?;
        let mut follower = FileFollower {
            events,
            watches,
            specs: Vec::new(),
            dirs: HashMap::new(),
            files: HashMap::new(),
        };
        for pattern in patterns {
            let path = Path::new(pattern);
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let compiled = glob::Pattern::new(pattern).map_err(|e| SourceError::Pattern {
                pattern: pattern.clone(),
                message: e.to_string(),
            })?;
            follower.specs.push(Spec {
                pattern: compiled,
                dir: dir.to_owned(),
            });
        }
        let dirs: Vec<PathBuf> = follower.specs.iter().map(|s| s.dir.clone()).collect();
        for dir in dirs {
            match follower.watches.add(&dir, DIR_MASK) {
                Ok(wd) => {
                    follower.dirs.insert(wd, dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch log directory")
                }
            }
        }
        for pattern in patterns {
            for path in glob::glob(pattern).into_iter().flatten().flatten() {
                follower.open(&path, true);
            }
        }
        Ok(follower)
    }

    fn sources_of(&self, path: &Path) -> Vec<usize> {
        self.specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.pattern.matches_path(path))
            .map(|(i, _)| i)
            .collect()
    }

    fn open(&mut self, path: &Path, at_end: bool) -> Option<LineBatch> {
        let sources = self.sources_of(path);
        if sources.is_empty() || !path.is_file() {
            return None;
        }
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open log file");
                return None;
            }
        };
        let pos = if at_end {
            file.seek(SeekFrom::End(0)).unwrap_or(0)
        } else {
            0
        };
        let wd = match self.watches.add(path, FILE_MASK) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch log file");
                return None;
            }
        };
        tracing::info!(path = %path.display(), from = if at_end { "end" } else { "start" }, "following");
        let followed = Followed {
            path: path.to_owned(),
            file,
            pos,
            sources,
            splitter: LineSplitter::default(),
        };
        if let Some(mut old) = self.files.insert(wd.clone(), followed) {
            // Same inode under a new name: keep the old position.
            if let Some(new) = self.files.get_mut(&wd) {
                new.pos = old.pos;
                new.splitter = std::mem::take(&mut old.splitter);
            }
        }
        self.read(&wd)
    }

    /// Reads what was appended to a followed file since the last read.
    fn read(&mut self, wd: &WatchDescriptor) -> Option<LineBatch> {
        let f = self.files.get_mut(wd)?;
        let mut lines = Vec::new();
        if let Err(e) = read_appended(f, &mut lines) {
            tracing::warn!(path = %f.path.display(), error = %e, "reading log file failed");
        }
        (!lines.is_empty()).then(|| LineBatch {
            sources: f.sources.clone(),
            lines,
            read_at: SystemTime::now(),
            resume: None,
        })
    }

    /// Waits for the next change and returns the lines it brought.
    pub async fn next(&mut self) -> Result<Vec<LineBatch>, SourceError> {
        loop {
            let event = match self.events.next().await {
                Some(event) => event.map_err(SourceError::Inotify)?,
                None => {
                    return Err(SourceError::Inotify(io::Error::other(
                        "inotify stream ended",
                    )));
                }
            };
            let out = self.handle(event.wd, event.mask, event.name);
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn handle(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<OsString>,
    ) -> Vec<LineBatch> {
        if let Some(dir) = self.dirs.get(&wd) {
            let Some(name) = name else { return Vec::new() };
            let path = dir.join(name);
            if !mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                return Vec::new();
            }
            // A new file at a followed path: finish the old one (rotation), then read the new.
            let mut out = Vec::new();
            let old: Vec<WatchDescriptor> = self
                .files
                .iter()
                .filter(|(_, f)| f.path == path)
                .map(|(wd, _)| wd.clone())
                .collect();
            for old_wd in old {
                out.extend(self.read(&old_wd));
                self.forget(old_wd);
            }
            out.extend(self.open(&path, false));
            return out;
        }
        let mut out = Vec::new();
        if mask.contains(EventMask::MODIFY) || mask.contains(EventMask::MOVE_SELF) {
            out.extend(self.read(&wd));
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::IGNORED) {
            out.extend(self.read(&wd));
            self.files.remove(&wd);
        }
        out
    }

    fn forget(&mut self, wd: WatchDescriptor) {
        if let Some(f) = self.files.remove(&wd) {
            tracing::info!(path = %f.path.display(), "rotated file read to its end");
            if let Err(e) = self.watches.remove(wd) {
                tracing::debug!(error = %e, "removing watch of a rotated file");
            }
        }
    }
}

fn read_appended(f: &mut Followed, lines: &mut Vec<String>) -> io::Result<()> {
    let meta = f.file.metadata()?;
    if meta.size() < f.pos {
        tracing::warn!(path = %f.path.display(), "log file was truncated: reading from its start");
        f.pos = 0;
        f.splitter = LineSplitter::default();
    }
    f.file.seek(SeekFrom::Start(f.pos))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = f.file.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        f.pos += n as u64;
        f.splitter.feed(&chunk[..n], lines);
    }
}

/// Runs a follower forever, sending what it reads; ends when the receiver is gone.
pub async fn run_files(
    mut follower: FileFollower,
    tx: mpsc::Sender<LineBatch>,
) -> Result<(), SourceError> {
    loop {
        for batch in follower.next().await? {
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        assert_eq!(split(&[b"a\nb", b"c\n", b"d"]), ["a", "bc"]);
        assert_eq!(split(&[b"crlf\r\n"]), ["crlf"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        assert_eq!(split(&[b"bad \xff byte\n"]), ["bad \u{fffd} byte"]);
    }

    #[test]
    fn long_lines_are_cut_and_framing_kept() {
        let long = vec![b'x'; MAX_LINE * 3];
        let out = split(&[&long[..MAX_LINE / 2], &long[MAX_LINE / 2..], b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1], "next");
        let out = split(&[&long, b"\nnext\n"]);
        assert_eq!((out.len(), out[1].as_str()), (2, "next"));
    }
}
