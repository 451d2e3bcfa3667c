//! The components this node holds compiled and linked, by digest: filled
//! by uploads through this node, by the compiled-code cache, and by the
//! compile queue's tasks; read when the route table is rebuilt.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;

use crate::metrics::Metrics;
use crate::runtime::{App, CompileError, Compiled, Compiler, Runtime};
use crate::store::Store;

/// Compiled components loaded from the cache at once during a rebuild.
const CACHE_LOAD_CONCURRENCY: usize = 4;

/// What compiling an upload produced.
#[derive(Debug, Clone)]
pub struct UploadCompiled {
    /// The world the component targets (`wasi:http/proxy@0.2.x`).
    pub world: String,
    /// Compilation time; zero when the code came from the cache.
    pub compile_time: Duration,
}

/// Compiled components of one node.
#[derive(Debug)]
pub struct CompiledComponents {
    runtime: Arc<Runtime>,
    compiler: Compiler,
    metrics: Arc<Metrics>,
    apps: Mutex<HashMap<String, App>>,
}

impl CompiledComponents {
    /// An empty set compiling with `compiler` for `runtime`.
    pub fn new(runtime: Arc<Runtime>, compiler: Compiler, metrics: Arc<Metrics>) -> Self {
        Self { runtime, compiler, metrics, apps: Mutex::new(HashMap::new()) }
    }

    fn apps(&self) -> MutexGuard<'_, HashMap<String, App>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Compilations (uploads, and this node's own) waiting for a slot.
    pub fn compile_slots_waiting(&self) -> usize {
        self.compiler.waiting()
    }

    /// The component with this digest, if it is compiled here.
    pub fn get(&self, digest: &str) -> Option<App> {
        self.apps().get(digest).cloned()
    }

    /// Drops every component not in `needed`.
    pub fn retain(&self, needed: &HashSet<String>) {
        self.apps().retain(|digest, _| needed.contains(digest));
    }

    /// Prepares, from the compiled-code cache, each of `wanted` that is
    /// there, a few at a time; returns how many it loaded.
    pub async fn load_cached(&self, wanted: impl IntoIterator<Item = String>) -> usize {
        let engine = self.runtime.engine();
        let loaded: Vec<(String, Option<Compiled>)> = futures::stream::iter(wanted)
            .map(|digest| async move {
                let compiled = match digest_hex(&digest) {
                    Some(hex) => self.compiler.compile_cached(engine, hex).await,
                    None => None,
                };
                (digest, compiled)
            })
            .buffer_unordered(CACHE_LOAD_CONCURRENCY)
            .collect()
            .await;
        let mut count = 0;
        for (digest, compiled) in loaded {
            let Some(compiled) = compiled else { continue };
            match self.runtime.prepare(&compiled.component) {
                Ok(app) => {
                    count += 1;
                    self.metrics.compiled_cache.with_label_values(&["hit"]).inc();
                    self.apps().insert(digest, app);
                }
                Err(e) => tracing::error!(%digest, error = %e, "cached code cannot be linked"),
            }
        }
        count
    }

    /// Validates and compiles an upload (whose digest is `digest`) and
    /// holds the result; the caller stores the bytes.
    pub async fn compile_upload(
        &self,
        tenant_id: i64,
        digest: &str,
        bytes: &[u8],
    ) -> Result<UploadCompiled, CompileError> {
        let hex = digest_hex(digest)
            .ok_or_else(|| CompileError::Internal(format!("`{digest}` is not a digest")))?;
        let compiled =
            self.compiler.compile(self.runtime.engine(), hex, bytes, Some(tenant_id)).await?;
        self.record(&compiled);
        let app = match self.runtime.prepare(&compiled.component) {
            Ok(app) => app,
            Err(e) => {
                // Valid code that cannot be linked here: keep nothing of it.
                self.compiler.cache().remove(hex);
                return Err(e);
            }
        };
        let world = world_of(&compiled.component, self.runtime.engine());
        self.apps().insert(digest.to_string(), app);
        let compile_time = if compiled.from_cache { Duration::ZERO } else { compiled.compile_time };
        Ok(UploadCompiled { world, compile_time })
    }

    /// Compiles a deployed component from the bytes in `store` (a queued
    /// compilation); the error is the reason to show and log.
    pub async fn compile_stored(&self, store: &dyn Store, digest: &str) -> Result<(), String> {
        let hex = digest_hex(digest).ok_or_else(|| format!("`{digest}` is not a digest"))?;
        let bytes = match store.component_bytes(digest).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(format!("the bytes of {digest} are missing from the store")),
            Err(e) => return Err(e.to_string()),
        };
        let compiled = self
            .compiler
            .compile(self.runtime.engine(), hex, &bytes, None)
            .await
            .map_err(|e| e.to_string())?;
        self.record(&compiled);
        let app = self.runtime.prepare(&compiled.component).map_err(|e| e.to_string())?;
        self.apps().insert(digest.to_string(), app);
        Ok(())
    }

    fn record(&self, compiled: &Compiled) {
        if compiled.from_cache {
            self.metrics.compiled_cache.with_label_values(&["hit"]).inc();
        } else {
            self.metrics.compiled_cache.with_label_values(&["miss"]).inc();
            self.metrics.compile_duration.observe(compiled.compile_time.as_secs_f64());
        }
    }
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The world a component targets, from its handler export's version.
fn world_of(component: &wasmtime::component::Component, engine: &wasmtime::Engine) -> String {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| {
            name.strip_prefix("wasi:http/incoming-handler@")
                .map(|version| format!("wasi:http/proxy@{version}"))
                .or_else(|| {
                    name.strip_prefix("wasi:http/handler@")
                        .map(|version| format!("wasi:http/service@{version}"))
                })
        })
        .unwrap_or_else(|| "wasi:http/proxy".to_string())
}
