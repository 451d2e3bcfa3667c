//! Per-tenant usage: counted in memory as invocations end (atomic adds, no
//! lock, no I/O on the request path) and written to the store in batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::{ExecutionReport, KvMeter, Outcome};
use crate::store::{Store, UsageCounts};
use crate::tenancy::TenantId;

/// How often each node writes what it counted.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Per-minute usage rows are kept this many minutes (two days); day rows
/// are kept.
pub const MINUTES_KEPT: i64 = 2 * 24 * 60;
/// Old per-minute rows are pruned once every this many flushes (10 minutes).
pub const PRUNE_EVERY_FLUSHES: u64 = 120;

/// One tenant's counts since the last flush.
#[derive(Debug, Default)]
pub struct TenantUsage {
    invocations: AtomicU64,
    errors_trap: AtomicU64,
    errors_timeout: AtomicU64,
    errors_oom: AtomicU64,
    errors_other: AtomicU64,
    wall_ms: AtomicU64,
    kv_reads: AtomicU64,
    kv_writes: AtomicU64,
    /// Key-value writes in the current second: (unix second, count).
    kv_write_window: std::sync::Mutex<(u64, u64)>,
}

impl TenantUsage {
    /// Counts one finished invocation.
    pub fn record(&self, report: &ExecutionReport) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.wall_ms.fetch_add(report.wall.as_millis() as u64, Ordering::Relaxed);
        let error = match report.outcome {
            Outcome::Ok => return,
            Outcome::Trap | Outcome::StackOverflow => &self.errors_trap,
            Outcome::Timeout => &self.errors_timeout,
            Outcome::OutOfMemory => &self.errors_oom,
            Outcome::NoResponse | Outcome::GuestError => &self.errors_other,
        };
        error.fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self, take: bool) -> UsageCounts {
        let read = |n: &AtomicU64| {
            if take { n.swap(0, Ordering::Relaxed) } else { n.load(Ordering::Relaxed) }
        };
        UsageCounts {
            invocations: read(&self.invocations),
            errors_trap: read(&self.errors_trap),
            errors_timeout: read(&self.errors_timeout),
            errors_oom: read(&self.errors_oom),
            errors_other: read(&self.errors_other),
            wall_ms: read(&self.wall_ms),
            kv_reads: read(&self.kv_reads),
            kv_writes: read(&self.kv_writes),
        }
    }

    fn restore(&self, counts: &UsageCounts) {
        self.invocations.fetch_add(counts.invocations, Ordering::Relaxed);
        self.errors_trap.fetch_add(counts.errors_trap, Ordering::Relaxed);
        self.errors_timeout.fetch_add(counts.errors_timeout, Ordering::Relaxed);
        self.errors_oom.fetch_add(counts.errors_oom, Ordering::Relaxed);
        self.errors_other.fetch_add(counts.errors_other, Ordering::Relaxed);
        self.wall_ms.fetch_add(counts.wall_ms, Ordering::Relaxed);
        self.kv_reads.fetch_add(counts.kv_reads, Ordering::Relaxed);
        self.kv_writes.fetch_add(counts.kv_writes, Ordering::Relaxed);
    }
}

impl KvMeter for TenantUsage {
    fn kv_read(&self, n: u64) {
        self.kv_reads.fetch_add(n, Ordering::Relaxed);
    }

    fn kv_write(&self, n: u64) {
        self.kv_writes.fetch_add(n, Ordering::Relaxed);
    }

    fn kv_write_allowed(&self, per_second: u64) -> bool {
        let now = crate::quota::unix_now();
        let mut window =
            self.kv_write_window.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if window.0 != now {
            *window = (now, 0);
        }
        if window.1 >= per_second {
            return false;
        }
        window.1 += 1;
        true
    }
}

/// Every tenant's unflushed counts on this node.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    tenants: Mutex<HashMap<TenantId, Arc<TenantUsage>>>,
}

impl UsageRecorder {
    /// The counters of `tenant` (shared by all its routes).
    pub fn for_tenant(&self, tenant: TenantId) -> Arc<TenantUsage> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).entry(tenant).or_default().clone()
    }

    /// What this node counted for `tenant` and has not written yet.
    pub fn pending(&self, tenant: TenantId) -> UsageCounts {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants.get(&tenant).map(|u| u.counts(false)).unwrap_or_default()
    }

    /// Writes every tenant's counts to this minute's and today's rows (the
    /// counts of the last [`FLUSH_INTERVAL`]); what cannot be written is
    /// kept for the next flush.
    pub async fn flush(&self, store: &dyn Store) {
        let minute = (crate::quota::unix_now() / 60) as i64;
        let tenants: Vec<(TenantId, Arc<TenantUsage>)> = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, usage)| (*id, usage.clone()))
            .collect();
        for (tenant, usage) in tenants {
            let counts = usage.counts(true);
            if counts.is_empty() {
                continue;
            }
            if let Err(e) = store.add_usage(tenant, minute, &counts).await {
                tracing::warn!(tenant, error = %e, "usage not written yet; will retry");
                usage.restore(&counts);
            }
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until the process ends.
    pub fn spawn_flusher(self: &Arc<Self>, store: Arc<dyn Store>) {
        let recorder = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                recorder.flush(store.as_ref()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome, wall_ms: u64) -> ExecutionReport {
        ExecutionReport {
            outcome,
            instantiate: Duration::ZERO,
            wall: Duration::from_millis(wall_ms),
            reused: false,
            status: 200,
            output: Default::default(),
        }
    }

    #[test]
    fn outcomes_are_counted_by_kind_and_taken_once() {
        let usage = TenantUsage::default();
        usage.record(&report(Outcome::Ok, 3));
        usage.record(&report(Outcome::Trap, 1));
        usage.record(&report(Outcome::StackOverflow, 1));
        usage.record(&report(Outcome::Timeout, 1000));
        usage.record(&report(Outcome::OutOfMemory, 2));
        usage.record(&report(Outcome::NoResponse, 0));
        let counts = usage.counts(true);
        assert_eq!(counts.invocations, 6);
        assert_eq!(
            (counts.errors_trap, counts.errors_timeout, counts.errors_oom, counts.errors_other),
            (2, 1, 1, 1)
        );
        assert_eq!(counts.wall_ms, 1007);
        assert!(usage.counts(true).is_empty(), "taken once");
    }
}
