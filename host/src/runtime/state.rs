//! Per-request state: the data of one invocation's `Store`.

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result, bail};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::capabilities::{Capabilities, CapabilitiesView, QueuePublisher};
use super::outbound::OutboundPolicy;
use super::output::GuestOutput;
use super::{MAX_RANDOM_BYTES, MAX_RESOURCES};
use crate::telemetry::TraceParent;
use wasmtime_wasi_http::FieldMap;
use wasmtime_wasi_http::p2::types::HostIncomingRequest;

/// Answered requests (and header fields) a guest may keep and still have
/// its instance reused: a guest keeping more leaks them, and gets fresh
/// instances instead. StarlingMonkey keeps every request it answered until
/// its garbage collector runs (`js-handler` had collected none after 64
/// requests): each replacement costs a fresh JavaScript instance (about
/// 1 ms), so the cap is large. A kept request holds its method, URI and headers (its
/// body is dropped): about 1 KiB for a typical request, at most
/// `MAX_HEADER_BYTES` each.
pub const MAX_KEPT_REQUESTS: usize = 256;

/// Bytes (URIs and headers) of the requests an instance served since its
/// guest last held no answered request, past which it is not reused: a
/// bound on what kept requests hold, whatever headers clients send.
pub const MAX_KEPT_BYTES: usize = 1 << 20;

/// Everything one invocation's store holds. Created for one request and
/// dropped with it, so nothing a guest does can outlive its request, unless
/// the deployment opted in to instance reuse (see `reuse`): then a store
/// that ended well serves a later request of the same deployment, after
/// [`InvocationState::renew`].
pub struct InvocationState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: GuestHooks,
    caps: Arc<Capabilities>,
    kv_ops: u32,
    pub(super) limiter: Limiter,
    pub(super) stdout: GuestOutput,
    pub(super) stderr: GuestOutput,
    /// Handles on `stdout` and `stderr` before the guest asked for any.
    stdio_handles: usize,
    /// See [`InvocationState::note_request`].
    kept_bytes: usize,
}

impl InvocationState {
    /// A fresh sandbox: no environment variable, no argument, no preopened
    /// directory, no socket or name lookup, stdin closed, stdout and stderr
    /// captured for the log, outbound HTTP only as `outbound` allows.
    pub(super) fn new(
        memory_limit: u64,
        outbound: OutboundPolicy,
        caps: Arc<Capabilities>,
    ) -> Self {
        let stdout = GuestOutput::new();
        let stderr = GuestOutput::new();
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            table,
            wasi,
            http: WasiHttpCtx::new(),
            hooks: GuestHooks {
                allowance: outbound.max_requests(),
                policy: outbound,
                trace: None,
                queues: caps.queues.clone(),
            },
            kept_bytes: 0,
            caps,
            kv_ops: 0,
            limiter: Limiter::new(memory_limit),
            stdio_handles: stdout.handles() + stderr.handles(),
            stdout,
            stderr,
        }
    }
}

impl InvocationState {
    /// Counts the URI and headers of a request this store serves, towards
    /// [`MAX_KEPT_BYTES`].
    pub(super) fn note_request<B>(&mut self, request: &http::Request<B>) {
        let headers: usize =
            request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
        let uri = request.uri();
        let target = uri.path_and_query().map_or(0, |p| p.as_str().len());
        self.kept_bytes += headers + target + uri.authority().map_or(0, |a| a.as_str().len());
    }

    /// Sets the trace context the guest's outgoing requests carry.
    /// One more request joins this store (a shared WASIp3 instance): its
    /// allowance of outgoing requests is added to the store's.
    pub(super) fn another_request(&mut self) {
        self.hooks.allowance =
            self.hooks.allowance.saturating_add(self.hooks.policy.max_requests());
    }

    /// A request of this store ended, `in_flight` remain (a shared WASIp3
    /// instance): what is left of the allowance is at most theirs, so an
    /// allowance is never carried past the request it came with (and an
    /// idle instance has none).
    pub(super) fn request_ended(&mut self, in_flight: u32) {
        let theirs = self.hooks.policy.max_requests().saturating_mul(in_flight);
        self.hooks.allowance = self.hooks.allowance.min(theirs);
    }

    pub(super) fn trace_outgoing(&mut self, trace: TraceParent) {
        self.hooks.trace = Some(trace);
    }

    /// Readies a kept store for its next request: the route's current
    /// memory limit, outbound policy and capabilities, and fresh per-request
    /// counts. Captured output was taken when the last request was logged.
    pub(super) fn renew(
        &mut self,
        memory_limit: u64,
        outbound: OutboundPolicy,
        caps: Arc<Capabilities>,
    ) {
        let allowance = outbound.max_requests();
        self.hooks =
            GuestHooks { policy: outbound, allowance, trace: None, queues: caps.queues.clone() };
        self.caps = caps;
        self.kv_ops = 0;
        self.limiter.memory_limit = usize::try_from(memory_limit).unwrap_or(usize::MAX);
        self.limiter.memory_exceeded = false;
    }

    /// Whether the store may serve another request: the guest let go of
    /// every resource of its request that still does anything (a body, a
    /// stream, an outgoing request, the response being sent), and keeps at
    /// most [`MAX_KEPT_REQUESTS`] inert ones.
    ///
    /// Inert: an incoming request, and header fields, that the guest still
    /// holds after answering. StarlingMonkey (componentize-js) keeps the
    /// last request until its garbage collector runs. The host drops such a
    /// request's body itself, here, so what is kept is its method, path and
    /// headers: what a guest that opted in to reuse could have copied into
    /// its memory anyway. The handle stays valid, so the guest's own drop
    /// later succeeds.
    ///
    /// Its own stdio may stay too: stdout and stderr streams (Rust's
    /// standard library keeps them, and a pollable of each, from the first
    /// print on; counted by their handles, so a body's output stream is not
    /// taken for one) and input streams (the WASIp1 adapter keeps stdin,
    /// which is closed). So may pollables. Neither can hide a resource of
    /// the request: a body's stream, or a pollable of one, is a child of
    /// that resource, which cannot be dropped before it and so is still
    /// here.
    pub(super) fn ready_for_another(&mut self) -> bool {
        let stdio =
            (self.stdout.handles() + self.stderr.handles()).saturating_sub(self.stdio_handles);
        let (mut outputs, mut kept) = (0, 0);
        for entry in self.table.iter_mut() {
            if entry.is::<wasmtime_wasi::p2::DynOutputStream>() {
                outputs += 1;
            } else if let Some(request) = entry.downcast_mut::<HostIncomingRequest>() {
                request.body = None;
                kept += 1;
            } else if entry.is::<FieldMap>() {
                kept += 1;
            } else if !entry.is::<wasmtime_wasi::p2::DynPollable>()
                && !entry.is::<wasmtime_wasi::p2::DynInputStream>()
            {
                tracing::debug!("not reused: the guest holds a resource of its request");
                return false;
            }
        }
        if kept == 0 {
            self.kept_bytes = 0;
        }
        if kept > MAX_KEPT_REQUESTS || self.kept_bytes > MAX_KEPT_BYTES {
            tracing::debug!(
                kept,
                bytes = self.kept_bytes,
                "not reused: the guest holds too many old requests"
            );
            return false;
        }
        outputs == stdio
    }

    /// The largest linear memory the instance has grown to, in bytes.
    pub(super) fn memory_peak(&self) -> u64 {
        self.limiter.peak as u64
    }

    /// What the key-value and configuration bindings see.
    pub(super) fn capabilities(&mut self) -> CapabilitiesView<'_> {
        CapabilitiesView { caps: &self.caps, table: &mut self.table, kv_ops: &mut self.kv_ops }
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The outbound policy of one invocation, how many requests it made, and
/// the trace they carry on.
pub(super) struct GuestHooks {
    policy: OutboundPolicy,
    /// Outgoing requests the guest may still make: each request it serves
    /// brings `OUTBOUND_MAX_REQUESTS`, and takes what it left unused away
    /// when it ends (a shared WASIp3 instance serves several at once).
    allowance: u32,
    trace: Option<TraceParent>,
    /// The tenant's queues, for requests to [`QUEUE_HOST`].
    queues: Option<Arc<dyn QueuePublisher>>,
}

/// The host a component publishes to its tenant's queues at: answered
/// inside the node, never looked up or connected to.
pub const QUEUE_HOST: &str = "queue.wasmwiz.internal";

type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl wasmtime_wasi_http::WasiHttpHooks for GuestHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _response_errors: IoFuture,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<wasmtime_wasi_http::WasiBody>, IoFuture),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        if self.allowance == 0 {
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        }
        self.allowance -= 1;
        if request.uri().host().is_some_and(|h| h.eq_ignore_ascii_case(QUEUE_HOST)) {
            let queues = self.queues.clone();
            return Box::new(async move {
                let response = publish_internally(queues, request).await;
                let io: IoFuture = Box::new(async { Ok(()) });
                Ok((response, io))
            });
        }
        let mut request = request;
        // The request's trace, unless the guest carries one of its own on.
        if let Some(trace) = self.trace
            && !request.headers().contains_key("traceparent")
            && let Ok(value) = http::HeaderValue::from_str(&trace.header())
        {
            request.headers_mut().insert("traceparent", value);
        }
        let policy = self.policy.clone();
        Box::new(async move {
            let response = policy.send(request, options).await?;
            let io: IoFuture = Box::new(async { Ok(()) });
            Ok((response, io))
        })
    }
}

/// Linear memory the node's live instances hold (running or kept idle), in
/// bytes: every memory of every store, at the size its limiter let it grow
/// to (`wasmwiz_instance_memory_bytes`).
static LINEAR_MEMORY: AtomicU64 = AtomicU64::new(0);

/// Linear memory the node's live instances hold now, in bytes.
pub fn linear_memory_bytes() -> u64 {
    LINEAR_MEMORY.load(Ordering::Relaxed)
}

/// Caps one invocation's linear memory, trapping (not failing the grow) when
/// a guest asks for more, and remembers that it did so the answer can say
/// "out of memory" rather than a generic trap.
pub(super) struct Limiter {
    memory_limit: usize,
    /// The largest size a memory was allowed to grow to.
    peak: usize,
    pub(super) memory_exceeded: bool,
    /// The store's memories' sizes added up (counted in [`LINEAR_MEMORY`]
    /// until the store is dropped).
    held: u64,
    /// The last growth allowed, taken back if it then failed.
    last_growth: u64,
}

impl Drop for Limiter {
    fn drop(&mut self) {
        LINEAR_MEMORY.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Table elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl Limiter {
    fn new(memory_limit: u64) -> Self {
        Self {
            memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            peak: 0,
            memory_exceeded: false,
            held: 0,
            last_growth: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            bail!(
                "linear memory limit of {} bytes exceeded ({desired} requested)",
                self.memory_limit
            );
        }
        self.peak = self.peak.max(desired);
        // Also called when a memory is made (from 0).
        let growth = desired.saturating_sub(current) as u64;
        self.held += growth;
        self.last_growth = growth;
        LINEAR_MEMORY.fetch_add(growth, Ordering::Relaxed);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> Result<()> {
        // Past the memory's own maximum or the allocator's: the guest sees
        // memory.grow fail, and nothing grew.
        self.held -= self.last_growth;
        LINEAR_MEMORY.fetch_sub(self.last_growth, Ordering::Relaxed);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            bail!("table limit of {MAX_TABLE_ELEMENTS} elements exceeded");
        }
        Ok(true)
    }
}

/// How long a component may take to send a message's body.
const PUBLISH_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers a component's `POST http://queue.wasmwiz.internal/<name>`:
/// `202 {"id"}` once the message is stored, or the error the API would
/// give (`{"error":{"code","message"}}`) with its status.
async fn publish_internally(
    queues: Option<Arc<dyn QueuePublisher>>,
    request: http::Request<wasmtime_wasi_http::WasiBody>,
) -> http::Response<wasmtime_wasi_http::WasiBody> {
    use http_body_util::BodyExt as _;
    let refuse = |status: u16, code: &str, message: &str| {
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        internal_response(status, &body)
    };
    let Some(queues) = queues else {
        return refuse(404, "no_such_queue", "queues are not available to this component");
    };
    if request.method() != http::Method::POST {
        return refuse(405, "method_not_allowed", "publish with POST /<queue name>");
    }
    let name = request.uri().path().trim_start_matches('/').to_string();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let max = queues.max_message_bytes();
    let limited = http_body_util::Limited::new(
        request.into_body(),
        usize::try_from(max).unwrap_or(usize::MAX),
    );
    let body = match tokio::time::timeout(PUBLISH_BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let message =
                format!("a message may be at most {max} bytes on this tier (max_message_bytes)");
            return refuse(413, "message_too_large", &message);
        }
        Ok(Err(_)) | Err(_) => {
            return refuse(400, "bad_request", "the message's body did not arrive");
        }
    };
    match queues.publish(&name, body, &content_type).await {
        Ok(id) => internal_response(202, &serde_json::json!({ "id": id })),
        Err(refused) => refuse(refused.status, refused.code, &refused.message),
    }
}

/// A JSON answer made inside the node.
fn internal_response(
    status: u16,
    body: &serde_json::Value,
) -> http::Response<wasmtime_wasi_http::WasiBody> {
    use http_body_util::BodyExt as _;
    let body = http_body_util::Full::new(bytes::Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
