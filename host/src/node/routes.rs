//! Turning the builder's plan into the live route table: a live route (its
//! limits, capabilities, metrics, instance pool and tenant slots) for each
//! deployment this node serves, kept from one table to the next where they
//! still apply, and where each deployment stands on this node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::control::compile_queue::Status;
use crate::control::plan::{PlannedCanary, PlannedRoute, Target};
use crate::dataplane::{
    LiveRoute, RolloutHealth, RouteOwner, RouteTarget, Routes, Side, SplitRoute,
};
use crate::kv::KvLimits;
use crate::quota::Rates;
use crate::router::RoutePattern;
use crate::runtime::{App, Capabilities, Instances, KvAccess, Limits, OutboundPolicy, TenantSlots};
use crate::store::Deployment;
use crate::tenancy::{TenantId, Tier};

/// Where one deployment stands on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentState {
    /// Its live version is served.
    Serving,
    /// Its live version's component is being compiled here; `serving` is
    /// the earlier version served meanwhile, if any.
    Compiling {
        /// The version served meanwhile.
        serving: Option<i64>,
    },
    /// Its live version's component failed to compile here.
    Failed {
        /// The version served meanwhile, if any.
        serving: Option<i64>,
        /// Why.
        error: String,
        /// Attempts so far.
        attempts: u32,
        /// Seconds to the next attempt.
        retry_in_s: u64,
    },
}

/// What a node serves now, kept from one rebuild to the next.
#[derive(Default)]
pub(super) struct Served {
    /// Live routes by deployment id (a route kept at an earlier version
    /// while its new one compiles included).
    pub(super) routes: HashMap<String, Arc<LiveRoute>>,
    /// Kept instances of the deployments that reuse them, by deployment,
    /// version, requests per instance and requests at once: dropped with
    /// the version (a new version may run another component) or when the
    /// tier's caps change what the version gets.
    instances: HashMap<(String, i64, u32, u32), Arc<Instances>>,
    /// Each tenant's hold on the instance pool.
    tenant_slots: HashMap<TenantId, Arc<TenantSlots>>,
    /// The tallies of each rollout served, by deployment and canary
    /// version: kept while the rollout runs.
    pub(super) rollouts: HashMap<(String, i64), Arc<RolloutHealth>>,
}

impl Node {
    /// The live table of `planned`, where each deployment stands, and how
    /// many routes failed to compile here; remembers what it serves for
    /// the next rebuild.
    pub(super) fn materialize(
        &self,
        planned: Vec<PlannedRoute<App>>,
        held_hosts: &[(String, TenantId)],
        now: Instant,
    ) -> (Routes, HashMap<String, DeploymentState>, usize) {
        let mut routes = Routes::new();
        for (host, tenant) in held_hosts {
            routes.hold_host(host, *tenant);
        }
        let mut states = HashMap::with_capacity(planned.len());
        let mut failed = 0;
        let mut next = Served::default();
        let mut served = self.served();
        let failure = |digest: &str| match self.queue.status(digest) {
            Some(Status::Failed { error, attempts, retry_at, .. }) => {
                (error, attempts, retry_at.saturating_duration_since(now).as_secs())
            }
            _ => (String::new(), 0, 0),
        };
        for planned in planned {
            let id = planned.deployment.id.clone();
            let tenant = planned.deployment.tenant_id;
            let (target, state) = match planned.target {
                Target::Serve(app) => {
                    let health = planned.canary.as_ref().map(|canary| {
                        let label = planned.pattern.to_string();
                        self.rollout_health(&served, &mut next, &planned.deployment, &label, canary)
                    });
                    let split = planned
                        .deployment
                        .canary
                        .as_ref()
                        .map(|c| (c.percent, c.sticky_header.clone()));
                    let route = self.live_route(
                        &served,
                        &mut next,
                        planned.deployment,
                        planned.tier.clone(),
                        planned.pattern.clone(),
                        app,
                        health.clone().map(|h| (h, Side::Stable)),
                    );
                    next.routes.insert(id.clone(), route.clone());
                    let target = match (planned.canary, health, split) {
                        (Some(canary), Some(health), Some((percent, sticky))) => {
                            let canary = self.live_route(
                                &served,
                                &mut next,
                                canary.deployment,
                                planned.tier,
                                planned.pattern.clone(),
                                canary.app,
                                Some((health.clone(), Side::Canary)),
                            );
                            RouteTarget::Split(Arc::new(SplitRoute {
                                stable: route,
                                canary,
                                percent,
                                sticky_header: sticky
                                    .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
                                health,
                            }))
                        }
                        _ => RouteTarget::Live(route),
                    };
                    (target, DeploymentState::Serving)
                }
                Target::KeepServing { version, failed: why } => {
                    let route = served.routes.get(&id).cloned().expect("the builder saw it");
                    next.routes.insert(id.clone(), route.clone());
                    keep_pools(&served, &mut next, &route);
                    let state = match why {
                        None => DeploymentState::Compiling { serving: Some(version) },
                        Some(_) => {
                            failed += 1;
                            let (error, attempts, retry_in_s) =
                                failure(&planned.deployment.component);
                            DeploymentState::Failed {
                                serving: Some(version),
                                error,
                                attempts,
                                retry_in_s,
                            }
                        }
                    };
                    (RouteTarget::Live(route), state)
                }
                Target::Wait => {
                    (RouteTarget::Compiling, DeploymentState::Compiling { serving: None })
                }
                Target::Unavailable(_) => {
                    failed += 1;
                    let (error, attempts, retry_in_s) = failure(&planned.deployment.component);
                    (
                        RouteTarget::Unavailable { retry_after_s: retry_in_s.max(1) },
                        DeploymentState::Failed { serving: None, error, attempts, retry_in_s },
                    )
                }
            };
            routes.insert_owned(&planned.pattern, target, Some(tenant));
            states.insert(id, state);
        }
        *served = next;
        (routes, states, failed)
    }

    /// The tallies of a route's rollout: the ones kept from the last table
    /// while the same canary runs, else new ones.
    fn rollout_health(
        &self,
        served: &Served,
        next: &mut Served,
        deployment: &Deployment,
        route: &str,
        canary: &PlannedCanary<App>,
    ) -> Arc<RolloutHealth> {
        let key = (deployment.id.clone(), canary.deployment.version);
        let health = served.rollouts.get(&key).cloned().unwrap_or_else(|| {
            let metrics = self.plane.metrics();
            let counter = |side: &str, result: &str| {
                metrics.rollout_requests.with_label_values(&[
                    deployment.tenant.as_str(),
                    route,
                    side,
                    result,
                ])
            };
            let guard = deployment.canary.as_ref().map(|c| c.guard).unwrap_or_default();
            Arc::new(RolloutHealth::new(
                deployment.id.clone(),
                deployment.tenant_id,
                canary.deployment.version,
                guard,
                [
                    counter("stable", "ok"),
                    counter("stable", "error"),
                    counter("canary", "ok"),
                    counter("canary", "error"),
                ],
                metrics.rollouts_stopped.with_label_values(&[deployment.tenant.as_str(), route]),
                self.stops.clone(),
            ))
        });
        next.rollouts.insert(key, health.clone());
        health
    }

    /// A live route for a deployment whose component is ready, keeping the
    /// instance pool and tenant slots it had.
    #[allow(clippy::too_many_arguments)]
    fn live_route(
        &self,
        served: &Served,
        next: &mut Served,
        deployment: Deployment,
        tier: Arc<Tier>,
        pattern: RoutePattern,
        app: App,
        rollout: Option<(Arc<RolloutHealth>, Side)>,
    ) -> Arc<LiveRoute> {
        let limits = limits_of(&tier);
        let outbound =
            OutboundPolicy::new(&deployment.allowed_outbound_hosts, self.settings.outbound.clone());
        let label = pattern.to_string();
        let usage = self.usage.for_tenant(deployment.tenant_id);
        let mut config = deployment.config;
        config.extend(deployment.secrets);
        let capabilities = Arc::new(Capabilities {
            kv: Some(KvAccess {
                backend: self.settings.kv.clone(),
                tenant: deployment.tenant_id,
                deployment: deployment.id.clone(),
                limits: KvLimits::of(&tier.limits),
                usage: Some(usage.clone()),
            }),
            config,
            queues: Some(Arc::new(crate::triggers::queues::TenantQueues::new(
                self.settings.queues.clone(),
                deployment.tenant_id,
                tier.limits.clone(),
            ))),
        });
        // What the deployment asks for, within what its tier allows now.
        let reuse = deployment.max_instance_reuse.min(tier.limits.max_instance_reuse);
        let concurrency =
            deployment.max_instance_concurrency.min(tier.limits.max_instance_concurrency);
        let key = (deployment.id.clone(), deployment.version, reuse, concurrency);
        let instances = match served.instances.get(&key) {
            Some(kept) => Some(kept.clone()),
            None => self.plane.runtime().instances(&app, &label, reuse, concurrency),
        };
        if let Some(kept) = &instances {
            next.instances.insert(key, kept.clone());
        }
        let slots = served
            .tenant_slots
            .get(&deployment.tenant_id)
            .or_else(|| next.tenant_slots.get(&deployment.tenant_id))
            .cloned()
            .unwrap_or_default();
        next.tenant_slots.insert(deployment.tenant_id, slots.clone());
        let rates = Rates::of(&tier);
        Arc::new(LiveRoute {
            instances,
            capabilities,
            metrics: Arc::new(self.plane.metrics().route(&label, &deployment.tenant)),
            label,
            outbound,
            pattern,
            app,
            limits,
            rollout,
            owner: Some(RouteOwner {
                tenant_id: deployment.tenant_id,
                tenant: deployment.tenant,
                deployment_id: deployment.id,
                version: deployment.version,
                rate_policy: rates.policy_header(),
                rates,
                usage,
                slots,
                tier,
                log: self.plane.logs().map(|hub| hub.for_tenant(deployment.tenant_id)),
                version_pinning: deployment.version_pinning,
            }),
        })
    }
}

/// Keeps the kept instances and tenant slots of a route served at an
/// earlier version.
fn keep_pools(served: &Served, next: &mut Served, route: &LiveRoute) {
    let Some(owner) = &route.owner else { return };
    if let Some(instances) = &route.instances {
        for (key, kept) in &served.instances {
            if Arc::ptr_eq(kept, instances) {
                next.instances.insert(key.clone(), kept.clone());
            }
        }
    }
    next.tenant_slots.entry(owner.tenant_id).or_insert_with(|| owner.slots.clone());
}

/// The invocation limits a tier sets.
pub fn limits_of(tier: &Tier) -> Limits {
    Limits {
        memory_bytes: tier.limits.memory_limit_bytes,
        timeout: Duration::from_millis(tier.limits.execution_timeout_ms),
        max_input_bytes: tier.limits.max_input_bytes,
    }
}
