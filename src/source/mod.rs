//! Sources: where log lines come from: files followed with inotify, and the journal.
//!
//! A followed file resumes where the daemon left it: its position (device, inode, offset and
//! a hash of its first line) is saved in the state store once its lines were processed, so
//! after a restart no line is read twice and none is skipped, even when the file was rotated
//! meanwhile (the old file is found by its inode and read to its end first) or truncated. On
//! the very first start a file is read back from at most its last [`READBACK_LIMIT`] bytes
//! (only dated lines inside findtime count); without read-back it is read from its end. A file
//! that appears later is read from its start.
//!
//! Rename rotation is survived live too: the old file is read to its end when the new one
//! appears at the path. Copytruncate is noticed by the size shrinking or the first line
//! changing. A line is only emitted once its newline arrived; invalid UTF-8 is replaced, never
//! dropped; an over-long line is cut. A missing file or directory is waited for.

mod feed;
pub mod journal;
mod lines;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::mpsc;

pub use feed::{
    Files, Journal, PathState, Positions, Prepare, Running, Source, StartFrom, path_state,
    sandbox_hint,
};
pub use lines::Lines;

/// Longest line passed on. A longer line is never passed on, not even cut: the cut could
/// end inside attacker text and make it look like the end of a failure line. It is counted
/// ([`LineBatch::cut`]) and the first one is logged.
pub const MAX_LINE: usize = 64 * 1024;
/// Most bytes read from one file in one go (bounds memory while catching up).
const MAX_READ: u64 = 1024 * 1024;
/// How much of an existing file the first start reads back.
pub const READBACK_LIMIT: u64 = 16 * 1024 * 1024;
/// How much of a file's first line identifies it.
const HEAD: usize = 256;
/// How often missing directories and files are looked for again (inotify reports new files
/// in watched directories at once; this finds directories that appear later).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// How a batch's lines are dated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Read as they were written: `read_at` is their time.
    Live,
    /// Written while the daemon was not reading them (after a restart, or a file that
    /// appeared with content): a line's own timestamp if it has one, else `read_at`.
    CatchUp,
    /// Existing lines read back on the first start: only lines with a timestamp count.
    ReadBack,
    /// `read_at` is the lines' own time (journal entries).
    Stamped,
}

/// Lines read in one go from one file, for the sources (logpath patterns) it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineBatch {
    /// Indexes of the sources (logpath patterns, then journals) these lines come from.
    pub sources: Vec<usize>,
    pub lines: Lines,
    /// When the lines were read (files) or written (journal entries).
    pub read_at: SystemTime,
    pub timing: Timing,
    /// Where to resume after these lines (a source key and its position), saved once they
    /// have been processed.
    pub resume: Option<(String, String)>,
    /// Lines longer than [`MAX_LINE`] dropped since the last batch of this source.
    pub cut: u64,
    /// The failures a jail's filter finds, found before the batch reached the main loop: per
    /// [`crate::filter::CandidateSearch`] id (the filter build's), each line index with its
    /// failure, in order. Filled by the daemon's [`Prepare`] on the source's thread, where the
    /// lines were just read; a jail whose filter is not here examines its lines itself.
    pub examined: Vec<(u64, Vec<(usize, Failure)>)>,
}

/// A failure a filter found in a line: the address it names, or a host name (which the
/// daemon resolves, warns of or drops as the jail's `usedns` says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Addr(IpAddr),
    Name(String),
}

/// Read buffers given back once their lines were processed, for the next reads of a backlog.
///
/// A catch-up reads [`MAX_READ`] bytes at a time. Into a new buffer, each read costs fresh
/// pages, which the kernel zeroes and maps (and the allocator unmaps again when the batch is
/// dropped); into one given back, the read lands in memory already touched, and is not
/// zeroed first either (its old bytes are overwritten or cut off). Only buffers of such reads
/// are kept, as many as the owner says (the daemon: what its line queue holds, and one being
/// read); the daemon drops them once it is quiet ([`ReadBuffers::clear`]), so that an idle
/// daemon holds none. The default keeps none.
#[derive(Debug, Clone, Default)]
pub struct ReadBuffers {
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl ReadBuffers {
    /// Keeps up to `keep` buffers given back.
    pub fn keeping(keep: usize) -> ReadBuffers {
        ReadBuffers {
            kept: Arc::default(),
            keep,
        }
    }

    /// A buffer given back, or a new one.
    fn take(&self) -> Vec<u8> {
        self.kept().pop().unwrap_or_default()
    }

    /// Gives back the text of processed lines (only a full read's is kept).
    pub fn give(&self, lines: Lines) {
        let buf = lines.into_bytes();
        if (buf.capacity() as u64) < MAX_READ {
            return;
        }
        let mut kept = self.kept();
        if kept.len() < self.keep {
            kept.push(buf);
        }
    }

    /// Drops the buffers kept (freed after the lock is released).
    pub fn clear(&self) {
        drop(std::mem::take(&mut *self.kept()));
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Notes a line dropped for its length: the first one with a warning, later ones at debug
/// level (an attacker can write many; the count is in the metrics).
pub(crate) fn note_cut_line(source: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(
            source,
            limit = MAX_LINE,
            "log line longer than the limit: dropped"
        );
    } else {
        tracing::warn!(
            source,
            limit = MAX_LINE,
            "log line longer than the limit: dropped, never matched (further ones are counted in banctl_lines_cut_total)"
        );
    }
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
    #[error("cannot start the thread that reads the log files: {0}")]
    Thread(#[source] io::Error),
}

/// The state-store key of the position of the file at `path`.
pub fn position_key(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Which file a saved position belongs to, and where reading goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePosition {
    pub dev: u64,
    pub ino: u64,
    /// The next unread byte.
    pub offset: u64,
    pub head: Head,
}

impl FilePosition {
    /// `dev:ino:offset:head_len:head_hash`, as kept in the state store.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}:{:016x}",
            self.dev, self.ino, self.offset, self.head.len, self.head.hash
        )
    }

    pub fn decode(text: &str) -> Option<FilePosition> {
        let mut parts = text.split(':');
        let mut next = || parts.next();
        let position = FilePosition {
            dev: next()?.parse().ok()?,
            ino: next()?.parse().ok()?,
            offset: next()?.parse().ok()?,
            head: Head {
                len: next()?.parse().ok()?,
                hash: u64::from_str_radix(next()?, 16).ok()?,
            },
        };
        next().is_none().then_some(position)
    }
}

/// The length and FNV-1a hash of a file's first line (at most [`HEAD`] bytes of it): what
/// tells a file truncated and rewritten from the same file grown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub len: u32,
    pub hash: u64,
}

impl Head {
    /// The head of `file`, and whether it is final (its first line is complete, or [`HEAD`]
    /// bytes long): a head that is not grows with the file.
    fn of(file: &File) -> io::Result<(Head, bool)> {
        let mut buf = [0u8; HEAD];
        let n = read_full_at(file, &mut buf, 0)?;
        let bytes = &buf[..n];
        let (bytes, complete) = match bytes.iter().position(|b| *b == b'\n') {
            Some(nl) => (&bytes[..=nl], true),
            None => (bytes, n == HEAD),
        };
        let head = Head {
            len: u32::try_from(bytes.len()).unwrap_or(0),
            hash: fnv1a(bytes),
        };
        Ok((head, complete))
    }

    /// Whether `file` still starts with these bytes.
    fn matches(&self, file: &File) -> io::Result<bool> {
        let mut buf = [0u8; HEAD];
        let len = usize::try_from(self.len).unwrap_or(HEAD).min(HEAD);
        let n = read_full_at(file, &mut buf[..len], 0)?;
        Ok(n == len && fnv1a(&buf[..n]) == self.hash)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reads from `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where following starts on this run.
#[derive(Debug, Default, Clone)]
pub struct Resume {
    /// Saved positions, by [`position_key`].
    pub saved: HashMap<String, FilePosition>,
    /// A file without a saved position is read back (true) or read from its end (false).
    pub readback: bool,
}

struct Spec {
    pattern: glob::Pattern,
    dir: PathBuf,
}

/// One open file being followed (or a rotated one being finished).
struct Followed {
    /// The name it is followed under (its position key), even once rotated away.
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
    pos: u64,
    /// The size seen by the last read.
    size: u64,
    head: Head,
    /// The head will not change until the file is truncated.
    head_complete: bool,
    /// Lines before this offset were not read live.
    catch_up_to: u64,
    early: Timing,
    sources: Vec<usize>,
    splitter: LineSplitter,
}

impl Followed {
    fn open(path: &Path, file: File, sources: Vec<usize>) -> io::Result<Followed> {
        let meta = file.metadata()?;
        let (head, head_complete) = Head::of(&file)?;
        Ok(Followed {
            path: path.to_owned(),
            head,
            head_complete,
            dev: meta.dev(),
            ino: meta.ino(),
            pos: 0,
            size: meta.size(),
            catch_up_to: meta.size(),
            early: Timing::CatchUp,
            file,
            sources,
            splitter: LineSplitter::default(),
        })
    }

    fn position(&self) -> FilePosition {
        FilePosition {
            dev: self.dev,
            ino: self.ino,
            offset: self.pos,
            head: self.head,
        }
    }

    /// Reads at most [`MAX_READ`] appended bytes, into the buffer that becomes the batch's
    /// text; `Ok(None)` when nothing new was there.
    fn read(&mut self, buffers: &ReadBuffers) -> io::Result<Option<LineBatch>> {
        let size = self.file.metadata()?.size();
        self.size = size;
        if size < self.pos || !self.head.matches(&self.file)? {
            tracing::warn!(path = %self.path.display(), "log file was truncated: reading from its start");
            self.pos = 0;
            self.catch_up_to = 0;
            self.splitter = LineSplitter::default();
            self.head_complete = false;
        }
        if !self.head_complete {
            (self.head, self.head_complete) = Head::of(&self.file)?;
        }
        let mut end = size.min(self.pos + MAX_READ);
        let timing = if self.pos < self.catch_up_to {
            end = end.min(self.catch_up_to);
            self.early
        } else {
            Timing::Live
        };
        if end <= self.pos {
            return Ok(None);
        }
        let want = usize::try_from(end - self.pos).unwrap_or(0);
        let mut buf = self.splitter.buffer(want, buffers.take());
        let held = buf.len() - want;
        let n = read_full_at(&self.file, &mut buf[held..], self.pos)?;
        buf.truncate(held + n);
        self.pos += n as u64;
        let cut_before = self.splitter.cut;
        let lines = self.splitter.take(buf);
        if self.splitter.cut > cut_before {
            note_cut_line(&self.path.to_string_lossy());
        }
        if lines.is_empty() {
            return Ok(None);
        }
        // The position saved is that of the last complete line: a partial one is read again.
        let mut position = self.position();
        position.offset -= self.splitter.pending() as u64;
        Ok(Some(LineBatch {
            sources: self.sources.clone(),
            lines,
            read_at: SystemTime::now(),
            timing,
            resume: Some((position_key(&self.path), position.encode())),
            cut: self.splitter.take_cut(),
            examined: Vec::new(),
        }))
    }

    /// Reads on from `offset`. Inside a line (a position saved while a too-long line was
    /// being dropped, a read-back window), the rest of that line is skipped: its tail,
    /// whose start an attacker may have written, is never taken for a line of its own.
    fn start_at(&mut self, offset: u64) -> io::Result<()> {
        self.pos = offset;
        if offset > 0 {
            let mut before = [0u8; 1];
            self.file.read_exact_at(&mut before, offset - 1)?;
            if before[0] != b'\n' {
                self.splitter = LineSplitter::skipping();
            }
        }
        Ok(())
    }

    /// Whether bytes are waiting to be read (after a read bounded by [`MAX_READ`]).
    fn behind(&self) -> bool {
        self.size > self.pos
    }
}

/// Splits bytes into lines, holding a partial last line until its newline arrives. A line
/// longer than [`MAX_LINE`] is dropped whole and counted in `cut`.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// Inside a line that is dropped (too long, or begun before the start): skip until its
    /// newline.
    discarding: bool,
    /// Lines dropped for their length, not yet reported.
    cut: u64,
    /// Whether a run of whole lines may be taken in one copy ([`Lines::push_run`]); tests
    /// turn it off to compare with the lines taken one by one.
    runs: bool,
}

impl Default for LineSplitter {
    fn default() -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            discarding: false,
            cut: 0,
            runs: true,
        }
    }
}

impl LineSplitter {
    /// Feeds bytes; complete lines are appended to `out` (without their newline).
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Lines) {
        // Once nothing is pending, the whole lines up to the last newline are usually one
        // run that can be copied at once (tried once a feed: a run that cannot goes by line).
        let mut run_tried = !self.runs;
        while let Some(nl) = memchr::memchr(b'\n', bytes) {
            if !run_tried && !self.discarding && self.partial.is_empty() {
                run_tried = true;
                let last = memchr::memrchr(b'\n', bytes).unwrap_or(nl);
                if out.push_run(&bytes[..=last], MAX_LINE) {
                    bytes = &bytes[last + 1..];
                    continue;
                }
            }
            let (line, rest) = (&bytes[..nl], &bytes[nl + 1..]);
            if self.discarding {
                self.discarding = false;
            } else if self.partial.len() + line.len() > MAX_LINE {
                self.partial.clear();
                self.cut += 1;
            } else if self.partial.is_empty() {
                out.push_bytes(line);
            } else {
                self.partial.extend_from_slice(line);
                out.push_bytes(&self.partial);
                self.partial.clear();
            }
            bytes = rest;
        }
        if self.discarding {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.partial.clear();
            self.discarding = true;
            self.cut += 1;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// A buffer for the next read of `more` bytes, made of `spare` (a buffer used before, or
    /// an empty one): it starts with the line still waiting for its newline; the rest, its
    /// old bytes or zeroes, is to be overwritten. Hand it back, cut to what was read, to
    /// [`LineSplitter::take`]; until then nothing changes here.
    pub fn buffer(&self, more: usize, mut spare: Vec<u8>) -> Vec<u8> {
        let len = self.partial.len() + more;
        let mut buf = if spare.capacity() >= len {
            spare.resize(len, 0);
            spare
        } else {
            // Zeroed by the kernel as it maps the pages, not by a pass over them. A full read
            // gets room for the longest waiting line, so that the buffer serves every later
            // full read, whatever line waits then.
            let room = match more as u64 >= MAX_READ {
                true => MAX_LINE,
                false => self.partial.len(),
            };
            let mut buf = vec![0; more + room];
            buf.truncate(len);
            buf
        };
        buf[..self.partial.len()].copy_from_slice(&self.partial);
        buf
    }

    /// Takes a read made into [`LineSplitter::buffer`]: the lines it completes, which are
    /// what [`LineSplitter::feed`] of the bytes read into new lines gives. Its whole lines
    /// are usually taken as they lie in the buffer ([`Lines::from_run`]), without a copy.
    pub fn take(&mut self, mut buf: Vec<u8>) -> Lines {
        let held = self.partial.len();
        if self.runs
            && !self.discarding
            && let Some(last) = memchr::memrchr(b'\n', &buf[held..])
        {
            let rest = buf.split_off(held + last + 1);
            match Lines::from_run(buf, MAX_LINE) {
                Ok(mut lines) => {
                    self.partial.clear();
                    // No newline in the rest: it only waits (or is dropped, too long).
                    self.feed(&rest, &mut lines);
                    return lines;
                }
                Err(back) => {
                    buf = back;
                    buf.extend_from_slice(&rest);
                }
            }
        }
        let mut lines = Lines::with_capacity(buf.len());
        self.feed(&buf[held..], &mut lines);
        lines
    }

    /// Lines dropped for their length since the last call.
    pub fn take_cut(&mut self) -> u64 {
        std::mem::take(&mut self.cut)
    }

    /// Bytes of a line still waiting for its newline.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Starts in the middle of a line: skip to its end.
    fn skipping() -> LineSplitter {
        LineSplitter {
            discarding: true,
            ..LineSplitter::default()
        }
    }
}

/// Follows every file matching a set of logpath patterns (globs allowed in the file name).
pub struct FileFollower {
    events: EventStream<Vec<u8>>,
    watches: Watches,
    specs: Vec<Spec>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    files: HashMap<WatchDescriptor, Followed>,
    /// Files rotated away (or deleted) that are read to their end before anything else.
    finishing: VecDeque<Followed>,
    /// Followed files with bytes left after a bounded read.
    behind: VecDeque<WatchDescriptor>,
    rescan: tokio::time::Interval,
    /// The routing index of the first pattern (see [`Source`]).
    first: usize,
    /// Where reads take their buffers from.
    buffers: ReadBuffers,
}

const DIR_MASK: WatchMask = WatchMask::CREATE.union(WatchMask::MOVED_TO);
const FILE_MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DELETE_SELF);

impl FileFollower {
    /// Starts following, each existing file from its saved position, read back or from its
    /// end (see [`Resume`]). Needs a tokio runtime.
    pub fn new(patterns: &[String], resume: &Resume) -> Result<FileFollower, SourceError> {
        FileFollower::numbered(patterns, resume, 0)
    }

    /// Reads into the buffers of `buffers` when it has some (the daemon gives them back).
    pub fn with_buffers(mut self, buffers: ReadBuffers) -> FileFollower {
        self.buffers = buffers;
        self
    }

    /// Like [`FileFollower::new`], the patterns' routing indexes starting at `first`.
    pub fn numbered(
        patterns: &[String],
        resume: &Resume,
        first: usize,
    ) -> Result<FileFollower, SourceError> {
        let inotify = Inotify::init().map_err(SourceError::Inotify)?;
        let watches = inotify.watches();
        let events = inotify
            .into_event_stream(vec![0u8; 16 * 1024])
            .map_err(SourceError::Inotify)?;
        let mut rescan =
            tokio::time::interval_at(tokio::time::Instant::now() + RESCAN_EVERY, RESCAN_EVERY);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follower = FileFollower {
            events,
            watches,
            specs: Vec::new(),
            dirs: HashMap::new(),
            files: HashMap::new(),
            finishing: VecDeque::new(),
            behind: VecDeque::new(),
            rescan,
            first,
            buffers: ReadBuffers::default(),
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
        follower.watch_dirs();
        for path in follower.matching_files() {
            if let Err(e) = follower.start(&path, resume) {
                tracing::warn!(path = %path.display(), error = %e, "cannot follow log file");
            }
        }
        Ok(follower)
    }

    /// Watches the directories of the patterns that are not watched yet.
    fn watch_dirs(&mut self) {
        let missing: Vec<PathBuf> = self
            .specs
            .iter()
            .map(|s| s.dir.clone())
            .filter(|d| !self.dirs.values().any(|w| w == d))
            .collect();
        for dir in missing {
            match self.watches.add(&dir, DIR_MASK) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch log directory (yet)")
                }
            }
        }
    }

    fn matching_files(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .specs
            .iter()
            .filter_map(|s| glob::glob(s.pattern.as_str()).ok())
            .flatten()
            .flatten()
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    fn sources_of(&self, path: &Path) -> Vec<usize> {
        self.specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.pattern.matches_path(path))
            .map(|(i, _)| self.first + i)
            .collect()
    }

    /// Follows a file present at start.
    fn start(&mut self, path: &Path, resume: &Resume) -> io::Result<()> {
        let sources = self.sources_of(path);
        let mut f = Followed::open(path, File::open(path)?, sources)?;
        let size = f.catch_up_to;
        match resume.saved.get(&position_key(path)) {
            Some(saved) => self.resume_from(&mut f, saved)?,
            None if resume.readback => {
                f.early = Timing::ReadBack;
                if size > READBACK_LIMIT {
                    f.start_at(size - READBACK_LIMIT)?;
                }
            }
            None => f.pos = size,
        }
        tracing::info!(path = %path.display(), offset = f.pos, "following");
        self.watch(f);
        Ok(())
    }

    /// Positions a file present at start after what was read of it before the restart.
    fn resume_from(&mut self, f: &mut Followed, saved: &FilePosition) -> io::Result<()> {
        let grown_from = |f: &Followed| {
            f.catch_up_to >= saved.offset && saved.head.matches(&f.file).unwrap_or(false)
        };
        if (f.dev, f.ino) == (saved.dev, saved.ino) {
            if grown_from(f) {
                f.start_at(saved.offset)?;
            } else {
                tracing::warn!(path = %f.path.display(), "log file was truncated while stopped: reading it from its start");
            }
        } else if let Some(old) = self.find_rotated(f, saved) {
            tracing::info!(path = %f.path.display(), "log file was rotated while stopped: reading the old file to its end first");
            self.finishing.push_back(old);
        } else if grown_from(f) {
            // The same content under a new inode (copied back, restored): go on.
            f.start_at(saved.offset)?;
        } else {
            tracing::warn!(path = %f.path.display(), "log file was replaced while stopped and the old one is gone: reading the new one from its start");
        }
        Ok(())
    }

    /// The file `saved` points at, renamed in the same directory (`auth.log.1`).
    fn find_rotated(&self, f: &Followed, saved: &FilePosition) -> Option<Followed> {
        let dir = f.path.parent().filter(|d| !d.as_os_str().is_empty())?;
        let entry = std::fs::read_dir(dir).ok()?.flatten().find(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (saved.dev, saved.ino))
        })?;
        let mut old =
            Followed::open(&f.path, File::open(entry.path()).ok()?, f.sources.clone()).ok()?;
        if old.catch_up_to < saved.offset || !saved.head.matches(&old.file).ok()? {
            return None;
        }
        old.start_at(saved.offset).ok()?;
        Some(old)
    }

    /// Watches a file and queues it for reading.
    fn watch(&mut self, f: Followed) {
        let wd = match self.watches.add(&f.path, FILE_MASK) {
            Ok(wd) => wd,
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot watch log file");
                return;
            }
        };
        if let Some(old) = self.files.get(&wd) {
            // The same inode under a second name: it is followed already.
            tracing::debug!(path = %f.path.display(), already = %old.path.display(), "same file");
            return;
        }
        self.files.insert(wd.clone(), f);
        self.behind.push_back(wd);
    }

    /// Follows a file that appeared after start, from its start.
    fn appeared(&mut self, path: &Path) {
        let sources = self.sources_of(path);
        if sources.is_empty() || !path.is_file() {
            return;
        }
        match File::open(path).and_then(|file| Followed::open(path, file, sources)) {
            Ok(f) => {
                tracing::info!(path = %path.display(), "following new log file from its start");
                self.watch(f);
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot open log file"),
        }
    }

    /// Reads the next chunk of a followed file.
    fn read(&mut self, wd: &WatchDescriptor) -> Option<LineBatch> {
        let f = self.files.get_mut(wd)?;
        let batch = match f.read(&self.buffers) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(path = %f.path.display(), error = %e, "reading log file failed");
                None
            }
        };
        if f.behind() && !self.behind.contains(wd) {
            self.behind.push_back(wd.clone());
        }
        batch
    }

    /// Waits for the next lines.
    pub async fn next(&mut self) -> Result<Vec<LineBatch>, SourceError> {
        loop {
            if let Some(old) = self.finishing.front_mut() {
                match old.read(&self.buffers) {
                    Ok(Some(batch)) => return Ok(vec![batch]),
                    Ok(None) if old.behind() => {}
                    Ok(None) => {
                        tracing::info!(path = %old.path.display(), "rotated file read to its end");
                        self.finishing.pop_front();
                    }
                    Err(e) => {
                        tracing::warn!(path = %old.path.display(), error = %e, "reading a rotated file failed");
                        self.finishing.pop_front();
                    }
                }
                continue;
            }
            if let Some(wd) = self.behind.pop_front() {
                if let Some(batch) = self.read(&wd) {
                    return Ok(vec![batch]);
                }
                continue;
            }
            let out = tokio::select! {
                event = self.events.next() => {
                    let event = match event {
                        Some(event) => event.map_err(SourceError::Inotify)?,
                        None => {
                            return Err(SourceError::Inotify(io::Error::other(
                                "inotify stream ended",
                            )));
                        }
                    };
                    self.handle(event.wd, event.mask, event.name)
                }
                _ = self.rescan.tick() => {
                    self.rescan();
                    Vec::new()
                }
            };
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Looks again for directories that could not be watched and files not followed yet.
    fn rescan(&mut self) {
        self.watch_dirs();
        for path in self.matching_files() {
            if !self.files.values().any(|f| f.path == path) {
                self.appeared(&path);
            }
        }
    }

    fn handle(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<OsString>,
    ) -> Vec<LineBatch> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!("inotify queue overflowed: reading every file");
            self.behind.extend(self.files.keys().cloned());
            self.rescan();
            return Vec::new();
        }
        if let Some(dir) = self.dirs.get(&wd) {
            let Some(name) = name else { return Vec::new() };
            let path = dir.join(name);
            if !mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                return Vec::new();
            }
            // A new file at a followed path: the old one is finished first (rotation).
            let old: Vec<WatchDescriptor> = self
                .files
                .iter()
                .filter(|(_, f)| f.path == path)
                .map(|(wd, _)| wd.clone())
                .collect();
            for old_wd in old {
                self.finish(old_wd);
            }
            self.appeared(&path);
            return Vec::new();
        }
        let mut out = Vec::new();
        if mask.intersects(EventMask::MODIFY | EventMask::MOVE_SELF) {
            out.extend(self.read(&wd));
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::IGNORED) {
            self.finish(wd);
        }
        out
    }

    /// Stops watching a file and reads it to its end.
    fn finish(&mut self, wd: WatchDescriptor) {
        self.behind.retain(|w| *w != wd);
        if let Some(f) = self.files.remove(&wd) {
            self.finishing.push_back(f);
            if let Err(e) = self.watches.remove(wd) {
                tracing::debug!(error = %e, "removing the watch of a finished file");
            }
        }
    }
}

/// Runs a follower forever, sending what it reads; ends when the receiver is gone.
pub async fn run_files(
    mut follower: FileFollower,
    tx: mpsc::Sender<LineBatch>,
    prepare: Prepare,
) -> Result<(), SourceError> {
    loop {
        for mut batch in follower.next().await? {
            prepare(&mut batch);
            let batch = match tx.try_send(batch) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(batch)) => batch,
            };
            note_queue_full();
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Times a source found the daemon's line queue full and waited (reading pauses; nothing is
/// dropped: the lines wait in their file or journal).
static QUEUE_FULL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times a source waited for room in the daemon's line queue.
pub fn queue_full() -> u64 {
    QUEUE_FULL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a wait for room in the line queue; the first one is logged.
pub(crate) fn note_queue_full() {
    if QUEUE_FULL.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
        tracing::warn!(
            "log lines arrive faster than the jails take them: reading waits (nothing is dropped; lag grows, counted in banctl_line_queue_full_total)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Lines::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        out.iter().map(String::from).collect()
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        assert_eq!(split(&[b"a\nb", b"c\n", b"d"]), ["a", "bc"]);
        assert_eq!(split(&[b"crlf\r\n"]), ["crlf"]);
    }

    /// The run taken in one copy gives what the lines taken one by one give, on hostile
    /// streams (carriage returns anywhere, invalid UTF-8, empty lines, lines at and past the
    /// length limit, multi-byte characters cut by a chunk's end) fed in chunks cut anywhere.
    #[test]
    fn a_run_in_one_copy_equals_the_lines_one_by_one() {
        let pieces: [&[u8]; 12] = [
            b"Failed password for root from 192.0.2.1 port 22 ssh2",
            b"",
            b"crlf line\r",
            b"mid\rcarriage",
            b"bad \xff\xfe utf8",
            b"caf\xc3\xa9 \xe2\x82\xac",
            b"\r",
            b"\xc3",
            b"tab\there",
            b"x",
            b"from 203.0.113.7 port 2222",
            b"\xf0\x9f\x98\x80 four bytes",
        ];
        let long = |n: usize| vec![b'y'; n];
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        // Pieces a run can take in one copy; in every other round only these (and lines up
        // to the limit), so that both paths are compared where the run is taken.
        let clean = [0, 1, 5, 8, 9, 10, 11];
        let mut taken = 0;
        for round in 0..400 {
            let only_clean = round % 2 == 0;
            let mut stream = Vec::new();
            for _ in 0..(next() % 40) {
                match next() % 16 {
                    14 if only_clean => stream.extend(long(MAX_LINE - 1 + (next() % 2) as usize)),
                    14 => stream.extend(long(MAX_LINE - 1 + (next() % 3) as usize)),
                    15 if round % 10 == 1 => stream.extend(long(2 * MAX_LINE)),
                    k if only_clean => {
                        stream.extend_from_slice(pieces[clean[k as usize % clean.len()]])
                    }
                    k => stream.extend_from_slice(pieces[k as usize % pieces.len()]),
                }
                stream.push(b'\n');
            }
            stream.extend_from_slice(pieces[(next() % 12) as usize]);
            if only_clean {
                let last = stream.iter().rposition(|b| *b == b'\n');
                let whole = last.map_or(&[][..], |l| &stream[..=l]);
                if !whole.is_empty() && Lines::new().push_run(whole, MAX_LINE) {
                    taken += 1;
                }
            }
            let mut cuts: Vec<usize> = (0..(next() % 5))
                .map(|_| next() as usize % (stream.len() + 1))
                .collect();
            cuts.sort_unstable();
            let run = |runs: bool| {
                let mut s = LineSplitter {
                    runs,
                    ..LineSplitter::default()
                };
                if round % 7 == 0 {
                    s.discarding = true;
                }
                let mut out = Lines::new();
                let mut at = 0;
                for &cut in cuts.iter().chain([&stream.len()]) {
                    s.feed(&stream[at..cut], &mut out);
                    at = cut;
                }
                (out, s.take_cut(), s.pending())
            };
            // The same bytes read into the splitter's buffers, each taken as it lies where
            // it can be: new buffers, or (`used`) buffers given back, of any length and room,
            // full of an earlier batch's lines (failures of a planted address), which must
            // never show.
            let mut spare_len = next() as usize;
            let mut read = |used: bool| {
                let mut s = LineSplitter::default();
                if round % 7 == 0 {
                    s.discarding = true;
                }
                let mut out = Lines::new();
                let mut at = 0;
                for &cut in cuts.iter().chain([&stream.len()]) {
                    let spare = match used {
                        true => {
                            spare_len = spare_len.rotate_left(7) ^ cut;
                            let len = spare_len % (stream.len() + MAX_LINE + 2);
                            let mut spare = Vec::with_capacity(len + spare_len % 3 * 1000);
                            spare.extend(PLANTED.iter().cycle().take(len));
                            spare
                        }
                        false => Vec::new(),
                    };
                    let mut buf = s.buffer(cut - at, spare);
                    let held = buf.len() - (cut - at);
                    buf[held..].copy_from_slice(&stream[at..cut]);
                    s.take(buf).iter().for_each(|line| out.push(line));
                    at = cut;
                }
                (out, s.take_cut(), s.pending())
            };
            let one_by_one = run(false);
            assert_eq!(run(true), one_by_one, "round {round}, cuts {cuts:?}");
            assert_eq!(
                read(false),
                one_by_one,
                "read: round {round}, cuts {cuts:?}"
            );
            assert_eq!(read(true), one_by_one, "used: round {round}, cuts {cuts:?}");
        }
        assert!(taken > 150, "the run was taken in {taken} rounds only");
    }

    /// What a used buffer held before: lines an attacker would love to see counted again.
    const PLANTED: &[u8] = b"Failed password for root from 203.0.113.66 port 22 ssh2\n";

    /// Read buffers are kept for full reads only, as many as asked at most, none by default,
    /// and all dropped by `clear`;
    /// a read takes a kept one, whose bytes are then what was read, nothing of before.
    #[test]
    fn read_buffers_keep_a_few_full_reads_until_cleared() {
        let full = |fill: &[u8]| {
            let mut s = LineSplitter::default();
            let mut buf = s.buffer(MAX_READ as usize, Vec::new());
            for (b, f) in buf.iter_mut().zip(fill.iter().cycle()) {
                *b = *f;
            }
            s.take(buf)
        };
        let buffers = ReadBuffers::keeping(5);
        buffers.give(Lines::from_iter(["a short live read"]));
        assert!(buffers.kept().is_empty(), "a small buffer is not kept");
        for _ in 0..7 {
            buffers.give(full(PLANTED));
        }
        assert_eq!(buffers.kept().len(), 5);
        // A read of a few lines into a kept buffer: those lines, no planted one.
        let mut s = LineSplitter::default();
        let fresh = b"Failed password for bob from 198.51.100.7 port 2222\nhalf a li";
        let mut buf = s.buffer(fresh.len(), buffers.take());
        assert!(buf.capacity() as u64 >= MAX_READ, "a kept buffer was taken");
        buf.copy_from_slice(fresh);
        let lines = s.take(buf);
        assert_eq!(
            lines.iter().collect::<Vec<_>>(),
            ["Failed password for bob from 198.51.100.7 port 2222"]
        );
        assert_eq!(s.pending(), 9);
        buffers.clear();
        assert!(buffers.kept().is_empty());
        assert_eq!(buffers.take().capacity(), 0, "nothing kept: a new buffer");
        let none = ReadBuffers::default();
        none.give(full(PLANTED));
        assert!(none.kept().is_empty(), "the default keeps none");
    }

    /// A read of whole clean lines, a line begun by the read before included, becomes the
    /// batch's text as it lies: no copy.
    #[test]
    fn a_clean_read_becomes_the_lines_without_a_copy() {
        let mut s = LineSplitter::default();
        let first =
            s.take(b"Failed password for root from 192.0.2.1 port 22\nFailed pass".to_vec());
        assert_eq!(
            first.iter().collect::<Vec<_>>(),
            ["Failed password for root from 192.0.2.1 port 22"]
        );
        assert_eq!(s.pending(), 11);
        let more = b"word for bob from 198.51.100.7 port 2222\ncaf\xc3\xa9\n";
        let mut buf = s.buffer(more.len(), Vec::new());
        buf[11..].copy_from_slice(more);
        let at = buf.as_ptr();
        let lines = s.take(buf);
        assert_eq!(
            lines.iter().collect::<Vec<_>>(),
            [
                "Failed password for bob from 198.51.100.7 port 2222",
                "caf\u{e9}"
            ]
        );
        assert_eq!(lines.text().as_ptr(), at, "the read's buffer is the text");
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        assert_eq!(split(&[b"bad \xff byte\n"]), ["bad \u{fffd} byte"]);
    }

    /// A line longer than the limit is dropped whole, never cut: fed in chunks split at
    /// every position near the limit, lines of exactly the limit pass intact and longer ones
    /// are counted, and the lines around them keep their framing.
    #[test]
    fn long_lines_are_dropped_whole_at_every_boundary() {
        let tail = b" has been denied (IP: \"198.51.100.9\").";
        for len in [
            MAX_LINE - 1,
            MAX_LINE,
            MAX_LINE + 1,
            MAX_LINE + tail.len(),
            3 * MAX_LINE,
        ] {
            let mut long = vec![b'x'; len.saturating_sub(tail.len())];
            long.extend_from_slice(tail);
            let mut text = b"before\n".to_vec();
            text.extend_from_slice(&long);
            text.extend_from_slice(b"\nafter\n");
            for cut in (MAX_LINE - 2..MAX_LINE + 10).chain([1, 7, len / 2]) {
                let cut = cut.min(text.len());
                let mut s = LineSplitter::default();
                let mut out = Lines::new();
                s.feed(&text[..cut], &mut out);
                s.feed(&text[cut..], &mut out);
                let dropped = s.take_cut();
                let out: Vec<&str> = out.iter().collect();
                if len <= MAX_LINE {
                    assert_eq!(out.len(), 3, "len {len} split at {cut}");
                    assert_eq!(out[1].len(), len);
                    assert_eq!(dropped, 0);
                } else {
                    assert_eq!(out, ["before", "after"], "len {len} split at {cut}");
                    assert_eq!(dropped, 1, "len {len} split at {cut}");
                }
            }
        }
    }
}
