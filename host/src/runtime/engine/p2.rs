//! WASIp2 handlers (`wasi:http/incoming-handler@0.2`): a request in, a
//! fresh instance (or one kept from an earlier request of the deployment,
//! when it opted in to reuse), a response out.
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

use http::{Request, Response};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::{HyperIncomingBody, HyperOutgoingBody};

use super::kept::{Admitted, Handle, Kept, MemberId};
use super::{
    ExecutionReport, InvocationTiming, InvokeOptions, Outcome, classify, guest_error_response,
};
use crate::response::ResponseBody;
use crate::runtime::Runtime;
use crate::runtime::body::{GuestBody, drain_finished};
use crate::runtime::output::GuestText;
use crate::runtime::slots::{Refusal, Slot};
use crate::runtime::state::InvocationState;
use crate::telemetry::{self, TraceParent};

/// A kept WASIp2 instance: its store and its exports. Exclusive: one
/// request at a time runs on it, and dropping it ends it.
pub(super) struct Reused {
    store: Store<InvocationState>,
    proxy: Proxy,
}

impl std::fmt::Debug for Reused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reused").finish_non_exhaustive()
    }
}

impl Handle for Reused {
    const EXCLUSIVE: bool = true;

    fn lend(held: &mut Option<Self>) -> Option<Self> {
        held.take()
    }
}

/// A request's place on a kept instance of its deployment (an idle one it
/// takes, or a new one that will be kept), admitted by [`admit`]. Dropped
/// without being used (a quota refused the request after its admission),
/// it gives the instance and its place back.
pub struct KeptPlace {
    kept: Arc<Kept<Reused>>,
    id: MemberId,
    /// The idle instance it took, if it took one.
    instance: Option<Reused>,
    /// Requests the instance served before this one.
    served: u32,
    used: bool,
}

impl std::fmt::Debug for KeptPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptPlace").field("served", &self.served).finish_non_exhaustive()
    }
}

impl Drop for KeptPlace {
    fn drop(&mut self) {
        if !self.used {
            drop(self.kept.give_back(self.id, self.instance.take()));
        }
    }
}

/// Admits a request of a deployment that keeps its instances: to its
/// newest idle instance whose memory fits the route's limit, else to a new
/// one; either holds a pool place (`reserve`) while it serves.
pub(super) fn admit(
    kept: &Arc<Kept<Reused>>,
    options: &InvokeOptions,
    reserve: &dyn Fn() -> Result<Slot, Refusal>,
) -> Result<KeptPlace, Refusal> {
    let (admitted, outgrown) = kept.admit(options.limits.memory_bytes, reserve, &mut || None)?;
    drop(outgrown);
    Ok(match admitted {
        Admitted::Existing { id, handle, served } => {
            KeptPlace { kept: kept.clone(), id, instance: Some(handle), served, used: false }
        }
        Admitted::New { id, .. } => {
            KeptPlace { kept: kept.clone(), id, instance: None, served: 0, used: false }
        }
    })
}

/// Where a request runs: a fresh instance holding its own pool place, or a
/// kept one.
pub(super) enum Seat {
    Fresh(Slot),
    Kept(KeptPlace),
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

/// Runs `request` on `seat`: a fresh instance of `pre`, or the kept one.
pub(super) async fn invoke<F>(
    runtime: &Runtime,
    pre: &ProxyPre<InvocationState>,
    seat: Seat,
    request: Request<HyperIncomingBody>,
    options: InvokeOptions,
    on_done: F,
) -> Response<ResponseBody>
where
    F: FnOnce(ExecutionReport) + Send + 'static,
{
    let mut seat = seat;
    let kept = match &mut seat {
        Seat::Kept(place) => place.instance.take(),
        Seat::Fresh(_) => None,
    };
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
        None => Start::Fresh(runtime.new_store(
            options.limits.memory_bytes,
            options.outbound,
            options.capabilities,
        )),
    };
    let head = Arc::new(HeadSlot::default());
    let guest = GuestRun {
        pre: pre.clone(),
        start,
        request,
        https: options.https,
        head: head.clone(),
        deadline: Instant::now() + options.limits.timeout,
        request_id: options.request_id,
        seat,
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
                    with_body(response, |body| GuestBody::finished(body, outcome).boxed_unsync())
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
                    with_body(response, |body| GuestBody::pending(body, outcome).boxed_unsync()),
                    instantiate,
                ),
                (Err(code), _) => guest_error_response(&code),
            }
        }
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

/// The instance a request runs on.
enum Start {
    /// A new sandbox; the instance is created in the run.
    Fresh(Store<InvocationState>),
    /// An instance kept from an earlier request of the deployment.
    Kept(Reused),
}

/// Everything the guest's run owns.
struct GuestRun {
    pre: ProxyPre<InvocationState>,
    start: Start,
    request: Request<HyperIncomingBody>,
    https: bool,
    head: Arc<HeadSlot>,
    deadline: Instant,
    request_id: String,
    /// Its pool place, or its kept instance's place: held until the store
    /// is dropped or kept idle, so a place is free again only when its
    /// instance no longer runs.
    seat: Seat,
    trace: (tracing::Span, TraceParent),
}

impl GuestRun {
    async fn run<F: FnOnce(ExecutionReport)>(self, on_done: F) -> Outcome {
        let GuestRun { pre, start, request, https, head, deadline, request_id, seat, trace } = self;
        let (request_span, context) = trace;
        let (mut store, mut proxy) = match start {
            Start::Fresh(store) => (store, None),
            Start::Kept(kept) => (kept.store, Some(kept.proxy)),
        };
        let reused = proxy.is_some();
        let keeping = matches!(seat, Seat::Kept(_));
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
                None => proxy.insert(pre.instantiate_async(&mut store).await?),
            };
            drop(instantiating);
            let instantiate = started.elapsed();
            instantiated = Some(instantiate);
            store.data_mut().trace_outgoing(telemetry::outgoing(context, &guest_span));
            if keeping {
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
        let data = store.data();
        let output = GuestText {
            stdout: data.stdout.log(&request_id, "stdout"),
            stderr: data.stderr.log(&request_id, "stderr"),
        };
        let status = head.status(outcome);
        // Kept (or dropped) before the pool place is freed: the pooling
        // allocator has room for every running instance plus the idle ones.
        match seat {
            Seat::Fresh(slot) => {
                drop(store);
                drop(slot);
            }
            Seat::Kept(mut place) => {
                place.used = true;
                if reused {
                    // Dropping idle stores resets pool slots: not on a
                    // request's thread.
                    let idle = place.kept.reused_instance_ended(
                        outcome == Outcome::Ok,
                        outcome == Outcome::NoResponse,
                        place.served == 1,
                    );
                    if !idle.is_empty() {
                        std::thread::spawn(move || drop(idle));
                    }
                }
                let memory = store.data().memory_peak();
                let again = outcome == Outcome::Ok && store.data_mut().ready_for_another();
                let instance = match (again, proxy) {
                    (true, Some(proxy)) => Some(Reused { store, proxy }),
                    _ => {
                        drop(store);
                        None
                    }
                };
                let ok = instance.is_some();
                let (_, released) = place.kept.finished(place.id, ok, memory, instance);
                drop(released);
            }
        }
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
