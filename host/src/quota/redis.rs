//! Quotas in Redis: exact across every node sharing one Redis.
//!
//! One Lua script reads Redis's clock (`TIME`), checks the minute and day
//! counters against their limits, and increments both only if both have
//! room: one round trip, atomic, so concurrent requests on any number of
//! nodes never admit more than the limit. Counters expire a window after
//! their own, so Redis never needs an eviction policy that could drop them.
//!
//! Every call has a short timeout. When Redis is down or stalled the node
//! counts locally (a per-node limit), reports itself degraded, and a
//! background probe returns it to exact counting when Redis answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::local::LocalQuota;
use super::{Admission, Health, QuotaBackend, Rates, Window, unix_now};
use crate::store::TenantId;

/// How often a degraded node checks whether Redis is back.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Checks and counts both windows; returns
/// `{allowed, minute_used, day_used, minute_reset, day_reset}`.
/// ARGV: minute limit, day limit (-1: unlimited), count (1) or peek (0).
const ADMIT: &str = r"
local now = tonumber(redis.call('TIME')[1])
local minute_key = KEYS[1] .. ':m:' .. math.floor(now / 60)
local day_key = KEYS[1] .. ':d:' .. math.floor(now / 86400)
local minute_limit = tonumber(ARGV[1])
local day_limit = tonumber(ARGV[2])
local minute_used = tonumber(redis.call('GET', minute_key) or '0')
local day_used = tonumber(redis.call('GET', day_key) or '0')
local minute_reset = 60 - now % 60
local day_reset = 86400 - now % 86400
if (minute_limit >= 0 and minute_used >= minute_limit) or (day_limit >= 0 and day_used >= day_limit) then
    return {0, minute_used, day_used, minute_reset, day_reset}
end
if ARGV[3] == '1' then
    minute_used = redis.call('INCR', minute_key)
    if minute_used == 1 then redis.call('EXPIRE', minute_key, 120) end
    day_used = redis.call('INCR', day_key)
    if day_used == 1 then redis.call('EXPIRE', day_key, 172800) end
end
return {1, minute_used, day_used, minute_reset, day_reset}
";

/// Counts in Redis, falling back to [`LocalQuota`] while Redis is away.
pub struct RedisQuota {
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    /// False while Redis is unreachable: requests go straight to the
    /// fallback instead of each waiting for a timeout.
    healthy: AtomicBool,
    fallback: LocalQuota,
}

impl std::fmt::Debug for RedisQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuota")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisQuota {
    /// Connects lazily to `url` (a node starts even while Redis is down)
    /// and starts the health probe. Keys are `PREFIX:{tenant}:m:N` and
    /// `PREFIX:{tenant}:d:N`.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .context("creating the Redis connection")?;
        let quota = Arc::new(Self {
            connection,
            script: redis::Script::new(ADMIT),
            prefix: prefix.to_string(),
            timeout,
            healthy: AtomicBool::new(true),
            fallback: LocalQuota::new(),
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

    async fn run(&self, tenant: TenantId, rates: Rates, count: bool) -> Option<Admission> {
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
            .arg(if count { "1" } else { "0" });
        let call = invocation.invoke_async::<(i64, u64, u64, u64, u64)>(&mut connection);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((allowed, minute_used, day_used, minute_reset, day_reset))) => Some(Admission {
                allowed: allowed == 1,
                minute: Window {
                    limit: rates.per_minute,
                    used: minute_used,
                    reset_in_s: minute_reset,
                },
                day: Window {
                    limit: rates.per_day,
                    used: day_used,
                    reset_in_s: day_reset,
                },
                degraded: false,
            }),
            outcome => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    tracing::warn!(error = %why, "Redis is unreachable: counting quotas per node");
                }
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl QuotaBackend for RedisQuota {
    async fn admit(&self, tenant: TenantId, rates: Rates) -> Admission {
        match self.run(tenant, rates, true).await {
            Some(admission) => admission,
            None => Admission {
                degraded: true,
                ..self.fallback.admit_at(tenant, rates, unix_now(), true)
            },
        }
    }

    async fn peek(&self, tenant: TenantId, rates: Rates) -> Admission {
        match self.run(tenant, rates, false).await {
            Some(admission) => admission,
            None => Admission {
                degraded: true,
                ..self.fallback.admit_at(tenant, rates, unix_now(), false)
            },
        }
    }

    fn health(&self) -> Health {
        if self.healthy.load(Ordering::Relaxed) {
            Health::Ok
        } else {
            Health::Degraded
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
