//! Canary rollouts as rules, with no I/O (a leaf): what a rollout request
//! may ask for, how a route's requests are split between its stable
//! version and its canary, how steps advance, and when a canary fails
//! badly enough to be stopped.
//!
//! The split is decided on each node with nothing shared but the rollout
//! itself, so every node sends the same share to the canary:
//! - per request (the default): of every 100 consecutive requests a node
//!   sends a route, exactly `percent` go to the canary, spread evenly;
//! - per client, when the rollout names a header: the header's value is
//!   hashed (the same hash on every node) into one of 10,000 buckets, and
//!   the buckets below `percent` × 100 go to the canary — so a client stays
//!   on its side while the share grows, and the same client gets the same
//!   side from every node. Requests without the header are split per
//!   request.

use serde::Deserialize;

/// Canary requests a node sees before it judges the canary (default).
pub const DEFAULT_MIN_REQUESTS: u32 = 50;
/// Percentage points by which the canary's error rate may exceed the
/// stable version's before it is stopped (default).
pub const DEFAULT_MAX_ERROR_INCREASE: u8 = 5;
/// Most steps in a rollout.
pub const MAX_STEPS: usize = 20;
/// Longest wait between two steps, in seconds (a week).
pub const MAX_INTERVAL_S: u64 = 7 * 24 * 3600;
/// Most canary requests a rollout may ask to see before judging.
pub const MAX_MIN_REQUESTS: u32 = 1_000_000;
/// Longest sticky header name.
pub const MAX_HEADER_NAME: usize = 64;
/// The request header that pins a request to one of the versions a route
/// serves (when its deployment allows it).
pub const VERSION_HEADER: &str = "wasmwiz-version";

/// `"rollout"` in a deploy request, as sent.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// One share for the canary, held until promoted or rolled back.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Shares to go through, one per `interval_s` while the canary stays
    /// healthy; reaching 100 promotes it.
    #[serde(default)]
    pub steps: Option<Vec<u32>>,
    /// Seconds between steps.
    #[serde(default)]
    pub interval_s: Option<u64>,
    /// A request header whose value keeps each client on one side.
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// Canary requests a node sees before judging the canary.
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// Percentage points of error rate the canary may have over the stable
    /// version before it is stopped.
    #[serde(default)]
    pub max_error_increase: Option<u32>,
}

/// When a canary is stopped: once a node has seen `min_requests` of its
/// requests, if its error rate exceeds the stable version's (on the same
/// node, over the same time) by more than `max_error_increase` points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    /// Canary requests seen before judging.
    pub min_requests: u32,
    /// Percentage points of error rate allowed over the stable version.
    pub max_error_increase: u8,
}

impl Default for Guard {
    fn default() -> Self {
        Self { min_requests: DEFAULT_MIN_REQUESTS, max_error_increase: DEFAULT_MAX_ERROR_INCREASE }
    }
}

/// A checked rollout, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPlan {
    /// The canary's shares in order (at least one; the first applies at
    /// once, each below 100 but possibly the last).
    pub steps: Vec<u8>,
    /// Milliseconds between steps (0 with a single step).
    pub interval_ms: i64,
    /// The header that keeps a client on one side (lower case).
    pub sticky_header: Option<String>,
    /// When the canary is stopped.
    pub guard: Guard,
}

impl RolloutSpec {
    /// The plan this request asks for, or why it is refused.
    pub fn check(&self) -> Result<RolloutPlan, String> {
        let (steps, interval_ms) = match (self.percent, &self.steps) {
            (Some(_), Some(_)) => {
                return Err("rollout takes either `percent` or `steps`, not both".into());
            }
            (None, None) => {
                return Err("rollout needs `percent` (one share, held until promoted) or \
                            `steps` (shares to go through)"
                    .into());
            }
            (Some(percent), None) => {
                if self.interval_s.is_some() {
                    return Err("`interval_s` goes with `steps`".into());
                }
                if percent > 99 {
                    return Err("rollout `percent` must be 0 to 99 (100 is a plain deploy: \
                                leave out `rollout`)"
                        .into());
                }
                (vec![percent as u8], 0)
            }
            (None, Some(steps)) => {
                if steps.is_empty() || steps.len() > MAX_STEPS {
                    return Err(format!("rollout `steps` must hold 1 to {MAX_STEPS} shares"));
                }
                if steps.iter().any(|s| *s > 100) {
                    return Err("each of rollout `steps` must be 0 to 100 (percent)".into());
                }
                if steps.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("rollout `steps` must grow from one to the next".into());
                }
                if steps[0] == 100 {
                    return Err("the first of rollout `steps` must be below 100 (100 at once is \
                                a plain deploy)"
                        .into());
                }
                let interval_ms = match (steps.len(), self.interval_s) {
                    (1, None) => 0,
                    (1, Some(_)) => {
                        return Err("`interval_s` needs more than one step".into());
                    }
                    (_, None) => {
                        return Err("rollout `steps` need `interval_s`, the seconds between \
                                    them"
                            .into());
                    }
                    (_, Some(s)) if !(1..=MAX_INTERVAL_S).contains(&s) => {
                        return Err(format!("`interval_s` must be 1 to {MAX_INTERVAL_S}"));
                    }
                    (_, Some(s)) => (s * 1000) as i64,
                };
                (steps.iter().map(|s| *s as u8).collect(), interval_ms)
            }
        };
        let sticky_header = match &self.sticky_header {
            None => None,
            Some(name) => Some(check_header_name(name)?),
        };
        let min_requests = self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
        if !(1..=MAX_MIN_REQUESTS).contains(&min_requests) {
            return Err(format!("`min_requests` must be 1 to {MAX_MIN_REQUESTS}"));
        }
        let max_error_increase =
            self.max_error_increase.unwrap_or(u32::from(DEFAULT_MAX_ERROR_INCREASE));
        if max_error_increase > 100 {
            return Err("`max_error_increase` must be 0 to 100 (percentage points)".into());
        }
        Ok(RolloutPlan {
            steps,
            interval_ms,
            sticky_header,
            guard: Guard { min_requests, max_error_increase: max_error_increase as u8 },
        })
    }
}

/// A sticky header name, checked and in lower case.
fn check_header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if lower.is_empty()
        || lower.len() > MAX_HEADER_NAME
        || http::HeaderName::from_bytes(lower.as_bytes()).is_err()
    {
        return Err(format!(
            "`sticky_header` must be an HTTP header name of 1 to {MAX_HEADER_NAME} characters"
        ));
    }
    if lower.starts_with("wasmwiz-") {
        return Err("`sticky_header` cannot be one of the platform's `wasmwiz-` headers".into());
    }
    Ok(lower)
}

/// The step after `step` of `steps`, and its share; `None` at the last.
pub fn next_step(steps: &[u8], step: usize) -> Option<(usize, u8)> {
    steps.get(step + 1).map(|share| (step + 1, *share))
}

/// Whether a route's `n`-th request (counted from 0 on this node) goes to
/// a canary holding `percent`: exactly `percent` of every 100 consecutive
/// requests do, spread evenly (10% is every tenth).
pub fn nth_goes_to_canary(n: u64, percent: u8) -> bool {
    let percent = u64::from(percent.min(100));
    (n % 100) * percent % 100 < percent
}

/// Whether a client whose sticky header holds `value` goes to a canary of
/// `deployment` holding `percent`: the same answer on every node, and a
/// client on the canary stays there as the share grows.
pub fn client_goes_to_canary(deployment: &str, value: &[u8], percent: u8) -> bool {
    client_bucket(deployment, value) < u32::from(percent.min(100)) * 100
}

/// A client's bucket, 0 to 9,999: FNV-1a (64 bits) of the deployment's id
/// and the header's value, so one client falls differently for different
/// deployments, then MurmurHash3's 64-bit finalizer: FNV alone leaves
/// values that differ in their last byte (`session-1`, `session-2`) close
/// together, and a share would then depend on how clients name themselves.
fn client_bucket(deployment: &str, value: &[u8]) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in deployment.as_bytes().iter().chain(&[0xff]).chain(value) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash % 10_000) as u32
}

/// Requests a node sent to one side of a rollout, and how many failed
/// (a 5xx answer, a trap, a timeout, running out of memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests answered.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
}

impl Tally {
    /// The error rate in percent (0 with no requests).
    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 * 100.0 / self.requests as f64 }
    }
}

impl Guard {
    /// Why the canary must be stopped, given what one node saw of each
    /// side; `None` while it may go on (too few requests yet, or failing
    /// no worse than allowed).
    pub fn judge(&self, canary: Tally, stable: Tally) -> Option<String> {
        if canary.requests < u64::from(self.min_requests) {
            return None;
        }
        let (c, s) = (canary.error_percent(), stable.error_percent());
        (c - s > f64::from(self.max_error_increase)).then(|| {
            format!(
                "the canary failed {} of {} requests ({c:.1}%) against the stable version's \
                 {} of {} ({s:.1}%): more than {} points worse",
                canary.errors,
                canary.requests,
                stable.errors,
                stable.requests,
                self.max_error_increase
            )
        })
    }
}

/// Whether an answer counts as a failure of the version that gave it.
pub fn failed(status: u16, ok: bool) -> bool {
    status >= 500 || !ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<RolloutPlan, String> {
        serde_json::from_str::<RolloutSpec>(json).map_err(|e| e.to_string())?.check()
    }

    #[test]
    fn a_percent_or_steps_are_taken_with_defaults() {
        let plan = spec(r#"{"percent": 10}"#).unwrap();
        assert_eq!(plan.steps, [10]);
        assert_eq!(plan.interval_ms, 0);
        assert_eq!(plan.guard, Guard::default());
        let plan = spec(
            r#"{"steps": [10, 50, 100], "interval_s": 300, "sticky_header": "X-Session",
                "min_requests": 20, "max_error_increase": 0}"#,
        )
        .unwrap();
        assert_eq!(plan.steps, [10, 50, 100]);
        assert_eq!(plan.interval_ms, 300_000);
        assert_eq!(plan.sticky_header.as_deref(), Some("x-session"));
        assert_eq!(plan.guard, Guard { min_requests: 20, max_error_increase: 0 });
        assert_eq!(spec(r#"{"percent": 0}"#).unwrap().steps, [0], "a canary for pinning only");
        assert_eq!(spec(r#"{"steps": [5]}"#).unwrap().steps, [5]);
    }

    #[test]
    fn what_cannot_be_a_rollout_is_refused_saying_why() {
        for (json, why) in [
            (r#"{}"#, "needs `percent`"),
            (r#"{"percent": 10, "steps": [10]}"#, "not both"),
            (r#"{"percent": 100}"#, "0 to 99"),
            (r#"{"percent": 10, "interval_s": 5}"#, "goes with `steps`"),
            (r#"{"steps": []}"#, "1 to 20"),
            (r#"{"steps": [10, 10], "interval_s": 1}"#, "grow"),
            (r#"{"steps": [50, 20], "interval_s": 1}"#, "grow"),
            (r#"{"steps": [10, 101], "interval_s": 1}"#, "0 to 100"),
            (r#"{"steps": [100]}"#, "below 100"),
            (r#"{"steps": [10, 50]}"#, "need `interval_s`"),
            (r#"{"steps": [10, 50], "interval_s": 0}"#, "1 to"),
            (r#"{"steps": [10], "interval_s": 5}"#, "more than one step"),
            (r#"{"percent": 1, "sticky_header": "bad header"}"#, "header name"),
            (r#"{"percent": 1, "sticky_header": "wasmwiz-version"}"#, "platform's"),
            (r#"{"percent": 1, "min_requests": 0}"#, "`min_requests`"),
            (r#"{"percent": 1, "max_error_increase": 101}"#, "percentage points"),
        ] {
            let error = spec(json).expect_err(json);
            assert!(error.contains(why), "{json}: {error}");
        }
        assert!(spec(r#"{"percent": 1, "weight": 3}"#).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn per_request_splits_send_exactly_the_share_of_every_hundred() {
        for percent in 0..=100u8 {
            for start in [0u64, 37, 1_000_003] {
                let canary = (start..start + 100).filter(|n| nth_goes_to_canary(*n, percent));
                assert_eq!(canary.count(), usize::from(percent), "{percent}% from {start}");
            }
        }
        // Spread evenly: at 10%, every tenth request.
        let tenth: Vec<u64> = (0..30).filter(|n| nth_goes_to_canary(*n, 10)).collect();
        assert_eq!(tenth, [0, 10, 20]);
    }

    #[test]
    fn sticky_clients_stay_on_the_canary_as_the_share_grows_and_the_share_holds() {
        let clients: Vec<String> = (0..10_000).map(|i| format!("session-{i}")).collect();
        let on = |percent: u8| -> Vec<bool> {
            clients.iter().map(|c| client_goes_to_canary("dep_a", c.as_bytes(), percent)).collect()
        };
        let (ten, fifty) = (on(10), on(50));
        let share = ten.iter().filter(|c| **c).count();
        assert!((800..=1_200).contains(&share), "10% of 10,000 clients: {share}");
        assert!(ten.iter().zip(&fifty).all(|(t, f)| !*t || *f), "a canary client stays one");
        assert!(on(0).iter().all(|c| !c) && on(100).iter().all(|c| *c));
        // Whatever the deployment, clients named in sequence split at the
        // share asked (each count within 4.5 standard deviations).
        for d in 0..50 {
            let deployment = format!("dep_{d:020}");
            let on = (0..1_000)
                .filter(|i| {
                    client_goes_to_canary(&deployment, format!("session-{i}").as_bytes(), 30)
                })
                .count();
            assert!((235..=365).contains(&on), "{deployment}: {on} of 1,000 at 30%");
        }
        // Another deployment splits the same clients differently.
        let other: Vec<bool> =
            clients.iter().map(|c| client_goes_to_canary("dep_b", c.as_bytes(), 10)).collect();
        assert_ne!(ten, other);
    }

    #[test]
    fn steps_advance_one_at_a_time_and_end_at_the_last() {
        assert_eq!(next_step(&[10, 50, 100], 0), Some((1, 50)));
        assert_eq!(next_step(&[10, 50, 100], 1), Some((2, 100)));
        assert_eq!(next_step(&[10, 50, 100], 2), None);
        assert_eq!(next_step(&[10], 0), None);
    }

    #[test]
    fn a_canary_is_judged_after_its_minimum_against_the_stable_versions_rate() {
        let guard = Guard { min_requests: 50, max_error_increase: 5 };
        let tally = |requests, errors| Tally { requests, errors };
        assert_eq!(guard.judge(tally(49, 49), tally(1000, 0)), None, "too few to judge");
        let why = guard.judge(tally(50, 50), tally(1000, 0)).expect("stopped");
        assert!(why.contains("50 of 50 requests (100.0%)"), "{why}");
        assert!(why.contains("0 of 1000 (0.0%)"), "{why}");
        // 5 points worse is allowed; more is not.
        assert_eq!(guard.judge(tally(100, 7), tally(100, 2)), None);
        assert!(guard.judge(tally(100, 8), tally(100, 2)).is_some());
        // A stable version that fails as much hides nothing: no worse.
        assert_eq!(guard.judge(tally(100, 40), tally(100, 40)), None);
        // No stable requests yet: measured against 0%.
        assert!(guard.judge(tally(60, 10), tally(0, 0)).is_some());
        assert!(failed(500, true) && failed(200, false) && !failed(404, true));
    }
}
