//! A serving node wired from its configuration ([`ServeArgs`]): the store
//! opened and settled, the runtime and compiler, quotas, key-value data,
//! log streams and queues on Redis or in process, the data plane, the node
//! and its control plane, and the front door on each listener (the
//! invocation path with the API, health and readiness on the serving
//! listener; the console and the metrics on listeners of their own, see
//! [`crate::frontdoor`]). `wasmwiz serve` and the in-process tests build
//! nodes here.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::auth::Authenticator;
pub use crate::config::ServeArgs;
use crate::config::{DEFAULT_CONSOLE_PORT, DEFAULT_METRICS_PORT, SideAddr};
use crate::control::{CompiledComponents, ControlPlane, ControlSettings};
use crate::dataplane::{DataPlane, DataPlaneSettings};
use crate::frontdoor::{FrontDoor, Role};
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
use crate::runtime::{Compiler, Runtime};
use crate::server::{self, HttpOptions, Listeners, tls};
use crate::store::StoreKv;
use crate::store::opening::open_store;
use crate::triggers::queues::{QueueBackend, QueueHub, SqlQueues};
use crate::triggers::redis::RedisQueues;

/// Shortest timeout of a key-value call to Redis (a quota check waits
/// less: it has a local fallback, a guest's read has none).
const KV_REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A node built from its configuration, bound and ready to serve.
pub struct Serve {
    node: Arc<Node>,
    handler: Arc<FrontDoor>,
    listener: Listeners,
    acceptor: Option<tls::TlsAcceptor>,
    options: HttpOptions,
    /// The listeners of the node's own: the console's, the metrics'.
    side: Vec<SideListener>,
    /// The TLS certificate, reloaded while the node serves.
    cert: Option<Arc<tls::ReloadingCert>>,
}

/// A listener beside the serving one: the console's (with TLS when the
/// node has a certificate) or the metrics'.
struct SideListener {
    listener: Listeners,
    handler: Arc<FrontDoor>,
    acceptor: Option<tls::TlsAcceptor>,
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
        args.console.public_url("http", addr)?;
        let cert = match (&args.http.tls_cert_path, &args.http.tls_key_path) {
            (Some(cert), Some(key)) => Some(tls::ReloadingCert::load(cert, key)?),
            _ => None,
        };
        let opened = open_store(&args.store, &args.tiers, args.log.is_production()).await?;
        let (store, salt, secrets) = (opened.store, opened.salt, opened.secrets);

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
                max_buffered_input: args.http.max_buffered_input,
            },
        ));
        let components = Arc::new(CompiledComponents::new(runtime, compiler, metrics.clone()));
        // Queues' messages: in Redis Streams when there is one (at Redis
        // speed, across nodes), else in the store.
        let queue_backend: Arc<dyn QueueBackend> = match &args.quota.redis_url {
            Some(url) => Arc::new(RedisQueues::connect(
                url,
                &args.quota.redis_key_prefix,
                args.quota.redis_timeout.max(KV_REDIS_TIMEOUT),
            )?),
            None => Arc::new(SqlQueues::new(store.clone())),
        };
        tracing::info!(backend = queue_backend.name(), "queues");
        let queues = Arc::new(QueueHub::new(store.clone(), queue_backend, metrics.clone()));
        let node = Node::new(
            store.clone(),
            plane,
            components.clone(),
            NodeSettings {
                outbound: Arc::new(args.outbound.settings()),
                kv,
                base_domain: args.store.base_domain.clone(),
                secrets: secrets.clone(),
                queues,
            },
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
                secrets: secrets.clone(),
            },
            metrics.clone(),
        )
        .with_components(components)
        .with_publisher(node.clone());
        let auth = Authenticator::new(store, salt, node.rebuilds());

        let options = HttpOptions::from(&args.http);
        let listener =
            server::bind(addr, &options).with_context(|| format!("cannot listen on {addr}"))?;
        let acceptor = match &cert {
            Some(cert) => Some(tls::acceptor(cert.clone())?),
            None => None,
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let public_url = args.console.public_url(scheme, listener.local_addr())?;
        if let Some(authority) =
            public_url.parse::<http::Uri>().ok().and_then(|u| u.authority().cloned())
        {
            node.set_public_host(authority.to_string());
        }
        let api = api::router(Arc::new(ApiState {
            control,
            node: node.clone(),
            auth,
            body_read_timeout: args.http.body_read_timeout,
            public_url: public_url.clone(),
        }));
        // A scrape or a console now and then: one accept loop each on the
        // shared runtime.
        let side_options = HttpOptions { threads: 0, ..options.clone() };
        let mut side = Vec::new();
        // Metrics: a listener of their own unless asked for on the public
        // one (or not at all).
        let metrics_setting = args
            .metrics
            .prometheus_enabled
            .then(|| SideAddr::resolve(args.metrics.metrics_addr, DEFAULT_METRICS_PORT, addr));
        let endpoint = args.metrics.metrics_endpoint.clone();
        if let Some(SideAddr::Addr(at)) = metrics_setting {
            let listener = server::bind(at, &side_options)
                .with_context(|| format!("METRICS_ADDR: cannot listen on {at}"))?;
            eprintln!("metrics on http://{}{endpoint}", listener.local_addr());
            let handler =
                FrontDoor::new(Role::Metrics, node.clone(), api.clone(), Some(endpoint.clone()));
            side.push(SideListener { listener, handler: Arc::new(handler), acceptor: None });
        }
        let public_metrics = (metrics_setting == Some(SideAddr::Public)).then_some(endpoint);
        // The console: a listener of its own, never the serving one.
        if let SideAddr::Addr(at) =
            SideAddr::resolve(args.console.console_addr, DEFAULT_CONSOLE_PORT, addr)
        {
            let listener = server::bind(at, &side_options)
                .with_context(|| format!("CONSOLE_ADDR: cannot listen on {at}"))?;
            eprintln!("console on {scheme}://{}/console", listener.local_addr());
            let handler = FrontDoor::new(Role::Console, node.clone(), api.clone(), None);
            side.push(SideListener {
                listener,
                handler: Arc::new(handler),
                acceptor: acceptor.clone(),
            });
        }
        eprintln!("listening on {scheme}://{}", listener.local_addr());
        let node_name = args.logs.node_name.clone().unwrap_or_else(|| {
            format!("{}:{}", crate::logs::hostname(), listener.local_addr().port())
        });
        if let Some(hub) = &logs {
            hub.name_node(node_name.clone());
        }
        node.name_node(node_name);
        let handler = Arc::new(FrontDoor::new(Role::Serving, node.clone(), api, public_metrics));
        Ok(Self { node, handler, listener, acceptor, options, side, cert })
    }

    /// Where the node listens.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr()
    }

    /// Where the console listens, if it does.
    pub fn console_addr(&self) -> Option<std::net::SocketAddr> {
        self.side
            .iter()
            .find(|s| s.handler.role() == Role::Console)
            .map(|s| s.listener.local_addr())
    }

    /// The node behind the listener.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `shutdown` resolves; then refuses new connections,
    /// lets in-flight requests finish (up to `SHUTDOWN_TIMEOUT`), ends
    /// every task it started and writes the last usage counts.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { node, handler, listener, acceptor, options, side, cert } = self;
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
        for SideListener { listener, handler, acceptor } in side {
            let options = HttpOptions { threads: 0, ..options.clone() };
            let stop = stop.clone();
            tasks.spawn(async move {
                let addr = listener.local_addr();
                let stopped = stop.cancelled_owned();
                if let Err(e) = server::serve(listener, acceptor, handler, options, stopped).await {
                    tracing::error!(error = %format!("{e:#}"), %addr, "a listener failed");
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
