//! Quotas in Redis: exact across every node sharing one Redis.
//!
//! One Lua script reads Redis's clock (`TIME`), checks the minute and day
//! counters against their limits, and increments both only if both have
//! room: one round trip, atomic, so concurrent requests on any number of
//! nodes never admit more than the limit. Counters expire a window after
//! their own, so Redis never needs an eviction policy that could drop them.
//!
//! Far from a limit, a node takes a *lease*: the script reserves a small
//! batch of units in both windows at once (counted in Redis like admitted
//! requests) and the node spends them locally until they run out or the
//! window ends, so a busy tenant costs one Redis round trip per batch
//! instead of per request. Once half of a lease is spent, the next one is
//! taken ahead, in a task of its own, so a busy tenant's requests do not
//! wait for Redis when a lease runs out (a request that waits holds its
//! place in the instance pool, and a kept instance, meanwhile). Leases are
//! only granted while a window has many times the batch left; near a limit
//! every request is counted one by one. Reserved units are counted as used,
//! so the nodes together never admit more than the limit; at worst a few
//! reserved units go unspent and a window admits slightly fewer (per node,
//! what is left of the lease being spent, the one taken ahead, and one
//! taken in the last moments of the window).
//!
//! Every call has a short timeout. When Redis is down or stalled the node
//! counts locally (a per-node limit), reports itself degraded, and a
//! background probe returns it to exact counting when Redis answers again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::local::LocalQuota;
use super::{Admission, Health, QuotaBackend, Rates, Window, unix_now};
use crate::tenancy::TenantId;

/// How often a degraded node checks whether Redis is back.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Checks and counts both windows; returns
/// `{granted, minute_used, day_used, minute_reset, day_reset,
/// minute_reset_ms}`, where `granted` is the number of units counted (0:
/// refused) and the resets are in seconds (rounded up), the minute's also
/// in milliseconds.
/// ARGV: minute limit, day limit (-1: unlimited), units wanted (0: peek),
/// headroom (a batch of more than one unit is granted only if each window
/// keeps `headroom` times the batch after it), batch only (1: a lease taken
/// ahead, for no request in particular: a batch or nothing, never a single
/// unit that no request would spend).
const ADMIT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1])
local now_ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)
local minute_key = KEYS[1] .. ':m:' .. math.floor(now / 60)
local day_key = KEYS[1] .. ':d:' .. math.floor(now / 86400)
local minute_limit = tonumber(ARGV[1])
local day_limit = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local headroom = tonumber(ARGV[4])
local batch_only = tonumber(ARGV[5])
local minute_used = tonumber(redis.call('GET', minute_key) or '0')
local day_used = tonumber(redis.call('GET', day_key) or '0')
local minute_reset = 60 - now % 60
local minute_reset_ms = 60000 - now_ms % 60000
local day_reset = 86400 - now % 86400
local function room(limit, used, units)
    return limit < 0 or used + units <= limit
end
if not room(minute_limit, minute_used, 1) or not room(day_limit, day_used, 1) then
    return {0, minute_used, day_used, minute_reset, day_reset, minute_reset_ms}
end
if wanted == 0 then
    return {1, minute_used, day_used, minute_reset, day_reset, minute_reset_ms}
end
local units = 1
-- No batch in the last moments of a minute: the node could hardly spend
-- it before the window ends (it stops using a lease a little early).
if wanted > 1 and minute_reset_ms > 200 and room(minute_limit, minute_used, wanted * headroom)
        and room(day_limit, day_used, wanted * headroom) then
    units = wanted
end
if batch_only == 1 and units < 2 then
    return {0, minute_used, day_used, minute_reset, day_reset, minute_reset_ms}
end
minute_used = redis.call('INCRBY', minute_key, units)
if minute_used == units then redis.call('EXPIRE', minute_key, 120) end
day_used = redis.call('INCRBY', day_key, units)
if day_used == units then redis.call('EXPIRE', day_key, 172800) end
return {units, minute_used, day_used, minute_reset, day_reset, minute_reset_ms}
";

/// A connection to `url` that connects on first use (a node starts even
/// while Redis is down) and reconnects by itself, every call bounded by
/// `timeout`. Shared by the quota and the key-value backends.
pub fn connect_lazily(url: &str, timeout: Duration) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).context("creating the Redis connection")
}

/// Largest batch a lease reserves: at 30,000 requests/s, half of one (the
/// units left when the next is taken ahead) lasts about 4 ms, many times a
/// Redis round trip on a loaded node.
pub const MAX_LEASE: u64 = 256;
/// A lease is granted only while each window keeps this many batches left.
pub const LEASE_HEADROOM: u64 = 8;
/// A lease ends this long before the window it was counted in, as the
/// node reckons the window's end (from when it called Redis, which is
/// before Redis read its clock), so a unit counted in one window is never
/// spent in the next.
const LEASE_MARGIN: Duration = Duration::from_millis(50);
/// The next lease is taken ahead only while the one being spent has this
/// long left: none is taken for the last moments of a window, where it
/// would go unspent.
const TAKE_AHEAD_MIN_LEFT: Duration = Duration::from_millis(500);

/// The batch size worth leasing for `rates`: 1 (no lease) for small limits,
/// up to [`MAX_LEASE`] for large or unlimited ones.
pub fn lease_size(rates: Rates) -> u64 {
    let per_window =
        |rate: Option<u64>| rate.map_or(MAX_LEASE, |r| (r / (LEASE_HEADROOM * 16)).min(MAX_LEASE));
    per_window(rates.per_minute).min(per_window(rates.per_day)).max(1)
}

/// Units a node reserved in Redis and spends locally.
#[derive(Clone, Copy, Debug)]
struct Lease {
    rates: Rates,
    /// Units reserved.
    size: u64,
    left: u64,
    /// When the minute window the units were counted in ends (minus a
    /// margin), on this node's monotonic clock.
    valid_until: Instant,
    /// The windows as Redis reported them when the lease was taken.
    minute: Window,
    day: Window,
}

impl Lease {
    fn usable(&self, rates: Rates, now: Instant) -> bool {
        self.left > 0 && self.rates == rates && now < self.valid_until
    }
}

/// A tenant's leases on a node: the one being spent, and the next, taken
/// ahead once half of the first is spent.
#[derive(Clone, Copy, Debug)]
struct Held {
    now: Lease,
    next: Option<Lease>,
}

/// Counts in Redis, falling back to [`LocalQuota`] while Redis is away.
pub struct RedisQuota {
    /// Itself, for the task that takes a lease ahead.
    this: std::sync::Weak<RedisQuota>,
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// False while Redis is unreachable: requests go straight to the
    /// fallback instead of each waiting for a timeout.
    healthy: AtomicBool,
    fallback: LocalQuota,
    leases: Mutex<HashMap<TenantId, Held>>,
    /// Tenants whose next lease is being taken, and how to wake the
    /// requests waiting for it. One lease at a time per tenant and node:
    /// concurrent requests never reserve a batch each (units counted but
    /// never served); they wait for the one being taken instead.
    acquiring: Arc<Mutex<HashMap<TenantId, Arc<Taking>>>>,
    /// Calls made (for `wasmwiz_quota_redis_calls_total`).
    calls: AtomicU64,
    /// Calls that failed or timed out (for `wasmwiz_redis_errors_total`).
    errors: AtomicU64,
}

/// A lease being taken, as the requests waiting for it see it.
#[derive(Debug)]
struct Taking {
    /// Notified when the taker is done.
    done: Notify,
    /// Where the taking is: [`TAKING`] until the taker is done (set before
    /// `done` is notified, for a waiter that registers only after the
    /// notification), then one of the `TAKEN_*` values.
    state: AtomicU8,
}

/// The taker is still at it.
const TAKING: u8 = 3;
/// The taker gave up (its request was dropped mid-call): someone else may
/// take the next lease.
const TAKEN_NOTHING: u8 = 0;
/// A lease is there (taken now, or found already there).
const TAKEN_LEASE: u8 = 1;
/// Redis granted no batch (near a limit) or did not answer: requests are
/// counted one by one, side by side.
const TAKEN_NO_BATCH: u8 = 2;

impl std::fmt::Debug for RedisQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuota").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisQuota {
    /// Connects lazily to `url` (a node starts even while Redis is down)
    /// and starts the health probe. Keys are `PREFIX:{tenant}:m:N` and
    /// `PREFIX:{tenant}:d:N`.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let connection = connect_lazily(url, timeout)?;
        let quota = Arc::new_cyclic(|this| Self {
            this: this.clone(),
            connection,
            script: redis::Script::new(ADMIT),
            prefix: prefix.to_string(),
            timeout,
            healthy: AtomicBool::new(true),
            fallback: LocalQuota::new(),
            leases: Mutex::new(HashMap::new()),
            acquiring: Arc::new(Mutex::new(HashMap::new())),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        quota.spawn_probe();
        Ok(quota)
    }

    fn spawn_probe(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(quota) = weak.upgrade() else { return };
                if quota.healthy.load(Ordering::Relaxed) {
                    continue;
                }
                let mut connection = quota.connection.clone();
                let ping = redis::cmd("PING");
                let ping = ping.query_async::<String>(&mut connection);
                if let Ok(Ok(_)) = tokio::time::timeout(quota.timeout, ping).await {
                    quota.healthy.store(true, Ordering::Relaxed);
                    tracing::info!("Redis answers again: exact quota counting resumed");
                }
            }
        });
    }

    /// Spends a unit of a lease held for `tenant`, if there is one; once
    /// half of it is spent, takes the next one ahead.
    fn spend_lease(&self, tenant: TenantId, rates: Rates) -> Option<Admission> {
        let (admission, ahead) = self.spend_held(tenant, rates)?;
        if ahead {
            self.take_ahead(tenant, rates);
        }
        Some(admission)
    }

    /// Spends a unit of the lease being spent (or of the next, when that
    /// one is used up or expired); with it, whether the next lease is due
    /// to be taken (this unit brought the lease to half).
    fn spend_held(&self, tenant: TenantId, rates: Rates) -> Option<(Admission, bool)> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let held = leases.get_mut(&tenant)?;
        let now = Instant::now();
        if !held.now.usable(rates, now) {
            match held.next.take() {
                Some(next) if next.usable(rates, now) => held.now = next,
                _ => {
                    leases.remove(&tenant);
                    return None;
                }
            }
        }
        let lease = &mut held.now;
        lease.left -= 1;
        // The windows as of the lease (their counts include the lease).
        let left = lease.valid_until.saturating_duration_since(now) + LEASE_MARGIN;
        let minute = Window { reset_in_s: left.as_secs().clamp(1, 60), ..lease.minute };
        // Once, as the lease reaches half (not on every request after it,
        // which would each look for the taking under a lock): a taking
        // that fails leaves the requests to take the next lease themselves
        // when this one runs out, as they would without taking ahead.
        let ahead = held.next.is_none()
            && lease.left == lease.size / 2
            && lease.valid_until.saturating_duration_since(now) > TAKE_AHEAD_MIN_LEFT;
        Some((Admission { allowed: true, minute, day: lease.day, degraded: false }, ahead))
    }

    /// Takes `tenant`'s next lease in a task of its own, unless one is
    /// being taken already (requests that run out meanwhile wait for it).
    fn take_ahead(&self, tenant: TenantId, rates: Rates) {
        let (Some(quota), Ok(runtime)) =
            (self.this.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let Turn::Take(mut mark) = Acquiring::start(&self.acquiring, tenant) else { return };
        runtime.spawn(async move {
            let outcome = quota.run(tenant, rates, lease_size(rates), Want::Ahead).await;
            let leased = outcome.is_some_and(|(_, leased)| leased);
            mark.ended(if leased { TAKEN_LEASE } else { TAKEN_NO_BATCH });
        });
    }

    /// Keeps a lease just taken: the next one, ahead of the one being
    /// spent, or the one to spend now when none is usable.
    fn keep_lease(&self, tenant: TenantId, lease: Lease) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        match leases.get_mut(&tenant) {
            Some(held) if held.now.usable(lease.rates, Instant::now()) => held.next = Some(lease),
            Some(held) => held.now = lease,
            None => {
                leases.insert(tenant, Held { now: lease, next: None });
            }
        }
    }

    /// `outcome`, or, when Redis did not answer, the node's own count.
    fn or_fallback(&self, tenant: TenantId, rates: Rates, outcome: Option<Admission>) -> Admission {
        outcome.unwrap_or_else(|| Admission {
            degraded: true,
            ..self.fallback.admit_at(tenant, rates, unix_now(), true)
        })
    }

    /// One call of the script; with the admission, whether it granted a
    /// batch (kept as the tenant's lease).
    async fn run(
        &self,
        tenant: TenantId,
        rates: Rates,
        wanted: u64,
        want: Want,
    ) -> Option<(Admission, bool)> {
        if !self.healthy.load(Ordering::Relaxed) {
            return None;
        }
        let limit = |rate: Option<u64>| rate.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut connection = self.connection.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}:{{{tenant}}}", self.prefix))
            .arg(limit(rates.per_minute))
            .arg(limit(rates.per_day))
            .arg(wanted)
            .arg(LEASE_HEADROOM)
            .arg(u8::from(want == Want::Ahead));
        let called = Instant::now();
        let call = invocation.invoke_async::<(u64, u64, u64, u64, u64, u64)>(&mut connection);
        self.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((granted, minute_used, day_used, minute_reset, day_reset, minute_reset_ms))) => {
                let minute =
                    Window { limit: rates.per_minute, used: minute_used, reset_in_s: minute_reset };
                let day = Window { limit: rates.per_day, used: day_used, reset_in_s: day_reset };
                if granted > 1 {
                    // A batch taken for a request has one unit for it, the
                    // rest for the next ones; one taken ahead has all its
                    // units for the next ones. Redis read its clock after `called`:
                    // the window ends no earlier than `called` plus the
                    // time Redis said was left.
                    let valid_until = (called + Duration::from_millis(minute_reset_ms))
                        .checked_sub(LEASE_MARGIN)
                        .unwrap_or(called);
                    let left = if want == Want::Ahead { granted } else { granted - 1 };
                    let lease = Lease { rates, size: granted, left, valid_until, minute, day };
                    self.keep_lease(tenant, lease);
                }
                let allowed = granted > 0 && want == Want::Request;
                Some((Admission { allowed, minute, day, degraded: false }, granted > 1))
            }
            outcome => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    tracing::warn!(error = %why, "Redis is unreachable: counting quotas per node");
                }
                self.leases.lock().unwrap_or_else(|p| p.into_inner()).clear();
                None
            }
        }
    }
}

/// What a call of the script is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// A request: a unit for it, and a lease for the next ones if the
    /// windows have room for a batch.
    Request,
    /// The next lease, taken ahead: a batch or nothing.
    Ahead,
}

/// Marks a tenant's lease as being taken until dropped (also when the
/// request's future is dropped half-way), then wakes the waiters.
struct Acquiring {
    map: Arc<Mutex<HashMap<TenantId, Arc<Taking>>>>,
    tenant: TenantId,
    taking: Arc<Taking>,
    /// What the waiters are told when the mark is dropped.
    outcome: u8,
}

/// Either this request takes the tenant's next lease, or another one is
/// taking it and this one may wait for it.
enum Turn {
    Take(Acquiring),
    Wait(Arc<Taking>),
}

impl Acquiring {
    fn start(map: &Arc<Mutex<HashMap<TenantId, Arc<Taking>>>>, tenant: TenantId) -> Turn {
        let mut map_guard = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(taking) = map_guard.get(&tenant) {
            return Turn::Wait(taking.clone());
        }
        let taking = Arc::new(Taking { done: Notify::new(), state: AtomicU8::new(TAKING) });
        map_guard.insert(tenant, taking.clone());
        Turn::Take(Self { map: map.clone(), tenant, taking, outcome: TAKEN_NOTHING })
    }

    /// Records how the taking ended; the waiters are told when the mark
    /// is dropped.
    fn ended(&mut self, outcome: u8) {
        self.outcome = outcome;
    }
}

impl Drop for Acquiring {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.tenant);
        self.taking.state.store(self.outcome, Ordering::Release);
        self.taking.done.notify_waiters();
    }
}

#[async_trait::async_trait]
impl QuotaBackend for RedisQuota {
    fn admit_now(&self, tenant: TenantId, rates: Rates) -> Option<Admission> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Some(Admission {
                degraded: true,
                ..self.fallback.admit_at(tenant, rates, unix_now(), true)
            });
        }
        self.spend_lease(tenant, rates)
    }

    async fn admit(&self, tenant: TenantId, rates: Rates) -> Admission {
        if let Some(admission) = self.spend_lease(tenant, rates) {
            return admission;
        }
        let size = lease_size(rates);
        if size > 1 {
            // Under load a lease runs out while many requests are in
            // flight: one takes the next lease, the others wait for it, and
            // those it leaves without a unit take or wait for the one after
            // (a round trip of their own each would cost Redis a call per
            // request exactly when the tenant is busiest).
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                match Acquiring::start(&self.acquiring, tenant) {
                    Turn::Take(mut mark) => {
                        // The lease the previous holder of the mark took
                        // may have landed since this request looked.
                        if let Some(admission) = self.spend_lease(tenant, rates) {
                            mark.ended(TAKEN_LEASE);
                            return admission;
                        }
                        let outcome = self.run(tenant, rates, size, Want::Request).await;
                        let leased = outcome.as_ref().is_some_and(|(_, leased)| *leased);
                        mark.ended(if leased { TAKEN_LEASE } else { TAKEN_NO_BATCH });
                        drop(mark);
                        return self.or_fallback(tenant, rates, outcome.map(|(a, _)| a));
                    }
                    Turn::Wait(taking) => {
                        // Registered before looking again, so a lease that
                        // lands in between still wakes this request.
                        let notified = taking.done.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if let Some(admission) = self.spend_lease(tenant, rates) {
                            return admission;
                        }
                        // A taker that finished before `enable` notified no
                        // one this request was registered with.
                        let woken = taking.state.load(Ordering::Acquire) != TAKING
                            || tokio::time::timeout_at(deadline, notified).await.is_ok();
                        if let Some(admission) = self.spend_lease(tenant, rates) {
                            return admission;
                        }
                        // Near a limit there are no batches: every request
                        // is counted on its own, side by side.
                        if !woken || taking.state.load(Ordering::Acquire) == TAKEN_NO_BATCH {
                            break;
                        }
                    }
                }
            }
        }
        // Counted on its own: exact, one round trip.
        let outcome = self.run(tenant, rates, 1, Want::Request).await;
        self.or_fallback(tenant, rates, outcome.map(|(a, _)| a))
    }

    async fn peek(&self, tenant: TenantId, rates: Rates) -> Admission {
        match self.run(tenant, rates, 0, Want::Request).await {
            Some((admission, _)) => admission,
            None => Admission {
                degraded: true,
                ..self.fallback.admit_at(tenant, rates, unix_now(), false)
            },
        }
    }

    fn health(&self) -> Health {
        if self.healthy.load(Ordering::Relaxed) { Health::Ok } else { Health::Degraded }
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_for_large_limits_only() {
        let rates = |m: Option<u64>, d: Option<u64>| Rates { per_minute: m, per_day: d };
        assert_eq!(lease_size(rates(Some(10), Some(500))), 1, "free tier: exact");
        assert_eq!(lease_size(rates(Some(500), Some(50_000))), 3);
        assert_eq!(lease_size(rates(Some(100_000), Some(10_000_000))), MAX_LEASE);
        assert_eq!(lease_size(rates(None, None)), MAX_LEASE);
        assert_eq!(lease_size(rates(None, Some(100))), 1, "a small day limit is exact too");
    }
}
