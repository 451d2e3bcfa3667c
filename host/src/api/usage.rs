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

/// The query of `GET /api/v1/usage/history`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct HistoryQuery {
    period: Option<String>,
    count: Option<String>,
}

/// One period of the history.
#[derive(Debug, Serialize)]
pub struct PointJson {
    /// Its start (RFC 3339, UTC).
    start: String,
    #[serde(flatten)]
    counts: CountsJson,
}

/// The answer of `GET /api/v1/usage/history`.
#[derive(Debug, Serialize)]
pub struct HistoryJson {
    tenant: String,
    /// `minute` or `day`.
    period: &'static str,
    /// The tier's quota for one such period (`null`: unlimited).
    quota: Option<u64>,
    /// Oldest first, one per period, the current one last (with what this
    /// node has counted and not yet written).
    points: Vec<PointJson>,
}

/// Most periods one answer holds.
const MAX_POINTS: i64 = 1440;

/// `GET /api/v1/usage/history?period=minute|day&count=N`: the caller's
/// invocations, errors by kind and guest time per UTC minute (the last 60
/// by default, kept two days) or per UTC day (the last 30 by default),
/// across every node.
pub async fn history(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    super::ApiQuery(query): super::ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryJson>, ApiError> {
    require(&principal, Scope::Read)?;
    let (per_minute, width, default_count) = match query.period.as_deref() {
        None | Some("minute") => (true, 60, 60),
        Some("day") => (false, DAY, 30),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "period: `{other}` is not `minute` or `day`"
            )));
        }
    };
    let count = match &query.count {
        None => default_count,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_POINTS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "count: `{text}` is not a number from 1 to {MAX_POINTS}"
                )));
            }
        },
    };
    let now = (unix_now() / width) as i64;
    let from = now - count + 1;
    let rows = state.node.store().usage_history(principal.tenant_id, per_minute, from, now).await?;
    let tier = state.control.tier(&principal.tier).await?;
    let rates = Rates::of(&tier);
    let pending = state.node.usage().pending(principal.tenant_id);
    let mut rows = rows.into_iter().peekable();
    let points = (from..=now)
        .map(|at| {
            let mut counts = match rows.peek() {
                Some((row_at, _)) if *row_at == at => {
                    rows.next().map(|(_, c)| c).unwrap_or_default()
                }
                _ => UsageCounts::default(),
            };
            if at == now {
                counts = counts.plus(&pending);
            }
            let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs((at as u64) * width);
            PointJson {
                start: humantime::format_rfc3339_seconds(start).to_string(),
                counts: counts.into(),
            }
        })
        .collect();
    Ok(Json(HistoryJson {
        tenant: principal.tenant,
        period: if per_minute { "minute" } else { "day" },
        quota: if per_minute { rates.per_minute } else { rates.per_day },
        points,
    }))
}
