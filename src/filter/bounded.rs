//! Backtracking patterns (`fancy-regex`: back-references, look-arounds) with bounded work per
//! line.
//!
//! Their cost can grow with the square of the line or worse: a look-ahead that is retried at
//! every start position of a 64 KiB line took ten seconds, and the daemon's loop would wait
//! for it. So a line up to [`INLINE`] bytes is searched at once (its cost stays small), and a
//! longer one is searched on a helper thread of the pattern's own, waited for at most
//! [`DEADLINE`]. A search that runs out of time, or that finds the helper still busy with an
//! earlier line, gives up: the line counts as not matched by this pattern, the give-up is
//! counted ([`gave_up`]) and its first one logged. Patterns of other jails have their own
//! helpers and are never held up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest line searched without a deadline.
pub const INLINE: usize = 1024;
/// How long a longer line may take.
pub const DEADLINE: Duration = Duration::from_millis(100);

/// Searches that gave up, since the start of the process.
static GAVE_UP: AtomicU64 = AtomicU64::new(0);

/// How many searches of backtracking patterns gave up (over their time, or their helper busy).
pub fn gave_up() -> u64 {
    GAVE_UP.load(Ordering::Relaxed)
}

/// Where each group of one match is: `None` for a group that took no part.
pub(super) type Spans = Vec<Option<(usize, usize)>>;

/// A backtracking pattern and its helper thread (started on the first long line).
#[derive(Debug)]
pub(super) struct Bounded {
    regex: Arc<fancy_regex::Regex>,
    /// Each group's name, by index.
    names: Arc<[Option<String>]>,
    helper: Mutex<Option<Helper>>,
    /// Whether a give-up of this pattern was logged.
    told: AtomicBool,
}

#[derive(Debug)]
struct Helper {
    jobs: mpsc::SyncSender<Job>,
    /// Set while the helper works on a line (also after its caller stopped waiting).
    busy: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Job {
    text: String,
    reply: mpsc::SyncSender<Option<Spans>>,
}

impl Clone for Bounded {
    /// A clone shares the regex but gets a helper of its own.
    fn clone(&self) -> Bounded {
        Bounded::new(self.regex.clone())
    }
}

impl Bounded {
    pub(super) fn new(regex: Arc<fancy_regex::Regex>) -> Bounded {
        Bounded {
            names: regex
                .capture_names()
                .map(|n| n.map(str::to_owned))
                .collect(),
            regex,
            helper: Mutex::new(None),
            told: AtomicBool::new(false),
        }
    }

    pub(super) fn regex(&self) -> &fancy_regex::Regex {
        &self.regex
    }

    pub(super) fn names(&self) -> &Arc<[Option<String>]> {
        &self.names
    }

    /// The groups of the first match in `text`, if any; `None` also when the search gave up
    /// (over its backtracking limit, or its time).
    pub(super) fn captures(&self, text: &str) -> Option<Spans> {
        if text.len() <= INLINE {
            return spans(&self.regex, text);
        }
        match self.on_helper(text) {
            Ok(found) => found,
            Err(why) => {
                GAVE_UP.fetch_add(1, Ordering::Relaxed);
                if !self.told.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        pattern = self.regex.as_str(),
                        bytes = text.len(),
                        why,
                        "a backtracking pattern gave up on a long line: not matched (further ones are counted in banctl_pattern_give_ups_total)"
                    );
                }
                None
            }
        }
    }

    fn on_helper(&self, text: &str) -> Result<Option<Spans>, &'static str> {
        let mut helper = self.helper.lock().unwrap_or_else(|e| e.into_inner());
        if helper.is_none() {
            *helper = Some(Helper::start(self.regex.clone()).ok_or("no helper thread")?);
        }
        let helper = helper.as_ref().ok_or("no helper thread")?;
        if helper.busy.swap(true, Ordering::AcqRel) {
            return Err("still busy with an earlier line");
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            text: text.to_owned(),
            reply,
        };
        if helper.jobs.send(job).is_err() {
            return Err("no helper thread");
        }
        answer.recv_timeout(DEADLINE).map_err(|_| "out of time")
    }
}

impl Helper {
    fn start(regex: Arc<fancy_regex::Regex>) -> Option<Helper> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        std::thread::Builder::new()
            .name("banctl-pattern".into())
            .spawn(move || {
                // Ends when the pattern (its sender) is dropped.
                for job in queue {
                    let found = spans(&regex, &job.text);
                    done.store(false, Ordering::Release);
                    // The caller may have stopped waiting.
                    let _ = job.reply.send(found);
                }
            })
            .ok()?;
        Some(Helper { jobs, busy })
    }
}

/// The groups of the first match, searched here; `None` also over the backtracking limit.
fn spans(regex: &fancy_regex::Regex, text: &str) -> Option<Spans> {
    let groups = regex.captures(text).ok()??;
    Some(
        (0..groups.len())
            .map(|i| groups.get(i).map(|m| (m.start(), m.end())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(pattern: &str) -> Bounded {
        Bounded::new(Arc::new(fancy_regex::Regex::new(pattern).unwrap()))
    }

    #[test]
    fn short_and_long_lines_find_the_same_groups() {
        let p = bounded(r"^x* (?P<u>\w+) rejected (?P=u) from (\S+)$");
        let short = "x bob rejected bob from 192.0.2.1";
        assert!(short.len() <= INLINE);
        let long = format!("{} bob rejected bob from 192.0.2.1", "x".repeat(2 * INLINE));
        let at = |text: &str| {
            p.captures(text)
                .map(|s| s[2].map(|(a, b)| text[a..b].to_owned()))
        };
        assert_eq!(at(short), Some(Some("192.0.2.1".to_owned())));
        assert_eq!(at(&long), Some(Some("192.0.2.1".to_owned())));
        assert_eq!(at(&long.replace("rejected bob", "rejected eve")), None);
    }

    /// A line that would keep a look-ahead busy for seconds gives up at the deadline, is
    /// counted, and the next long line gives up at once while the helper is still busy.
    #[test]
    fn a_pathological_line_gives_up_and_is_counted() {
        let p = bounded(r"(?=(a|aa)+c)a* from (\S+)$");
        let line = format!("{} from 192.0.2.1x", "a".repeat(60_000));
        let before = gave_up();
        assert_eq!(p.captures(&line), None);
        assert_eq!(p.captures(&line), None);
        assert!(gave_up() >= before + 2);
        // Short lines are still searched, at once.
        assert!(p.captures("aac from 192.0.2.1").is_none());
        assert!(p.captures("aa from 192.0.2.1").is_none());
    }
}
