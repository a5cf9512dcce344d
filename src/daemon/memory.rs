//! Freed memory goes back to the kernel once the daemon is quiet after work.
//!
//! glibc keeps what a burst, a reload or a large listing freed: pages in the middle of its
//! heaps and in the reading threads' arenas, and, at the top of the main heap, anything under a
//! threshold that grows with the largest block ever freed. A daemon that sits idle for hours
//! after one burst should not hold that memory for hours. So after work the loop arms a short
//! timer, moved on by every further piece of work; when it fires, the read buffers kept for a
//! backlog ([`crate::source::ReadBuffers`]) are dropped and the allocator's free pages are
//! handed back in one call ([`malloc_trim::trim`]). Nothing runs while lines keep coming: a
//! flood never pays for it.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How long the loop must have had nothing to do before freed memory is handed back: longer
/// than the gap between two rounds of a flood, short enough that an admin looking at the
/// daemon a second after a burst sees what it keeps.
const QUIET: Duration = Duration::from_millis(250);

/// The timer between work and the hand-back.
pub(super) struct Release {
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl Release {
    /// Armed: the daemon's start (configuration, filters, restore) is work too.
    pub(super) fn new() -> Self {
        Release {
            timer: Box::pin(tokio::time::sleep(QUIET)),
            armed: true,
        }
    }

    /// Work was done: hand back [`QUIET`] from now, unless more work comes first.
    pub(super) fn after_work(&mut self) {
        self.timer.as_mut().reset(Instant::now() + QUIET);
        self.armed = true;
    }

    /// Whether a hand-back is due once the timer fires (the loop's select guard).
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// Resolves when the quiet time after the last work has passed; only poll when [`armed`].
    ///
    /// [`armed`]: Release::armed
    pub(super) fn quiet(&mut self) -> &mut Pin<Box<Sleep>> {
        &mut self.timer
    }

    /// Hands the free pages back and disarms until the next work.
    pub(super) fn release(&mut self) {
        self.armed = false;
        let start = std::time::Instant::now();
        let released = malloc_trim::trim();
        tracing::debug!(
            released,
            micros = start.elapsed().as_micros(),
            "freed memory handed back to the kernel"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `release` fires before `within` passes (time is paused: both deadlines are
    /// exact).
    async fn fires_within(release: &mut Release, within: Duration) -> bool {
        tokio::select! {
            biased;
            () = release.quiet() => true,
            () = tokio::time::sleep(within) => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn freed_memory_goes_back_only_after_a_quiet_time_since_the_last_work() {
        let mut release = Release::new();
        assert!(release.armed(), "the start is work");
        release.after_work();
        tokio::time::sleep(QUIET - Duration::from_millis(50)).await;
        // More work before the quiet time ran out: it starts again from here.
        release.after_work();
        assert!(!fires_within(&mut release, QUIET - Duration::from_millis(1)).await);
        assert!(fires_within(&mut release, Duration::from_millis(2)).await);
        release.release();
        assert!(
            !release.armed(),
            "once handed back, nothing is due until more work"
        );
        release.after_work();
        assert!(release.armed());
        assert!(fires_within(&mut release, QUIET + Duration::from_millis(1)).await);
    }
}
