//! `GET /api/v1/usage`: the caller's quota windows and usage totals.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::{ApiError, ApiState, require};
use crate::auth::{Principal, Scope};
use crate::quota::{DAY, Rates, Window, unix_now};
use crate::store::UsageCounts;

/// A quota window as the API shows it.
#[derive(Debug, Serialize)]
pub struct WindowJson {
    limit: Option<u64>,
    used: u64,
    reset_in_s: u64,
}

impl From<Window> for WindowJson {
    fn from(w: Window) -> Self {
        Self { limit: w.limit, used: w.used, reset_in_s: w.reset_in_s }
    }
}

/// Usage counts as the API shows them.
#[derive(Debug, Serialize)]
pub struct CountsJson {
    invocations: u64,
    errors: ErrorsJson,
    wall_ms: u64,
    kv_reads: u64,
    kv_writes: u64,
}

/// Errors by kind.
#[derive(Debug, Serialize)]
pub struct ErrorsJson {
    trap: u64,
    timeout: u64,
    oom: u64,
    other: u64,
}

impl From<UsageCounts> for CountsJson {
    fn from(c: UsageCounts) -> Self {
        Self {
            invocations: c.invocations,
            errors: ErrorsJson {
                trap: c.errors_trap,
                timeout: c.errors_timeout,
                oom: c.errors_oom,
                other: c.errors_other,
            },
            wall_ms: c.wall_ms,
            kv_reads: c.kv_reads,
            kv_writes: c.kv_writes,
        }
    }
}

/// The answer of `GET /api/v1/usage`.
#[derive(Debug, Serialize)]
pub struct UsageJson {
    tenant: String,
    tier: String,
    minute: WindowJson,
    day: WindowJson,
    /// Since the tenant was created (every node's flushed counts plus this
    /// node's unflushed ones).
    totals: CountsJson,
    /// Today (UTC), counted the same way.
    today: CountsJson,
    /// Whether the quota counts come from a per-node fallback.
    degraded: bool,
    /// Key-value data held now (`null` if the backend did not answer).
    kv: Option<KvJson>,
}

/// What a tenant holds in key-value data, against its tier's limits.
#[derive(Debug, Serialize)]
pub struct KvJson {
    keys: u64,
    bytes: u64,
    max_keys: u64,
    max_bytes: u64,
}

/// `GET /api/v1/usage`.
pub async fn usage(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<UsageJson>, ApiError> {
    require(&principal, Scope::Read)?;
    let node = &state.node;
    let tier = state.control.tier(&principal.tier).await?;
    let rates = Rates::of(&tier);
    let day = (unix_now() / DAY) as i64;
    let (total, today) = node.store().usage(principal.tenant_id, day).await?;
    let pending = node.usage().pending(principal.tenant_id);
    let (minute, day_window, degraded) = match node.plane().quota() {
        Some(quota) => {
            let peek = quota.peek(principal.tenant_id, rates).await;
            (peek.minute, peek.day, peek.degraded)
        }
        None => {
            let (_, _, minute_reset, day_reset) = crate::quota::windows_at(unix_now());
            let none = |reset| Window { limit: None, used: 0, reset_in_s: reset };
            (none(minute_reset), none(day_reset), false)
        }
    };
    let kv = node.kv().totals(principal.tenant_id).await.ok().map(|t| KvJson {
        keys: t.keys,
        bytes: t.bytes,
        max_keys: tier.limits.kv_max_keys,
        max_bytes: tier.limits.kv_max_total_bytes,
    });
    Ok(Json(UsageJson {
        tenant: principal.tenant,
        tier: tier.name.clone(),
        minute: minute.into(),
        day: day_window.into(),
        totals: total.plus(&pending).into(),
        today: today.plus(&pending).into(),
        degraded,
        kv,
    }))
}
