//! `wasmwiz serve`: the multi-tenant server — API, health, readiness and
//! the invocation path on one listener.

use std::sync::Arc;

use anyhow::Context as _;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tower::ServiceExt as _;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::open_store;
use crate::api::{self, ApiState};
use crate::auth::Authenticator;
use crate::config::{
    CompileArgs, HttpArgs, ListenArgs, LogArgs, MetricsArgs, OutboundArgs, QuotaArgs, RuntimeArgs,
    StoreArgs, TenantLogArgs, TierDefaultArgs,
};
use crate::control::{CompiledComponents, ControlPlane, ControlSettings};
use crate::dataplane::{DataPlane, DataPlaneSettings};
use crate::kv::KvBackend;
use crate::kv::redis::RedisKv;
use crate::logs::memory::MemoryLogs;
use crate::logs::redis::RedisLogs;
use crate::logs::{LogBackend, LogHub};
use crate::metrics::Metrics;
use crate::node::{Node, NodeSettings};
use crate::quota::QuotaBackend;
use crate::quota::local::LocalQuota;
use crate::quota::redis::RedisQuota;
use crate::response::{BoxError, ResponseBody, full};
use crate::runtime::{Compiler, Runtime};
use crate::server::{self, ConnInfo, Handler, HttpOptions, Listeners, tls};
use crate::store::StoreKv;

/// Shortest timeout of a key-value call to Redis (a quota check waits
/// less: it has a local fallback, a guest's read has none).
const KV_REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Arguments of `wasmwiz serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub tiers: TierDefaultArgs,
    #[command(flatten)]
    pub quota: QuotaArgs,
    #[command(flatten)]
    pub compile: CompileArgs,
    #[command(flatten)]
    pub outbound: OutboundArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub logs: TenantLogArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// A node built from its configuration, bound and ready to serve.
pub struct Serve {
    node: Arc<Node>,
    handler: Arc<ServeHandler>,
    listener: Listeners,
    acceptor: Option<tls::TlsAcceptor>,
    options: HttpOptions,
    /// The metrics listener, when metrics have an address of their own.
    metrics_listener: Option<(Listeners, Arc<MetricsHandler>)>,
    /// The TLS certificate, reloaded while the node serves.
    cert: Option<Arc<tls::ReloadingCert>>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve").field("addr", &self.local_addr()).finish_non_exhaustive()
    }
}

impl Serve {
    /// Opens the store, loads every deployment, binds, and prints
    /// `listening on`. Nothing is answered until [`Serve::run`].
    pub async fn build(args: ServeArgs) -> anyhow::Result<Self> {
        args.tiers.validate()?;
        args.http.validate()?;
        args.metrics.validate()?;
        let addr = args.listen.socket_addr()?;
        let cert = match (&args.http.tls_cert_path, &args.http.tls_key_path) {
            (Some(cert), Some(key)) => Some(tls::ReloadingCert::load(cert, key)?),
            _ => None,
        };
        let (store, salt) = open_store(&args.store, &args.tiers, args.log.is_production()).await?;

        let runtime = Arc::new(Runtime::new(&args.runtime.runtime_config())?);
        let cache = args.compile.compile_cache_dir.clone();
        let compiler = Compiler::new(
            &runtime,
            &cache.unwrap_or_else(|| args.store.data_dir.join("cache")),
            args.compile.compile_timeout,
            args.compile.compile_memory_limit,
        )
        .context(
            "cannot create the compiled-code cache (COMPILE_CACHE_DIR, or WASMWIZ_DATA_DIR/cache)",
        )?;
        let quota: Option<Arc<dyn QuotaBackend>> =
            match (&args.quota.redis_url, args.quota.quotas_enabled) {
                (_, false) => {
                    tracing::warn!("QUOTAS_ENABLED=false: tier quotas are not enforced");
                    None
                }
                (Some(url), true) => Some(RedisQuota::connect(
                    url,
                    &args.quota.redis_key_prefix,
                    args.quota.redis_timeout,
                )?),
                (None, true) => Some(Arc::new(LocalQuota::new())),
            };
        // Key-value data: in Redis when there is one (exact across nodes at
        // Redis speed), else in the store.
        let kv: Arc<dyn KvBackend> = match &args.quota.redis_url {
            Some(url) => Arc::new(RedisKv::connect(
                url,
                &args.quota.redis_key_prefix,
                args.quota.redis_timeout.max(KV_REDIS_TIMEOUT),
            )?),
            None => Arc::new(StoreKv::new(store.clone())),
        };
        tracing::info!(backend = kv.name(), "key-value data");
        // Tenants' log streams: in Redis when there is one (every node's
        // events in one stream per tenant), else in this process.
        let logs = args.logs.tenant_logs.then(|| {
            let settings = args.logs.settings();
            let backend: anyhow::Result<Arc<dyn LogBackend>> = match &args.quota.redis_url {
                Some(url) => RedisLogs::connect(
                    url,
                    &args.quota.redis_key_prefix,
                    settings.kept,
                    args.quota.redis_timeout.max(KV_REDIS_TIMEOUT),
                )
                .map(|logs| Arc::new(logs) as Arc<dyn LogBackend>),
                None => Ok(Arc::new(MemoryLogs::new(settings.kept))),
            };
            backend.map(|backend| LogHub::start(backend, settings))
        });
        let logs = logs.transpose()?;
        if let Some(hub) = &logs {
            tracing::info!(backend = hub.backend().name(), "tenant log streams");
        }
        let metrics = Metrics::new();
        let plane = Arc::new(DataPlane::new(
            runtime.clone(),
            DataPlaneSettings {
                quota,
                body_read_timeout: args.http.body_read_timeout,
                compile_wait: args.compile.compile_wait,
                metrics: metrics.clone(),
                server_timing: args.metrics.server_timing,
                logs: logs.clone(),
            },
        ));
        let components = Arc::new(CompiledComponents::new(runtime, compiler, metrics.clone()));
        let node = Node::new(
            store.clone(),
            plane,
            components.clone(),
            NodeSettings { outbound: Arc::new(args.outbound.settings()), kv },
        );
        match node.start().await {
            Ok(report) => tracing::info!(
                routes = report.routes,
                from_cache = report.from_cache,
                compiling = report.queued,
                failed = report.failed,
                store = store.backend(),
                "deployments loaded ({} from the compiled-code cache, {} to compile)",
                report.from_cache,
                report.queued
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot load deployments yet; retrying in the background")
            }
        }
        let reserved = if args.metrics.metrics_endpoint == "/metrics" {
            Vec::new()
        } else {
            vec![args.metrics.metrics_endpoint.clone()]
        };
        let control = ControlPlane::new(
            store.clone(),
            &salt,
            ControlSettings {
                tier_defaults: args.tiers.defaults_for_new_tiers(),
                reserved,
                base_domain: args.store.base_domain.clone(),
            },
            metrics.clone(),
        )
        .with_components(components);
        let auth = Authenticator::new(store, salt, node.rebuilds());

        // Metrics on the main listener, on their own address, or not at all.
        let (metrics_path, metrics_listener) =
            match (args.metrics.prometheus_enabled, args.metrics.metrics_addr) {
                (false, _) => (None, None),
                (true, Some(addr)) => {
                    // A scrape now and then: one accept loop on the shared runtime.
                    let options = HttpOptions { threads: 0, ..HttpOptions::from(&args.http) };
                    let listener = server::bind(addr, &options)
                        .with_context(|| format!("METRICS_ADDR: cannot listen on {addr}"))?;
                    eprintln!(
                        "metrics on http://{}{}",
                        listener.local_addr(),
                        args.metrics.metrics_endpoint
                    );
                    let handler = Arc::new(MetricsHandler {
                        node: node.clone(),
                        path: args.metrics.metrics_endpoint.clone(),
                    });
                    (None, Some((listener, handler)))
                }
                (true, None) => (Some(args.metrics.metrics_endpoint.clone()), None),
            };
        let options = HttpOptions::from(&args.http);
        let listener =
            server::bind(addr, &options).with_context(|| format!("cannot listen on {addr}"))?;
        let acceptor = match &cert {
            Some(cert) => Some(tls::acceptor(cert.clone())?),
            None => None,
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        eprintln!("listening on {scheme}://{}", listener.local_addr());
        if let Some(hub) = &logs {
            hub.name_node(args.logs.node_name.clone().unwrap_or_else(|| {
                format!("{}:{}", crate::logs::hostname(), listener.local_addr().port())
            }));
        }
        let handler = Arc::new(ServeHandler {
            api: api::router(Arc::new(ApiState {
                control,
                node: node.clone(),
                auth,
                body_read_timeout: args.http.body_read_timeout,
            })),
            api_metrics: metrics.route("/api", "-"),
            node: node.clone(),
            metrics_path,
        });
        Ok(Self { node, handler, listener, acceptor, options, metrics_listener, cert })
    }

    /// Where the node listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr()
    }

    /// The node behind the listener.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `shutdown` resolves; then refuses new connections,
    /// lets in-flight requests finish (up to `SHUTDOWN_TIMEOUT`), ends
    /// every task it started and writes the last usage counts.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { node, handler, listener, acceptor, options, metrics_listener, cert } = self;
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        if let Some(cert) = cert {
            let stop = stop.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = cert.watch() => {}
                }
            });
        }
        if let Some((listener, handler)) = metrics_listener {
            let options = HttpOptions { threads: 0, ..options.clone() };
            let stop = stop.clone();
            tasks.spawn(async move {
                let stopped = stop.cancelled_owned();
                if let Err(e) = server::serve(listener, None, handler, options, stopped).await {
                    tracing::error!(error = %format!("{e:#}"), "the metrics listener failed");
                }
            });
        }
        let draining = {
            let node = node.clone();
            async move {
                shutdown.await;
                node.start_draining();
                if let Some(logs) = node.plane().logs() {
                    logs.close();
                }
            }
        };
        let served = server::serve(listener, acceptor, handler, options, draining).await;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        node.shutdown().await;
        served
    }
}

/// Opens the store, loads every deployment, binds, prints `listening on`,
/// serves until SIGINT or SIGTERM.
pub async fn execute(args: ServeArgs) -> anyhow::Result<()> {
    Serve::build(args).await?.run(server::shutdown_signal()).await
}

/// Dispatches a request to the API, health, readiness, or the routes.
struct ServeHandler {
    node: Arc<Node>,
    api: axum::Router,
    /// Counts API answers (one label for the whole API).
    api_metrics: crate::metrics::RouteMetrics,
    /// Where metrics are served on this listener, if they are.
    metrics_path: Option<String>,
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
    if let Some(quota) = node.plane().quota() {
        metrics.quota_degraded.set(i64::from(quota.health() == crate::quota::Health::Degraded));
        catch_up(&metrics.redis_errors, quota.errors());
        catch_up(&metrics.quota_redis_calls, quota.calls());
    }
    let mut response = Response::new(full(metrics.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Serves only the metrics, on `METRICS_ADDR`.
struct MetricsHandler {
    node: Arc<Node>,
    path: String,
}

impl Handler for MetricsHandler {
    async fn handle(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<ResponseBody> {
        if request.uri().path() == self.path {
            metrics_response(&self.node)
        } else {
            crate::response::error_response(StatusCode::NOT_FOUND, "not_found", "metrics only")
        }
    }
}

impl ServeHandler {
    async fn api(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let request = request.map(axum::body::Body::new);
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
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
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

impl Handler for ServeHandler {
    async fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<ResponseBody> {
        let path = request.uri().path();
        if path == "/api" || path.starts_with("/api/") {
            let started = std::time::Instant::now();
            let response = self.api(request).await;
            self.api_metrics.answered(response.status().as_u16(), started.elapsed().as_secs_f64());
            return response;
        }
        if self.metrics_path.as_deref() == Some(path) {
            return metrics_response(&self.node);
        }
        if crate::console::is_console(path) {
            return crate::console::respond(&request);
        }
        let readable = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
        match path {
            "/health" | "/ready" if !readable => {
                let mut response = crate::response::error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET",
                );
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
                response
            }
            "/health" => json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            "/ready" => self.ready(),
            _ => self.node.plane().handle(request, conn).await,
        }
    }
}

/// Raises `counter` to `total`, a count kept elsewhere (a backend's own
/// counter): metrics counters only go up by increments.
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}
