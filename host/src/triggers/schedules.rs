//! The scheduler: every node fires the schedules that are due, each due
//! time exactly once across the cluster.
//!
//! A node claims a due time by moving the schedule's `next_due` forward
//! from the value it read (compare and set in the store): of the nodes that
//! saw it due, one wins; the others see it moved. The winner records the
//! claim, keeps it fresh every second while the request runs, and records
//! the answer. A claim left stale (its node died mid-firing) is taken over
//! by another node after [`STALE_AFTER`], and that firing happens then: so
//! a due time may, only when a node dies while firing it, be delivered
//! twice (at least once, never lost); a guest that must not act twice keys
//! its work on `wasmwiz-scheduled-at`.
//!
//! A schedule that fell behind by up to [`CATCH_UP`] (a busy or
//! restarting node) fires every due time it missed, in order. After the
//! whole cluster was down for longer, a schedule fires once, for the
//! latest due time it missed, then goes on from the next one: no storm of
//! catch-up firings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use super::Targets;
use super::deliver::{Answer, Trigger, deliver};
use super::spec::Spec;
use crate::dataplane::DataPlane;
use crate::metrics::Metrics;
use crate::store::{ScheduleRecord, Store, now_ms};

/// How often a node looks for due schedules.
pub const TICK: Duration = Duration::from_millis(100);
/// How often a firing's claim is kept fresh while its request runs.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A claim not kept fresh for this long belongs to a node that died: another
/// node takes the firing over.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// Firings kept per schedule, newest first.
pub const RUNS_KEPT: i64 = 100;
/// A schedule this far behind (its nodes busy, or restarting) fires each
/// due time it missed, one after another; further behind (the whole
/// cluster was down), it fires once, for the latest, and goes on from the
/// next: no storm of catch-up firings.
pub const CATCH_UP: Duration = Duration::from_secs(5);
/// Due schedules read at once.
const BATCH: i64 = 200;

/// Fires due schedules until the node shuts down.
pub async fn run(
    store: Arc<dyn Store>,
    plane: Arc<DataPlane>,
    targets: Arc<dyn Targets>,
    metrics: Arc<Metrics>,
) {
    let mut specs: HashMap<String, Option<Spec>> = HashMap::new();
    let mut last_takeover = Instant::now();
    let mut last_prune = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        let node = targets.node_name();
        match store.due_schedules(now, BATCH).await {
            Ok(due) => {
                for schedule in due {
                    let spec = specs.entry(schedule.spec.clone()).or_insert_with(|| {
                        Spec::parse(&schedule.spec).map_err(|e| tracing::warn!(schedule = %schedule.id, error = %e, "a stored schedule does not parse")).ok()
                    });
                    let Some(spec) = spec else { continue };
                    let due_at = due_time(spec, schedule.next_due, now);
                    let Some(next) = spec.next_after(due_at) else { continue };
                    match store
                        .claim_firing(&schedule.id, schedule.next_due, next, due_at, &node, now)
                        .await
                    {
                        Ok(true) => {
                            let fire = fire(
                                store.clone(),
                                plane.clone(),
                                targets.clone(),
                                metrics.clone(),
                                schedule,
                                due_at,
                                node.clone(),
                            );
                            tokio::spawn(fire);
                        }
                        Ok(false) => {}
                        Err(e) => tracing::debug!(error = %e, "claiming a firing failed"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading due schedules failed"),
        }
        // Firings whose node died mid-way.
        if last_takeover.elapsed() >= HEARTBEAT {
            last_takeover = Instant::now();
            let stale = now - i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
            if let Ok(stale) = store.stale_firings(stale, BATCH).await {
                for (schedule, due_at, claimed_at) in stale {
                    if let Ok(true) =
                        store.take_over_firing(&schedule.id, due_at, claimed_at, &node, now).await
                    {
                        tracing::info!(schedule = %schedule.id, due_at, "took over a firing whose node stopped");
                        tokio::spawn(fire(
                            store.clone(),
                            plane.clone(),
                            targets.clone(),
                            metrics.clone(),
                            schedule,
                            due_at,
                            node.clone(),
                        ));
                    }
                }
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(300) {
            last_prune = Instant::now();
            specs.clear();
            match store.prune_firings(RUNS_KEPT).await {
                Ok(0) | Err(_) => {}
                Ok(n) => tracing::debug!(rows = n, "old firings pruned"),
            }
        }
    }
}

/// The due time to fire of a schedule whose next due time is `next_due`,
/// at `now`: that one, or when it is more than [`CATCH_UP`] past, the
/// latest one passed.
fn due_time(spec: &Spec, next_due: i64, now: i64) -> i64 {
    let window = i64::try_from(CATCH_UP.as_millis()).unwrap_or(i64::MAX);
    if now - next_due <= window {
        next_due
    } else {
        spec.last_at_or_before(now).unwrap_or(next_due).max(next_due)
    }
}

/// Fires `schedule` for `due_at`, keeping the claim fresh meanwhile, and
/// records the answer.
async fn fire(
    store: Arc<dyn Store>,
    plane: Arc<DataPlane>,
    targets: Arc<dyn Targets>,
    metrics: Arc<Metrics>,
    schedule: ScheduleRecord,
    due_at: i64,
    node: String,
) {
    let started = now_ms();
    let tenant = targets.tenant_name(schedule.tenant_id);
    metrics
        .schedule_lateness
        .observe(Duration::from_millis(u64::try_from(started - due_at).unwrap_or(0)).as_secs_f64());
    let heartbeat = {
        let (store, id, node) = (store.clone(), schedule.id.clone(), node.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let _ = store.touch_firing(&id, due_at, &node, now_ms()).await;
            }
        })
    };
    let answer = match targets.host_of(&schedule.deployment_id) {
        None => Answer::Gone { code: "not_found".into() },
        Some(host) => {
            let host = host.unwrap_or_else(|| targets.public_host());
            let method = Method::from_bytes(schedule.method.as_bytes()).unwrap_or(Method::POST);
            let body = Bytes::from(schedule.body.clone().into_bytes());
            let trigger = Trigger {
                deployment: &schedule.deployment_id,
                host: &host,
                method,
                path: &schedule.path,
                headers: vec![
                    ("wasmwiz-trigger", "schedule".into()),
                    ("wasmwiz-schedule-id", schedule.id.clone()),
                    ("wasmwiz-scheduled-at", crate::logs::rfc3339_ms(due_at)),
                ],
                content_type: (!body.is_empty()).then_some("text/plain; charset=utf-8"),
                body,
            };
            deliver(&plane, trigger).await
        }
    };
    heartbeat.abort();
    let outcome = answer.outcome();
    let result = match &answer {
        Answer::Done { .. } => "ok",
        Answer::Refused { .. } => "refused",
        Answer::Failed { .. } | Answer::Gone { .. } => "failed",
    };
    metrics.schedule_firings.with_label_values(&[tenant.as_str(), result]).inc();
    if let Answer::Refused { .. } | Answer::Gone { .. } = answer {
        tracing::info!(schedule = %schedule.id, due_at, %outcome, "a schedule's firing was refused");
    }
    let status = i64::from(answer.status());
    if let Err(e) = store.finish_firing(&schedule.id, due_at, now_ms(), status, &outcome).await {
        tracing::warn!(schedule = %schedule.id, error = %e, "a firing's answer was not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_lag_fires_every_due_time_and_a_long_outage_fires_once() {
        let spec = Spec::parse("@every 1s").unwrap();
        let t = 1_796_515_200_000;
        // On time, and a little behind: the due time itself.
        assert_eq!(due_time(&spec, t, t + 10), t);
        assert_eq!(due_time(&spec, t, t + 4_500), t);
        // The cluster was down for a minute: the latest due time only.
        assert_eq!(due_time(&spec, t, t + 60_500), t + 60_000);
        assert_eq!(spec.next_after(due_time(&spec, t, t + 60_500)), Some(t + 61_000));
    }
}
