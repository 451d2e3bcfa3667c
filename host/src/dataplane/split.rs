//! Routes with a canary rollout running: which version a request reaches
//! (the rollout's split, or the version it pins with `wasmwiz-version`),
//! and each side's tally of outcomes, which stops a failing canary on this
//! node at once and asks the node to stop it everywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, Response, StatusCode};
use prometheus::IntCounter;

use super::LiveRoute;
use crate::response::{ResponseBody, error_response};
use crate::rollout::{self, Guard, Tally, VERSION_HEADER};
use crate::runtime::{ExecutionReport, Outcome};

/// A route whose deployment has a rollout running on this node: its live
/// version (stable) and its canary, each a live route of its own.
#[derive(Debug)]
pub struct SplitRoute {
    /// The live version.
    pub stable: Arc<LiveRoute>,
    /// The canary.
    pub canary: Arc<LiveRoute>,
    /// The canary's share, percent.
    pub percent: u8,
    /// The header whose value keeps a client on one side.
    pub sticky_header: Option<HeaderName>,
    /// Both sides' tallies, kept from one route table to the next.
    pub health: Arc<RolloutHealth>,
}

/// Which side of a rollout served a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The live version.
    Stable,
    /// The canary.
    Canary,
}

impl Side {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Canary => "canary",
        }
    }
}

/// A node's request to stop a canary everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopCanary {
    /// The deployment.
    pub deployment_id: String,
    /// Its tenant.
    pub tenant_id: i64,
    /// The canary version.
    pub version: i64,
    /// Why, in words for the tenant's log.
    pub reason: String,
}

/// The requests this node sent each side of one rollout, and how many
/// failed; the request counter the per-request split counts with.
#[derive(Debug)]
pub struct RolloutHealth {
    deployment_id: String,
    tenant_id: i64,
    version: i64,
    guard: Guard,
    next: AtomicU64,
    counts: [AtomicU64; 4],
    stopped: AtomicBool,
    counters: [IntCounter; 4],
    stopped_counter: IntCounter,
    stops: tokio::sync::mpsc::UnboundedSender<StopCanary>,
}

/// Where each side's requests and errors are counted in `counts`.
fn slot(side: Side, failed: bool) -> usize {
    (side as usize) * 2 + usize::from(failed)
}

impl RolloutHealth {
    /// The tallies of rollout `version` of a deployment, judged by `guard`;
    /// a stop is sent to `stops`. `counters` are the metric's stable ok,
    /// stable error, canary ok and canary error handles.
    pub fn new(
        deployment_id: String,
        tenant_id: i64,
        version: i64,
        guard: Guard,
        counters: [IntCounter; 4],
        stopped_counter: IntCounter,
        stops: tokio::sync::mpsc::UnboundedSender<StopCanary>,
    ) -> Self {
        Self {
            deployment_id,
            tenant_id,
            version,
            guard,
            next: AtomicU64::new(0),
            counts: Default::default(),
            stopped: AtomicBool::new(false),
            counters,
            stopped_counter,
            stops,
        }
    }

    /// The canary version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Whether this node stopped the canary (it then gets no request,
    /// before the store and the other nodes have heard).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// What this node sent each side: (stable, canary).
    pub fn tallies(&self) -> (Tally, Tally) {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        let tally = |side: Side| {
            let errors = n(slot(side, true));
            Tally { requests: n(slot(side, false)) + errors, errors }
        };
        (tally(Side::Stable), tally(Side::Canary))
    }

    /// Counts one answered request of `side`; judges the canary after each
    /// of its own, and stops it (once) when the guard says so.
    pub fn record(&self, side: Side, report: &ExecutionReport) {
        let failed = rollout::failed(report.status, report.outcome == Outcome::Ok);
        let at = slot(side, failed);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.counters[at].inc();
        if side == Side::Stable || self.is_stopped() {
            return;
        }
        let (stable, canary) = self.tallies();
        if let Some(reason) = self.guard.judge(canary, stable)
            && !self.stopped.swap(true, Ordering::Relaxed)
        {
            self.stopped_counter.inc();
            let _ = self.stops.send(StopCanary {
                deployment_id: self.deployment_id.clone(),
                tenant_id: self.tenant_id,
                version: self.version,
                reason,
            });
        }
    }
}

impl SplitRoute {
    /// The side a request goes to: its pinned version, else the split (a
    /// stopped canary gets nothing); the answer to send for a pin that
    /// cannot be followed.
    #[expect(
        clippy::result_large_err,
        reason = "the refusal is the answer itself, moved once to the client"
    )]
    pub fn choose(&self, headers: &HeaderMap) -> Result<Arc<LiveRoute>, Response<ResponseBody>> {
        if let Some(pin) = pinned_version(headers) {
            let version = pin?;
            let allowed = self.stable.owner.as_ref().is_some_and(|o| o.version_pinning);
            return if !allowed {
                Err(pinning_off())
            } else if version == self.health.version && !self.health.is_stopped() {
                Ok(self.canary.clone())
            } else if self.stable.owner.as_ref().is_some_and(|o| o.version == version) {
                Ok(self.stable.clone())
            } else {
                Err(version_not_served(version))
            };
        }
        if self.percent == 0 || self.health.is_stopped() {
            return Ok(self.stable.clone());
        }
        let to_canary = match self.sticky_header.as_ref().and_then(|name| headers.get(name)) {
            Some(value) => rollout::client_goes_to_canary(
                &self.health.deployment_id,
                value.as_bytes(),
                self.percent,
            ),
            None => rollout::nth_goes_to_canary(
                self.health.next.fetch_add(1, Ordering::Relaxed),
                self.percent,
            ),
        };
        Ok(if to_canary { self.canary.clone() } else { self.stable.clone() })
    }
}

/// The version a request pins (`wasmwiz-version: N`), if it names one; a
/// refusal when the value is not a version number.
pub fn pinned_version(headers: &HeaderMap) -> Option<Result<i64, Response<ResponseBody>>> {
    // A name made once: looked for on every request.
    const NAME: HeaderName = HeaderName::from_static(VERSION_HEADER);
    let value = headers.get(&NAME)?;
    let version = value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|v| *v > 0);
    Some(version.ok_or_else(|| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_version",
            "wasmwiz-version must be a version number of this route's deployment (1, 2, ...)",
        )
    }))
}

/// A pinned request on a route with no rollout: served when it pins the
/// live version and the deployment allows pinning.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the answer itself, moved once to the client"
)]
pub fn pin_live(
    route: Arc<LiveRoute>,
    version: i64,
) -> Result<Arc<LiveRoute>, Response<ResponseBody>> {
    match &route.owner {
        Some(owner) if !owner.version_pinning => Err(pinning_off()),
        Some(owner) if owner.version != version => Err(version_not_served(version)),
        _ => Ok(route),
    }
}

fn pinning_off() -> Response<ResponseBody> {
    error_response(
        StatusCode::BAD_REQUEST,
        "version_pinning_off",
        "this route's deployment does not take wasmwiz-version (its deploy did not set \
         \"version_pinning\": true)",
    )
}

fn version_not_served(version: i64) -> Response<ResponseBody> {
    error_response(
        StatusCode::NOT_FOUND,
        "version_not_served",
        &format!(
            "version {version} of this route's deployment is not served: wasmwiz-version \
             reaches its live version and the canary of a rollout under way"
        ),
    )
}
