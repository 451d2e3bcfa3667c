//! Admission to the instance pool: how many instances run at once on a
//! node, and how the tenants share them.
//!
//! Three rules, checked with a few atomic operations and no lock:
//! - the pool holds at most `size` running instances (past it: `503`);
//! - a tenant holds at most its tier's cap (`max_concurrency`) at once on
//!   this node (past it: `429`);
//! - the last quarter of the pool (the reserve) goes only to tenants
//!   holding less than a fair share, `size / (busy tenants + 1)`: room is
//!   kept for one more tenant to arrive. A tenant alone can take three
//!   quarters of an idle pool, never all of it, and a tenant that arrives
//!   while others hold the pool still gets in (past it: `503`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::{Response, StatusCode};

use crate::response::{ResponseBody, retry_later};

/// One tenant's hold on a node's pool. The node keeps one per tenant, for
/// as long as the tenant has routes here.
#[derive(Debug, Default)]
pub struct TenantSlots {
    held: AtomicU32,
}

impl TenantSlots {
    /// Instances the tenant runs now on this node.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }
}

/// Why a request got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken.
    PoolFull,
    /// The tenant runs its tier's cap of invocations already.
    TenantCap {
        /// The cap.
        cap: u32,
    },
    /// The pool is nearly full and the tenant holds its fair share.
    FairShare {
        /// The share it holds.
        share: u32,
    },
}

impl Refusal {
    /// The metric label of the refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PoolFull => "pool_full",
            Refusal::TenantCap { .. } => "tenant_cap",
            Refusal::FairShare { .. } => "fair_share",
        }
    }
}

/// The pool's admission counters.
#[derive(Debug)]
pub struct SlotPool {
    size: u32,
    /// Slots the fair-share rule guards: a quarter of the pool.
    reserve: u32,
    in_use: AtomicU32,
    /// Tenants holding at least one slot.
    busy_tenants: AtomicU32,
}

/// A place in the pool, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<SlotPool>,
    tenant: Option<Arc<TenantSlots>>,
}

impl SlotPool {
    /// A pool of `size` slots.
    pub fn new(size: u32) -> Arc<Self> {
        Arc::new(Self {
            size,
            reserve: if size >= 2 { (size / 4).max(1) } else { 0 },
            in_use: AtomicU32::new(0),
            busy_tenants: AtomicU32::new(0),
        })
    }

    /// Slots in all.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Slots taken now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Takes a slot for `tenant` (capped at `cap` slots), or for no tenant
    /// (`wasmwiz run`: only the pool's size applies).
    pub fn try_take(
        self: &Arc<Self>,
        tenant: Option<&Arc<TenantSlots>>,
        cap: Option<u32>,
    ) -> Result<Slot, Refusal> {
        let Some(tenant) = tenant else {
            self.take_slot(None)?;
            return Ok(Slot { pool: self.clone(), tenant: None });
        };
        // The tenant's count first, exact against its cap: one atomic add
        // on the fast path, taken back when the cap is passed.
        let held = tenant.held.fetch_add(1, Ordering::AcqRel);
        if held == 0 {
            self.busy_tenants.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(cap) = cap
            && held >= cap
        {
            self.release_tenant(tenant);
            return Err(Refusal::TenantCap { cap });
        }
        match self.take_slot(Some(held)) {
            Ok(()) => Ok(Slot { pool: self.clone(), tenant: Some(tenant.clone()) }),
            Err(refusal) => {
                self.release_tenant(tenant);
                Err(refusal)
            }
        }
    }

    /// Takes one of the pool's slots; `held` is what the tenant held before
    /// this request (`None`: no tenant). One atomic add on the fast path,
    /// taken back when the pool (or the tenant's share of it) is passed.
    fn take_slot(&self, held: Option<u32>) -> Result<(), Refusal> {
        let used = self.in_use.fetch_add(1, Ordering::AcqRel);
        let refusal = if used >= self.size {
            Some(Refusal::PoolFull)
        } else if let Some(held) = held
            && self.size - used <= self.reserve
        {
            // This tenant is among the busy ones now; the share keeps room
            // for one more.
            let busy = self.busy_tenants.load(Ordering::Acquire).max(1);
            let share = (self.size / (busy + 1)).max(1);
            (held >= share).then_some(Refusal::FairShare { share })
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(refusal) => {
                self.in_use.fetch_sub(1, Ordering::AcqRel);
                Err(refusal)
            }
        }
    }

    fn release_tenant(&self, tenant: &TenantSlots) {
        if tenant.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.busy_tenants.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::AcqRel);
        if let Some(tenant) = &self.tenant {
            self.pool.release_tenant(tenant);
        }
    }
}

/// The answer to a request that got no place in the instance pool, at
/// once: `429` for a tenant at its tier's cap, `503` for a full pool or a
/// tenant over its share of a busy one; retry in 1 s.
pub fn refusal_response(refusal: Refusal) -> Response<ResponseBody> {
    match refusal {
        Refusal::PoolFull => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "instance_pool_full",
            "every instance slot on this node is busy; retry shortly",
            1,
        ),
        Refusal::TenantCap { cap } => retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency_limit",
            &format!(
                "this tenant already runs {cap} instances on this node, its tier's \
                 max_concurrency; retry shortly"
            ),
            1,
        ),
        Refusal::FairShare { share } => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "fair_share_exceeded",
            &format!(
                "this node's instance pool is nearly full and this tenant holds its fair \
                 share ({share} instances); retry shortly"
            ),
            1,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(
        pool: &Arc<SlotPool>,
        tenant: &Arc<TenantSlots>,
        cap: Option<u32>,
        n: usize,
    ) -> (Vec<Slot>, Vec<Refusal>) {
        let mut slots = Vec::new();
        let mut refusals = Vec::new();
        for _ in 0..n {
            match pool.try_take(Some(tenant), cap) {
                Ok(slot) => slots.push(slot),
                Err(refusal) => refusals.push(refusal),
            }
        }
        (slots, refusals)
    }

    #[test]
    fn a_tenant_alone_leaves_the_reserve_free_for_the_next_one() {
        let pool = SlotPool::new(8);
        let (noisy, quiet) = (Arc::new(TenantSlots::default()), Arc::new(TenantSlots::default()));
        let (held, refused) = take_all(&pool, &noisy, None, 24);
        assert_eq!(held.len(), 6, "three quarters of the pool");
        assert!(refused.iter().all(|r| matches!(r, Refusal::FairShare { share: 4 })));
        // The quiet tenant's requests, one after the other, all get in.
        for _ in 0..10 {
            let slot = pool.try_take(Some(&quiet), None).expect("room for the quiet tenant");
            drop(slot);
        }
        assert_eq!(quiet.held(), 0);
        assert_eq!(noisy.held(), 6);
        drop(held);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(noisy.held(), 0);
        assert_eq!(pool.busy_tenants.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_tier_cap_is_exact_and_frees_as_slots_return() {
        let pool = SlotPool::new(100);
        let tenant = Arc::new(TenantSlots::default());
        let (mut held, refused) = take_all(&pool, &tenant, Some(3), 5);
        assert_eq!(held.len(), 3);
        assert_eq!(refused, [Refusal::TenantCap { cap: 3 }, Refusal::TenantCap { cap: 3 }]);
        held.pop();
        assert!(pool.try_take(Some(&tenant), Some(3)).is_ok());
    }

    #[test]
    fn many_busy_tenants_share_the_reserve() {
        let pool = SlotPool::new(8);
        let tenants: Vec<_> = (0..3).map(|_| Arc::new(TenantSlots::default())).collect();
        let (mut a, _) = take_all(&pool, &tenants[0], None, 6);
        // Two free, both in the reserve: the second tenant's share with
        // three busy counted is 8 / 3 = 2.
        let (b, b_refused) = take_all(&pool, &tenants[1], None, 3);
        assert_eq!(b.len(), 2);
        assert_eq!(b_refused, [Refusal::PoolFull]);
        assert_eq!(pool.try_take(Some(&tenants[2]), None).unwrap_err(), Refusal::PoolFull);
        // One of the first tenant's instances ends: the third tenant,
        // holding nothing, gets it; the first does not get it back.
        a.pop();
        assert!(pool.try_take(Some(&tenants[0]), None).is_err());
        assert!(pool.try_take(Some(&tenants[2]), None).is_ok());
    }

    #[test]
    fn without_a_tenant_only_the_size_counts() {
        let pool = SlotPool::new(2);
        let a = pool.try_take(None, None).unwrap();
        let _b = pool.try_take(None, None).unwrap();
        assert_eq!(pool.try_take(None, None).unwrap_err(), Refusal::PoolFull);
        drop(a);
        assert!(pool.try_take(None, None).is_ok());
    }

    #[test]
    fn a_pool_of_one_has_no_reserve() {
        let pool = SlotPool::new(1);
        let tenant = Arc::new(TenantSlots::default());
        let slot = pool.try_take(Some(&tenant), None).unwrap();
        assert_eq!(pool.try_take(Some(&tenant), None).unwrap_err(), Refusal::PoolFull);
        drop(slot);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_pool_or_a_cap() {
        let pool = SlotPool::new(16);
        let tenant = Arc::new(TenantSlots::default());
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (pool, tenant, peak) = (pool.clone(), tenant.clone(), peak.clone());
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(slot) = pool.try_take(Some(&tenant), Some(5)) {
                            peak.fetch_max(tenant.held(), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(tenant.held(), 0);
    }
}
