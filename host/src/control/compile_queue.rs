//! The compile queue: which deployed components this node still has to
//! compile, which failed and when to try them again.
//!
//! It is the only owner of that state. The route-table builder tells it
//! what is wanted ([`CompileQueue::want`]); compile tasks take work
//! ([`CompileQueue::take`]) and report how it ended
//! ([`CompileQueue::finished`]). A component that fails is tried again
//! after a back-off that doubles with each failure, not at every rebuild
//! of the route table. Time is passed in, so the whole state machine is
//! tested with plain values.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Wait before the first retry of a failed compilation.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Where one component stands in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for a compile task.
    Queued,
    /// A compile task is working on it.
    Compiling,
    /// The last attempt failed; the next is due at `retry_at` (or running,
    /// when `retrying`).
    Failed {
        /// Attempts so far.
        attempts: u32,
        /// What the last attempt said.
        error: String,
        /// When the next attempt may start.
        retry_at: Instant,
        /// Whether that attempt is running now.
        retrying: bool,
    },
}

#[derive(Debug)]
struct Entry {
    running: bool,
    attempts: u32,
    last_error: Option<String>,
    /// When the next attempt may start (now, for a new entry).
    due: Instant,
}

/// The compilations this node owes, their failures and back-off.
#[derive(Debug, Default)]
pub struct CompileQueue {
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken when there may be work to take.
    work: tokio::sync::Notify,
}

impl CompileQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets what the route table needs compiled: adds the digests not known
    /// yet (due at once), and forgets those no longer wanted (an attempt
    /// running for one of them finishes, and its outcome is dropped).
    /// Returns whether anything new was queued.
    pub fn want(&self, wanted: &HashSet<String>, now: Instant) -> bool {
        let mut entries = self.lock();
        entries.retain(|digest, _| wanted.contains(digest));
        let mut added = false;
        for digest in wanted {
            if !entries.contains_key(digest) {
                entries.insert(
                    digest.clone(),
                    Entry { running: false, attempts: 0, last_error: None, due: now },
                );
                added = true;
            }
        }
        drop(entries);
        if added {
            self.work.notify_one();
        }
        added
    }

    /// The next component due for an attempt, marked as running; `None`
    /// when nothing is due at `now`.
    pub fn take(&self, now: Instant) -> Option<String> {
        let mut entries = self.lock();
        let (digest, entry) = entries
            .iter_mut()
            .filter(|(_, e)| !e.running && e.due <= now)
            .min_by_key(|(_, e)| (e.attempts, e.due))?;
        entry.running = true;
        Some(digest.clone())
    }

    /// Records how an attempt ended. A success leaves the queue; a failure
    /// waits for its back-off, which is returned.
    pub fn finished(
        &self,
        digest: &str,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Duration> {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(digest) else {
            return None; // no longer wanted
        };
        match result {
            Ok(()) => {
                entries.remove(digest);
                None
            }
            Err(error) => {
                entry.running = false;
                entry.attempts += 1;
                entry.last_error = Some(error);
                let wait = backoff(entry.attempts);
                entry.due = now + wait;
                Some(wait)
            }
        }
    }

    /// Where `digest` stands, if the queue holds it.
    pub fn status(&self, digest: &str) -> Option<Status> {
        let entries = self.lock();
        let entry = entries.get(digest)?;
        Some(match &entry.last_error {
            Some(error) => Status::Failed {
                attempts: entry.attempts,
                error: error.clone(),
                retry_at: entry.due,
                retrying: entry.running,
            },
            None if entry.running => Status::Compiling,
            None => Status::Queued,
        })
    }

    /// Components that have not failed yet and are waiting or compiling.
    pub fn pending(&self) -> usize {
        self.lock().values().filter(|e| e.last_error.is_none()).count()
    }

    /// When the earliest waiting failure is due again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.lock().values().filter(|e| !e.running && e.last_error.is_some()).map(|e| e.due).min()
    }

    /// Waits until work may have been added (call [`Self::take`] after).
    pub async fn work_added(&self) {
        self.work.notified().await;
    }
}

/// The wait after the `attempts`-th failure: [`FIRST_RETRY`], doubling, at
/// most [`MAX_RETRY`].
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(digests: &[&str]) -> HashSet<String> {
        digests.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn wanted_components_are_taken_once_each() {
        let queue = CompileQueue::new();
        let now = Instant::now();
        assert!(queue.want(&set(&["a", "b"]), now));
        assert!(!queue.want(&set(&["a", "b"]), now), "nothing new the second time");
        let first = queue.take(now).unwrap();
        let second = queue.take(now).unwrap();
        assert_ne!(first, second);
        assert_eq!(queue.take(now), None, "both are running");
        assert_eq!(queue.status(&first), Some(Status::Compiling));
        assert_eq!(queue.pending(), 2);
    }

    #[test]
    fn a_success_leaves_the_queue() {
        let queue = CompileQueue::new();
        let now = Instant::now();
        queue.want(&set(&["a"]), now);
        let a = queue.take(now).unwrap();
        assert_eq!(queue.finished(&a, Ok(()), now), None);
        assert_eq!(queue.status("a"), None);
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn a_failure_is_retried_after_a_doubling_back_off_not_at_every_rebuild() {
        let queue = CompileQueue::new();
        let t0 = Instant::now();
        queue.want(&set(&["bad"]), t0);
        let bad = queue.take(t0).unwrap();
        assert_eq!(queue.finished(&bad, Err("no".into()), t0), Some(FIRST_RETRY));
        // A rebuild of the route table wants it again: nothing new to take.
        assert!(!queue.want(&set(&["bad"]), t0));
        assert_eq!(queue.take(t0 + FIRST_RETRY / 2), None);
        assert_eq!(queue.next_retry(), Some(t0 + FIRST_RETRY));
        assert_eq!(queue.pending(), 0, "a failed component does not count as pending");
        match queue.status("bad") {
            Some(Status::Failed { attempts: 1, error, retrying: false, .. }) => {
                assert_eq!(error, "no")
            }
            other => panic!("unexpected {other:?}"),
        }

        let t1 = t0 + FIRST_RETRY;
        assert_eq!(queue.take(t1).as_deref(), Some("bad"));
        assert!(matches!(queue.status("bad"), Some(Status::Failed { retrying: true, .. })));
        assert_eq!(queue.finished("bad", Err("still no".into()), t1), Some(FIRST_RETRY * 2));
        assert_eq!(queue.take(t1 + FIRST_RETRY), None);
        assert_eq!(queue.take(t1 + FIRST_RETRY * 2).as_deref(), Some("bad"));
        assert_eq!(queue.finished("bad", Ok(()), t1 + FIRST_RETRY * 2), None);
        assert_eq!(queue.status("bad"), None);
    }

    #[test]
    fn the_back_off_stops_growing_at_its_cap() {
        assert_eq!(backoff(1), FIRST_RETRY);
        assert_eq!(backoff(3), FIRST_RETRY * 4);
        assert_eq!(backoff(40), MAX_RETRY);
    }

    #[test]
    fn components_no_longer_wanted_are_forgotten_even_while_compiling() {
        let queue = CompileQueue::new();
        let now = Instant::now();
        queue.want(&set(&["gone", "kept"]), now);
        let _ = queue.take(now);
        let _ = queue.take(now);
        queue.want(&set(&["kept"]), now);
        assert_eq!(queue.status("gone"), None);
        assert_eq!(queue.finished("gone", Err("x".into()), now), None, "its outcome is dropped");
        assert_eq!(queue.status("gone"), None);
        assert_eq!(queue.pending(), 1);
    }

    #[test]
    fn new_work_goes_before_retries_that_are_due() {
        let queue = CompileQueue::new();
        let t0 = Instant::now();
        queue.want(&set(&["old"]), t0);
        let old = queue.take(t0).unwrap();
        queue.finished(&old, Err("x".into()), t0);
        let later = t0 + MAX_RETRY;
        queue.want(&set(&["old", "new"]), later);
        assert_eq!(queue.take(later).as_deref(), Some("new"));
        assert_eq!(queue.take(later).as_deref(), Some("old"));
    }

    #[tokio::test]
    async fn wanting_something_new_wakes_a_waiting_worker() {
        let queue = std::sync::Arc::new(CompileQueue::new());
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.work_added().await }
        });
        tokio::task::yield_now().await;
        queue.want(&set(&["a"]), Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
