//! In-process quotas: exact on one node (the embedded default), and the
//! per-node fallback of the Redis backend.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Admission, Health, QuotaBackend, Rates, Window, unix_now, windows_at};
use crate::tenancy::TenantId;

/// Shards of the counter map: requests of different tenants rarely wait on
/// one another's lock.
const SHARDS: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    minute: u64,
    minute_used: u64,
    day: u64,
    day_used: u64,
}

impl Counters {
    /// Moves to the windows of `now`, starting a new count in a new window.
    fn roll(&mut self, minute: u64, day: u64) {
        if self.minute != minute {
            self.minute = minute;
            self.minute_used = 0;
        }
        if self.day != day {
            self.day = day;
            self.day_used = 0;
        }
    }
}

/// Counts in this process's memory, on this machine's clock.
#[derive(Debug)]
pub struct LocalQuota {
    shards: Vec<Mutex<HashMap<TenantId, Counters>>>,
}

impl Default for LocalQuota {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

impl LocalQuota {
    /// An empty counter set.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_counters<R>(&self, tenant: TenantId, f: impl FnOnce(&mut Counters) -> R) -> R {
        let shard = &self.shards[tenant.unsigned_abs() as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(tenant).or_default())
    }

    /// The admission decision at `now` (seconds since the epoch): both
    /// windows checked, both counted only if both have room.
    pub fn admit_at(&self, tenant: TenantId, rates: Rates, now: u64, count: bool) -> Admission {
        let (minute, day, minute_reset, day_reset) = windows_at(now);
        self.with_counters(tenant, |c| {
            c.roll(minute, day);
            let fits = |limit: Option<u64>, used: u64| limit.is_none_or(|l| used < l);
            let allowed = fits(rates.per_minute, c.minute_used) && fits(rates.per_day, c.day_used);
            if allowed && count {
                c.minute_used += 1;
                c.day_used += 1;
            }
            Admission {
                allowed,
                minute: Window {
                    limit: rates.per_minute,
                    used: c.minute_used,
                    reset_in_s: minute_reset,
                },
                day: Window { limit: rates.per_day, used: c.day_used, reset_in_s: day_reset },
                degraded: false,
            }
        })
    }
}

#[async_trait::async_trait]
impl QuotaBackend for LocalQuota {
    fn admit_now(&self, tenant: TenantId, rates: Rates) -> Option<Admission> {
        Some(self.admit_at(tenant, rates, unix_now(), true))
    }

    async fn admit(&self, tenant: TenantId, rates: Rates) -> Admission {
        self.admit_at(tenant, rates, unix_now(), true)
    }

    async fn peek(&self, tenant: TenantId, rates: Rates) -> Admission {
        self.admit_at(tenant, rates, unix_now(), false)
    }

    fn health(&self) -> Health {
        Health::Ok
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_737_600; // 2026-11-27T00:00:00Z

    fn rates(minute: Option<u64>, day: Option<u64>) -> Rates {
        Rates { per_minute: minute, per_day: day }
    }

    #[test]
    fn the_minute_window_admits_exactly_its_limit_and_resets() {
        let q = LocalQuota::new();
        let r = rates(Some(3), Some(100));
        let admitted = (0..10).filter(|_| q.admit_at(1, r, T0 + 5, true).allowed).count();
        assert_eq!(admitted, 3);
        let refused = q.admit_at(1, r, T0 + 59, true);
        assert!(!refused.allowed);
        assert_eq!(refused.minute.used, 3, "a refusal is not counted");
        assert_eq!(refused.retry_after(), 1);
        assert!(q.admit_at(1, r, T0 + 60, true).allowed, "a new minute starts from zero");
    }

    #[test]
    fn the_day_window_is_checked_too_and_refusals_count_nowhere() {
        let q = LocalQuota::new();
        let r = rates(Some(100), Some(5));
        let admitted = (0..5).filter(|i| q.admit_at(1, r, T0 + 60 * i, true).allowed).count();
        assert_eq!(admitted, 5);
        let refused = q.admit_at(1, r, T0 + 600, true);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after(), 86_400 - 600);
        assert_eq!(refused.minute.used, 0, "the refused request did not count in its minute");
        assert!(q.admit_at(1, r, T0 + 86_400, true).allowed, "a new day");
    }

    #[test]
    fn tenants_are_counted_apart_and_unlimited_is_unlimited() {
        let q = LocalQuota::new();
        assert!(q.admit_at(1, rates(Some(1), None), T0, true).allowed);
        assert!(!q.admit_at(1, rates(Some(1), None), T0, true).allowed);
        assert!(q.admit_at(2, rates(Some(1), None), T0, true).allowed);
        assert!((0..1000).all(|_| q.admit_at(3, rates(None, None), T0, true).allowed));
        assert_eq!(q.admit_at(3, rates(None, None), T0, false).day.used, 1000, "still counted");
    }
}
