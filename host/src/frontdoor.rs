//! The front door of a `serve` node: what answers on each of its listeners
//! before (or instead of) tenants' routes — the API, the web console,
//! `/health`, `/ready` and the metrics.
//!
//! Each listener plays one [`Role`]:
//! - [`Role::Serving`]: tenants' routes, with the API, `/health` and
//!   `/ready` (and the metrics when `METRICS_ADDR=public`). Never the
//!   console: every host-less route of every tenant answers on this origin,
//!   so a page a tenant serves here would run as the console's origin (read
//!   the key in its session storage, script a console window, register a
//!   service worker over it).
//! - [`Role::Console`]: the console and the API it calls, `/health` and
//!   `/ready`; no tenant route ever answers there, so no tenant content
//!   shares the console's browser origin (the model of a provider's
//!   dashboard on a domain of its own, apart from the tenants' domain).
//! - [`Role::Metrics`]: the metrics only (they name every tenant and route).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tower::ServiceExt as _;

use crate::metrics::RouteMetrics;
use crate::node::Node;
use crate::response::{BoxError, ResponseBody, error_response, full};
use crate::server::{ConnInfo, Handler};

/// What a listener of the node answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Tenants' routes, the API, `/health`, `/ready`.
    Serving,
    /// The console, the API, `/health`, `/ready`.
    Console,
    /// The metrics alone.
    Metrics,
}

/// Answers the requests of one listener, by its [`Role`].
pub struct FrontDoor {
    role: Role,
    node: Arc<Node>,
    api: axum::Router,
    /// Counts API answers (one label for the whole API).
    api_metrics: RouteMetrics,
    /// Where metrics are served on this listener, if they are.
    metrics_path: Option<String>,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor").field("role", &self.role).finish_non_exhaustive()
    }
}

impl FrontDoor {
    /// The front door of a listener playing `role`; `metrics_path` is
    /// where metrics answer on it, if they do.
    pub fn new(
        role: Role,
        node: Arc<Node>,
        api: axum::Router,
        metrics_path: Option<String>,
    ) -> Self {
        let api_metrics = node.plane().metrics().route("/api", "-");
        Self { role, node, api, api_metrics, metrics_path }
    }

    /// What this front door answers.
    pub fn role(&self) -> Role {
        self.role
    }

    async fn api(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let started = std::time::Instant::now();
        let request = request.map(axum::body::Body::new);
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        self.api_metrics.answered(response.status().as_u16(), started.elapsed().as_secs_f64());
        response.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
    }

    /// `503` only while starting (until the first route table with every
    /// known deployment servable is published) and while draining; a
    /// running node compiling what was deployed meanwhile stays `200`.
    fn ready(&self) -> Response<ResponseBody> {
        let readiness = self.node.readiness();
        let store = if readiness.store_ok { "ok" } else { "down" };
        let (status, state) = if readiness.draining {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else if !readiness.loaded {
            (StatusCode::SERVICE_UNAVAILABLE, "loading")
        } else if store != "ok" {
            // A shared dependency blinking must not take every node out of
            // the load balancer: live routes are still served.
            (StatusCode::OK, "degraded")
        } else {
            (StatusCode::OK, "ready")
        };
        let quota = self.node.plane().quota().map_or("off", |q| q.health().as_str());
        let state = if state == "ready" && quota == "degraded" { "degraded" } else { state };
        let mut body = serde_json::json!({ "status": state, "store": store, "quota": quota });
        let pending = readiness.pending_compilations;
        if pending > 0 {
            body["pending_compilations"] = serde_json::json!(pending);
        }
        json_response(status, &body)
    }

    /// `/health` and `/ready`, on the listeners that have them.
    fn probe(&self, request: &Request<Incoming>) -> Option<Response<ResponseBody>> {
        let path = request.uri().path();
        if path != "/health" && path != "/ready" {
            return None;
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response =
                error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(response);
        }
        Some(if path == "/health" {
            json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
        } else {
            self.ready()
        })
    }
}

impl Handler for FrontDoor {
    async fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<ResponseBody> {
        let path = request.uri().path();
        if self.metrics_path.as_deref() == Some(path) {
            return metrics_response(&self.node);
        }
        if self.role == Role::Metrics {
            return error_response(StatusCode::NOT_FOUND, "not_found", "metrics only");
        }
        if path == "/api" || path.starts_with("/api/") {
            return self.api(request).await;
        }
        if let Some(response) = self.probe(&request) {
            return response;
        }
        match self.role {
            Role::Console if path == "/" => {
                let mut response = Response::new(crate::response::empty());
                *response.status_mut() = StatusCode::FOUND;
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/console"));
                response
            }
            Role::Console if crate::console::is_console(path) => crate::console::respond(&request),
            Role::Console => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "this is the console's listener: tenants' routes answer on the serving address",
            ),
            Role::Serving if crate::console::is_console(path) => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "the console is served on its own address (CONSOLE_ADDR), never beside tenants' \
                 routes",
            ),
            _ => self.node.plane().handle(request, conn).await,
        }
    }
}

/// Renders the metrics, refreshing first the gauges that are read rather
/// than counted.
fn metrics_response(node: &Node) -> Response<ResponseBody> {
    let metrics = node.plane().metrics();
    let runtime = node.plane().runtime();
    metrics.instances_in_use.set(runtime.instances_in_use() as i64);
    metrics.instances_idle.set(runtime.instances_idle() as i64);
    metrics.instance_memory.set(i64::try_from(runtime.instance_memory()).unwrap_or(i64::MAX));
    metrics.instance_pool_capacity.set(i64::from(runtime.pool_size()));
    metrics.db_connections.set(i64::from(node.store().connections_active()));
    metrics.store_up.set(i64::from(node.readiness().store_ok));
    metrics.compile_slots_waiting.set(node.components().compile_slots_waiting() as i64);
    metrics.input_buffered.set(i64::try_from(node.plane().input_buffered()).unwrap_or(i64::MAX));
    if let Some(quota) = node.plane().quota() {
        metrics.quota_degraded.set(i64::from(quota.health() == crate::quota::Health::Degraded));
        catch_up(&metrics.redis_errors, quota.errors());
        catch_up(&metrics.quota_redis_calls, quota.calls());
    }
    let mut response = Response::new(full(metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Raises `counter` to `total`, a count kept elsewhere (a backend's own
/// counter): metrics counters only go up by increments.
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}
