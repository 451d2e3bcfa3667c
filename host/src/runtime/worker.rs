//! Compiling uploads in a child process (`wasmwiz compile-worker`), so a
//! hostile upload can neither stall the server nor exhaust its memory: the
//! child runs at a lower CPU priority with a cap on its heap, is killed when
//! it takes longer than its time limit, and a compiler crash ends only it.
//!
//! The child builds an engine from the same configuration as the server's
//! (so the code it writes has the same fingerprint), compiles, and writes
//! the code into the compiled-code cache; the parent then loads it from
//! there like any cached component.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wasmtime::Engine;

use super::{CodeCache, CompileError, Compiled, Runtime, RuntimeConfig, compile, engine_config};

/// Compilations that may run at once on one node.
const CONCURRENT_COMPILATIONS: usize = 2;
/// Niceness of the child: tenants' requests come first.
const WORKER_NICENESS: i32 = 10;

/// What the child reports on stdout, as one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReport {
    ok: bool,
    compile_ms: u64,
    code: Option<String>,
    message: Option<String>,
}

/// Runs compilations in child processes.
#[derive(Debug)]
pub struct Compiler {
    exe: PathBuf,
    cache_root: PathBuf,
    cache: CodeCache,
    pool_size: u32,
    timeout: Duration,
    memory_limit: u64,
    /// The compile slots, handed out to tenants in turn: one tenant's
    /// queue of uploads never holds up another's.
    slots: super::fair::FairSlots,
}

impl Compiler {
    /// A compiler writing into the cache under `cache_root` for `runtime`.
    pub fn new(
        runtime: &Runtime,
        cache_root: &Path,
        timeout: Duration,
        memory_limit: u64,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        Ok(Self {
            exe,
            cache_root: cache_root.to_path_buf(),
            cache: CodeCache::open(cache_root, runtime.fingerprint())?,
            pool_size: runtime.pool_size(),
            timeout,
            memory_limit,
            slots: super::fair::FairSlots::new(CONCURRENT_COMPILATIONS),
        })
    }

    /// Compilations waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.slots.waiting()
    }

    /// The cache compiled code is kept in.
    pub fn cache(&self) -> &CodeCache {
        &self.cache
    }

    /// Compiles `bytes` (whose digest is `digest_hex`) in a child process
    /// and loads the result, or loads it straight from the cache when it is
    /// already there. `claimant` is the tenant whose upload it is (`None`:
    /// the node's own compilation of something deployed elsewhere): slots
    /// go to claimants in turn.
    pub async fn compile(
        &self,
        engine: &Engine,
        digest_hex: &str,
        bytes: &[u8],
        claimant: super::fair::Claimant,
    ) -> Result<Compiled, CompileError> {
        if let Some(compiled) = self.compile_cached(engine, digest_hex).await {
            return Ok(compiled);
        }
        let _slot = self.slots.acquire(claimant).await;
        let started = Instant::now();
        let report = self.run_child(digest_hex, bytes).await?;
        if !report.ok {
            return Err(error_from_report(report));
        }
        let component = self.load_cached(engine, digest_hex).await.ok_or_else(|| {
            CompileError::Internal("the compiled code could not be loaded".into())
        })?;
        tracing::info!(
            digest = digest_hex,
            compile_ms = report.compile_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "component compiled"
        );
        Ok(Compiled {
            component,
            compile_time: Duration::from_millis(report.compile_ms),
            from_cache: false,
        })
    }

    /// The component's code from the cache, if it is there.
    pub async fn compile_cached(&self, engine: &Engine, digest_hex: &str) -> Option<Compiled> {
        let component = self.load_cached(engine, digest_hex).await?;
        Some(Compiled { component, compile_time: Duration::ZERO, from_cache: true })
    }

    async fn load_cached(
        &self,
        engine: &Engine,
        digest_hex: &str,
    ) -> Option<wasmtime::component::Component> {
        let cache = self.cache.clone();
        let engine = engine.clone();
        let digest = digest_hex.to_string();
        tokio::task::spawn_blocking(move || cache.load(&engine, &digest)).await.ok().flatten()
    }

    async fn run_child(
        &self,
        digest_hex: &str,
        bytes: &[u8],
    ) -> Result<WorkerReport, CompileError> {
        let internal =
            |what: &str, e: std::io::Error| CompileError::Internal(format!("{what}: {e}"));
        let mut child = tokio::process::Command::new(&self.exe)
            .arg("compile-worker")
            .arg("--cache-dir")
            .arg(&self.cache_root)
            .arg("--digest")
            .arg(digest_hex)
            .arg("--instance-pool-size")
            .arg(self.pool_size.to_string())
            .arg("--memory-limit")
            .arg(self.memory_limit.to_string())
            .env_clear()
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal("starting the compiler", e))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let work = async {
            // Feed and drain concurrently so neither pipe fills up.
            let feed = async {
                stdin.write_all(bytes).await?;
                stdin.shutdown().await?;
                drop(stdin);
                Ok::<_, std::io::Error>(())
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (fed, read_out, read_err) =
                tokio::join!(feed, stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            let status = child.wait().await?;
            let _ = (fed, read_err);
            read_out?;
            Ok::<_, std::io::Error>((status, out, err))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Err(_) => {
                tracing::warn!(
                    digest = digest_hex,
                    timeout_s = self.timeout.as_secs(),
                    "compilation took too long; the compiler was killed"
                );
                Err(CompileError::Timeout(self.timeout))
            }
            Ok(Err(e)) => Err(internal("running the compiler", e)),
            Ok(Ok((status, out, err))) => {
                let line = String::from_utf8_lossy(&out);
                match serde_json::from_str::<WorkerReport>(line.trim()) {
                    Ok(report) => Ok(report),
                    Err(_) => {
                        tracing::error!(digest = digest_hex, %status,
                                        stderr = %String::from_utf8_lossy(&err),
                                        "the compiler failed");
                        Err(CompileError::Internal(format!("the compiler exited with {status}")))
                    }
                }
            }
        }
    }
}

fn error_from_report(report: WorkerReport) -> CompileError {
    let message = report.message.unwrap_or_default();
    match report.code.as_deref() {
        Some("not_wasm") => CompileError::NotWasm,
        Some("invalid_wasm") => CompileError::Invalid(message),
        Some("core_module") => CompileError::CoreModule,
        Some("unrunnable") => CompileError::Unrunnable(message),
        Some("insufficient_storage") => CompileError::NoSpace(message),
        _ => CompileError::Internal(message),
    }
}

/// The child's side: reads a component on stdin, compiles it with the
/// server's engine configuration, stores the code in the cache, reports.
pub fn worker_main(cache_dir: &Path, digest_hex: &str, pool_size: u32, memory_limit: u64) -> i32 {
    lower_priority_and_cap_memory(memory_limit);
    let report = match worker_compile(cache_dir, digest_hex, pool_size) {
        Ok(compile_ms) => WorkerReport { ok: true, compile_ms, code: None, message: None },
        Err(e) => WorkerReport {
            ok: false,
            compile_ms: 0,
            code: Some(e.code().to_string()),
            message: Some(match &e {
                CompileError::Invalid(m)
                | CompileError::Unrunnable(m)
                | CompileError::NoSpace(m)
                | CompileError::Internal(m) => m.clone(),
                other => other.to_string(),
            }),
        },
    };
    let line = serde_json::to_string(&report).expect("the report serializes");
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
        return 1;
    }
    0
}

fn worker_compile(cache_dir: &Path, digest_hex: &str, pool_size: u32) -> Result<u64, CompileError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| CompileError::Internal(format!("reading the component: {e}")))?;
    // No warm slots: a worker instantiates nothing, and its address space
    // is capped (COMPILE_MEMORY_LIMIT).
    let config =
        engine_config(&RuntimeConfig { warm_slots: 0, ..RuntimeConfig::with_pool(pool_size) });
    let engine = Engine::new(&config).map_err(|e| CompileError::Internal(format!("{e:#}")))?;
    let compiled = compile(&engine, &bytes)?;
    let fingerprint = super::fingerprint_of(&engine);
    let cache = CodeCache::open(cache_dir, &fingerprint)
        .map_err(|e| CompileError::Internal(format!("opening the cache: {e}")))?;
    cache.store(digest_hex, &compiled.component).map_err(|e| {
        if super::compile::is_disk_full(&e) {
            CompileError::NoSpace(format!("{e:#}"))
        } else {
            CompileError::Internal(format!("writing the compiled code: {e:#}"))
        }
    })?;
    Ok(compiled.compile_time.as_millis() as u64)
}

#[expect(unsafe_code, reason = "setpriority and setrlimit have no safe wrapper in std")]
fn lower_priority_and_cap_memory(memory_limit: u64) {
    // SAFETY: plain syscalls on this process with valid arguments; failure
    // only means the child runs without the restriction.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICENESS);
        // RLIMIT_DATA counts the heap and private writable mappings, not
        // the engine's PROT_NONE address-space reservations.
        let limit = libc::rlimit { rlim_cur: memory_limit, rlim_max: memory_limit };
        libc::setrlimit(libc::RLIMIT_DATA, &limit);
    }
}
