//! A serving node (`wasmwiz serve`): the store, the runtime, the components
//! it holds compiled in memory, and the loop that keeps its route table in
//! step with the store.
//!
//! The route table is rebuilt whole from the store whenever the store's
//! change counter moves (checked every [`SYNC_INTERVAL`], and at once after
//! a change made through this node), then swapped in atomically. Requests
//! never wait for this: they read whichever table is current.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::auth::Authenticator;
use crate::dataplane::{DataPlane, LiveRoute, RouteOwner, Routes};
use crate::kv::KvLimits;
use crate::quota::Rates;
use crate::router::RoutePattern;
use crate::runtime::{
    App, Capabilities, CompileError, Compiler, InstancePool, KvAccess, Limits, OutboundPolicy,
    OutboundSettings, Runtime,
};
use crate::store::{ComponentMeta, NewComponent, Store, StoreError, TenantId, Tier, now_ms};
use crate::usage::UsageRecorder;

/// How often a node checks the store's change counter.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes are not a servable component.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of an upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// What is stored.
    pub meta: ComponentMeta,
    /// Whether the tenant did not have these bytes before.
    pub created: bool,
}

/// One node's state.
pub struct Node {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The engine.
    pub runtime: Arc<Runtime>,
    /// The invocation path, with the current route table.
    pub plane: Arc<DataPlane>,
    /// API key checks.
    pub auth: Authenticator,
    /// Compilation in child processes, into the compiled-code cache.
    pub compiler: Compiler,
    /// Paths no route may claim, beyond the built-in ones.
    pub extra_reserved: Vec<String>,
    /// Limits a tier gets for the fields `PUT /api/v1/tiers` leaves out.
    pub tier_defaults: crate::store::TierLimits,
    /// Usage counters of every tenant served here.
    pub usage: Arc<UsageRecorder>,
    /// The operator's outbound settings, shared by every deployment.
    outbound: Arc<OutboundSettings>,
    /// Longest pause inside an upload's body.
    pub body_read_timeout: Duration,
    /// Where components' key-value data lives.
    pub kv: Arc<dyn crate::kv::KvBackend>,
    tiers: ArcSwap<HashMap<String, Arc<Tier>>>,
    /// Prepared components by digest, shared by every route that serves the
    /// same bytes; only the reconcile path touches it.
    apps: std::sync::Mutex<HashMap<String, App>>,
    /// Idle instances of the deployments that reuse them, by deployment,
    /// version and requests per instance: kept across rebuilds of the route
    /// table, dropped with the version (a new version may run another
    /// component) or when the tier's cap changes what the version gets.
    instance_pools: std::sync::Mutex<HashMap<(String, i64, u32), Arc<InstancePool>>>,
    /// The change counter the current route table reflects.
    applied_seq: AtomicI64,
    /// One rebuild at a time; a rebuild requested meanwhile reads the newer
    /// state when it gets the lock.
    reconcile_lock: tokio::sync::Mutex<()>,
    store_ok: AtomicBool,
    loaded: AtomicBool,
    draining: AtomicBool,
    /// Digests the background compiler is working on.
    pending: std::sync::Mutex<HashSet<String>>,
    /// Digests that could not be compiled (served by no route).
    failed: std::sync::Mutex<HashSet<String>>,
    /// Set when the route table must be rebuilt although the store's
    /// change counter has not moved (a background compilation finished).
    dirty: AtomicBool,
    /// Wakes the sync loop: a change notification, or `dirty`.
    wake: Arc<tokio::sync::Notify>,
    /// This node, for the tasks it spawns.
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("store", &self.store.backend()).finish_non_exhaustive()
    }
}

/// A node's settings from its configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Paths no route may claim, beyond the built-in ones.
    pub extra_reserved: Vec<String>,
    /// Limits a tier gets for the fields `PUT /api/v1/tiers` leaves out.
    pub tier_defaults: crate::store::TierLimits,
    /// The operator's outbound settings.
    pub outbound: Arc<OutboundSettings>,
    /// Longest pause inside an upload's body.
    pub body_read_timeout: Duration,
    /// Where components' key-value data lives.
    pub kv: Arc<dyn crate::kv::KvBackend>,
}

/// What a rebuild did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReconcileReport {
    /// Routes now served.
    pub routes: usize,
    /// Components prepared from the compiled-code cache.
    pub from_cache: usize,
    /// Components compiled because their code was not cached.
    pub compiled: usize,
    /// Deployments that could not be served (logged).
    pub failed: usize,
    /// Deployments waiting for their component to be compiled.
    pub pending: usize,
}

/// Compiled components loaded from the cache at once during a rebuild.
const CACHE_LOAD_CONCURRENCY: usize = 4;

impl Node {
    /// A node over `store` and `runtime`; nothing is served until
    /// [`Node::reconcile`] has run.
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<Runtime>,
        plane: Arc<DataPlane>,
        auth: Authenticator,
        compiler: Compiler,
        settings: NodeSettings,
    ) -> Self {
        Self {
            store,
            runtime,
            plane,
            auth,
            compiler,
            extra_reserved: settings.extra_reserved,
            tier_defaults: settings.tier_defaults,
            usage: Arc::new(UsageRecorder::default()),
            outbound: settings.outbound,
            body_read_timeout: settings.body_read_timeout,
            kv: settings.kv,
            tiers: ArcSwap::from_pointee(HashMap::new()),
            apps: std::sync::Mutex::new(HashMap::new()),
            instance_pools: std::sync::Mutex::new(HashMap::new()),
            applied_seq: AtomicI64::new(-1),
            reconcile_lock: tokio::sync::Mutex::new(()),
            store_ok: AtomicBool::new(true),
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            pending: std::sync::Mutex::new(HashSet::new()),
            failed: std::sync::Mutex::new(HashSet::new()),
            dirty: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
            me: std::sync::OnceLock::new(),
        }
    }

    /// The node behind an `Arc`, able to spawn its own background work.
    pub fn into_arc(self) -> Arc<Self> {
        let node = Arc::new(self);
        let _ = node.me.set(Arc::downgrade(&node));
        node
    }

    /// A tier by name, from memory.
    pub fn tier(&self, name: &str) -> Option<Arc<Tier>> {
        self.tiers.load().get(name).cloned()
    }

    /// Whether the last contact with the store succeeded.
    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    /// Whether the node serves every deployment it knows of: the first
    /// route table is published and nothing waits to be compiled.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed) && self.pending_compilations() == 0
    }

    /// Marks the node as shutting down (readiness turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Rebuilds the route table from the store and publishes it.
    pub async fn reconcile(&self) -> Result<ReconcileReport, StoreError> {
        let _one_at_a_time = self.reconcile_lock.lock().await;
        let result = self.rebuild().await;
        self.store_ok.store(!matches!(result, Err(StoreError::Unavailable(_))), Ordering::Relaxed);
        result
    }

    async fn rebuild(&self) -> Result<ReconcileReport, StoreError> {
        let seq = self.store.change_seq().await?;
        let tiers: HashMap<String, Arc<Tier>> =
            self.store.tiers().await?.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect();
        let deployments = self.store.deployments(None).await?;

        let mut report = ReconcileReport::default();
        let needed: HashSet<String> = deployments.iter().map(|d| d.component.clone()).collect();
        self.load_from_cache(&needed, &mut report).await;

        let mut routes = Routes::new();
        let mut to_compile = Vec::new();
        let mut pools = HashMap::new();
        // Components this table settles: served, or their deployment failed.
        let mut settled = HashSet::new();
        for deployment in deployments {
            let Some(tier) = tiers.get(&deployment.tier).cloned() else {
                tracing::error!(deployment = %deployment.id, tier = %deployment.tier, "unknown tier");
                report.failed += 1;
                settled.insert(deployment.component.clone());
                continue;
            };
            let pattern = match RoutePattern::parse_any(
                &deployment.route,
                deployment.host.as_deref(),
            ) {
                Ok(pattern) => pattern,
                Err(e) => {
                    tracing::error!(deployment = %deployment.id, error = %e, "stored route is invalid");
                    report.failed += 1;
                    settled.insert(deployment.component.clone());
                    continue;
                }
            };
            let app = self
                .apps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&deployment.component)
                .cloned();
            let Some(app) = app else {
                // Not compiled here yet: served once the background
                // compiler has it, meanwhile not ready.
                to_compile.push(deployment.component.clone());
                report.pending += 1;
                continue;
            };
            settled.insert(deployment.component.clone());
            let limits = limits_of(&tier);
            let outbound =
                OutboundPolicy::new(&deployment.allowed_outbound_hosts, self.outbound.clone());
            let label = pattern.to_string();
            let usage = self.usage.for_tenant(deployment.tenant_id);
            let mut config = deployment.config;
            config.extend(deployment.secrets);
            let capabilities = Arc::new(Capabilities {
                kv: Some(KvAccess {
                    backend: self.kv.clone(),
                    tenant: deployment.tenant_id,
                    deployment: deployment.id.clone(),
                    limits: KvLimits::of(&tier.limits),
                    usage: Some(usage.clone()),
                }),
                config,
            });
            // What the deployment asks for, within what its tier allows now.
            let reuse = deployment.max_instance_reuse.min(tier.limits.max_instance_reuse);
            let instances = (reuse > 1).then(|| {
                let key = (deployment.id.clone(), deployment.version, reuse);
                let pool = self
                    .instance_pools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| self.runtime.instance_pool(reuse));
                pools.insert(key, pool.clone());
                pool
            });
            let route = Arc::new(LiveRoute {
                instances,
                capabilities,
                metrics: Arc::new(self.plane.metrics().route(&label, &deployment.tenant)),
                label,
                outbound,
                pattern,
                app,
                limits,
                owner: Some(RouteOwner {
                    tenant_id: deployment.tenant_id,
                    tenant: deployment.tenant,
                    deployment_id: deployment.id,
                    version: deployment.version,
                    rates: Rates::of(&tier),
                    rate_policy: Rates::of(&tier).policy_header(),
                    usage,
                    tier,
                }),
            });
            routes.insert(&route.pattern, route.clone());
        }
        report.routes = routes.len();
        self.plane.metrics().deployments_live.set(routes.len() as i64);
        self.plane.publish(routes);
        // A background compilation stays pending (the node not ready) until
        // a published table settles its routes, or nothing needs it any more.
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|digest| needed.contains(digest) && !settled.contains(digest));
        self.tiers.store(Arc::new(tiers));
        self.auth.invalidate_all();
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|digest, _| needed.contains(digest));
        *self.instance_pools.lock().unwrap_or_else(|p| p.into_inner()) = pools;
        for digest in to_compile {
            self.compile_in_background(digest);
        }
        self.applied_seq.store(seq, Ordering::Relaxed);
        self.loaded.store(true, Ordering::Relaxed);
        Ok(report)
    }

    /// Prepares, from the compiled-code cache, every needed component this
    /// node does not hold yet, a few at a time.
    async fn load_from_cache(&self, needed: &HashSet<String>, report: &mut ReconcileReport) {
        let missing: Vec<String> = {
            let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            needed.iter().filter(|d| !apps.contains_key(*d)).cloned().collect()
        };
        let engine = self.runtime.engine();
        let loaded: Vec<(String, Option<crate::runtime::Compiled>)> =
            futures::stream::iter(missing)
                .map(|digest| async move {
                    let compiled = match digest_hex(&digest) {
                        Ok(hex) => self.compiler.compile_cached(engine, hex).await,
                        Err(_) => None,
                    };
                    (digest, compiled)
                })
                .buffer_unordered(CACHE_LOAD_CONCURRENCY)
                .collect()
                .await;
        for (digest, compiled) in loaded {
            let Some(compiled) = compiled else { continue };
            match self.runtime.prepare(&compiled.component) {
                Ok(app) => {
                    report.from_cache += 1;
                    self.plane.metrics().compiled_cache.with_label_values(&["hit"]).inc();
                    self.apps.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, app);
                }
                Err(e) => tracing::error!(%digest, error = %e, "cached code cannot be linked"),
            }
        }
    }

    /// Compiles `digest` from the bytes in the store, off the request path,
    /// then rebuilds the route table; one compilation per digest at a time.
    fn compile_in_background(&self, digest: String) {
        let Some(node) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        if !self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.clone()) {
            return; // already under way
        }
        tokio::spawn(async move {
            let result = node.compile_stored(&digest).await;
            match &result {
                Ok(()) => tracing::info!(%digest, "compiled in the background; serving it"),
                Err(e) => {
                    tracing::error!(%digest, error = %e, "cannot compile a deployed component");
                    node.failed.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.clone());
                }
            }
            if result.is_ok() {
                // Pending until the next reconcile publishes its routes:
                // ready before that, the node would answer them 404.
                node.dirty.store(true, Ordering::Relaxed);
                node.wake.notify_one();
            } else {
                node.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest);
            }
        });
    }

    async fn compile_stored(&self, digest: &str) -> Result<(), UploadError> {
        let hex = digest_hex(digest)?;
        let bytes =
            self.store.component_bytes(digest).await?.ok_or_else(|| {
                StoreError::Internal(format!("the bytes of {digest} are missing"))
            })?;
        let compiled = self.compiler.compile(self.runtime.engine(), hex, &bytes).await?;
        self.record_compile(&compiled);
        let app = self.runtime.prepare(&compiled.component)?;
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.to_string(), app);
        Ok(())
    }

    /// Components waiting for the background compiler.
    pub fn pending_compilations(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Validates, compiles and stores a tenant's upload. The same bytes
    /// again are not compiled again.
    pub async fn upload(
        &self,
        tenant_id: TenantId,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<Uploaded, UploadError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(meta) = self.store.component(tenant_id, &digest).await? {
            self.plane.metrics().uploads.with_label_values(&["existing"]).inc();
            return Ok(Uploaded { meta, created: false });
        }
        let hex = digest_hex(&digest)?;
        let started = Instant::now();
        let compiled = match self.compiler.compile(self.runtime.engine(), hex, &bytes).await {
            Ok(compiled) => compiled,
            Err(e) => {
                self.plane.metrics().uploads.with_label_values(&["refused"]).inc();
                return Err(e.into());
            }
        };
        self.record_compile(&compiled);
        let app = match self.runtime.prepare(&compiled.component) {
            Ok(app) => app,
            Err(e) => {
                self.compiler.cache().remove(hex);
                self.plane.metrics().uploads.with_label_values(&["refused"]).inc();
                return Err(e.into());
            }
        };
        let compile_ms =
            if compiled.from_cache { 0 } else { compiled.compile_time.as_millis() as u64 };
        let meta = ComponentMeta {
            digest: digest.clone(),
            name: name.to_string(),
            size: bytes.len() as u64,
            world: world_of(&compiled.component, self.runtime.engine()),
            compile_ms,
            created_at: now_ms(),
        };
        let (meta, created) =
            self.store.put_component(&NewComponent { tenant_id, meta, bytes }).await?;
        self.apps.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, app);
        self.plane.metrics().uploads.with_label_values(&["created"]).inc();
        tracing::info!(tenant_id, digest = %meta.digest, compile_ms,
                       total_ms = started.elapsed().as_millis() as u64, "component uploaded");
        Ok(Uploaded { meta, created })
    }

    fn record_compile(&self, compiled: &crate::runtime::Compiled) {
        let metrics = self.plane.metrics();
        if compiled.from_cache {
            metrics.compiled_cache.with_label_values(&["hit"]).inc();
        } else {
            metrics.compiled_cache.with_label_values(&["miss"]).inc();
            metrics.compile_duration.observe(compiled.compile_time.as_secs_f64());
        }
    }

    /// Refreshes the gauges that are read rather than counted, just before
    /// a scrape.
    pub fn refresh_gauges(&self) {
        let metrics = self.plane.metrics();
        metrics.instances_in_use.set(self.runtime.instances_in_use() as i64);
        metrics.instances_idle.set(self.runtime.instances_idle() as i64);
        metrics.instance_pool_capacity.set(i64::from(self.runtime.pool_size()));
        metrics.db_connections.set(i64::from(self.store.connections_active()));
        metrics.store_up.set(i64::from(self.store_ok()));
        if let Some(quota) = self.plane.quota() {
            metrics.quota_degraded.set(i64::from(quota.health() == crate::quota::Health::Degraded));
            catch_up(&metrics.redis_errors, quota.errors());
            catch_up(&metrics.quota_redis_calls, quota.calls());
        }
    }

    /// Watches the store's change counter and rebuilds when it moves, until
    /// the process ends.
    pub fn spawn_sync(self: &Arc<Self>) {
        // Change notifications (PostgreSQL LISTEN) wake the loop at once;
        // the tick is the safety net for anything a notification missed.
        self.store.watch_changes(self.wake.clone());
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = node.wake.notified() => {}
                }
                node.sync_once().await;
            }
        });
    }

    /// One check of the change counter; rebuilds if it moved.
    pub async fn sync_once(&self) {
        match self.store.change_seq().await {
            Ok(seq) => {
                if !self.store_ok.swap(true, Ordering::Relaxed) {
                    tracing::info!("the store is reachable again");
                }
                let dirty = self.dirty.swap(false, Ordering::Relaxed);
                if (dirty || seq != self.applied_seq.load(Ordering::Relaxed))
                    && let Err(e) = self.reconcile().await
                {
                    tracing::warn!(error = %e, "rebuilding the route table failed");
                }
            }
            Err(e) => {
                self.plane.metrics().store_errors.inc();
                if self.store_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the store is unreachable; serving the routes in memory");
                }
            }
        }
    }
}

/// The invocation limits a tier sets.
pub fn limits_of(tier: &Tier) -> Limits {
    Limits {
        memory_bytes: tier.limits.memory_limit_bytes,
        timeout: Duration::from_millis(tier.limits.execution_timeout_ms),
        max_input_bytes: tier.limits.max_input_bytes,
    }
}

fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| StoreError::Invalid(format!("`{digest}` is not a sha256:<hex> digest")))
}

/// The world a component targets, from its handler export's version.
fn world_of(component: &wasmtime::component::Component, engine: &wasmtime::Engine) -> String {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| name.strip_prefix("wasi:http/incoming-handler@"))
        .map(|version| format!("wasi:http/proxy@{version}"))
        .unwrap_or_else(|| "wasi:http/proxy".to_string())
}

/// Raises `counter` to `total`, a count kept elsewhere (a backend's own
/// counter): metrics counters only go up by increments.
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}
