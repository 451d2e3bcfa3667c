//! Tier quotas: requests per UTC minute and per UTC day, per tenant.
//!
//! One trait, [`QuotaBackend`], two implementations: Redis when `REDIS_URL`
//! is set ([`redis`], exact across nodes: both windows checked and counted
//! in one script run on Redis's clock) and in-process otherwise ([`local`],
//! the embedded default and the Redis backend's fallback while Redis is
//! unreachable). Windows are fixed: a minute starts at second 0, a day at
//! 00:00 UTC. A refused request is not counted.

pub mod local;
pub mod redis;

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use crate::tenancy::{TenantId, Tier};

/// Seconds in a minute window.
pub const MINUTE: u64 = 60;
/// Seconds in a day window.
pub const DAY: u64 = 86_400;

/// A tenant's rates; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Per UTC minute.
    pub per_minute: Option<u64>,
    /// Per UTC day.
    pub per_day: Option<u64>,
}

impl Rates {
    /// The rates of a tier.
    pub fn of(tier: &Tier) -> Self {
        Self { per_minute: tier.limits.requests_per_minute, per_day: tier.limits.requests_per_day }
    }

    /// The `RateLimit-Policy` value for these rates (`None` if unlimited).
    pub fn policy_header(&self) -> Option<HeaderValue> {
        let mut policy = String::new();
        for (name, limit, width) in
            [("minute", self.per_minute, MINUTE), ("day", self.per_day, DAY)]
        {
            let Some(limit) = limit else { continue };
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            let _ = write!(policy, "\"{name}\";q={limit};w={width}");
        }
        (!policy.is_empty())
            .then(|| HeaderValue::from_str(&policy).expect("ASCII names and digits"))
    }
}

/// `RateLimit-Policy`.
const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// One window's state after an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The limit (`None`: unlimited).
    pub limit: Option<u64>,
    /// Requests counted in the window (including this one if admitted).
    pub used: u64,
    /// Seconds until the window ends.
    pub reset_in_s: u64,
}

impl Window {
    /// Requests left in the window, if it is limited.
    pub fn remaining(&self) -> Option<u64> {
        self.limit.map(|limit| limit.saturating_sub(self.used))
    }
}

/// How the backend is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Counting as designed.
    Ok,
    /// Redis is unreachable: counting per node until it is back.
    Degraded,
}

impl Health {
    /// `ok` or `degraded`, as `/ready` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
        }
    }
}

/// The answer to "may this tenant run one more request?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Whether the request may run (and was counted).
    pub allowed: bool,
    /// The minute window.
    pub minute: Window,
    /// The day window.
    pub day: Window,
    /// Whether a per-node fallback answered.
    pub degraded: bool,
}

impl Admission {
    /// Seconds until the exhausted window ends (for `Retry-After`).
    pub fn retry_after(&self) -> u64 {
        let minute_full = self.minute.remaining() == Some(0);
        let day_full = self.day.remaining() == Some(0);
        match (minute_full, day_full) {
            (_, true) => self.day.reset_in_s.max(1),
            (true, false) => self.minute.reset_in_s.max(1),
            (false, false) => 1,
        }
    }

    /// Adds the IETF `RateLimit-Policy` and `RateLimit` fields
    /// (draft-ietf-httpapi-ratelimit-headers): one item per limited window,
    /// `q` the quota, `w` the window, `r` what remains, `t` seconds to reset.
    /// `policy` is [`Rates::policy_header`] of the same rates, computed once
    /// per route rather than per request.
    pub fn add_headers(&self, policy: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let Some(policy) = policy else { return };
        let mut state = String::with_capacity(48);
        for (name, window) in [("minute", &self.minute), ("day", &self.day)] {
            let Some(remaining) = window.remaining() else {
                continue;
            };
            if !state.is_empty() {
                state.push_str(", ");
            }
            let _ = write!(state, "\"{name}\";r={remaining};t={}", window.reset_in_s);
        }
        if let Ok(state) = HeaderValue::from_str(&state) {
            headers.insert(RATELIMIT_POLICY, policy.clone());
            headers.insert(RATELIMIT, state);
        }
    }
}

/// Counts and limits requests per tenant.
#[async_trait::async_trait]
pub trait QuotaBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Answers at once, without I/O, when it can (in-process counts, or a
    /// unit of a lease already held); `None` means "call [`admit`]".
    ///
    /// [`admit`]: QuotaBackend::admit
    fn admit_now(&self, tenant: TenantId, rates: Rates) -> Option<Admission>;
    /// Checks both windows and, if both have room, counts the request.
    /// Never fails: a backend that cannot answer falls back to counting
    /// on this node.
    async fn admit(&self, tenant: TenantId, rates: Rates) -> Admission;
    /// The windows' current state, without counting.
    async fn peek(&self, tenant: TenantId, rates: Rates) -> Admission;
    /// How the backend is doing.
    fn health(&self) -> Health;
    /// Calls to the backend that failed or timed out so far.
    fn errors(&self) -> u64 {
        0
    }
    /// Calls made to the backend so far (0 for in-process counting).
    fn calls(&self) -> u64 {
        0
    }
    /// `redis` or `local`.
    fn name(&self) -> &'static str;
}

/// Seconds since the Unix epoch on this machine's clock.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// The windows `now` falls in: (minute index, day index, seconds to the
/// minute's end, seconds to the day's end).
pub fn windows_at(now: u64) -> (u64, u64, u64, u64) {
    (now / MINUTE, now / DAY, MINUTE - now % MINUTE, DAY - now % DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(minute: Option<u64>, day: Option<u64>) -> Option<HeaderValue> {
        Rates { per_minute: minute, per_day: day }.policy_header()
    }

    fn admission(minute: (Option<u64>, u64, u64), day: (Option<u64>, u64, u64)) -> Admission {
        Admission {
            allowed: true,
            minute: Window { limit: minute.0, used: minute.1, reset_in_s: minute.2 },
            day: Window { limit: day.0, used: day.1, reset_in_s: day.2 },
            degraded: false,
        }
    }

    #[test]
    fn headers_describe_every_limited_window() {
        let mut headers = HeaderMap::new();
        let p = policy(Some(10), Some(500));
        admission((Some(10), 3, 42), (Some(500), 120, 3600)).add_headers(p.as_ref(), &mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"minute\";q=10;w=60, \"day\";q=500;w=86400");
        assert_eq!(headers["ratelimit"], "\"minute\";r=7;t=42, \"day\";r=380;t=3600");

        let mut headers = HeaderMap::new();
        let p = policy(None, Some(5));
        admission((None, 3, 42), (Some(5), 5, 100)).add_headers(p.as_ref(), &mut headers);
        assert_eq!(headers["ratelimit"], "\"day\";r=0;t=100");

        let mut headers = HeaderMap::new();
        let p = policy(None, None);
        admission((None, 3, 42), (None, 5, 100)).add_headers(p.as_ref(), &mut headers);
        assert!(headers.is_empty(), "unlimited: no fields");
    }

    #[test]
    fn retry_after_is_the_exhausted_windows_end() {
        assert_eq!(admission((Some(10), 10, 42), (Some(500), 10, 3600)).retry_after(), 42);
        assert_eq!(admission((Some(10), 3, 42), (Some(5), 5, 3600)).retry_after(), 3600);
        assert_eq!(admission((Some(10), 10, 42), (Some(10), 10, 3600)).retry_after(), 3600);
    }

    #[test]
    fn windows_are_fixed_utc_minutes_and_days() {
        // 2026-11-27T00:00:59Z and the second after.
        let t = 1_795_737_659;
        assert_eq!(windows_at(t).2, 1);
        assert_eq!(windows_at(t + 1).2, 60);
        assert_eq!(windows_at(t + 1).0, windows_at(t).0 + 1);
        assert_eq!(windows_at(t).3, DAY - 59);
    }
}
