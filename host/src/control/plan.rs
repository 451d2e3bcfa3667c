//! The route-table builder: from a snapshot of the store and what this node
//! holds compiled, the routes to serve and the components to compile.
//!
//! Pure and synchronous: plain values in, plain values out. The node turns
//! the plan into live routes (instances, metrics, capabilities) and
//! publishes it; the compile queue takes the components to compile.
//!
//! What a deployment's route does on this node, in order of preference:
//! - its live version's component is compiled here: serve it;
//! - it is not, but this node serves an earlier version of the same
//!   deployment: keep serving that one until the new one is ready (or for
//!   good, if the new one cannot be compiled here);
//! - it is being compiled: requests wait for it (bounded);
//! - it failed to compile: requests get `503`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::router::RoutePattern;
use crate::store::Deployment;
use crate::tenancy::Tier;

/// What this node knows about compiling one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compilation<A> {
    /// Compiled and ready to instantiate.
    Ready(A),
    /// Not compiled here yet (queued, compiling, or not asked for).
    Pending,
    /// Compiling it failed; the message says why.
    Failed(String),
}

/// What the store holds, read in one go.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every live deployment at its live version.
    pub deployments: Vec<Deployment>,
    /// Every tier, by name.
    pub tiers: HashMap<String, Arc<Tier>>,
}

/// What a route does on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<A> {
    /// Serves the live version with this component.
    Serve(A),
    /// Keeps serving `version`, the one this node serves now, while the
    /// live version's component is not ready here.
    KeepServing {
        /// The version served meanwhile.
        version: i64,
        /// Why the live version is not served: compiling, or the error.
        failed: Option<String>,
    },
    /// Nothing servable yet: requests wait for the compilation.
    Wait,
    /// The component cannot be compiled on this node.
    Unavailable(String),
}

/// One route of the plan.
#[derive(Clone, Debug)]
pub struct PlannedRoute<A> {
    /// The route.
    pub pattern: RoutePattern,
    /// The deployment at its live version.
    pub deployment: Deployment,
    /// Its tenant's tier.
    pub tier: Arc<Tier>,
    /// What the route does here.
    pub target: Target<A>,
    /// A running rollout's canary, when its component is ready here (until
    /// then, this node sends every request to the live version).
    pub canary: Option<PlannedCanary<A>>,
}

/// The canary of a route, ready to serve.
#[derive(Clone, Debug)]
pub struct PlannedCanary<A> {
    /// The deployment at its canary version ([`Deployment::at_canary`]).
    pub deployment: Deployment,
    /// Its component, compiled.
    pub app: A,
}

/// The builder's answer.
#[derive(Clone, Debug)]
pub struct Plan<A> {
    /// Every route to publish.
    pub routes: Vec<PlannedRoute<A>>,
    /// Components the live versions need that are not compiled here
    /// (failed ones included: the queue decides when to try again).
    pub to_compile: HashSet<String>,
    /// Components the plan serves or waits for: everything else compiled
    /// here may be dropped.
    pub needed: HashSet<String>,
    /// Deployments that cannot be served at all, and why (logged).
    pub invalid: Vec<(String, String)>,
}

impl<A> Plan<A> {
    /// Routes whose requests would wait: the node is not fully loaded
    /// while a starting node has any.
    pub fn waiting(&self) -> usize {
        self.routes.iter().filter(|r| matches!(r.target, Target::Wait)).count()
    }
}

/// Builds the plan. `compiled` says where each component stands on this
/// node; `served` maps each deployment this node serves now to the version
/// it serves.
pub fn build<A>(
    snapshot: Snapshot,
    compiled: impl Fn(&str) -> Compilation<A>,
    served: &HashMap<String, i64>,
) -> Plan<A> {
    let mut plan = Plan {
        routes: Vec::with_capacity(snapshot.deployments.len()),
        to_compile: HashSet::new(),
        needed: HashSet::new(),
        invalid: Vec::new(),
    };
    for deployment in snapshot.deployments {
        let Some(tier) = snapshot.tiers.get(&deployment.tier).cloned() else {
            plan.invalid.push((deployment.id, format!("unknown tier {}", deployment.tier)));
            continue;
        };
        let pattern =
            match RoutePattern::parse_stored(&deployment.route, deployment.host.as_deref()) {
                Ok(pattern) => pattern,
                Err(e) => {
                    plan.invalid.push((deployment.id, format!("stored route is invalid: {e}")));
                    continue;
                }
            };
        plan.needed.insert(deployment.component.clone());
        let earlier = served.get(&deployment.id).copied().filter(|v| *v != deployment.version);
        let target = match (compiled(&deployment.component), earlier) {
            (Compilation::Ready(app), _) => Target::Serve(app),
            (Compilation::Pending, Some(version)) => Target::KeepServing { version, failed: None },
            (Compilation::Failed(error), Some(version)) => {
                Target::KeepServing { version, failed: Some(error) }
            }
            (Compilation::Pending, None) => Target::Wait,
            (Compilation::Failed(error), None) => Target::Unavailable(error),
        };
        if !matches!(target, Target::Serve(_)) {
            plan.to_compile.insert(deployment.component.clone());
        }
        let canary = deployment.at_canary().and_then(|canary| {
            plan.needed.insert(canary.component.clone());
            match compiled(&canary.component) {
                Compilation::Ready(app) => Some(PlannedCanary { deployment: canary, app }),
                Compilation::Pending | Compilation::Failed(_) => {
                    plan.to_compile.insert(canary.component.clone());
                    None
                }
            }
        });
        plan.routes.push(PlannedRoute { pattern, deployment, tier, target, canary });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::TierLimits;

    fn tiers() -> HashMap<String, Arc<Tier>> {
        let pro = Tier { name: "pro".into(), limits: TierLimits::default() };
        HashMap::from([("pro".to_string(), Arc::new(pro))])
    }

    fn deployment(id: &str, route: &str, version: i64, component: &str) -> Deployment {
        Deployment {
            id: id.into(),
            tenant_id: 1,
            tenant: "acme".into(),
            tier: "pro".into(),
            route: route.into(),
            host: None,
            version,
            component: component.into(),
            config: Default::default(),
            secrets: Default::default(),
            allowed_outbound_hosts: Vec::new(),
            max_instance_reuse: 1,
            max_instance_concurrency: 1,
            created_at: 0,
            version_pinning: false,
            canary: None,
        }
    }

    /// A node that has compiled `ready` and failed to compile `failed`.
    fn node<'a>(
        ready: &'a [&'a str],
        failed: &'a [&'a str],
    ) -> impl Fn(&str) -> Compilation<String> + 'a {
        move |digest| {
            if ready.contains(&digest) {
                Compilation::Ready(format!("app:{digest}"))
            } else if failed.contains(&digest) {
                Compilation::Failed(format!("{digest} is broken"))
            } else {
                Compilation::Pending
            }
        }
    }

    fn targets(plan: &Plan<String>) -> Vec<(String, Target<String>)> {
        plan.routes.iter().map(|r| (r.deployment.id.clone(), r.target.clone())).collect()
    }

    #[test]
    fn compiled_components_are_served_and_nothing_is_compiled() {
        let snapshot = Snapshot {
            deployments: vec![deployment("d1", "/a/...", 1, "c1"), deployment("d2", "/b", 3, "c2")],
            tiers: tiers(),
        };
        let plan = build(snapshot, node(&["c1", "c2"], &[]), &HashMap::new());
        assert_eq!(
            targets(&plan),
            [
                ("d1".to_string(), Target::Serve("app:c1".to_string())),
                ("d2".to_string(), Target::Serve("app:c2".to_string()))
            ]
        );
        assert!(plan.to_compile.is_empty());
        assert_eq!(plan.needed, HashSet::from(["c1".to_string(), "c2".to_string()]));
        assert_eq!(plan.waiting(), 0);
        assert_eq!(plan.routes[0].pattern.to_string(), "/a/...");
    }

    #[test]
    fn a_new_deployment_not_compiled_here_waits_and_is_queued() {
        let snapshot =
            Snapshot { deployments: vec![deployment("d1", "/a", 1, "c1")], tiers: tiers() };
        let plan = build(snapshot, node(&[], &[]), &HashMap::new());
        assert_eq!(targets(&plan), [("d1".to_string(), Target::Wait)]);
        assert_eq!(plan.to_compile, HashSet::from(["c1".to_string()]));
        assert_eq!(plan.waiting(), 1);
    }

    #[test]
    fn a_redeployed_route_keeps_serving_its_previous_version_until_the_new_one_is_ready() {
        let snapshot =
            Snapshot { deployments: vec![deployment("d1", "/a", 2, "c2")], tiers: tiers() };
        let served = HashMap::from([("d1".to_string(), 1)]);
        let plan = build(snapshot.clone(), node(&["c1"], &[]), &served);
        assert_eq!(
            targets(&plan),
            [("d1".to_string(), Target::KeepServing { version: 1, failed: None })]
        );
        assert_eq!(plan.to_compile, HashSet::from(["c2".to_string()]));
        assert_eq!(plan.waiting(), 0, "a route still served does not make the node unready");

        // Once compiled, the live version is served.
        let plan = build(snapshot, node(&["c1", "c2"], &[]), &served);
        assert_eq!(targets(&plan), [("d1".to_string(), Target::Serve("app:c2".to_string()))]);
        assert!(plan.to_compile.is_empty());
    }

    #[test]
    fn a_failed_redeploy_keeps_the_previous_version_and_a_failed_new_route_is_unavailable() {
        let snapshot = Snapshot {
            deployments: vec![deployment("d1", "/a", 2, "bad"), deployment("d2", "/b", 1, "bad")],
            tiers: tiers(),
        };
        let served = HashMap::from([("d1".to_string(), 1)]);
        let plan = build(snapshot, node(&[], &["bad"]), &served);
        assert_eq!(
            targets(&plan),
            [
                (
                    "d1".to_string(),
                    Target::KeepServing { version: 1, failed: Some("bad is broken".into()) }
                ),
                ("d2".to_string(), Target::Unavailable("bad is broken".into())),
            ]
        );
        assert_eq!(plan.to_compile, HashSet::from(["bad".to_string()]));
        assert_eq!(plan.waiting(), 0, "a failure is settled: it does not hold readiness");
    }

    #[test]
    fn a_rollback_to_a_version_not_compiled_here_keeps_the_current_one_meanwhile() {
        let snapshot =
            Snapshot { deployments: vec![deployment("d1", "/a", 1, "c1")], tiers: tiers() };
        let served = HashMap::from([("d1".to_string(), 2)]);
        let plan = build(snapshot, node(&["c2"], &[]), &served);
        assert_eq!(
            targets(&plan),
            [("d1".to_string(), Target::KeepServing { version: 2, failed: None })]
        );
    }

    #[test]
    fn deployments_with_an_unknown_tier_or_a_bad_route_are_left_out_with_a_reason() {
        let mut unknown = deployment("d1", "/a", 1, "c1");
        unknown.tier = "gone".into();
        let bad = deployment("d2", "no-slash", 1, "c1");
        let snapshot = Snapshot {
            deployments: vec![unknown, bad, deployment("d3", "/c", 1, "c3")],
            tiers: tiers(),
        };
        let plan = build(snapshot, node(&["c1", "c3"], &[]), &HashMap::new());
        assert_eq!(targets(&plan), [("d3".to_string(), Target::Serve("app:c3".to_string()))]);
        assert_eq!(plan.invalid.len(), 2);
        assert!(plan.invalid[0].1.contains("unknown tier gone"));
        assert!(plan.invalid[1].1.contains("stored route is invalid"));
        assert_eq!(plan.needed, HashSet::from(["c3".to_string()]), "c1 serves nothing");
    }

    #[test]
    fn a_canary_is_served_beside_the_live_version_once_its_component_is_ready_here() {
        let mut d = deployment("d1", "/a", 1, "c1");
        d.canary = Some(Box::new(crate::store::Canary {
            version: 2,
            component: "c2".into(),
            config: Default::default(),
            allowed_outbound_hosts: Vec::new(),
            max_instance_reuse: 1,
            max_instance_concurrency: 1,
            created_at: 0,
            percent: 10,
            sticky_header: None,
            guard: Default::default(),
            next_at: None,
        }));
        let snapshot = Snapshot { deployments: vec![d], tiers: tiers() };
        // Not compiled here yet: the live version takes every request
        // meanwhile, and the canary's component is queued.
        let plan = build(snapshot.clone(), node(&["c1"], &[]), &HashMap::new());
        assert!(plan.routes[0].canary.is_none());
        assert_eq!(plan.to_compile, HashSet::from(["c2".to_string()]));
        assert_eq!(plan.waiting(), 0, "the live version is served: the node is ready");
        assert_eq!(plan.needed, HashSet::from(["c1".to_string(), "c2".to_string()]));
        let plan = build(snapshot, node(&["c1", "c2"], &[]), &HashMap::new());
        let canary = plan.routes[0].canary.as_ref().expect("the canary");
        assert_eq!((canary.deployment.version, canary.app.as_str()), (2, "app:c2"));
        assert_eq!(plan.routes[0].target, Target::Serve("app:c1".to_string()));
        assert!(plan.to_compile.is_empty());
    }

    #[test]
    fn one_component_behind_two_routes_is_compiled_once() {
        let snapshot = Snapshot {
            deployments: vec![deployment("d1", "/a", 1, "c"), deployment("d2", "/b", 1, "c")],
            tiers: tiers(),
        };
        let plan = build(snapshot, node(&[], &[]), &HashMap::new());
        assert_eq!(plan.to_compile, HashSet::from(["c".to_string()]));
        assert_eq!(plan.waiting(), 2);
    }
}
