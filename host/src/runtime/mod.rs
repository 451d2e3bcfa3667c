//! The WebAssembly runtime: one wasmtime [`Engine`] per process, components
//! compiled once and pre-instantiated, a fresh sandbox for every request.
//!
//! Two lifetimes of state, kept apart on purpose:
//! - per process, [`Runtime`]: the engine (its pooling instance allocator and
//!   the epoch ticker), the linker with WASI p2 and wasi:http, the pool's
//!   admission semaphore;
//! - per request, [`state::InvocationState`]: the `Store`'s data — resource
//!   table, `WasiCtx`, `WasiHttpCtx`, outbound hooks, memory limiter, captured
//!   output. It is created for one invocation and dropped with it, unless the
//!   deployment opted in to instance reuse ([`Instances`], `engine::kept`).
//!
//! # Layout
//! - `compile`: validation and compilation of uploaded bytes, and the
//!   compiled-code cache.
//! - [`engine`]: running one request on an instance (fresh, kept or shared),
//!   its limits and outcome; one file per ABI (`p2`, `p3`) and one
//!   mechanism for instances that serve more than one request (`kept`).
//! - `state`: the per-request store data and the memory limiter.
//! - `output`: guest stdout/stderr, captured per invocation.
//! - `body`: request body limits and the guest's response body.
//! - `slots`: admission to the instance pool, per tenant and fair.
//! - `fair`: slots handed out to tenants in turn (the compile slots).

pub mod body;
pub mod capabilities;
mod compile;
pub mod engine;
pub mod fair;
mod outbound;
mod output;
mod phases;
mod slots;
mod state;
mod worker;

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::tenancy::MAX_MEMORY_LIMIT_BYTES;

pub use body::{expects_continue, read_request};
pub use capabilities::{Capabilities, KvAccess, KvMeter, QueuePublisher, QueueRefused};
pub use compile::{CodeCache, CompileError, Compiled, check_imports, compile};
pub use engine::{
    ExecutionReport, Instances, InvocationTiming, InvokeOptions, Limits, Outcome, Place,
    SharedPlace,
};
pub use outbound::defaults as outbound_defaults;
pub use outbound::{
    AddressClass, HostPattern, Network, OutboundPolicy, OutboundSettings, classify,
};
pub use output::{CapturedText, GuestText, MAX_CAPTURED_OUTPUT};
pub use phases::Phases;
pub use slots::{Refusal, Slot, SlotPool, TenantSlots, refusal_response};

pub use state::InvocationState;
pub use worker::{Compiler, worker_main};

/// How often the epoch ticker advances the engine's epoch. A guest that
/// computes without calling the host yields its tokio worker this often, so
/// a CPU loop delays other requests on that worker by at most one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest `get-random-bytes` a guest may request in one call; wasmtime's
/// default (64 MiB) would let one call allocate that much on the host.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Most resources (fields, streams, bodies, ...) one invocation may hold.
pub const MAX_RESOURCES: usize = 10_000;

/// Bytes of a slot's linear memory reset in place (dirty pages only) rather
/// than released, when the kernel supports PAGEMAP_SCAN.
pub const DEFAULT_KEEP_RESIDENT_BYTES: u64 = 1 << 20;
/// The same for tables.
const KEEP_RESIDENT_TABLE_BYTES: usize = 1 << 20;

/// Default for `REUSE_IDLE_MEMORY`.
pub const DEFAULT_REUSE_IDLE_MEMORY: u64 = 1 << 30;
/// Default for `REUSE_IDLE_TIMEOUT`.
pub const DEFAULT_REUSE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for `POOL_CORE_INSTANCES`: core module instances one component
/// may hold. A Rust wasm32-wasip2 component has 3, a JavaScript one from
/// componentize-js 6, a Python one from componentize-py 14 (and more with
/// native extensions). Only counted against, never reserved memory.
pub const DEFAULT_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Default for `POOL_MEMORIES`: linear memories one component may hold
/// (Rust, Python and JavaScript components have 1). Each reserves address
/// space in every slot of the pool (not resident memory).
pub const DEFAULT_MEMORIES_PER_COMPONENT: u32 = 2;
/// Default for `POOL_TABLES`: tables one component may hold (Rust 2,
/// Python 2, JavaScript 1).
pub const DEFAULT_TABLES_PER_COMPONENT: u32 = 4;
/// Default for `POOL_TABLE_ELEMENTS`: elements one table may hold.
pub const DEFAULT_TABLE_ELEMENTS: u32 = 20_000;

/// Settings of the per-process runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Component instances that may be alive at once (the pool's size).
    pub pool_size: u32,
    /// Slots beyond `pool_size`, kept warm (idle, memory image mapped) for
    /// the component that last used them.
    pub warm_slots: u32,
    /// Bytes of an idle slot's linear memory reset in place rather than
    /// released (where the kernel supports PAGEMAP_SCAN).
    pub keep_resident_bytes: u64,
    /// Most linear memory instances kept idle for reuse may hold in all.
    pub reuse_idle_memory: u64,
    /// Longest time an instance is kept idle for reuse.
    pub reuse_idle_timeout: Duration,
    /// What one component may hold at most: the shape of a pool slot.
    pub shape: ComponentShape,
}

/// The most one component may hold, which sizes each slot of the pool: a
/// component over any of these is refused at upload (422, naming it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentShape {
    /// Core module instances.
    pub core_instances: u32,
    /// Linear memories.
    pub memories: u32,
    /// Tables.
    pub tables: u32,
    /// Elements of one table.
    pub table_elements: u32,
}

impl Default for ComponentShape {
    fn default() -> Self {
        Self {
            core_instances: DEFAULT_CORE_INSTANCES_PER_COMPONENT,
            memories: DEFAULT_MEMORIES_PER_COMPONENT,
            tables: DEFAULT_TABLES_PER_COMPONENT,
            table_elements: DEFAULT_TABLE_ELEMENTS,
        }
    }
}

impl RuntimeConfig {
    /// A pool of `pool_size` slots, all of which may stay warm, with the
    /// default resident reset size.
    pub fn with_pool(pool_size: u32) -> Self {
        Self {
            pool_size,
            warm_slots: pool_size,
            keep_resident_bytes: DEFAULT_KEEP_RESIDENT_BYTES,
            reuse_idle_memory: DEFAULT_REUSE_IDLE_MEMORY,
            reuse_idle_timeout: DEFAULT_REUSE_IDLE_TIMEOUT,
            shape: ComponentShape::default(),
        }
    }
}

/// The per-process runtime: engine, linker, instance-pool admission.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    /// Admission to the pool: an invocation takes a slot before it
    /// instantiates, so a full pool answers at once instead of queueing,
    /// and no tenant takes another's share.
    slots: Arc<SlotPool>,
    pool_size: u32,
    fingerprint: String,
    /// Instances kept idle for reuse, against the most the node may keep.
    idle: Arc<engine::kept::IdleCount>,
    /// Every deployment's kept instances, for the sweep of idle ones.
    sweeper: Arc<engine::kept::Sweeper>,
    /// Advances the engine's epoch every [`EPOCH_TICK`].
    _ticker: Periodic,
    /// Drops the instances idle past `REUSE_IDLE_TIMEOUT`, a few times per
    /// timeout, on a thread of its own so the drops never delay an epoch.
    _sweeper: Periodic,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pool_size", &self.pool_size)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// A component ready to serve: compiled, linked and pre-instantiated.
#[derive(Clone)]
pub struct App {
    handler: Handler,
}

/// The handler a component exports.
#[derive(Clone)]
enum Handler {
    /// `wasi:http/incoming-handler@0.2` (the `wasi:http/proxy` world).
    P2(ProxyPre<InvocationState>),
    /// `wasi:http/handler@0.3` (the `wasi:http/service` world).
    P3(wasmtime_wasi_http::p3::bindings::ServicePre<InvocationState>),
}

impl App {
    /// Whether the component is a WASIp3 handler.
    pub fn is_p3(&self) -> bool {
        matches!(self.handler, Handler::P3(_))
    }

    /// The WASIp2 handler (the paths that only run those).
    fn p2(&self) -> wasmtime::Result<&ProxyPre<InvocationState>> {
        match &self.handler {
            Handler::P2(pre) => Ok(pre),
            Handler::P3(_) => Err(wasmtime::format_err!("a WASIp3 component on a WASIp2 path")),
        }
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine, the pooling allocator and the linker, and starts the
    /// epoch ticker.
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(config))
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        // Full WASI p2 (std-built Rust guests import wasi:cli/environment and
        // friends even for the proxy world), with sockets denied per store,
        // plus the HTTP interfaces.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI p2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        // WASIp3 beside it: what the `wasi:http/service@0.3` world imports.
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)
            .and_then(|()| wasmtime_wasi::p3::cli::add_to_linker(&mut linker))
            .and_then(|()| wasmtime_wasi::p3::clocks::add_to_linker(&mut linker))
            .and_then(|()| wasmtime_wasi::p3::random::add_to_linker(&mut linker))
            .map_err(anyhow::Error::from)
            .context("linking WASIp3 and wasi:http@0.3")?;
        capabilities::add_to_linker(&mut linker, InvocationState::capabilities)
            .map_err(anyhow::Error::from)
            .context("linking wasi:keyvalue and wasi:config")?;

        let fingerprint = fingerprint_of(&engine);

        let sweeper = Arc::new(engine::kept::Sweeper::default());
        let ticker = Periodic::spawn("wasmwiz-epoch", EPOCH_TICK, {
            let engine = engine.clone();
            move || engine.increment_epoch()
        });
        let timeout = config.reuse_idle_timeout;
        let sweeping = Periodic::spawn(
            "wasmwiz-reuse-sweep",
            (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            {
                let sweeper = sweeper.clone();
                move || sweeper.sweep(timeout)
            },
        );
        Ok(Self {
            engine,
            linker,
            slots: SlotPool::new(config.pool_size),
            pool_size: config.pool_size,
            fingerprint,
            // The allocator has `pool_size + warm_slots` slots and at most
            // `pool_size` instances run: idle ones may use the rest.
            idle: Arc::new(engine::kept::IdleCount::new(
                config.warm_slots as usize,
                config.reuse_idle_memory,
            )),
            sweeper,
            _ticker: ticker,
            _sweeper: sweeping,
        })
    }

    /// The engine (shared by every component this runtime loads).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Identifies compiled code this engine can load: the wasmtime version and
    /// a hash of every setting that affects code generation.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Instances that may run at once.
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// Instances running now: the places taken in the pool (one per
    /// request, or per shared WASIp3 instance, however many requests it
    /// serves).
    pub fn instances_in_use(&self) -> usize {
        self.slots.in_use() as usize
    }

    /// Linear memory the live instances hold now (running or idle), in
    /// bytes: counted for the whole process (a node runs one runtime).
    pub fn instance_memory(&self) -> u64 {
        state::linear_memory_bytes()
    }

    /// Instances kept idle for reuse now.
    pub fn instances_idle(&self) -> usize {
        self.idle.now()
    }

    /// Links a compiled component and pre-instantiates it as a wasi:http proxy.
    pub fn prepare(&self, component: &Component) -> Result<App, CompileError> {
        compile::check_imports(&self.engine, component)?;
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| CompileError::Link(format!("{e:#}")))?;
        if let Some(pre) = engine::service_pre(&pre) {
            return Ok(App { handler: Handler::P3(pre) });
        }
        let pre = ProxyPre::new(pre).map_err(|e| CompileError::NotHttpHandler(format!("{e:#}")))?;
        Ok(App { handler: Handler::P2(pre) })
    }
}

/// Identifies the code `engine` produces: the wasmtime version and a hash of
/// every setting that affects code generation.
pub(crate) fn fingerprint_of(engine: &Engine) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime-{}-{:016x}", wasmtime_version(), hasher.finish())
}

/// The engine configuration every process of one installation shares (the
/// server and its compile workers must agree, or cached code would not load).
pub(crate) fn engine_config(config: &RuntimeConfig) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // Slots for the instances that may run at once (the semaphore in
    // `Runtime` admits `pool_size` of them), plus slots that stay warm for
    // the components that used them last: with as many slots as running
    // instances only, serving more components than that round-robin steals
    // warm slots in a cascade, each steal re-mapping a memory image (page
    // faults: a third of the throughput, measured with 1,000 components).
    let n = config.pool_size.saturating_add(config.warm_slots);
    let shape = config.shape;
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(shape.core_instances))
        .total_memories(n.saturating_mul(shape.memories))
        .total_tables(n.saturating_mul(shape.tables))
        .total_stacks(n)
        .max_memories_per_component(shape.memories)
        .max_tables_per_component(shape.tables)
        .max_core_instances_per_component(shape.core_instances)
        .table_elements(shape.table_elements as usize)
        // Every slot can hold the largest memory WebAssembly 32-bit allows;
        // each invocation's own (tier) limit is enforced by its limiter, so a
        // component whose initial memory is over its limit fails when it is
        // instantiated (500), not when it is compiled. The address space is
        // reserved per slot anyway (4 GiB + guard), so this costs nothing.
        .max_memory_size(MAX_MEMORY_LIMIT_BYTES as usize)
        // A slot remembers the component that last used it; the next
        // instance of that component reuses its memory image as it is. With
        // many components served round-robin, every idle slot kept warm
        // saves an image re-map (and its page faults) on a later request.
        // Any idle slot may stay warm: a cap below the number of components
        // served round-robin brings the cascade back.
        .max_unused_warm_slots(n);
    // Resetting a slot with madvise makes the next instance fault every page
    // back in and, in a multi-threaded process, costs a TLB shootdown on
    // every core. Where the kernel can report which pages a guest dirtied
    // (PAGEMAP_SCAN, Linux 6.7+), reset just those with memset and keep them
    // resident instead: the same zeroed memory, without the faults.
    let pagemap_scan = PoolingAllocationConfig::is_pagemap_scan_available();
    tracing::debug!(pagemap_scan, "pooling allocator");
    if pagemap_scan {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(
                usize::try_from(config.keep_resident_bytes).unwrap_or(usize::MAX),
            )
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    }

    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    c
}

fn wasmtime_version() -> &'static str {
    // Kept in step with the `=48.0.8` pin in Cargo.toml; the fingerprint
    // hash covers everything else that matters.
    "48.0.8"
}

/// A thread of the runtime's own that runs `work` every `every` until the
/// runtime is dropped (then it is woken and joined): the epoch ticker, and
/// the sweeper of idle reused instances.
struct Periodic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Periodic {
    fn spawn(name: &str, every: Duration, mut work: impl FnMut() + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(every);
                        work();
                    }
                }
            })
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        Self { stop, handle: Some(handle) }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}
