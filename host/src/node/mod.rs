//! A serving node (`wasmwiz serve`): the loop that keeps its route table in
//! step with the store, its readiness, and every task it starts.
//!
//! The route table is rebuilt whole from a snapshot of the store whenever
//! the store's change counter moves (checked every [`SYNC_INTERVAL`], at
//! once on another node's change notification or a change made through this
//! node), and whenever a compilation ends. The builder ([`plan`]) says what
//! to serve and what to compile; the compile queue takes the latter; the
//! table is swapped in atomically. Requests never wait for a rebuild: they
//! read whichever table is current.
//!
//! Every task the node starts is tracked, and [`Node::shutdown`] ends them
//! all, so a node can be started and stopped inside a test.
//!
//! `routes` turns a plan into the live route table; `rollouts` stops
//! failing canaries and takes rollouts' steps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::compile_queue::Status;
use crate::control::plan::{self, Compilation, Snapshot};
use crate::control::{CompileQueue, CompiledComponents};
use crate::dataplane::DataPlane;
use crate::kv::KvBackend;
use crate::runtime::OutboundSettings;
use crate::store::{Store, StoreError};
use crate::tenancy::Tier;
use crate::usage::{FLUSH_INTERVAL, UsageRecorder};

mod rollouts;
mod routes;

pub use rollouts::RolloutTallies;
use routes::Served;
pub use routes::{DeploymentState, limits_of};

/// How often a node checks the store's change counter.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Least time between two catch-ups with the store for requests no route
/// matched.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_millis(100);

/// What a node's readiness probe reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Shutting down: no longer in the load balancer.
    pub draining: bool,
    /// The first route table with every known deployment servable (or
    /// settled as failed) is published.
    pub loaded: bool,
    /// The last contact with the store succeeded.
    pub store_ok: bool,
    /// Components waiting to be compiled here.
    pub pending_compilations: usize,
}

/// What a rebuild of the route table did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncReport {
    /// Routes published.
    pub routes: usize,
    /// Components prepared from the compiled-code cache for this table.
    pub from_cache: usize,
    /// Components queued for compilation (new to the queue).
    pub queued: usize,
    /// Routes waiting for a compilation.
    pub waiting: usize,
    /// Routes whose component failed to compile here.
    pub failed: usize,
    /// Deployments that cannot be served at all (unknown tier, bad route).
    pub invalid: usize,
}

/// Settings a node takes from its configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The operator's outbound settings, shared by every deployment.
    pub outbound: Arc<OutboundSettings>,
    /// Where components' key-value data lives.
    pub kv: Arc<dyn KvBackend>,
    /// `WASMWIZ_BASE_DOMAIN`: each tenant holds `<tenant>.<base>`.
    pub base_domain: Option<String>,
    /// Opens deployments' sealed secrets.
    pub secrets: Arc<crate::secrets::Keyring>,
    /// The node's queues (where messages are kept, and their consumers).
    pub queues: Arc<crate::triggers::queues::QueueHub>,
}

/// One serving node.
pub struct Node {
    store: Arc<dyn Store>,
    plane: Arc<DataPlane>,
    components: Arc<CompiledComponents>,
    queue: CompileQueue,
    usage: Arc<UsageRecorder>,
    settings: NodeSettings,
    served: Mutex<Served>,
    states: ArcSwap<HashMap<String, DeploymentState>>,
    /// The host each deployment of the last route table is bound to (for
    /// the node's own requests: schedules' firings, queues' deliveries).
    hosts: ArcSwap<HashMap<String, Option<String>>>,
    /// Every tenant's name, by id (metric labels of triggers).
    tenant_names: ArcSwap<HashMap<crate::tenancy::TenantId, String>>,
    /// This node's name (`NODE_NAME`, or host and port), once it listens.
    name: std::sync::OnceLock<String>,
    /// The `Host` of the node's own requests to a deployment bound to no
    /// host: where clients reach it (`PUBLIC_URL`'s authority).
    public_host: std::sync::OnceLock<String>,
    /// The change counter the current route table reflects.
    applied_seq: AtomicI64,
    /// Counts the rebuilds: caches of what the store says (API keys) hold
    /// until it moves.
    rebuilds: Arc<AtomicU64>,
    /// One rebuild at a time; a rebuild requested meanwhile reads the newer
    /// state when it gets the lock.
    rebuild_lock: tokio::sync::Mutex<()>,
    /// When the last catch-up for a request no route matched began (see
    /// [`Node::catch_up_with_store`]).
    last_catch_up: tokio::sync::Mutex<Option<Instant>>,
    /// Set when the table must be rebuilt although the change counter has
    /// not moved (a compilation ended).
    dirty: AtomicBool,
    /// Wakes the sync loop: a change notification, or `dirty`.
    wake: Arc<tokio::sync::Notify>,
    store_ok: AtomicBool,
    loaded: AtomicBool,
    draining: AtomicBool,
    /// Every task the node started, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled at shutdown; every task selects on it.
    shutdown: CancellationToken,
    /// Where the data plane asks for a failing canary to be stopped.
    stops: tokio::sync::mpsc::UnboundedSender<crate::dataplane::StopCanary>,
    /// Taken by the rollout loop.
    stops_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::dataplane::StopCanary>>>,
    /// When the earliest rollout step of the current table is due, Unix
    /// milliseconds (`i64::MAX`: none).
    next_step_at: AtomicI64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("store", &self.store.backend()).finish_non_exhaustive()
    }
}

impl Node {
    /// A node over `store` whose data plane is `plane`, compiling into
    /// `components`. Nothing is served until [`Node::start`] (or a first
    /// [`Node::sync_now`]) has published a table.
    pub fn new(
        store: Arc<dyn Store>,
        plane: Arc<DataPlane>,
        components: Arc<CompiledComponents>,
        settings: NodeSettings,
    ) -> Arc<Self> {
        let (stops, stops_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Self {
            stops,
            stops_rx: Mutex::new(Some(stops_rx)),
            next_step_at: AtomicI64::new(i64::MAX),
            store,
            plane,
            components,
            queue: CompileQueue::new(),
            usage: Arc::new(UsageRecorder::default()),
            settings,
            served: Mutex::new(Served::default()),
            states: ArcSwap::from_pointee(HashMap::new()),
            hosts: ArcSwap::from_pointee(HashMap::new()),
            tenant_names: ArcSwap::from_pointee(HashMap::new()),
            name: std::sync::OnceLock::new(),
            public_host: std::sync::OnceLock::new(),
            applied_seq: AtomicI64::new(-1),
            rebuilds: Arc::default(),
            rebuild_lock: tokio::sync::Mutex::new(()),
            last_catch_up: tokio::sync::Mutex::new(None),
            dirty: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
            store_ok: AtomicBool::new(true),
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Loads every deployment (from the compiled-code cache where it can),
    /// publishes the first route table, and starts the node's tasks: the
    /// sync loop, the change listener, the compile queue's worker and the
    /// usage flusher.
    pub async fn start(self: &Arc<Self>) -> Result<SyncReport, StoreError> {
        let first = self.sync_now().await;
        let catch_up: std::sync::Weak<dyn crate::dataplane::CatchUp> = Arc::downgrade(self) as _;
        self.plane.set_catch_up(catch_up);
        if let Some(watcher) = self.store.watch_changes(self.wake.clone()) {
            self.spawn(watcher);
        }
        self.spawn({
            let node = self.clone();
            async move { node.sync_loop().await }
        });
        self.spawn({
            let node = self.clone();
            async move { node.compile_loop().await }
        });
        self.spawn({
            let node = self.clone();
            async move { node.flush_loop().await }
        });
        self.spawn(self.clone().rollout_loop());
        // Schedules and queues: delivered as requests through the data plane.
        self.spawn(crate::triggers::schedules::run(
            self.store.clone(),
            self.plane.clone(),
            self.clone(),
            self.plane.metrics().clone(),
        ));
        self.spawn(self.settings.queues.clone().run_consumers(
            self.plane.clone(),
            self.clone(),
            self.shutdown.child_token(),
        ));
        first
    }

    /// Ends every task the node started and waits for them; writes the
    /// usage counted since the last flush.
    pub async fn shutdown(&self) {
        self.start_draining();
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.usage.flush(self.store.as_ref()).await;
    }

    /// Runs `task` until it ends or the node shuts down.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What this node holds compiled, and its compiler.
    pub fn components(&self) -> &Arc<CompiledComponents> {
        &self.components
    }

    /// The data plane.
    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    /// The node's queues.
    pub fn queues(&self) -> &Arc<crate::triggers::queues::QueueHub> {
        &self.settings.queues
    }

    /// Names this node (`NODE_NAME`, or its host and port) once it listens.
    pub fn name_node(&self, name: String) {
        let _ = self.name.set(name);
    }

    /// Sets where clients reach this node (the authority of `PUBLIC_URL`):
    /// the `Host` of schedules' firings and queues' deliveries to
    /// deployments bound to no host.
    pub fn set_public_host(&self, authority: String) {
        let _ = self.public_host.set(authority);
    }

    /// Usage counted on this node.
    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.usage
    }

    /// Where components' key-value data lives.
    pub fn kv(&self) -> &Arc<dyn KvBackend> {
        &self.settings.kv
    }

    /// Moves at every rebuild of the route table: whatever caches what the
    /// store says (API keys) is stale once it has moved.
    pub fn rebuilds(&self) -> Arc<AtomicU64> {
        self.rebuilds.clone()
    }

    /// Where `deployment` stands on this node (`None`: unknown here yet).
    pub fn deployment_state(&self, deployment: &str) -> Option<DeploymentState> {
        self.states.load().get(deployment).cloned()
    }

    /// What the readiness probe reports.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            draining: self.draining.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            store_ok: self.store_ok.load(Ordering::Relaxed),
            pending_compilations: self.queue.pending(),
        }
    }

    /// Marks the node as shutting down (readiness turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Rebuilds the route table from the store now and publishes it: a
    /// change made through this node is live here before it is answered.
    pub async fn sync_now(&self) -> Result<SyncReport, StoreError> {
        let _one_at_a_time = self.rebuild_lock.lock().await;
        let result = self.rebuild().await;
        self.note_store(result.as_ref().err());
        result
    }

    fn note_store(&self, error: Option<&StoreError>) {
        let ok = !matches!(error, Some(StoreError::Unavailable(_)));
        if ok {
            if !self.store_ok.swap(true, Ordering::Relaxed) {
                tracing::info!("the store is reachable again");
            }
        } else {
            self.plane.metrics().store_errors.inc();
            if self.store_ok.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = ?error, "the store is unreachable; serving the routes in memory");
            }
        }
    }

    fn served(&self) -> MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn rebuild(&self) -> Result<SyncReport, StoreError> {
        let seq = self.store.change_seq().await?;
        let tiers: HashMap<String, Arc<Tier>> =
            self.store.tiers().await?.into_iter().map(|t| (t.name.clone(), Arc::new(t))).collect();
        let deployments = self.open_secrets(self.store.deployments(None).await?);
        let hosts: HashMap<String, Option<String>> =
            deployments.iter().map(|d| (d.id.clone(), d.host.clone())).collect();
        let next_step_at = deployments
            .iter()
            .filter_map(|d| d.canary.as_ref().and_then(|c| c.next_at))
            .min()
            .unwrap_or(i64::MAX);
        let names = self.store.tenants().await?.into_iter().map(|t| (t.id, t.name)).collect();
        self.tenant_names.store(Arc::new(names));
        let held_hosts = self.held_hosts().await?;

        // What the compiled-code cache holds is ready at once: a restarted
        // node serves without compiling.
        let missing: Vec<String> = deployments
            .iter()
            .flat_map(|d| {
                std::iter::once(d.component.clone())
                    .chain(d.canary.as_ref().map(|c| c.component.clone()))
            })
            .filter(|digest| self.components.get(digest).is_none())
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let from_cache = self.components.load_cached(missing).await;

        let served_versions: HashMap<String, i64> = self
            .served()
            .routes
            .iter()
            .filter_map(|(id, r)| r.owner.as_ref().map(|o| (id.clone(), o.version)))
            .collect();
        let plan = plan::build(
            Snapshot { deployments, tiers },
            |digest| match self.components.get(digest) {
                Some(app) => Compilation::Ready(app),
                None => match self.queue.status(digest) {
                    Some(Status::Failed { error, .. }) => Compilation::Failed(error),
                    _ => Compilation::Pending,
                },
            },
            &served_versions,
        );
        for (deployment, why) in &plan.invalid {
            tracing::error!(%deployment, reason = %why, "a deployment cannot be served");
        }

        let mut report = SyncReport {
            from_cache,
            waiting: plan.waiting(),
            invalid: plan.invalid.len(),
            ..SyncReport::default()
        };
        let now = Instant::now();
        let (routes, states, failed) = self.materialize(plan.routes, &held_hosts, now);
        report.failed = failed;
        report.routes = routes.len();
        self.plane.metrics().deployments_live.set(routes.len() as i64);
        self.plane.publish(routes);
        self.states.store(Arc::new(states));
        self.hosts.store(Arc::new(hosts));
        self.components.retain(&plan.needed);
        if self.queue.want(&plan.to_compile, now) {
            report.queued = plan.to_compile.len();
        }
        self.plane.metrics().compilations_pending.set(self.queue.pending() as i64);
        self.next_step_at.store(next_step_at, Ordering::Relaxed);
        self.applied_seq.store(seq, Ordering::Relaxed);
        self.rebuilds.fetch_add(1, Ordering::Release);
        if report.waiting == 0 && !self.loaded.swap(true, Ordering::Relaxed) {
            tracing::info!(routes = report.routes, "every deployment is servable: ready");
        }
        Ok(report)
    }

    /// `deployments` with their secrets opened, for the guests to read. One
    /// whose secrets do not open here (sealed under a key this node does
    /// not hold) is not served by this node, and says why in its log.
    fn open_secrets(
        &self,
        deployments: Vec<crate::store::Deployment>,
    ) -> Vec<crate::store::Deployment> {
        deployments
            .into_iter()
            .filter_map(|mut deployment| {
                if deployment.secrets.is_empty() {
                    return Some(deployment);
                }
                let place = crate::secrets::Place {
                    tenant: deployment.tenant_id,
                    host: deployment.host.as_deref(),
                    route: &deployment.route,
                };
                match self.settings.secrets.open_all(place, &deployment.secrets) {
                    Ok(open) => {
                        deployment.secrets = open;
                        Some(deployment)
                    }
                    Err(error) => {
                        tracing::error!(deployment = %deployment.id, %error,
                                        "a deployment's secrets do not open on this node: not served");
                        None
                    }
                }
            })
            .collect()
    }

    /// Every host a tenant holds: granted to it, or its own under the base
    /// domain. Only that tenant's routes answer there.
    async fn held_hosts(&self) -> Result<Vec<(String, crate::tenancy::TenantId)>, StoreError> {
        let mut held: Vec<(String, crate::tenancy::TenantId)> = self
            .store
            .grants(None)
            .await?
            .into_iter()
            .filter_map(|g| match g.grant {
                crate::router::Grant::Host(host) => Some((host, g.tenant_id)),
                crate::router::Grant::Path(_) => None,
            })
            .collect();
        if let Some(base) = &self.settings.base_domain {
            for (id, name) in self.tenant_names.load().iter() {
                held.push((format!("{name}.{base}"), *id));
            }
        }
        Ok(held)
    }

    /// Checks the change counter (and the dirty flag) every
    /// [`SYNC_INTERVAL`], or when woken, and rebuilds when either moved.
    async fn sync_loop(&self) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            self.sync_once().await;
        }
    }

    /// Catches up with the store for a request no route matched at
    /// `missed_at`: returns once a check of the change counter that began
    /// after it has ended (rebuilding the table if the counter moved).
    /// Misses wait in turn for the check in progress and share the next
    /// one; checks begin at most once per [`CATCH_UP_INTERVAL`], so a flood
    /// of requests for routes that do not exist costs the store one read
    /// per interval, and each of them at most that interval's wait.
    async fn catch_up_with_store(&self, missed_at: Instant) {
        let mut last = self.last_catch_up.lock().await;
        if last.is_some_and(|began| began >= missed_at) {
            return;
        }
        if let Some(began) = *last {
            tokio::time::sleep_until((began + CATCH_UP_INTERVAL).into()).await;
        }
        *last = Some(Instant::now());
        self.plane.metrics().catch_ups.inc();
        self.sync_once().await;
    }

    /// One check of the change counter; rebuilds if it moved.
    pub async fn sync_once(&self) {
        match self.store.change_seq().await {
            Ok(seq) => {
                self.note_store(None);
                let dirty = self.dirty.swap(false, Ordering::Relaxed);
                if (dirty || seq != self.applied_seq.load(Ordering::Relaxed))
                    && let Err(e) = self.sync_now().await
                {
                    tracing::warn!(error = %e, "rebuilding the route table failed");
                }
            }
            Err(e) => self.note_store(Some(&e)),
        }
    }

    /// Takes due work from the compile queue, one task per component (the
    /// compiler bounds how many run at once), until the node shuts down.
    async fn compile_loop(self: Arc<Self>) {
        loop {
            while let Some(digest) = self.queue.take(Instant::now()) {
                let node = self.clone();
                self.spawn(async move { node.compile(digest).await });
            }
            let retry = self.queue.next_retry();
            let until_retry = async {
                match retry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.queue.work_added() => {}
                () = until_retry => {}
            }
        }
    }

    async fn compile(&self, digest: String) {
        let started = Instant::now();
        let result = self.components.compile_stored(self.store.as_ref(), &digest).await;
        match &result {
            Ok(()) => tracing::info!(%digest, ms = started.elapsed().as_millis() as u64,
                                     "compiled a deployed component; serving it"),
            Err(error) => {
                self.plane.metrics().compile_failures.inc();
                let attempts = match self.queue.status(&digest) {
                    Some(Status::Failed { attempts, .. }) => attempts + 1,
                    _ => 1,
                };
                tracing::error!(%digest, %error, attempt = attempts,
                                "cannot compile a deployed component; will try again");
            }
        }
        self.queue.finished(&digest, result, Instant::now());
        self.plane.metrics().compilations_pending.set(self.queue.pending() as i64);
        self.dirty.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    async fn flush_loop(&self) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut flushes: u64 = 0;
        loop {
            tick.tick().await;
            self.usage.flush(self.store.as_ref()).await;
            // Per-minute usage is kept for charts of recent hours only.
            flushes += 1;
            if flushes % crate::usage::PRUNE_EVERY_FLUSHES == 1 {
                let before = (crate::quota::unix_now() / 60) as i64 - crate::usage::MINUTES_KEPT;
                match self.store.prune_usage_minutes(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "per-minute usage older than 2 days pruned"),
                    Err(e) => tracing::warn!(error = %e, "per-minute usage not pruned; will retry"),
                }
            }
        }
    }
}

impl crate::triggers::Targets for Node {
    fn node_name(&self) -> String {
        self.name.get().cloned().unwrap_or_else(crate::logs::hostname)
    }

    fn host_of(&self, deployment: &str) -> Option<Option<String>> {
        self.hosts.load().get(deployment).cloned()
    }

    fn public_host(&self) -> String {
        self.public_host.get().cloned().unwrap_or_else(|| "localhost".into())
    }

    fn tenant_name(&self, tenant: crate::tenancy::TenantId) -> String {
        self.tenant_names.load().get(&tenant).cloned().unwrap_or_else(|| tenant.to_string())
    }
}

impl crate::dataplane::CatchUp for Node {
    fn catch_up(
        &self,
        missed_at: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.catch_up_with_store(missed_at))
    }
}

impl crate::control::Publisher for Node {
    fn publish(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Err(e) = self.sync_now().await {
                tracing::warn!(error = %e, "the change is stored but not yet live on this node");
            }
        })
    }
}
