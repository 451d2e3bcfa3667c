//! A node's part in canary rollouts: it stops, everywhere, a canary its
//! own requests showed failing (the data plane has already stopped sending
//! it requests here), and takes the steps that are due. Both are written
//! to the store in one transaction each, whichever node is first, and every
//! other node hears of them as of any change (within a second).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Node;
use crate::dataplane::StopCanary;
use crate::logs::LogEvent;
use crate::rollout::Tally;
use crate::store::now_ms;

/// How often a node looks for rollout steps that are due (it asks the store
/// only when its table says one is).
pub const STEP_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// A stop the store did not take yet (it was down): tried again.
const STOP_RETRY: Duration = Duration::from_secs(1);

/// What this node saw of one deployment's rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutTallies {
    /// The canary version.
    pub version: i64,
    /// Requests this node sent the live version, and its errors.
    pub stable: Tally,
    /// Requests this node sent the canary, and its errors.
    pub canary: Tally,
    /// Whether this node stopped the canary.
    pub stopped: bool,
}

impl Node {
    /// What this node saw of `deployment`'s running rollout, if it serves
    /// one.
    pub fn rollout_tallies(&self, deployment: &str) -> Option<RolloutTallies> {
        let served = self.served();
        let health = served.rollouts.iter().find(|((id, _), _)| id == deployment)?.1;
        let (stable, canary) = health.tallies();
        Some(RolloutTallies {
            version: health.version(),
            stable,
            canary,
            stopped: health.is_stopped(),
        })
    }

    /// Stops canaries as the data plane asks, and takes due steps, until
    /// the node shuts down.
    pub(super) async fn rollout_loop(self: Arc<Self>) {
        let Some(mut stops) = self.stops_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut pending: Vec<StopCanary> = Vec::new();
        let mut tick = tokio::time::interval(STEP_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                stop = stops.recv() => match stop {
                    Some(stop) => pending.push(stop),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if !pending.is_empty() && tokio::time::Instant::now() >= retry_at {
                let mut failed = Vec::new();
                for stop in pending.drain(..) {
                    if !self.stop_canary(&stop).await {
                        failed.push(stop);
                    }
                }
                if !failed.is_empty() {
                    retry_at = tokio::time::Instant::now() + STOP_RETRY;
                }
                pending = failed;
            }
            if self.next_step_at.load(Ordering::Relaxed) <= now_ms() {
                self.take_due_steps().await;
            }
        }
    }

    /// Writes a canary's stop to the store and makes it live here; false
    /// when the store could not take it (tried again).
    async fn stop_canary(&self, stop: &StopCanary) -> bool {
        let node = crate::triggers::Targets::node_name(self);
        let reason = format!("stopped on node {node}: {}", stop.reason);
        match self.store.end_rollout(&stop.deployment_id, stop.version, "stopped", &reason).await {
            Ok(ended) => {
                if ended {
                    tracing::warn!(deployment = %stop.deployment_id, version = stop.version,
                                   %reason, "canary stopped");
                    self.tell_tenant(stop.tenant_id, &stop.deployment_id, stop.version, &reason);
                }
                if let Err(e) = self.sync_now().await {
                    tracing::warn!(error = %e, "a canary's stop is stored but not yet live here");
                }
                true
            }
            Err(e) => {
                tracing::error!(deployment = %stop.deployment_id, error = %e,
                                "a canary could not be stopped in the store; it gets no \
                                 requests on this node, and the stop is tried again");
                false
            }
        }
    }

    /// Takes the rollout steps that are due (the store takes each once,
    /// whichever node asks first).
    async fn take_due_steps(&self) {
        match self.store.advance_rollouts(now_ms()).await {
            // Another node took them: its change brings the new table (and
            // the next due time) here within a sync.
            Ok(steps) if steps.is_empty() => {}
            Ok(steps) => {
                for step in &steps {
                    let what = if step.percent >= 100 {
                        format!(
                            "canary version {} promoted: its last step reached 100%",
                            step.version
                        )
                    } else {
                        format!(
                            "canary version {} now gets {}% of requests",
                            step.version, step.percent
                        )
                    };
                    tracing::info!(deployment = %step.deployment_id, %what, "rollout step");
                    self.tell_tenant(step.tenant_id, &step.deployment_id, step.version, &what);
                }
                if let Err(e) = self.sync_now().await {
                    tracing::warn!(error = %e, "a rollout step is stored but not yet live here");
                }
            }
            Err(e) => tracing::warn!(error = %e, "rollout steps not taken; will retry"),
        }
    }

    /// A `rollout` event in the tenant's log stream.
    fn tell_tenant(&self, tenant: i64, deployment: &str, version: i64, message: &str) {
        let Some(hub) = self.plane.logs() else { return };
        hub.publish(
            &hub.for_tenant(tenant),
            LogEvent {
                time: crate::logs::now_rfc3339(),
                kind: "rollout".into(),
                node: hub.node().to_string(),
                deployment: Some(deployment.to_string()),
                version: Some(version),
                message: Some(message.to_string()),
                ..LogEvent::default()
            },
        );
    }
}
