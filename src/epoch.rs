//! "Has anything changed since this login began?": the one owner of that
//! question.
//!
//! Two kinds of memory on a node are derived from stored state and go stale
//! when it changes: the gate's remembered logins (`crate::gate::cache`) and the
//! live sessions, which the event-log tail re-checks after each change
//! (`crate::recheck`). Both rest on one counter, [`ChangeEpoch`], moved
//!
//! - after every commit through this process's store that can alter a login's
//!   outcome (it appended an event or created an app password), and
//! - by the event-log tail for every event it applies, *before* it looks at the
//!   live sessions.
//!
//! A login takes an [`Epoch`] before it reads anything. A remembered read counts
//! only while the counter is where it was when the read began and the log was
//! read recently ([`ChangeEpoch::remembered`]); a session registered after the
//! counter moved may have been missed by the tail's snapshot of the sessions, so
//! the registry tells it to re-check itself (`SessionRegistry::register`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How recent the last complete event-log read must be for remembered reads to
/// count (the tail reads every 200 ms). A lost database or a stalled tail thus
/// fails remembered logins closed within this time.
pub const FRESHNESS: Duration = Duration::from_millis(600);

/// A point on the change counter, taken when a login begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u64);

/// The node's change counter and when the event log was last read in full;
/// cheap to clone (all clones are one counter).
#[derive(Clone, Debug, Default)]
pub struct ChangeEpoch(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    count: AtomicU64,
    /// When the last complete event-log read began; `None`: never, or the log
    /// could not be read since.
    read: Mutex<Option<Instant>>,
    /// Woken at every complete read, for [`ChangeEpoch::until_fresh`].
    read_done: tokio::sync::Notify,
}

impl ChangeEpoch {
    /// Where the counter is now: taken before a login reads the store.
    pub fn now(&self) -> Epoch {
        Epoch(self.0.count.load(Ordering::SeqCst))
    }

    /// Something that can alter a login's outcome was committed here or
    /// applied from the event log.
    pub fn advance(&self) {
        self.0.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether nothing changed since `began`.
    pub fn unchanged_since(&self, began: Epoch) -> bool {
        self.now() == began
    }

    /// The event log was read in full by a read that began at `started`.
    pub fn log_read(&self, started: Instant) {
        if let Ok(mut read) = self.0.read.lock() {
            *read = Some(read.map_or(started, |r| r.max(started)));
        }
        self.0.read_done.notify_waiters();
    }

    /// Resolves once the event log was read within [`FRESHNESS`] (at once if it
    /// was): tests await it instead of polling [`ChangeEpoch::fresh`].
    pub async fn until_fresh(&self) {
        loop {
            let read = self.0.read_done.notified();
            tokio::pin!(read);
            read.as_mut().enable();
            if self.fresh() {
                return;
            }
            read.await;
        }
    }

    /// The event log could not be read: nothing remembered counts until it is
    /// read again.
    pub fn log_unreadable(&self) {
        if let Ok(mut read) = self.0.read.lock() {
            *read = None;
        }
        self.advance();
    }

    /// Whether the event log was read within [`FRESHNESS`].
    pub fn fresh(&self) -> bool {
        self.0
            .read
            .lock()
            .is_ok_and(|read| read.is_some_and(|r| r.elapsed() < FRESHNESS))
    }

    /// Whether a read of the store that began at `read_at` may still be used:
    /// nothing changed since, and the log was read recently.
    pub fn remembered(&self, read_at: Epoch) -> bool {
        self.fresh() && self.unchanged_since(read_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_counts_only_while_nothing_changed_and_the_log_was_read_recently() {
        let epoch = ChangeEpoch::default();
        let read_at = epoch.now();
        assert!(!epoch.remembered(read_at), "the log was never read");
        epoch.log_read(Instant::now());
        assert!(epoch.remembered(read_at));
        epoch.clone().advance();
        assert!(
            !epoch.remembered(read_at),
            "a change since (through a clone)"
        );
        let again = epoch.now();
        assert!(epoch.remembered(again));
        epoch.log_unreadable();
        epoch.log_read(Instant::now());
        assert!(
            !epoch.remembered(again),
            "an unreadable log voids every read"
        );
    }

    #[test]
    fn a_log_read_older_than_the_freshness_window_does_not_count() {
        let epoch = ChangeEpoch::default();
        let Some(long_ago) = Instant::now().checked_sub(FRESHNESS * 2) else {
            return; // a clock this close to its origin cannot hold the case
        };
        epoch.log_read(long_ago);
        assert!(!epoch.fresh());
        epoch.log_read(Instant::now());
        assert!(epoch.fresh());
        // An older read finishing late does not move the time back.
        epoch.log_read(long_ago);
        assert!(epoch.fresh());
    }
}
