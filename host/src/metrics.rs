//! Prometheus metrics. Names follow the operations guide
//! (`wasmwiz_http_requests_total`, `wasmwiz_http_request_duration_seconds`,
//! `wasmwiz_wasm_executions_total`, `wasmwiz_database_connections_active`)
//! plus what an operator needs to run the runtime.
//!
//! Labels stay bounded: a route's pattern and its tenant (never a raw
//! path), a status code, an outcome. The request path touches no lock:
//! each live route resolves its counters and histogram once, when the
//! route table is built ([`RouteMetrics`]), and then only adds to atomics.

use std::sync::Arc;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::runtime::{ExecutionReport, Outcome, Refusal};

/// Latency buckets from 100 µs to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Status codes given their own pre-resolved counter per route; others are
/// resolved when they happen (rare by construction).
const COMMON_STATUSES: [u16; 12] = [200, 201, 204, 304, 400, 404, 408, 413, 429, 500, 503, 504];

/// Every metric of one process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `wasmwiz_http_requests_total{route,tenant,status}`.
    pub http_requests: IntCounterVec,
    /// `wasmwiz_http_request_duration_seconds{route,tenant}` (to the response head).
    pub http_duration: HistogramVec,
    /// `wasmwiz_wasm_executions_total{tenant,outcome}`.
    pub executions: IntCounterVec,
    /// `wasmwiz_quota_rejections_total{tenant}`.
    pub quota_rejections: IntCounterVec,
    /// `wasmwiz_quota_backend_degraded`: 1 while Redis is away.
    pub quota_degraded: IntGauge,
    /// `wasmwiz_redis_errors_total`.
    pub redis_errors: IntCounter,
    /// `wasmwiz_quota_redis_calls_total`.
    pub quota_redis_calls: IntCounter,
    /// `wasmwiz_store_errors_total`.
    pub store_errors: IntCounter,
    /// `wasmwiz_store_up`: 1 while the store answers.
    pub store_up: IntGauge,
    /// `wasmwiz_database_connections_active`.
    pub db_connections: IntGauge,
    /// `wasmwiz_compile_duration_seconds`.
    pub compile_duration: Histogram,
    /// `wasmwiz_compiled_cache_total{result="hit"|"miss"}`.
    pub compiled_cache: IntCounterVec,
    /// `wasmwiz_instantiation_duration_seconds`.
    pub instantiate_duration: Histogram,
    /// `wasmwiz_instances_in_use`.
    pub instances_in_use: IntGauge,
    /// `wasmwiz_instance_pool_capacity`.
    pub instance_pool_capacity: IntGauge,
    /// `wasmwiz_instance_pool_exhausted_total`.
    pub pool_exhausted: IntCounter,
    /// `wasmwiz_concurrency_rejections_total{tenant,reason}`: refused for
    /// the tier's cap or the pool's fair share.
    pub concurrency_rejections: IntCounterVec,
    /// `wasmwiz_compile_failures_total`.
    pub compile_failures: IntCounter,
    /// `wasmwiz_route_catch_ups_total`: checks of the store made for
    /// requests no route matched.
    pub catch_ups: IntCounter,
    /// `wasmwiz_compilations_pending`.
    pub compilations_pending: IntGauge,
    /// `wasmwiz_instances_reused_total`.
    pub instances_reused: IntCounter,
    /// `wasmwiz_instance_memory_bytes`.
    pub instance_memory: IntGauge,
    /// `wasmwiz_instances_idle`.
    pub instances_idle: IntGauge,
    /// `wasmwiz_deployments_live`.
    pub deployments_live: IntGauge,
    /// `wasmwiz_components_uploaded_total{result}`.
    pub uploads: IntCounterVec,
    /// `wasmwiz_api_keys_created_total`.
    pub keys_created: IntCounter,
    /// `wasmwiz_tenants_created_total`.
    pub tenants_created: IntCounter,
    /// `wasmwiz_guest_headers_stripped_total{tenant,header}`: response
    /// headers a guest set that would widen its reach in a browser.
    pub guest_headers_stripped: IntCounterVec,
    /// `wasmwiz_input_buffered_bytes`: request bytes read ahead of
    /// admission (bodies of unknown length), against `MAX_BUFFERED_INPUT`.
    pub input_buffered: IntGauge,
    /// `wasmwiz_compile_slots_waiting`: compilations waiting for one of
    /// the node's compile slots (handed out to tenants in turn).
    pub compile_slots_waiting: IntGauge,
    /// `wasmwiz_schedule_firings_total{tenant,result}`: ok, failed, refused.
    pub schedule_firings: IntCounterVec,
    /// `wasmwiz_schedule_lateness_seconds`: from a due time to its firing.
    pub schedule_lateness: Histogram,
    /// `wasmwiz_queue_deliveries_total{tenant,result}`: ok, retry, dead,
    /// refused.
    pub queue_deliveries: IntCounterVec,
    /// `wasmwiz_queue_depth{tenant,queue}`: messages waiting.
    pub queue_depth: IntGaugeVec,
    /// `wasmwiz_queue_dead_letters{tenant,queue}`.
    pub queue_dead: IntGaugeVec,
    /// `wasmwiz_queue_oldest_age_seconds{tenant,queue}`.
    pub queue_oldest_age: IntGaugeVec,
    /// `wasmwiz_rollout_requests_total{tenant,route,side,result}`: requests
    /// of routes with a rollout running, by side (stable, canary) and
    /// result (ok, error).
    pub rollout_requests: IntCounterVec,
    /// `wasmwiz_rollouts_stopped_total{tenant,route}`: canaries this node
    /// stopped for failing more than their stable version.
    pub rollouts_stopped: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
            )
            .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "wasmwiz_http_request_duration_seconds",
                "Time from a request's arrival to its response head, by route",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "tenant"],
        )
        .expect("valid metric");
        registry.register(Box::new(http_duration.clone())).expect("registered once");

        let metrics = Self {
            http_requests: counter_vec(
                "wasmwiz_http_requests_total",
                "HTTP requests answered, by route pattern, tenant and status",
                &["route", "tenant", "status"],
            ),
            http_duration,
            executions: counter_vec(
                "wasmwiz_wasm_executions_total",
                "Component invocations, by tenant and outcome",
                &["tenant", "outcome"],
            ),
            quota_rejections: counter_vec(
                "wasmwiz_quota_rejections_total",
                "Requests refused with 429 because a tenant's quota was used up",
                &["tenant"],
            ),
            quota_degraded: gauge(
                "wasmwiz_quota_backend_degraded",
                "1 while the quota backend (Redis) is unreachable and quotas are counted per node",
            ),
            redis_errors: counter(
                "wasmwiz_redis_errors_total",
                "Redis calls that failed or timed out",
            ),
            quota_redis_calls: counter(
                "wasmwiz_quota_redis_calls_total",
                "Quota script calls to Redis: a lease, a request counted alone, or a usage read",
            ),
            store_errors: counter("wasmwiz_store_errors_total", "Store operations that failed"),
            store_up: gauge("wasmwiz_store_up", "1 while the store (database) answers"),
            db_connections: gauge(
                "wasmwiz_database_connections_active",
                "Database connections in use by this node",
            ),
            compile_duration: histogram(
                "wasmwiz_compile_duration_seconds",
                "Time to compile an uploaded component",
            ),
            compiled_cache: counter_vec(
                "wasmwiz_compiled_cache_total",
                "Components prepared from the compiled-code cache (hit) or compiled (miss)",
                &["result"],
            ),
            instantiate_duration: histogram(
                "wasmwiz_instantiation_duration_seconds",
                "Time to instantiate a component for one request",
            ),
            instances_in_use: gauge("wasmwiz_instances_in_use", "Component instances running now"),
            instance_memory: gauge(
                "wasmwiz_instance_memory_bytes",
                "Linear memory held by the instances alive, running or idle",
            ),
            instance_pool_capacity: gauge(
                "wasmwiz_instance_pool_capacity",
                "Component instances that may run at once (INSTANCE_POOL_SIZE)",
            ),
            pool_exhausted: counter(
                "wasmwiz_instance_pool_exhausted_total",
                "Requests refused with 503 because every instance slot was busy",
            ),
            concurrency_rejections: counter_vec(
                "wasmwiz_concurrency_rejections_total",
                "Requests refused because their tenant ran its tier's max_concurrency on this \
                 node (reason tenant_cap, 429) or held its fair share of a busy instance pool \
                 (reason fair_share, 503)",
                &["tenant", "reason"],
            ),
            catch_ups: counter(
                "wasmwiz_route_catch_ups_total",
                "Checks of the store's change counter made before answering 404 to requests no \
                 route matched (shared between such requests, at most one per 100 ms)",
            ),
            compile_failures: counter(
                "wasmwiz_compile_failures_total",
                "Attempts to compile a deployed component on this node that failed (each is \
                 tried again after a back-off)",
            ),
            compilations_pending: gauge(
                "wasmwiz_compilations_pending",
                "Deployed components this node is compiling or about to compile",
            ),
            instances_reused: counter(
                "wasmwiz_instances_reused_total",
                "Requests served by an instance kept from an earlier request \
                 (deployments with max_instance_reuse above 1)",
            ),
            instances_idle: gauge(
                "wasmwiz_instances_idle",
                "Component instances kept idle for reuse",
            ),
            deployments_live: gauge("wasmwiz_deployments_live", "Routes this node serves"),
            uploads: counter_vec(
                "wasmwiz_components_uploaded_total",
                "Component uploads, by result (created, existing, refused)",
                &["result"],
            ),
            keys_created: counter("wasmwiz_api_keys_created_total", "API keys created"),
            tenants_created: counter("wasmwiz_tenants_created_total", "Tenants created"),
            rollout_requests: counter_vec(
                "wasmwiz_rollout_requests_total",
                "Requests of routes with a canary rollout running, by side (stable, canary) and \
                 result (error: a 5xx answer, a trap, a timeout, out of memory; else ok)",
                &["tenant", "route", "side", "result"],
            ),
            rollouts_stopped: counter_vec(
                "wasmwiz_rollouts_stopped_total",
                "Canaries this node stopped because their error rate exceeded the stable \
                 version's by more than the rollout allows",
                &["tenant", "route"],
            ),
            guest_headers_stripped: counter_vec(
                "wasmwiz_guest_headers_stripped_total",
                "Response headers removed from a guest's answer because they would reach past \
                 its own routes in a browser (Service-Worker-Allowed, Clear-Site-Data, a \
                 Set-Cookie for another domain), by tenant and header",
                &["tenant", "header"],
            ),
            schedule_firings: counter_vec(
                "wasmwiz_schedule_firings_total",
                "Schedule firings, by tenant and result (ok, failed, refused by a quota or the node)",
                &["tenant", "result"],
            ),
            schedule_lateness: histogram(
                "wasmwiz_schedule_lateness_seconds",
                "Time from a schedule's due time to the start of its firing",
            ),
            queue_deliveries: counter_vec(
                "wasmwiz_queue_deliveries_total",
                "Queue message deliveries, by tenant and result (ok, retry, dead, refused)",
                &["tenant", "result"],
            ),
            queue_depth: gauge_vec(
                "wasmwiz_queue_depth",
                "Messages waiting in a queue (ready, being delivered or retrying)",
                &["tenant", "queue"],
            ),
            queue_dead: gauge_vec(
                "wasmwiz_queue_dead_letters",
                "Messages in a queue's dead letters",
                &["tenant", "queue"],
            ),
            queue_oldest_age: gauge_vec(
                "wasmwiz_queue_oldest_age_seconds",
                "Age of the oldest message waiting in a queue",
                &["tenant", "queue"],
            ),
            compile_slots_waiting: gauge(
                "wasmwiz_compile_slots_waiting",
                "Compilations (uploads, and deployments compiled here) waiting for a compile slot",
            ),
            input_buffered: gauge(
                "wasmwiz_input_buffered_bytes",
                "Request body bytes held while read ahead of admission (MAX_BUFFERED_INPUT caps them)",
            ),
            registry,
        };
        let build = IntGauge::with_opts(
            Opts::new("wasmwiz_build_info", "Always 1; labels say which build runs")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("wasmtime", "48.0.8"),
        )
        .expect("valid metric");
        build.set(1);
        metrics.registry.register(Box::new(build)).expect("registered once");
        // process_cpu_seconds_total, process_resident_memory_bytes, open
        // file descriptors: for the System Resources dashboard.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        metrics.registry.register(Box::new(process)).expect("registered once");
        Arc::new(metrics)
    }

    /// The handles one route records into.
    pub fn route(&self, route: &str, tenant: &str) -> RouteMetrics {
        RouteMetrics {
            statuses: COMMON_STATUSES.map(|status| {
                self.http_requests.with_label_values(&[route, tenant, &status.to_string()])
            }),
            duration: self.http_duration.with_label_values(&[route, tenant]),
            executions: Outcome::ALL
                .map(|o| self.executions.with_label_values(&[tenant, o.as_str()])),
            quota_rejections: self.quota_rejections.with_label_values(&[tenant]),
            tenant_cap: self.concurrency_rejections.with_label_values(&[tenant, "tenant_cap"]),
            fair_share: self.concurrency_rejections.with_label_values(&[tenant, "fair_share"]),
            instantiate: self.instantiate_duration.clone(),
            reused: self.instances_reused.clone(),
            route: route.to_string(),
            tenant: tenant.to_string(),
            all: self.http_requests.clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// One route's metric handles, resolved once when the route table is built.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    statuses: [IntCounter; COMMON_STATUSES.len()],
    duration: Histogram,
    executions: [IntCounter; Outcome::ALL.len()],
    quota_rejections: IntCounter,
    tenant_cap: IntCounter,
    fair_share: IntCounter,
    instantiate: Histogram,
    reused: IntCounter,
    route: String,
    tenant: String,
    all: IntCounterVec,
}

impl RouteMetrics {
    /// Records an answer and how long its head took.
    pub fn answered(&self, status: u16, seconds: f64) {
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.statuses[i].inc(),
            None => {
                self.all.with_label_values(&[&self.route, &self.tenant, &status.to_string()]).inc()
            }
        }
        self.duration.observe(seconds);
    }

    /// Records the end of an invocation.
    /// An instance kept from an earlier request is counted as reused, not
    /// observed as an instantiation.
    pub fn executed(&self, report: &ExecutionReport) {
        let i = Outcome::ALL
            .iter()
            .position(|o| *o == report.outcome)
            .expect("every outcome is listed");
        self.executions[i].inc();
        if report.reused {
            self.reused.inc();
        } else {
            self.instantiate.observe(report.instantiate.as_secs_f64());
        }
    }

    /// Records a 429 for the quota.
    pub fn rejected(&self) {
        self.quota_rejections.inc();
    }

    /// Records a request refused a place in the instance pool for its
    /// tenant's cap or share (a full pool is counted node-wide).
    pub fn refused(&self, refusal: Refusal) {
        match refusal {
            Refusal::TenantCap { .. } => self.tenant_cap.inc(),
            Refusal::FairShare { .. } => self.fair_share.inc(),
            Refusal::PoolFull => {}
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every metric this module defines is in OPERATIONS.md's list, where
    /// an operator looks for what a series means.
    #[test]
    fn operations_names_every_metric() {
        let source = include_str!("metrics.rs");
        let operations = include_str!("../../OPERATIONS.md");
        // Each string literal that is a metric's name: `"wasmwiz_...`.
        let names: std::collections::BTreeSet<&str> = source
            .match_indices("\"wasmwiz_")
            .filter_map(|(at, _)| {
                let name = &source[at + 1..];
                let name = &name[..name.find('"')?];
                let plain = name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                (plain && name.len() > "wasmwiz_".len()).then_some(name)
            })
            .collect();
        assert!(names.len() > 20, "the metrics' names are read: {names:?}");
        let missing: Vec<&&str> = names.iter().filter(|n| !operations.contains(**n)).collect();
        assert!(missing.is_empty(), "OPERATIONS.md does not name {missing:?}");
    }
}
