//! Instance reuse, for deployments that opt in (`max_instance_reuse` > 1).
//!
//! By default every request gets a fresh instance, so nothing one request
//! leaves in the guest's memory is seen by the next. A deployment may trade
//! that isolation between its own requests for speed: after a request that
//! ended well, its instance is kept idle in the deployment's
//! [`InstancePool`] and serves a later request of the same deployment,
//! skipping the sandbox, the instantiation and the teardown.
//!
//! An instance is kept only when all of these hold, otherwise it is dropped
//! as a fresh one would be:
//! - the request ended `ok` (a trap, a timeout, running out of memory, an
//!   error code or no answer ends the instance);
//! - the guest let go of every resource of the request (its resource table
//!   holds nothing but its own stdout and stderr streams), so no body,
//!   stream or outgoing request outlives it;
//! - it has served fewer than `max_instance_reuse` requests;
//! - the deployment keeps fewer than [`MAX_IDLE_PER_DEPLOYMENT`] idle, and
//!   the node fewer than its warm slots (`POOL_WARM_SLOTS`): the pooling
//!   allocator holds running plus idle instances, and the running ones are
//!   capped by `INSTANCE_POOL_SIZE`, so kept instances never take a slot a
//!   running request needs;
//! - the linear memory of every idle instance on the node, this one's
//!   included, stays within `REUSE_IDLE_MEMORY` (a kept instance keeps its
//!   heap resident, where a warm slot is reset).
//!
//! A deployment whose instances return without an answer on their second
//! request every time (a JavaScript component answering through
//! StarlingMonkey's `fetch` event: its event cannot be answered twice, and
//! the handler returns at once) stops reusing them on this node after
//! [`FAILURES_BEFORE_GIVING_UP`] such failures in a row, with a warning:
//! its requests then run on fresh instances, as without reuse, until the
//! deployment changes. Only that failure counts, and only before any reused
//! instance has answered well: a request that makes a guest trap, time out
//! or run out of memory cannot turn reuse off.
//!
//! An idle instance is dropped after `REUSE_IDLE_TIMEOUT` (by a thread of
//! its own, so the drops never delay the epoch ticks), or when
//! its memory has grown past the memory limit the deployment's tier has
//! now. Every request on a kept instance starts with the route's current
//! limits, capabilities and outbound policy, and its own outbound and
//! key-value counts.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::state::InvocationState;

/// Most idle instances one deployment keeps.
const MAX_IDLE_PER_DEPLOYMENT: usize = 32;

/// Second requests of instances returning without an answer, in a row,
/// none reused having answered well, after which a deployment's instances
/// are no longer reused on this node.
pub const FAILURES_BEFORE_GIVING_UP: u32 = 2;

/// How many instances are idle on this node and how much linear memory
/// they hold, against the most the node may keep.
#[derive(Debug)]
pub(super) struct IdleCount {
    now: AtomicUsize,
    max: usize,
    bytes: AtomicU64,
    max_bytes: u64,
}

impl IdleCount {
    pub(super) fn new(max: usize, max_bytes: u64) -> Self {
        Self { now: AtomicUsize::new(0), max, bytes: AtomicU64::new(0), max_bytes }
    }

    pub(super) fn now(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// One more idle instance holding `bytes` of linear memory, if the node
    /// may keep it.
    pub(super) fn claim(self: &Arc<Self>, bytes: u64) -> Option<IdleClaim> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()?;
        let fits = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
            held.checked_add(bytes).filter(|total| *total <= self.max_bytes)
        });
        if fits.is_err() {
            self.now.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(IdleClaim { count: self.clone(), bytes })
    }
}

/// One idle instance counted on the node; uncounted on drop.
pub(super) struct IdleClaim {
    count: Arc<IdleCount>,
    bytes: u64,
}

impl Drop for IdleClaim {
    fn drop(&mut self) {
        self.count.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.count.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A kept instance: its store, its exports, and how many requests it has
/// served.
pub(super) struct Reused {
    pub(super) store: Store<InvocationState>,
    pub(super) proxy: Proxy,
    pub(super) served: u32,
}

/// An instance between two requests.
struct IdleInstance {
    kept: Reused,
    since: Instant,
    _claim: IdleClaim,
}

/// The idle instances of one deployment.
pub struct InstancePool {
    /// What the warnings call the deployment (its route).
    name: String,
    max_uses: u32,
    idle: Mutex<Vec<IdleInstance>>,
    count: Arc<IdleCount>,
    /// Whether a request on a reused instance has ever ended well.
    reuse_worked: AtomicBool,
    /// Requests on reused instances that failed while none had ended well.
    reuse_failed: AtomicU32,
    /// Set when reuse has failed [`FAILURES_BEFORE_GIVING_UP`] times and
    /// never worked: nothing is kept any more.
    given_up: AtomicBool,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("name", &self.name)
            .field("max_uses", &self.max_uses)
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl InstancePool {
    pub(super) fn new(name: String, max_uses: u32, count: Arc<IdleCount>) -> Self {
        Self {
            name,
            max_uses,
            idle: Mutex::new(Vec::new()),
            count,
            reuse_worked: AtomicBool::new(false),
            reuse_failed: AtomicU32::new(0),
            given_up: AtomicBool::new(false),
        }
    }

    /// Whether this deployment's instances are still reused (not given up
    /// on after failing on every reuse).
    pub fn reusing(&self) -> bool {
        !self.given_up.load(Ordering::Relaxed)
    }

    /// Notes how a request on a reused instance ended: `ok`, or returned
    /// without an answer (`unanswered`) on the instance's `second` request.
    /// A deployment whose instances do that [`FAILURES_BEFORE_GIVING_UP`]
    /// times in a row, before any reused instance has answered well, is
    /// given up on.
    pub(super) fn reused_instance_ended(&self, ok: bool, unanswered: bool, second: bool) {
        if ok {
            self.reuse_worked.store(true, Ordering::Relaxed);
            self.reuse_failed.store(0, Ordering::Relaxed);
            return;
        }
        if !unanswered || !second || self.reuse_worked.load(Ordering::Relaxed) {
            return;
        }
        let failed = self.reuse_failed.fetch_add(1, Ordering::Relaxed) + 1;
        if failed == FAILURES_BEFORE_GIVING_UP {
            self.given_up.store(true, Ordering::Relaxed);
            let idle = std::mem::take(&mut *self.lock());
            // Dropping stores resets pool slots: not on a request's thread.
            if !idle.is_empty() {
                std::thread::spawn(move || drop(idle));
            }
            tracing::warn!(
                route = %self.name,
                failed,
                "instance reuse turned off for this deployment on this node: its instances \
                 returned without an answer on their second request every time (a JavaScript \
                 component answering through the fetch event cannot serve two requests); its \
                 requests run on fresh instances until it is deployed again"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<IdleInstance>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle instance whose memory fits in
    /// `memory_limit` (its pages and caches are the warmest), if any.
    pub(super) fn take(&self, memory_limit: u64) -> Option<Reused> {
        if !self.reusing() {
            return None;
        }
        let mut grown = Vec::new();
        let taken = {
            let mut idle = self.lock();
            loop {
                match idle.pop() {
                    None => break None,
                    Some(instance) if instance.kept.store.data().memory_peak() > memory_limit => {
                        grown.push(instance);
                    }
                    Some(instance) => break Some(instance),
                }
            }
        };
        // Stores are dropped outside the lock: a drop resets pool slots.
        drop(grown);
        taken.map(|instance| instance.kept)
    }

    /// Keeps an instance that has just served a request that ended well
    /// (`served` counts it), if it may serve another; drops it otherwise.
    pub(super) fn give_back(&self, mut kept: Reused) {
        if kept.served >= self.max_uses
            || !self.reusing()
            || !kept.store.data_mut().ready_for_another()
        {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE_PER_DEPLOYMENT {
            return;
        }
        let Some(claim) = self.count.claim(kept.store.data().memory_peak()) else { return };
        let served = kept.served;
        idle.push(IdleInstance { kept, since: Instant::now(), _claim: claim });
        drop(idle);
        tracing::debug!(served, "instance kept for reuse");
    }

    /// Drops the instances idle for longer than `timeout`.
    fn sweep(&self, timeout: Duration) {
        let expired: Vec<IdleInstance> = {
            let mut idle = self.lock();
            // Oldest first: instances are pushed as they come back.
            let keep_from = idle.iter().position(|i| i.since.elapsed() < timeout);
            let n = keep_from.unwrap_or(idle.len());
            idle.drain(..n).collect()
        };
        if !expired.is_empty() {
            tracing::debug!(
                dropped = expired.len(),
                "idle instances dropped after REUSE_IDLE_TIMEOUT"
            );
        }
        drop(expired);
    }
}

/// Every deployment's pool on the node, for the sweep.
#[derive(Debug, Default)]
pub(super) struct Pools(Mutex<Vec<Weak<InstancePool>>>);

impl Pools {
    pub(super) fn register(&self, pool: &Arc<InstancePool>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(pool));
    }

    /// Drops idle instances past `timeout`, and forgets pools no route uses.
    pub(super) fn sweep(&self, timeout: Duration) {
        let live: Vec<Arc<InstancePool>> = {
            let mut pools = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        for pool in live {
            pool.sweep(timeout);
        }
    }
}
