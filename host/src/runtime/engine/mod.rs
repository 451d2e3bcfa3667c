//! The engine: how a request runs on an instance of its component, under
//! its limits, and what it came to. An instance is fresh (the default: a
//! new sandbox per request), kept from earlier requests of the same
//! deployment version (reuse, opted in), or shared with other requests at
//! once (a WASIp3 deployment with `max_instance_concurrency` above 1).
//!
//! # Layout
//! - this module: the vocabulary both ABIs share ([`Limits`],
//!   [`InvokeOptions`], [`Outcome`], [`ExecutionReport`]), admission
//!   ([`Runtime::admit`]) and the dispatch to an ABI ([`Runtime::invoke`]);
//! - [`kept`]: the one mechanism for instances that serve more than one
//!   request, in sequence or at once: which instance a request goes to,
//!   what each holds on the node (a pool place while serving, an idle
//!   place while idle), when it is kept and when it ends;
//! - `p2`: WASIp2 handlers (`wasi:http/incoming-handler@0.2`): a guest
//!   runs inside the request's own task until it waits;
//! - `p3`: WASIp3 handlers (`wasi:http/handler@0.3`): a guest runs in a
//!   task of its own that owns the store's event loop.
//!
//! The two ABI modules are leaves: each uses this module and `kept`, and
//! neither imports the other.

pub mod kept;
mod p2;
mod p3;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::p2::body::HyperIncomingBody;

use super::output::GuestText;
use super::slots::{Refusal, Slot, TenantSlots};
use super::state::InvocationState;
use super::{App, Handler, Runtime};
use crate::response::{ResponseBody, error_response};
use crate::telemetry::TraceParent;

use kept::Kept;
pub use p3::SharedPlace;
pub(crate) use p3::service_pre;

/// Limits of one invocation (from the tier of the route's tenant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory the instance may grow to.
    pub memory_bytes: u64,
    /// Wall-clock time from instantiation to the end of the response body.
    pub timeout: Duration,
    /// Largest request body the guest receives.
    pub max_input_bytes: u64,
}

/// Per-request settings of an invocation.
#[derive(Clone, Debug)]
pub struct InvokeOptions {
    /// The limits to apply.
    pub limits: Limits,
    /// Tags the guest's output in the log.
    pub request_id: String,
    /// Whether the client connected over TLS (the guest sees the scheme).
    pub https: bool,
    /// What the guest's outgoing HTTP requests may reach.
    pub outbound: super::OutboundPolicy,
    /// Attach an [`InvocationTiming`] to the response's extensions.
    pub timing: bool,
    /// Key-value access and configuration of the route.
    pub capabilities: Arc<super::Capabilities>,
    /// The deployment version's kept instances, when it opted in to
    /// instance reuse (and, for WASIp3, concurrency per instance).
    pub instances: Option<Arc<Instances>>,
    /// The request's span (the guest's spans go under it) and trace
    /// context (carried on the guest's outgoing requests).
    pub trace: (tracing::Span, TraceParent),
}

/// How long an invocation took to its response head; in the response's
/// extensions when [`InvokeOptions::timing`] asked for it.
#[derive(Clone, Copy, Debug)]
pub struct InvocationTiming {
    /// Creating the instance (taking a kept one, when reused).
    pub instantiate: Duration,
    /// From the start of the invocation to the response head.
    pub to_head: Duration,
}

/// What an invocation came to. Also the `outcome` label of
/// `wasmwiz_wasm_executions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The guest answered and finished.
    Ok,
    /// The guest trapped (panic, `unreachable`, a host call it misused).
    Trap,
    /// The guest ran past its timeout (computing or waiting).
    Timeout,
    /// The guest asked for more linear memory than its limit.
    OutOfMemory,
    /// The guest overflowed its stack.
    StackOverflow,
    /// The guest returned without setting a response.
    NoResponse,
    /// The guest answered with an error code instead of a response.
    GuestError,
}

impl Outcome {
    /// Every outcome, for pre-registering metric labels.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::OutOfMemory,
        Outcome::StackOverflow,
        Outcome::NoResponse,
        Outcome::GuestError,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::OutOfMemory => "oom",
            Outcome::StackOverflow => "stack_overflow",
            Outcome::NoResponse => "no_response",
            Outcome::GuestError => "guest_error",
        }
    }

    /// Logs a run that did not end well (nothing for one that did).
    pub(super) fn log_failure(self, request_id: &str, wall: Duration) {
        if self != Outcome::Ok {
            tracing::info!(
                target: "wasmwiz::guest",
                request_id,
                outcome = self.as_str(),
                elapsed_ms = wall.as_millis() as u64,
                "the component {}",
                self.describe()
            );
        }
    }

    /// Words for logs and error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Outcome::Ok => "finished",
            Outcome::Trap => "trapped",
            Outcome::Timeout => "ran past its time limit",
            Outcome::OutOfMemory => "ran out of memory",
            Outcome::StackOverflow => "overflowed its stack",
            Outcome::NoResponse => "returned without a response",
            Outcome::GuestError => "answered with an error",
        }
    }

    /// The status of the host's answer when the guest set no response.
    fn status(self) -> StatusCode {
        match self {
            Outcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer to a client when the guest produced no response head.
    pub(super) fn response(self) -> Response<ResponseBody> {
        let (status, code) = match self {
            Outcome::Timeout => (StatusCode::GATEWAY_TIMEOUT, "execution_timeout"),
            Outcome::Ok | Outcome::NoResponse => (StatusCode::INTERNAL_SERVER_ERROR, "no_response"),
            Outcome::Trap => (StatusCode::INTERNAL_SERVER_ERROR, "component_trap"),
            Outcome::OutOfMemory => (StatusCode::INTERNAL_SERVER_ERROR, "out_of_memory"),
            Outcome::StackOverflow => (StatusCode::INTERNAL_SERVER_ERROR, "stack_overflow"),
            Outcome::GuestError => (StatusCode::INTERNAL_SERVER_ERROR, "component_error"),
        };
        error_response(status, code, &format!("the component {}", self.describe()))
    }
}

/// What the host learned from one invocation, handed to the caller's
/// callback when the guest's run ends (after its last body byte).
#[derive(Clone, Debug)]
pub struct ExecutionReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Time to create the instance.
    pub instantiate: Duration,
    /// Wall time from the start of instantiation to the guest's return.
    pub wall: Duration,
    /// Whether an instance kept from an earlier request served it.
    pub reused: bool,
    /// The status the client got: the guest's response's, or the host's
    /// answer to the outcome.
    pub status: u16,
    /// What the guest wrote to stdout and stderr during the request.
    pub output: GuestText,
}

/// The instances of one deployment version that serve more than one
/// request each ([`kept`]): WASIp2 ones one request at a time, WASIp3 ones
/// up to `max_instance_concurrency` at once.
#[derive(Debug)]
pub struct Instances(Kind);

#[derive(Debug)]
enum Kind {
    P2(Arc<Kept<p2::Reused>>),
    P3(Arc<Kept<p3::WorkerHandle>>),
}

impl Instances {
    /// Whether instances are still kept (a WASIp2 deployment whose
    /// instances never answer twice is given up on).
    pub fn keeping(&self) -> bool {
        match &self.0 {
            Kind::P2(kept) => kept.keeping(),
            Kind::P3(kept) => kept.keeping(),
        }
    }

    /// Instances alive now (serving, idle, or ending).
    pub fn len(&self) -> usize {
        match &self.0 {
            Kind::P2(kept) => kept.len(),
            Kind::P3(kept) => kept.len(),
        }
    }

    /// Whether none is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an admitted request runs.
#[derive(Debug)]
pub enum Place {
    /// A fresh instance of its own, holding a place in the instance pool.
    Own(Slot),
    /// A kept WASIp2 instance (or a new one that will be kept), which holds
    /// the pool place while it serves.
    Kept(p2::KeptPlace),
    /// A shared WASIp3 instance with room for it (the instance holds the
    /// place in the pool).
    Shared(SharedPlace),
}

impl From<Slot> for Place {
    fn from(slot: Slot) -> Self {
        Place::Own(slot)
    }
}

impl Runtime {
    /// Reserves a place in the instance pool for `tenant`, within its
    /// tier's `cap` and its fair share of the pool, or says at once why
    /// not (the caller answers with [`super::refusal_response`]).
    pub fn try_reserve(
        &self,
        tenant: Option<&Arc<TenantSlots>>,
        cap: Option<u32>,
    ) -> Result<Slot, Refusal> {
        self.slots.try_take(tenant, cap)
    }

    /// The kept instances of one deployment version (`name`, its route, in
    /// logs) of `app` that opted in to reuse: each serves up to `max_uses`
    /// requests, WASIp3 ones up to `max_concurrent` at once; idle ones end
    /// after `REUSE_IDLE_TIMEOUT`. `None` when every request is to get a
    /// fresh instance (`max_uses` of 1).
    pub fn instances(
        &self,
        app: &App,
        name: &str,
        max_uses: u32,
        max_concurrent: u32,
    ) -> Option<Arc<Instances>> {
        if max_uses <= 1 {
            return None;
        }
        let kind = match app.handler {
            Handler::P2(_) => {
                let kept = Arc::new(Kept::new(name.to_owned(), max_uses, 1, self.idle.clone()));
                self.sweeper.register(&kept);
                Kind::P2(kept)
            }
            Handler::P3(_) => {
                let kept = Arc::new(Kept::new(
                    name.to_owned(),
                    max_uses,
                    max_concurrent,
                    self.idle.clone(),
                ));
                self.sweeper.register(&kept);
                Kind::P3(kept)
            }
        };
        Some(Arc::new(Instances(kind)))
    }

    /// Admits a request to run `app` with `options`, or says at once why
    /// not. A request of a deployment with kept instances
    /// ([`InvokeOptions::instances`]) goes to one ([`kept`]): an idle or a
    /// new one takes a place in the pool ([`Runtime::try_reserve`], for
    /// `tenant` within its `cap`), a WASIp3 one serving with room takes
    /// none. Any other request takes a place of its own.
    pub fn admit(
        &self,
        app: &App,
        options: &InvokeOptions,
        tenant: Option<&Arc<TenantSlots>>,
        cap: Option<u32>,
    ) -> Result<Place, Refusal> {
        let reserve = || self.try_reserve(tenant, cap);
        match (&app.handler, options.instances.as_deref().map(|i| &i.0)) {
            (Handler::P3(pre), Some(Kind::P3(kept))) => {
                p3::admit(self, kept, pre, options, &reserve).map(Place::Shared)
            }
            (Handler::P2(_), Some(Kind::P2(kept))) if kept.keeping() => {
                p2::admit(kept, options, &reserve).map(Place::Kept)
            }
            _ => reserve().map(Place::Own),
        }
    }

    /// Runs `request` where its admission ([`Runtime::admit`]) placed it:
    /// a fresh instance of `app`, a kept one, or a shared WASIp3 one.
    ///
    /// Always answers: a failure before the response head becomes a JSON
    /// error (500, or 504 past the timeout); a failure after it truncates
    /// the body. `on_done` runs once the guest's run has ended: before this
    /// returns for a guest that answered without waiting, after the last
    /// body byte for one that streams.
    pub async fn invoke<F>(
        &self,
        place: Place,
        app: &App,
        request: Request<HyperIncomingBody>,
        options: InvokeOptions,
        on_done: F,
    ) -> Response<ResponseBody>
    where
        F: FnOnce(ExecutionReport) + Send + 'static,
    {
        match (place, &app.handler) {
            (Place::Shared(place), _) => place.invoke(request, options, on_done).await,
            (Place::Own(slot), Handler::P3(pre)) => {
                let store = self.new_store(
                    options.limits.memory_bytes,
                    options.outbound.clone(),
                    options.capabilities.clone(),
                );
                p3::invoke(store, slot, pre.clone(), request, options, on_done).await
            }
            (Place::Own(slot), Handler::P2(pre)) => {
                p2::invoke(self, pre, p2::Seat::Fresh(slot), request, options, on_done).await
            }
            (Place::Kept(place), Handler::P2(pre)) => {
                p2::invoke(self, pre, p2::Seat::Kept(place), request, options, on_done).await
            }
            (Place::Kept(_), Handler::P3(_)) => Outcome::Trap.response(),
        }
    }
}

impl Runtime {
    /// A fresh sandbox for one invocation: its state, its memory limit, and
    /// an epoch deadline that makes a computing guest yield its tokio worker
    /// every tick (the deadline itself is the wall-clock timeout in
    /// `GuestRun::run`).
    pub(super) fn new_store(
        &self,
        memory_limit: u64,
        outbound: super::OutboundPolicy,
        capabilities: Arc<super::Capabilities>,
    ) -> Store<InvocationState> {
        let state = InvocationState::new(memory_limit, outbound, capabilities);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// The answer to a guest that answered with an error code (WASIp2's or
/// WASIp3's) instead of a response.
pub(super) fn guest_error_response(code: &impl std::fmt::Debug) -> Response<ResponseBody> {
    tracing::debug!(?code, "the component answered with an error code");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "component_error",
        "the component answered with an error",
    )
}

pub(super) fn classify(error: &wasmtime::Error, state: &InvocationState) -> Outcome {
    let outcome = if state.limiter.memory_exceeded {
        Outcome::OutOfMemory
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => Outcome::StackOverflow,
            Some(Trap::Interrupt) => Outcome::Timeout,
            _ => Outcome::Trap,
        }
    };
    tracing::debug!(error = %format!("{error:#}"), outcome = outcome.as_str(), "guest error");
    outcome
}
