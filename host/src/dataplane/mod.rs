//! The invocation path: route lookup, request limits, pool admission,
//! invocation, and the access log line. Shared by `run` and `serve`.
//! `split`: routes with a canary rollout running.
//!
//! Nothing here queries a store or compiles: the route table is an immutable
//! snapshot swapped whole when deployments change, so a request in flight
//! keeps the version it looked up.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use wasmtime_wasi_http::p2::body::HyperIncomingBody;

use crate::logs::{self, LogEvent, LogHub, MAX_EVENT_OUTPUT, MAX_EVENT_PATH, TenantLog};
use crate::metrics::{Metrics, RouteMetrics};
use crate::quota::{QuotaBackend, Rates};
use crate::response::{ResponseBody, error_response, retry_later};
use crate::router::{PathError, RoutePattern, RouteTable, normalize_path, request_host};
use crate::runtime::body::InputBudget;
use crate::runtime::{
    App, ExecutionReport, Instances, InvocationTiming, InvokeOptions, Limits, OutboundPolicy,
    Refusal, Runtime, TenantSlots, read_request, refusal_response,
};
use crate::server::ConnInfo;
use crate::telemetry::{self, RequestTrace, TraceParent};
use crate::tenancy::Tier;
use crate::usage::TenantUsage;

mod split;

pub use split::{RolloutHealth, Side, SplitRoute, StopCanary};

/// A route that is being served: the component behind it and its limits.
#[derive(Debug)]
pub struct LiveRoute {
    /// The route as deployed.
    pub pattern: RoutePattern,
    /// The component, ready to instantiate.
    pub app: App,
    /// Limits for each invocation.
    pub limits: Limits,
    /// The route in Spin syntax, for logs and metric labels.
    pub label: String,
    /// What the component's outgoing HTTP requests may reach.
    pub outbound: OutboundPolicy,
    /// The tenant and deployment behind the route (`None` for `wasmwiz run`).
    pub owner: Option<RouteOwner>,
    /// The route's metric handles, resolved once.
    pub metrics: Arc<RouteMetrics>,
    /// Key-value access and configuration of its invocations.
    pub capabilities: Arc<crate::runtime::Capabilities>,
    /// Its kept instances, when the deployment opted in to instance reuse
    /// (and, for WASIp3, concurrency per instance).
    pub instances: Option<Arc<Instances>>,
    /// The rollout this route is a side of, counting its outcomes.
    pub rollout: Option<(Arc<RolloutHealth>, Side)>,
}

/// Who a served route belongs to.
#[derive(Debug, Clone)]
pub struct RouteOwner {
    /// The tenant's id.
    pub tenant_id: i64,
    /// The tenant's name.
    pub tenant: String,
    /// The deployment.
    pub deployment_id: String,
    /// Its live version.
    pub version: i64,
    /// The tenant's tier.
    pub tier: Arc<Tier>,
    /// The tenant's quota rates (from its tier).
    pub rates: Rates,
    /// Their `RateLimit-Policy` value, made once.
    pub rate_policy: Option<HeaderValue>,
    /// The tenant's usage counters on this node.
    pub usage: Arc<TenantUsage>,
    /// The tenant's hold on this node's instance pool.
    pub slots: Arc<TenantSlots>,
    /// The tenant's log stream on this node (`None` with the stream off).
    pub log: Option<Arc<TenantLog>>,
    /// Whether requests may pick a served version with `wasmwiz-version`.
    pub version_pinning: bool,
}

/// What a route of the table does on this node.
#[derive(Debug, Clone)]
pub enum RouteTarget {
    /// Served by a component that is ready.
    Live(Arc<LiveRoute>),
    /// A rollout runs: split between the live version and its canary.
    Split(Arc<SplitRoute>),
    /// Deployed (acknowledged by some node) while this node still compiles
    /// its component: requests wait for it, up to `COMPILE_WAIT`.
    Compiling,
    /// Deployed, but its component cannot be compiled on this node; it is
    /// tried again after a back-off.
    Unavailable {
        /// Seconds until the next attempt, for `Retry-After`.
        retry_after_s: u64,
    },
}

/// The current routes, as one immutable table.
pub type Routes = RouteTable<RouteTarget>;

/// Request ids: a random per-process prefix and a counter, so ids are unique
/// across nodes without coordination and cost one atomic add.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self { prefix: rand::random(), next: AtomicU64::new(1) }
    }
}

impl RequestIds {
    /// The next id: 16 hex digits.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:08x}", self.prefix, n as u32)
    }
}

/// The data plane of one node.
#[derive(Debug)]
pub struct DataPlane {
    runtime: Arc<Runtime>,
    /// Admission by tier quota; `None` for `wasmwiz run` or when disabled.
    quota: Option<Arc<dyn QuotaBackend>>,
    routes: ArcSwap<Routes>,
    /// Counts the tables published: requests that wait for a compiling
    /// route look again at each one.
    published: tokio::sync::watch::Sender<u64>,
    /// How long such a request waits.
    compile_wait: Duration,
    body_read_timeout: Duration,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    /// Counts requests no route matched.
    unrouted: RouteMetrics,
    /// Whether answers carry a `Server-Timing` header.
    server_timing: bool,
    /// Where tenants' invocation events go.
    logs: Option<Arc<LogHub>>,
    /// Request bytes read ahead of admission, node-wide.
    input_budget: Arc<InputBudget>,
    /// Asked before a request no route matched is answered 404: the node,
    /// which may be behind the store (none for `wasmwiz run`).
    catch_up: std::sync::OnceLock<std::sync::Weak<dyn CatchUp>>,
}

/// Read your writes across nodes: a node whose route table may be older
/// than the store (a change made through another node, or `wasmwiz admin`,
/// not heard of yet) catches up before it says a route does not exist.
pub trait CatchUp: Send + Sync {
    /// Returns once the node has compared its table with the store (and
    /// rebuilt it if the store had moved) in a check that began after
    /// `missed_at`: many misses share one check.
    fn catch_up(
        &self,
        missed_at: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// What a data plane is built from.
#[derive(Debug)]
pub struct DataPlaneSettings {
    /// Admission by tier quota, if any.
    pub quota: Option<Arc<dyn QuotaBackend>>,
    /// Longest pause inside a request body.
    pub body_read_timeout: Duration,
    /// How long a request for a route whose component is still compiling
    /// on this node waits for it.
    pub compile_wait: Duration,
    /// Where metrics are recorded.
    pub metrics: Arc<Metrics>,
    /// Whether answers carry a `Server-Timing` header.
    pub server_timing: bool,
    /// Where tenants' invocation events go (`None`: nowhere).
    pub logs: Option<Arc<LogHub>>,
    /// Bytes of bodies of unknown length read ahead of admission, at most,
    /// all requests together (`MAX_BUFFERED_INPUT`).
    pub max_buffered_input: u64,
}

impl DataPlane {
    /// A data plane with no routes yet.
    pub fn new(runtime: Arc<Runtime>, settings: DataPlaneSettings) -> Self {
        Self {
            runtime,
            quota: settings.quota,
            routes: ArcSwap::from_pointee(Routes::new()),
            published: tokio::sync::watch::Sender::new(0),
            compile_wait: settings.compile_wait,
            body_read_timeout: settings.body_read_timeout,
            ids: RequestIds::default(),
            unrouted: settings.metrics.route("-", "-"),
            metrics: settings.metrics,
            server_timing: settings.server_timing,
            logs: settings.logs,
            input_budget: InputBudget::new(settings.max_buffered_input),
            catch_up: std::sync::OnceLock::new(),
        }
    }

    /// The tenant log streams, when they are on.
    pub fn logs(&self) -> Option<&Arc<LogHub>> {
        self.logs.as_ref()
    }

    /// Request bytes held now, read ahead of admission.
    pub fn input_buffered(&self) -> u64 {
        self.input_budget.held()
    }

    /// The metrics this data plane records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Who catches up with the store before a miss is answered 404 (set
    /// once, by the node that owns this plane).
    pub fn set_catch_up(&self, catch_up: std::sync::Weak<dyn CatchUp>) {
        let _ = self.catch_up.set(catch_up);
    }

    /// The route serving `path` on `host`, looked up again after the node
    /// caught up with the store when the table has none; the answer to
    /// send when there is none even then, or it cannot serve.
    async fn route_for(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &http::HeaderMap,
        deployment: Option<&str>,
    ) -> Result<Arc<LiveRoute>, Response<ResponseBody>> {
        let mut target = self.lookup(host, path);
        if target.is_none()
            && let Some(node) = self.catch_up.get().and_then(std::sync::Weak::upgrade)
        {
            node.catch_up(Instant::now()).await;
            target = self.lookup(host, path);
        }
        let route = match target {
            Some(RouteTarget::Live(route)) => pick_live(route, headers),
            Some(RouteTarget::Split(split)) => split.choose(headers),
            Some(RouteTarget::Compiling) => self.wait_for_compile(host, path, headers).await,
            Some(RouteTarget::Unavailable { retry_after_s }) => Err(unavailable(retry_after_s)),
            None => Err(not_found()),
        }?;
        if deployment.is_some_and(|expected| {
            route.owner.as_ref().is_none_or(|o| o.deployment_id != expected)
        }) {
            return Err(error_response(
                StatusCode::CONFLICT,
                "not_this_deployment",
                "this path is no longer served by the deployment the trigger names",
            ));
        }
        Ok(route)
    }

    /// Replaces the whole route table at once.
    pub fn publish(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
        self.published.send_modify(|n| *n += 1);
    }

    fn lookup(&self, host: Option<&str>, path: &str) -> Option<RouteTarget> {
        self.routes.load().lookup(host, path).cloned()
    }

    /// Waits, up to `compile_wait`, for a route whose component this node
    /// is compiling to become servable; the answer to send otherwise.
    async fn wait_for_compile(
        &self,
        host: Option<&str>,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Arc<LiveRoute>, Response<ResponseBody>> {
        let mut published = self.published.subscribe();
        let deadline = tokio::time::Instant::now() + self.compile_wait;
        loop {
            // Looked up after subscribing: a table published in between
            // wakes the wait below.
            match self.lookup(host, path) {
                Some(RouteTarget::Live(route)) => return pick_live(route, headers),
                Some(RouteTarget::Split(split)) => return split.choose(headers),
                Some(RouteTarget::Compiling) => {}
                Some(RouteTarget::Unavailable { retry_after_s }) => {
                    return Err(unavailable(retry_after_s));
                }
                None => return Err(not_found()),
            }
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(retry_later(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "deployment_compiling",
                        "this route's component is still being compiled on this node; retry shortly",
                        COMPILING_RETRY_AFTER_S,
                    ));
                }
            }
        }
    }

    /// The runtime requests run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The quota backend, if admission is on.
    pub fn quota(&self) -> Option<&Arc<dyn QuotaBackend>> {
        self.quota.as_ref()
    }

    /// Answers a request for a deployed route.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ResponseBody> {
        let mut request = request;
        // The trigger headers are the host's to set: a client's never
        // reaches a guest that may trust them.
        if request.headers().keys().any(|name| name.as_str().starts_with(TRIGGER_HEADER_PREFIX)) {
            for name in TRIGGER_HEADERS {
                request.headers_mut().remove(*name);
            }
        }
        self.dispatch(request, conn, None).await
    }

    /// Answers a request the node makes itself (a schedule's firing, a
    /// queue's delivery) for `deployment`: routed, admitted, counted and
    /// logged as any request, but answered `409 not_this_deployment` when
    /// its host and path no longer reach that deployment.
    pub async fn trigger<B>(&self, request: Request<B>, deployment: &str) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error> + std::fmt::Display,
    {
        let conn = ConnInfo { remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)), tls: false };
        self.dispatch(request, conn, Some(deployment)).await
    }

    async fn dispatch<B>(
        &self,
        request: Request<B>,
        conn: ConnInfo,
        deployment: Option<&str>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error> + std::fmt::Display,
    {
        let started = Instant::now();
        let request_id = self.ids.next();
        let method = request.method().clone();
        let trace = RequestTrace::start(
            request.headers().get("traceparent"),
            tracing::trace_span!(
                target: telemetry::TARGET,
                "request",
                otel.kind = "server",
                http.request.method = %method,
                url.path = request.uri().path(),
                http.route = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                request_id = %request_id,
            ),
        );
        let lookup =
            tracing::trace_span!(target: telemetry::TARGET, parent: &trace.span, "route_lookup");
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
            .map(request_host);
        // Routed (and seen by the guest) as a normalising proxy in front
        // would see it: `/a/../b` is `/b`, never a route of `/a`.
        let mut request = request;
        let normalized = match normalize_path(request.uri().path()) {
            Ok(Cow::Borrowed(_)) => Ok(()),
            Ok(Cow::Owned(normal)) => with_path(&mut request, &normal),
            Err(e) => Err(e),
        };
        let route = match normalized {
            Err(e) => Err(error_response(StatusCode::BAD_REQUEST, "bad_path", &e.to_string())),
            Ok(()) => {
                self.route_for(host.as_deref(), request.uri().path(), request.headers(), deployment)
                    .await
            }
        };
        drop(lookup);

        let (response, label) = match route {
            Err(refusal) => (refusal, None),
            Ok(route) => {
                trace.span.record("http.route", route.label.as_str());
                let response =
                    self.invoke(&route, request, conn, request_id.clone(), started, &trace).await;
                (response, Some(route))
            }
        };
        let mut response = response;
        if let Some(route) = &label {
            let stripped = strip_reach_widening(response.headers_mut(), host.as_deref());
            if !stripped.is_empty() {
                self.note_stripped(route, &stripped, &request_id);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        match &label {
            Some(route) => route.metrics.answered(status, elapsed.as_secs_f64()),
            None => self.unrouted.answered(status, elapsed.as_secs_f64()),
        }
        log_access(
            &request_id,
            &method,
            label.as_ref().map_or("-", |r| r.label.as_str()),
            label.as_ref().and_then(|r| r.owner.as_ref()).map_or("-", |o| o.tenant.as_str()),
            status,
            elapsed,
        );
        if trace.span.is_disabled() {
            return response;
        }
        // The request's span, and a `response` span under it, end when the
        // body has been sent.
        trace.span.record("http.response.status_code", status);
        let sending =
            tracing::trace_span!(target: telemetry::TARGET, parent: &trace.span, "response");
        let spans = (trace.span, sending);
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::map_frame(body, move |frame| {
            let _ = &spans;
            frame
        });
        Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
    }

    async fn invoke<B>(
        &self,
        route: &Arc<LiveRoute>,
        request: Request<B>,
        conn: ConnInfo,
        request_id: String,
        started: Instant,
        trace: &RequestTrace,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error> + std::fmt::Display,
    {
        let request = match read_request(
            request,
            route.limits.max_input_bytes,
            self.body_read_timeout,
            Some(&self.input_budget),
        )
        .await
        {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
        let admission_span =
            tracing::trace_span!(target: telemetry::TARGET, parent: &trace.span, "admission");
        let (tenant_slots, cap) = match &route.owner {
            Some(owner) => (Some(&owner.slots), owner.tier.limits.max_concurrency),
            None => (None, None),
        };
        let options = InvokeOptions {
            limits: route.limits,
            request_id,
            https: conn.tls,
            outbound: route.outbound.clone(),
            timing: self.server_timing,
            capabilities: route.capabilities.clone(),
            instances: route.instances.clone(),
            trace: (trace.span.clone(), trace.context),
        };
        let place = match self.runtime.admit(&route.app, &options, tenant_slots, cap) {
            Ok(place) => place,
            Err(refusal) => {
                match refusal {
                    Refusal::PoolFull => self.metrics.pool_exhausted.inc(),
                    _ => route.metrics.refused(refusal),
                }
                return refusal_response(refusal);
            }
        };
        let admit_started = Instant::now();
        // Admission comes last, after every other refusal: a request that is
        // refused (404, 413, 503) is never counted against the quota.
        let admission = match (&self.quota, &route.owner) {
            (Some(quota), Some(owner)) => {
                let admission = match quota.admit_now(owner.tenant_id, owner.rates) {
                    Some(admission) => admission,
                    None => quota.admit(owner.tenant_id, owner.rates).await,
                };
                if !admission.allowed {
                    let mut refusal = retry_later(
                        StatusCode::TOO_MANY_REQUESTS,
                        "quota_exceeded",
                        "this tenant's request quota is used up; see Retry-After",
                        admission.retry_after(),
                    );
                    admission.add_headers(owner.rate_policy.as_ref(), refusal.headers_mut());
                    route.metrics.rejected();
                    return refusal;
                }
                Some((admission, owner.rate_policy.as_ref()))
            }
            _ => None,
        };
        let admit_time = admit_started.elapsed();
        drop(admission_span);
        let event = self.event_maker(route, &request, &options.request_id, started, trace.context);
        let usage = route.owner.as_ref().map(|owner| owner.usage.clone());
        let metrics = route.metrics.clone();
        let rollout = route.rollout.clone();
        let mut response = self
            .runtime
            .invoke(place, &route.app, request, options, move |report| {
                metrics.executed(&report);
                if let Some(usage) = usage {
                    usage.record(&report);
                }
                if let Some((health, side)) = rollout {
                    health.record(side, &report);
                }
                if let Some(event) = event {
                    event.publish(&report);
                }
            })
            .await;
        if let Some((admission, policy)) = admission {
            admission.add_headers(policy, response.headers_mut());
        }
        if self.server_timing {
            add_server_timing(&mut response, admit_time);
        }
        response
    }
}

impl DataPlane {
    /// Counts the headers a guest's answer lost and tells its tenant why,
    /// in its log stream.
    fn note_stripped(&self, route: &LiveRoute, stripped: &[&'static str], request_id: &str) {
        let tenant = route.owner.as_ref().map_or("-", |o| o.tenant.as_str());
        for header in stripped {
            self.metrics.guest_headers_stripped.with_label_values(&[tenant, header]).inc();
        }
        let Some((owner, hub)) = route.owner.as_ref().zip(self.logs.as_ref()) else { return };
        let Some(log) = owner.log.as_ref().filter(|log| log.admit()) else { return };
        hub.publish(
            log,
            LogEvent {
                time: logs::now_rfc3339(),
                kind: "notice".into(),
                node: hub.node().to_string(),
                request_id: Some(request_id.to_string()),
                deployment: Some(owner.deployment_id.clone()),
                version: Some(owner.version),
                route: Some(logs::clip(&route.label, MAX_EVENT_PATH).0),
                message: Some(format!(
                    "removed from the response: {} (a response may not widen its reach past \
                     its own routes in a browser: no service worker scope above its path, no \
                     clearing of the origin's data, no cookie for another domain)",
                    stripped.join(", ")
                )),
                ..LogEvent::default()
            },
        );
    }

    /// What the request's log event needs from the request, when its
    /// tenant's stream is on and its allowance lets the event through
    /// (taken here: a request whose event would be dropped allocates
    /// nothing for it).
    fn event_maker(
        &self,
        route: &Arc<LiveRoute>,
        request: &Request<HyperIncomingBody>,
        request_id: &str,
        started: Instant,
        trace: TraceParent,
    ) -> Option<EventMaker> {
        let log = route.owner.as_ref()?.log.as_ref()?;
        if !log.admit() {
            return None;
        }
        Some(EventMaker {
            hub: self.logs.clone()?,
            log: log.clone(),
            route: route.clone(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            request_id: request_id.to_string(),
            started,
            trace,
        })
    }
}

/// One invocation's log event, made when its guest's run ends.
struct EventMaker {
    hub: Arc<LogHub>,
    log: Arc<TenantLog>,
    route: Arc<LiveRoute>,
    method: http::Method,
    uri: http::Uri,
    request_id: String,
    started: Instant,
    trace: TraceParent,
}

impl EventMaker {
    fn publish(self, report: &ExecutionReport) {
        let EventMaker { hub, log, route, method, uri, request_id, started, trace } = self;
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let (stdout, stdout_cut) = logs::clip(&report.output.stdout.text, MAX_EVENT_OUTPUT);
        let (stderr, stderr_cut) = logs::clip(&report.output.stderr.text, MAX_EVENT_OUTPUT);
        let event = LogEvent {
            time: logs::now_rfc3339(),
            kind: "invocation".into(),
            node: hub.node().to_string(),
            request_id: Some(request_id),
            trace_id: Some(trace.trace_id_hex()),
            deployment: route.owner.as_ref().map(|o| o.deployment_id.clone()),
            version: route.owner.as_ref().map(|o| o.version),
            route: Some(logs::clip(&route.label, MAX_EVENT_PATH).0),
            method: Some(method.to_string()),
            path: Some(logs::clip(uri.path(), MAX_EVENT_PATH).0),
            status: Some(report.status),
            outcome: Some(report.outcome.as_str().to_string()),
            duration_ms: Some(ms(started.elapsed())),
            guest_ms: Some(ms(report.wall)),
            stdout,
            stderr,
            output_dropped_bytes: stdout_cut
                + stderr_cut
                + report.output.stdout.dropped
                + report.output.stderr.dropped,
            ..LogEvent::default()
        };
        hub.publish(&log, event);
    }
}

/// Removes from a guest's response the headers that would let it reach
/// past its own routes in a browser, and returns their names:
/// - `Service-Worker-Allowed`, which lets a service worker registered from
///   one route's script control every path of the origin (other tenants'
///   routes and anything else served there);
/// - `Clear-Site-Data`, which wipes storage, cookies and caches of the
///   whole origin, not only the route's;
/// - a `Set-Cookie` with a `Domain` attribute other than the request's own
///   host, which would set the cookie for a parent domain and so for every
///   tenant host under it.
///
/// Three hash lookups when none is there, which is the common case.
pub fn strip_reach_widening(
    headers: &mut http::HeaderMap,
    host: Option<&str>,
) -> Vec<&'static str> {
    const SERVICE_WORKER_ALLOWED: &str = "service-worker-allowed";
    const CLEAR_SITE_DATA: &str = "clear-site-data";
    let mut stripped = Vec::new();
    if headers.remove(SERVICE_WORKER_ALLOWED).is_some() {
        stripped.push(SERVICE_WORKER_ALLOWED);
    }
    if headers.remove(CLEAR_SITE_DATA).is_some() {
        stripped.push(CLEAR_SITE_DATA);
    }
    if headers.contains_key(header::SET_COOKIE) {
        let cookies: Vec<HeaderValue> =
            headers.get_all(header::SET_COOKIE).iter().cloned().collect();
        let kept: Vec<HeaderValue> =
            cookies.iter().filter(|c| cookie_stays_on(c.as_bytes(), host)).cloned().collect();
        if kept.len() != cookies.len() {
            stripped.push("set-cookie");
            headers.remove(header::SET_COOKIE);
            for cookie in kept {
                headers.append(header::SET_COOKIE, cookie);
            }
        }
    }
    stripped
}

/// Whether a `Set-Cookie` value stays on the request's host: it has no
/// `Domain` attribute (a host-only cookie), or one naming that host.
fn cookie_stays_on(cookie: &[u8], host: Option<&str>) -> bool {
    let Ok(cookie) = std::str::from_utf8(cookie) else { return false };
    let mut domains = cookie.split(';').skip(1).filter_map(|attribute| {
        let (name, value) = attribute.split_once('=')?;
        name.trim().eq_ignore_ascii_case("domain").then(|| value.trim())
    });
    match domains.next() {
        None => true,
        Some(domain) => {
            let domain = domain.strip_prefix('.').unwrap_or(domain);
            domains.next().is_none()
                && host.is_some_and(|host| !host.is_empty() && domain.eq_ignore_ascii_case(host))
        }
    }
}

/// Replaces the path of `request`'s target with `path`, keeping its query.
fn with_path<B>(request: &mut Request<B>, path: &str) -> Result<(), PathError> {
    let target = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(target.parse().map_err(|_| PathError::AmbiguousSeparator)?);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::AmbiguousSeparator)?;
    Ok(())
}

/// What the headers a node sets on its own requests start with.
pub const TRIGGER_HEADER_PREFIX: &str = "wasmwiz-";

/// The headers that tell a guest how a request of the node's own came to
/// be: removed from every client's request.
pub const TRIGGER_HEADERS: &[&str] = &[
    "wasmwiz-trigger",
    "wasmwiz-schedule-id",
    "wasmwiz-scheduled-at",
    "wasmwiz-queue",
    "wasmwiz-message-id",
    "wasmwiz-attempt",
];

/// `Retry-After` of a request that waited for a compile in vain.
const COMPILING_RETRY_AFTER_S: u64 = 5;

/// A route with no rollout, unless the request pins a version it cannot
/// reach.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the answer itself, moved once to the client"
)]
fn pick_live(
    route: Arc<LiveRoute>,
    headers: &http::HeaderMap,
) -> Result<Arc<LiveRoute>, Response<ResponseBody>> {
    match split::pinned_version(headers) {
        None => Ok(route),
        Some(pin) => split::pin_live(route, pin?),
    }
}

fn not_found() -> Response<ResponseBody> {
    error_response(StatusCode::NOT_FOUND, "not_found", "no route matches this request")
}

fn unavailable(retry_after_s: u64) -> Response<ResponseBody> {
    retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        "deployment_unavailable",
        "this route's component could not be compiled on this node; it is tried again \
         after a back-off",
        retry_after_s,
    )
}

/// Logs the access line of one answered request (`wasmwiz::access`).
pub fn log_access(
    request_id: &str,
    method: &http::Method,
    route: &str,
    tenant: &str,
    status: u16,
    elapsed: Duration,
) {
    tracing::info!(
        target: "wasmwiz::access",
        request_id,
        method = %method,
        route,
        tenant,
        status,
        duration_us = elapsed.as_micros() as u64,
    );
}

/// Adds `Server-Timing: quota;dur=…, instantiate;dur=…, guest;dur=…`
/// (milliseconds): admission, instantiation, and the guest's time to its
/// response head.
fn add_server_timing(response: &mut Response<ResponseBody>, admit: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut value = format!("quota;dur={:.3}", ms(admit));
    if let Some(timing) = response.extensions().get::<InvocationTiming>() {
        value.push_str(&format!(
            ", instantiate;dur={:.3}, guest;dur={:.3}",
            ms(timing.instantiate),
            ms(timing.to_head.saturating_sub(timing.instantiate))
        ));
    }
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert("server-timing", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn headers_that_widen_a_guests_reach_are_stripped_and_named() {
        let mut map = headers(&[
            ("content-type", "text/html"),
            ("Service-Worker-Allowed", "/"),
            ("Clear-Site-Data", "\"*\""),
            ("set-cookie", "session=1; Path=/; HttpOnly"),
            ("set-cookie", "mine=1; Domain=a.example.com; Secure"),
            ("set-cookie", "wide=1; domain=.example.com"),
            ("set-cookie", "twice=1; Domain=a.example.com; Domain=example.com"),
        ]);
        let stripped = strip_reach_widening(&mut map, Some("a.example.com"));
        assert_eq!(stripped, ["service-worker-allowed", "clear-site-data", "set-cookie"]);
        let cookies: Vec<_> =
            map.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            cookies,
            ["session=1; Path=/; HttpOnly", "mine=1; Domain=a.example.com; Secure"]
        );
        assert_eq!(map["content-type"], "text/html");
    }

    #[test]
    fn an_answer_with_nothing_to_strip_is_left_alone() {
        let mut map = headers(&[("set-cookie", "a=1"), ("cache-control", "no-store")]);
        assert!(strip_reach_widening(&mut map, None).is_empty());
        assert_eq!(map.len(), 2);
        // Without a host, no Domain attribute can name it.
        let mut map = headers(&[("set-cookie", "a=1; Domain=127.0.0.1")]);
        assert_eq!(strip_reach_widening(&mut map, None), ["set-cookie"]);
        assert!(map.get("set-cookie").is_none());
    }
}
