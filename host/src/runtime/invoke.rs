//! One invocation: a request in, a fresh instance (or, for a deployment
//! that opted in to reuse, one kept from an earlier request), a response out.
//!
//! The guest starts inside the request's own task: most handlers set their
//! response, write the whole body and return without ever waiting, and such
//! a guest is done by the time the task first has to wait. Its response goes
//! out complete, with a `Content-Length`, and no task was spawned, no channel
//! crossed, no other worker woken for it.
//!
//! A guest that has handed over its response head and then waits (for I/O,
//! a timer, a full body channel, or the epoch yield of a computing guest)
//! moves to a task of its own, because it keeps running after the head has
//! left: the body streams from that task through a bounded channel, so a
//! guest writing gigabytes holds a few chunks of host memory at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::{HyperIncomingBody, HyperOutgoingBody};

use super::body::{
    BodyReadError, BudgetHold, DISCARD_MAX_BYTES, DISCARD_MAX_TIME, GuestBody, HeldBody,
    IdleTimeoutBody, InputBudget, discard, drain_finished, read_capped,
};
use super::output::GuestText;
use super::reuse::{InstancePool, Reused};
use super::slots::{Refusal, Slot, TenantSlots};
use super::state::InvocationState;
use super::{App, Handler, Runtime};
use crate::response::{ResponseBody, error_response, retry_later};
use crate::telemetry::{self, TraceParent};

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
    /// The deployment's idle instances, when it opted in to instance reuse:
    /// the request takes one if there is one, and gives its instance back
    /// if it ended well.
    pub reuse: Option<Arc<InstancePool>>,
    /// The deployment's shared instances, when it is a WASIp3 component
    /// that opted in to instance reuse: the request goes to one with room.
    pub shared: Option<Arc<super::SharedInstances>>,
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

/// What the guest hands over with its response head: the head (or the error
/// code it answered with) and the time it took to create the instance.
type Head = (Result<Response<HyperOutgoingBody>, ErrorCode>, Duration);

/// Where the guest's response head waits for the request's task to take it.
#[derive(Default)]
struct HeadSlot(Mutex<HeadState>);

/// What a guest handed to `response-outparam.set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Response,
    ErrorCode,
}

#[derive(Default)]
struct HeadState {
    head: Option<Head>,
    /// What the guest set, if it did (the head may have been taken since).
    answered: Option<Answer>,
    /// The status of the response the guest set, if it set one.
    status: Option<u16>,
    /// Told the outcome when the guest ends, for a body still streaming
    /// then; made only when the guest leaves the request's task.
    outcome_tx: Option<oneshot::Sender<Outcome>>,
}

impl HeadSlot {
    fn lock(&self) -> MutexGuard<'_, HeadState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The guest set its response (`response-outparam.set`, at most once).
    fn put(&self, head: Head) {
        let mut state = self.lock();
        state.answered = Some(if head.0.is_ok() { Answer::Response } else { Answer::ErrorCode });
        state.status = head.0.as_ref().ok().map(|response| response.status().as_u16());
        state.head = Some(head);
    }

    fn take(&self) -> Option<Head> {
        self.lock().head.take()
    }

    /// A head is set and not yet taken.
    fn is_held(&self) -> bool {
        self.lock().head.is_some()
    }

    fn answered(&self) -> Option<Answer> {
        self.lock().answered
    }

    /// The status the client got (or gets): the guest's response's, or
    /// the host's answer to `outcome` when the guest set none.
    fn status(&self, outcome: Outcome) -> u16 {
        match self.lock().status {
            Some(status) => status,
            None if outcome == Outcome::Ok => 500,
            None => outcome.status().as_u16(),
        }
    }

    /// The guest's outcome, when it comes: for a guest moving to a task of
    /// its own while its body streams.
    fn follow_outcome(&self) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().outcome_tx = Some(tx);
        rx
    }

    /// The guest ended with `outcome`.
    fn finish(&self, outcome: Outcome) {
        if let Some(tx) = self.lock().outcome_tx.take() {
            let _ = tx.send(outcome);
        }
    }
}

/// The guest's future while it runs inside the request's task. Dropped
/// before the guest has ended (the client went away, the server is shutting
/// down), it hands the guest to a task of its own to end as it would have:
/// an invocation always runs to its outcome, which is counted.
struct InlineGuest(Option<Pin<Box<dyn Future<Output = Outcome> + Send>>>);

impl InlineGuest {
    /// Polls the guest's run; once it has ended (or left), never again.
    fn poll_guest(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(guest) = self.0.as_mut() else {
            return Poll::Ready(Outcome::Trap);
        };
        let outcome = std::task::ready!(guest.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(outcome)
    }

    /// Moves the rest of the guest's run to a task of its own.
    fn detach(&mut self) {
        if let Some(guest) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(guest);
        }
    }
}

impl Drop for InlineGuest {
    fn drop(&mut self) {
        self.detach();
    }
}

/// How the guest's run inside the request's task came to a stop.
enum Inline {
    /// The guest ended.
    Ended(Outcome),
    /// The guest handed over its head and waits for something.
    Waits(Head),
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

/// Where an admitted request runs.
#[derive(Debug)]
pub enum Place {
    /// An instance of its own, holding a place in the instance pool.
    Own(Slot),
    /// A shared WASIp3 instance with room for it (the instance holds the
    /// place in the pool).
    Shared(super::p3::SharedPlace),
}

impl From<Slot> for Place {
    fn from(slot: Slot) -> Self {
        Place::Own(slot)
    }
}

impl Runtime {
    /// Reserves a place in the instance pool for `tenant`, within its
    /// tier's `cap` and its fair share of the pool, or says at once why
    /// not (the caller answers with [`refusal_response`]).
    pub fn try_reserve(
        &self,
        tenant: Option<&Arc<TenantSlots>>,
        cap: Option<u32>,
    ) -> Result<Slot, Refusal> {
        self.slots.try_take(tenant, cap)
    }

    /// Admits a request to run `app` with `options`, or says at once why
    /// not. A request to a WASIp3 deployment with shared instances
    /// ([`InvokeOptions::shared`]) goes to an instance with room for it and
    /// takes no place in the pool of its own; only a new instance does
    /// ([`Runtime::try_reserve`], for `tenant` within its `cap`). Any other
    /// request takes a place of its own.
    pub fn admit(
        &self,
        app: &App,
        options: &InvokeOptions,
        tenant: Option<&Arc<TenantSlots>>,
        cap: Option<u32>,
    ) -> Result<Place, Refusal> {
        if let (Handler::P3(pre), Some(shared)) = (&app.handler, &options.shared) {
            let new_store = || {
                self.new_store(
                    options.limits.memory_bytes,
                    options.outbound.clone(),
                    options.capabilities.clone(),
                )
            };
            let reserve = || self.try_reserve(tenant, cap);
            let instantiate_by = Instant::now() + options.limits.timeout;
            return shared.admit(pre, new_store, &reserve, instantiate_by).map(Place::Shared);
        }
        self.try_reserve(tenant, cap).map(Place::Own)
    }

    /// Runs `request` where its admission ([`Runtime::admit`]) placed it:
    /// a fresh instance of `app`, one kept from an earlier request (with
    /// reuse), or a shared WASIp3 instance.
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
        let slot = match place {
            Place::Shared(place) => return place.invoke(request, options, on_done).await,
            Place::Own(slot) => slot,
        };
        if let Handler::P3(pre) = &app.handler {
            // WASIp3 without reuse: a fresh instance per request.
            let store = self.new_store(
                options.limits.memory_bytes,
                options.outbound.clone(),
                options.capabilities.clone(),
            );
            return super::p3::invoke(store, slot, pre.clone(), request, options, on_done).await;
        }
        let kept = options.reuse.as_ref().and_then(|pool| pool.take(options.limits.memory_bytes));
        let start = match kept {
            Some(mut kept) => {
                kept.store.data_mut().renew(
                    options.limits.memory_bytes,
                    options.outbound,
                    options.capabilities,
                );
                kept.store.set_epoch_deadline(1);
                Start::Kept(kept)
            }
            None => Start::Fresh(self.new_store(
                options.limits.memory_bytes,
                options.outbound,
                options.capabilities,
            )),
        };

        let head = Arc::new(HeadSlot::default());
        let guest = GuestRun {
            app: app.clone(),
            start,
            reuse: options.reuse,
            request,
            https: options.https,
            head: head.clone(),
            deadline: Instant::now() + options.limits.timeout,
            request_id: options.request_id,
            slot,
            trace: options.trace,
        };
        let started = Instant::now();
        let timed = |mut response: Response<ResponseBody>, instantiate: Duration| {
            if options.timing {
                let timing = InvocationTiming { instantiate, to_head: started.elapsed() };
                response.extensions_mut().insert(timing);
            }
            response
        };

        // Run the guest here until it ends, or until it has set its head and
        // waits for something: only the head of a guest still running is
        // taken before the end, so a guest that answers without waiting
        // leaves a complete response.
        let mut guest = InlineGuest(Some(Box::pin(guest.run(on_done))));
        // A guest waiting with its head set has the head taken on the next
        // poll, not this one: the poll in between lets the connection act on
        // what the wait asked of it first, so a guest waiting for a body sent
        // with `Expect: 100-continue` has its `100 Continue` written before
        // the final head (which would tell the client not to send the body).
        let mut waited_with_head = false;
        let stop = std::future::poll_fn(|cx| match guest.poll_guest(cx) {
            Poll::Ready(outcome) => Poll::Ready(Inline::Ended(outcome)),
            Poll::Pending if !head.is_held() => Poll::Pending,
            Poll::Pending if !waited_with_head => {
                waited_with_head = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => match head.take() {
                Some(taken) => Poll::Ready(Inline::Waits(taken)),
                None => Poll::Pending,
            },
        })
        .await;
        match stop {
            Inline::Ended(outcome) => match head.take() {
                Some((Ok(response), instantiate)) => {
                    let response = if outcome == Outcome::Ok {
                        with_body(response, |body| drain_finished(body).boxed_unsync())
                    } else {
                        with_body(response, |body| {
                            GuestBody::finished(body, outcome).boxed_unsync()
                        })
                    };
                    timed(response, instantiate)
                }
                Some((Err(code), _)) => guest_error_response(&code),
                None => outcome.no_head_response(),
            },
            Inline::Waits(taken) => {
                let outcome = head.follow_outcome();
                guest.detach();
                match taken {
                    (Ok(response), instantiate) => timed(
                        with_body(response, |body| {
                            GuestBody::pending(body, outcome).boxed_unsync()
                        }),
                        instantiate,
                    ),
                    (Err(code), _) => guest_error_response(&code),
                }
            }
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

impl Outcome {
    fn no_head_response(self) -> Response<ResponseBody> {
        match self {
            Outcome::Ok => Outcome::NoResponse.response(),
            other => other.response(),
        }
    }
}

fn with_body(
    response: Response<HyperOutgoingBody>,
    wrap: impl FnOnce(HyperOutgoingBody) -> ResponseBody,
) -> Response<ResponseBody> {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, wrap(body))
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

/// The instance a request runs on.
enum Start {
    /// A new sandbox; the instance is created in the run.
    Fresh(Store<InvocationState>),
    /// An instance kept from an earlier request of the deployment.
    Kept(Reused),
}

/// Everything the guest's run owns.
struct GuestRun {
    app: App,
    start: Start,
    /// Where the instance goes back to if the run ends well.
    reuse: Option<Arc<InstancePool>>,
    request: Request<HyperIncomingBody>,
    https: bool,
    head: Arc<HeadSlot>,
    deadline: Instant,
    request_id: String,
    /// Held until the store is dropped or kept idle: the pool place is free
    /// again only when the instance no longer runs.
    slot: Slot,
    trace: (tracing::Span, TraceParent),
}

impl GuestRun {
    async fn run<F: FnOnce(ExecutionReport)>(self, on_done: F) -> Outcome {
        let GuestRun { app, start, reuse, request, https, head, deadline, request_id, slot, trace } =
            self;
        let (request_span, context) = trace;
        let (mut store, mut proxy, served) = match start {
            Start::Fresh(store) => (store, None, 0),
            Start::Kept(kept) => (kept.store, Some(kept.proxy), kept.served),
        };
        let reused = proxy.is_some();
        let started = Instant::now();
        let mut instantiated = None;
        let guest_span = tracing::trace_span!(
            target: telemetry::TARGET,
            parent: &request_span,
            "guest",
            reused,
            outcome = tracing::field::Empty,
        );
        let result = tokio::time::timeout_at(deadline.into(), async {
            let instantiating = tracing::trace_span!(
                target: telemetry::TARGET,
                parent: &request_span,
                "instantiate",
                reused,
            );
            let proxy = match &mut proxy {
                Some(proxy) => proxy,
                None => proxy.insert(app.p2()?.instantiate_async(&mut store).await?),
            };
            drop(instantiating);
            let instantiate = started.elapsed();
            instantiated = Some(instantiate);
            store.data_mut().trace_outgoing(telemetry::outgoing(context, &guest_span));
            if reuse.is_some() {
                store.data_mut().note_request(&request);
            }
            let scheme = if https { Scheme::Https } else { Scheme::Http };
            let request = store.data_mut().http().new_incoming_request(scheme, request)?;
            let head_slot = head.clone();
            let out = store.data_mut().http().new_response_outparam_from_callback(move |set| {
                head_slot.put((set, instantiate))
            })?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await
        })
        .await;
        let wall = started.elapsed();

        let outcome = match result {
            Err(_elapsed) => Outcome::Timeout,
            Ok(Ok(())) => match head.answered() {
                Some(Answer::Response) => Outcome::Ok,
                Some(Answer::ErrorCode) => Outcome::GuestError,
                None => Outcome::NoResponse,
            },
            Ok(Err(error)) => classify(&error, store.data()),
        };
        guest_span.record("outcome", outcome.as_str());
        drop(guest_span);
        outcome.log_failure(&request_id, wall);
        head.finish(outcome);
        if let (true, Some(pool)) = (reused, &reuse) {
            pool.reused_instance_ended(
                outcome == Outcome::Ok,
                outcome == Outcome::NoResponse,
                served == 1,
            );
        }
        let data = store.data();
        let output = GuestText {
            stdout: data.stdout.log(&request_id, "stdout"),
            stderr: data.stderr.log(&request_id, "stderr"),
        };
        let status = head.status(outcome);
        // Kept (or dropped) before the pool place is freed: the pooling
        // allocator has room for every running instance plus the idle ones.
        match (outcome, reuse, proxy) {
            (Outcome::Ok, Some(pool), Some(proxy)) => {
                pool.give_back(Reused { store, proxy, served: served + 1 });
            }
            _ => drop(store),
        }
        drop(slot);
        on_done(ExecutionReport {
            outcome,
            instantiate: instantiated.unwrap_or(wall),
            wall,
            reused,
            status,
            output,
        });
        outcome
    }
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

/// Turns a client's request into one a guest may read, answering the client
/// directly when the body cannot be accepted:
/// - a `Content-Length` over `max_input` gets 413 before anything is read
///   (and no `100 Continue`);
/// - a body of unknown length is read ahead up to `max_input` (413 as soon
///   as it grows past it, 408 when the client stalls), so a guest never
///   starts on a body that will be refused;
/// - a body of known length streams to the guest as it arrives, failing if
///   the client pauses longer than `idle`.
pub async fn read_request<B>(
    request: Request<B>,
    max_input: u64,
    idle: Duration,
    budget: Option<&Arc<InputBudget>>,
) -> Result<Request<HyperIncomingBody>, Response<ResponseBody>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error> + std::fmt::Display,
{
    let (parts, body) = request.into_parts();
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the request body is larger than {max_input} bytes"),
        )
    };
    let declared = match parts.headers.get(header::CONTENT_LENGTH) {
        Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(length) => Some(length),
            None => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid Content-Length",
                ));
            }
        },
        None => None,
    };
    let mut body = body;
    let body: HyperIncomingBody = match declared {
        Some(length) if length > max_input => {
            // A client that waits for `100 Continue` has not sent the body:
            // reading it would invite the client to send it.
            if length <= DISCARD_MAX_BYTES && !expects_continue(&parts.headers) {
                discard(body, DISCARD_MAX_BYTES, DISCARD_MAX_TIME).await;
            }
            return Err(too_large());
        }
        Some(0) => empty_body(),
        Some(_) => IdleTimeoutBody::new(body, idle).boxed_unsync(),
        None if body.is_end_stream() => empty_body(),
        None => {
            let mut hold = budget.map(BudgetHold::new);
            match read_capped(&mut body, max_input, idle, hold.as_mut()).await {
                Ok(bytes) => {
                    let full = http_body_util::Full::new(bytes).map_err(|never| match never {});
                    match hold {
                        Some(hold) => HeldBody::new(full, hold).boxed_unsync(),
                        None => full.boxed_unsync(),
                    }
                }
                Err(BodyReadError::Budget) => {
                    return Err(retry_later(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "input_budget_exhausted",
                        "this node holds as many request bodies as it may before admission; \
                         retry shortly",
                        1,
                    ));
                }
                Err(BodyReadError::TooLarge(_)) => {
                    discard(body, DISCARD_MAX_BYTES, DISCARD_MAX_TIME).await;
                    return Err(too_large());
                }
                Err(BodyReadError::Timeout) => {
                    return Err(error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the client stopped sending the request body",
                    ));
                }
                Err(BodyReadError::Client(_)) => {
                    return Err(error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        "the request body could not be read",
                    ));
                }
            }
        }
    };
    Ok(Request::from_parts(parts, body))
}

/// Whether the client sent `Expect: 100-continue` (and waits for it).
pub fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

fn empty_body() -> HyperIncomingBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The answer to a request that got no place in the instance pool, at
/// once: `429` for a tenant at its tier's cap, `503` for a full pool or a
/// tenant over its share of a busy one; retry in 1 s.
pub fn refusal_response(refusal: Refusal) -> Response<ResponseBody> {
    match refusal {
        Refusal::PoolFull => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "instance_pool_full",
            "every instance slot on this node is busy; retry shortly",
            1,
        ),
        Refusal::TenantCap { cap } => retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency_limit",
            &format!(
                "this tenant already runs {cap} instances on this node, its tier's \
                 max_concurrency; retry shortly"
            ),
            1,
        ),
        Refusal::FairShare { share } => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "fair_share_exceeded",
            &format!(
                "this node's instance pool is nearly full and this tenant holds its fair \
                 share ({share} instances); retry shortly"
            ),
            1,
        ),
    }
}
