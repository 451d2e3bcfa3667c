//! WASIp3 handlers (`wasi:http/service@0.3`): a fresh instance per request,
//! under the same limits as WASIp2 ones.
//!
//! A WASIp3 guest runs inside the store's event loop (`run_concurrent`),
//! and the response body it writes after returning its response moves only
//! while that loop is polled. So the guest runs in a task of its own that
//! owns the store: it hands the response head to the request's task, then
//! keeps the loop going until the client has read the body (or left), the
//! guest fails, or the deadline passes. The deadline covers the whole run,
//! body included, as for WASIp2; past it the store is dropped, which ends
//! the guest wherever it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::body::HyperIncomingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use super::kept::{Admitted, Handle, Kept, MemberId};
use super::{ExecutionReport, InvokeOptions, Outcome, classify, guest_error_response};
use crate::response::{BoxError, ResponseBody};
use crate::runtime::Runtime;
use crate::runtime::output::GuestText;
use crate::runtime::slots::{Refusal, Slot};
use crate::runtime::state::InvocationState;

/// The response head a guest returned, or the error code it answered with.
type Head = Result<Response<ResponseBody>, ErrorCode>;

/// Runs `request` through a fresh instance of the WASIp3 component `pre`.
/// Answers like the WASIp2 path: a failure before the head becomes a JSON
/// error (500, 504 past the deadline), one after it ends the body with an
/// error; `on_done` gets the report once the guest's run has ended.
pub(super) async fn invoke<F>(
    mut store: Store<InvocationState>,
    slot: Slot,
    pre: ServicePre<InvocationState>,
    request: Request<HyperIncomingBody>,
    options: InvokeOptions,
    on_done: F,
) -> Response<ResponseBody>
where
    F: FnOnce(ExecutionReport) + Send + 'static,
{
    let deadline = Instant::now() + options.limits.timeout;
    let (head_tx, head_rx) = oneshot::channel::<(Head, Duration)>();
    // The run's outcome, for a body still streaming when it ends.
    let (outcome_tx, outcome_rx) = watch::channel(None::<Outcome>);
    let (request_span, context) = options.trace;
    let request_id = options.request_id;
    let run = async move {
        let started = Instant::now();
        let mut instantiated = None;
        let mut answered = None;
        let mut status = None;
        let guest_span = tracing::trace_span!(
            target: crate::telemetry::TARGET,
            parent: &request_span,
            "guest",
            reused = false,
            outcome = tracing::field::Empty,
        );
        let result = tokio::time::timeout_at(deadline.into(), async {
            let service = pre.instantiate_async(&mut store).await?;
            let instantiate = started.elapsed();
            instantiated = Some(instantiate);
            store.data_mut().trace_outgoing(crate::telemetry::outgoing(context, &guest_span));
            let (request, request_io) =
                wasmtime_wasi_http::p3::Request::from_http(store.data_mut().http().hooks, request);
            store
                .run_concurrent(async |accessor| -> wasmtime::Result<()> {
                    match service.handle(accessor, request).await? {
                        Ok(response) => {
                            let response = accessor
                                .with(|mut store| response.into_http(&mut store, request_io))?;
                            let (parts, body) = response.into_parts();
                            answered = Some(true);
                            status = Some(parts.status.as_u16());
                            // The loop goes on until the body is read or
                            // dropped: only then may the store go.
                            let (read_tx, read_rx) = oneshot::channel();
                            let body = StreamedBody {
                                inner: body,
                                read: Some(read_tx),
                                outcome: outcome_rx.clone(),
                                waiting: None,
                            };
                            let head = Response::from_parts(parts, body.boxed_unsync());
                            if head_tx.send((Ok(head), instantiate)).is_ok() {
                                let _ = read_rx.await;
                            }
                        }
                        Err(code) => {
                            answered = Some(false);
                            let _ = head_tx.send((Err(code), instantiate));
                        }
                    }
                    Ok(())
                })
                .await?
        })
        .await;
        let wall = started.elapsed();
        let outcome = match result {
            Err(_elapsed) => Outcome::Timeout,
            Ok(Ok(())) => match answered {
                Some(true) => Outcome::Ok,
                Some(false) => Outcome::GuestError,
                None => Outcome::NoResponse,
            },
            Ok(Err(error)) => classify(&error, store.data()),
        };
        guest_span.record("outcome", outcome.as_str());
        drop(guest_span);
        outcome.log_failure(&request_id, wall);
        let data = store.data();
        let output = GuestText {
            stdout: data.stdout.log(&request_id, "stdout"),
            stderr: data.stderr.log(&request_id, "stderr"),
        };
        // The instance goes before its pool place is free again.
        drop(store);
        drop(slot);
        let _ = outcome_tx.send(Some(outcome));
        let status = match (outcome, status) {
            (Outcome::Ok, Some(status)) => status,
            (Outcome::GuestError, _) => 500,
            (other, _) => other.response().status().as_u16(),
        };
        on_done(ExecutionReport {
            outcome,
            instantiate: instantiated.unwrap_or(wall),
            wall,
            reused: false,
            status,
            output,
        });
        outcome
    };
    let task = tokio::spawn(run);
    match head_rx.await {
        Ok((Ok(response), _)) => response,
        Ok((Err(code), _)) => guest_error_response(&code),
        // No head: the run ended first (trap, timeout, out of memory).
        Err(_) => match task.await {
            Ok(Outcome::Ok) | Ok(Outcome::NoResponse) => Outcome::NoResponse.response(),
            Ok(outcome) => outcome.response(),
            Err(_) => Outcome::Trap.response(),
        },
    }
}

/// The guest's response body on its way to the client: tells the run when
/// it has been read to its end (or dropped), and ends with an error, not a
/// clean end, when the run failed before the body was complete (a body
/// without `Content-Length` would otherwise look whole).
struct StreamedBody {
    inner: http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>,
    read: Option<oneshot::Sender<()>>,
    outcome: watch::Receiver<Option<Outcome>>,
    waiting: Option<Pin<Box<dyn Future<Output = Option<Outcome>> + Send>>>,
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.waiting.is_none() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(error))) => {
                    this.read.take();
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // Read to the end: the run may finish; how it finished
                    // says whether the end was the guest's.
                    if let Some(read) = this.read.take() {
                        let _ = read.send(());
                    }
                    let mut outcome = this.outcome.clone();
                    this.waiting = Some(Box::pin(async move {
                        let seen = outcome.wait_for(Option::is_some).await.ok()?;
                        *seen
                    }));
                }
            }
        }
        let waiting = this.waiting.as_mut().expect("set above");
        match waiting.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Outcome::Ok)) | Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(outcome)) => Poll::Ready(Some(Err(format!(
                "the component {} before its response body was complete",
                outcome.describe()
            )
            .into()))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a prepared component is a WASIp3 handler.
pub(crate) fn service_pre(
    pre: &wasmtime::component::InstancePre<InvocationState>,
) -> Option<ServicePre<InvocationState>> {
    ServicePre::new(pre.clone()).ok()
}

/// What requests get of a shared instance: where to send them. The
/// instance's task owns its store; it ends once nothing can send to it any
/// more (its set closed it, or dropped it idle) and what it serves is done.
#[derive(Clone)]
pub(super) struct WorkerHandle {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").finish_non_exhaustive()
    }
}

impl Handle for WorkerHandle {
    const EXCLUSIVE: bool = false;

    fn lend(held: &mut Option<Self>) -> Option<Self> {
        held.clone()
    }
}

/// A request's place on a shared instance, taken at admission ([`admit`]).
/// Dropped without being used (a quota refused the request after its
/// admission), it frees its room, and an instance started for it alone
/// never starts.
pub struct SharedPlace {
    kept: Arc<Kept<WorkerHandle>>,
    id: MemberId,
    handle: WorkerHandle,
    /// A new instance, started when the request is sent to it.
    start: Option<Start>,
    sent: bool,
}

/// What a new instance needs to start.
struct Start {
    store: Store<InvocationState>,
    pre: ServicePre<InvocationState>,
    jobs: mpsc::UnboundedReceiver<Job>,
    /// The first request's deadline, which instantiation counts against.
    instantiate_by: Instant,
}

impl Drop for SharedPlace {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        let (others, released) = self.kept.give_back(self.id, None);
        drop(released);
        // An instance made for this request starts only if other requests
        // were admitted to it meanwhile.
        if let Some(start) = self.start.take()
            && others
        {
            start.spawn(self.kept.clone(), self.id);
        }
    }
}

impl std::fmt::Debug for SharedPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPlace").field("new", &self.start.is_some()).finish_non_exhaustive()
    }
}

/// Admits a request to one of a WASIp3 deployment's shared instances
/// ([`Kept`]): one serving with room, else an idle one, else a new
/// instance of `pre` (instantiated by the request's deadline). An idle or
/// new instance needs a place in the pool, which `reserve` takes or
/// refuses (the request is refused with it).
pub(super) fn admit(
    runtime: &Runtime,
    kept: &Arc<Kept<WorkerHandle>>,
    pre: &ServicePre<InvocationState>,
    options: &InvokeOptions,
    reserve: &dyn Fn() -> Result<Slot, Refusal>,
) -> Result<SharedPlace, Refusal> {
    let mut jobs = None;
    let (admitted, outgrown) = kept.admit(options.limits.memory_bytes, reserve, &mut || {
        let (tx, rx) = mpsc::unbounded_channel();
        jobs = Some(rx);
        Some(WorkerHandle { jobs: tx })
    })?;
    drop(outgrown);
    Ok(match admitted {
        Admitted::Existing { id, handle, .. } => {
            SharedPlace { kept: kept.clone(), id, handle, start: None, sent: false }
        }
        Admitted::New { id, handle } => {
            let start = Start {
                store: runtime.new_store(
                    options.limits.memory_bytes,
                    options.outbound.clone(),
                    options.capabilities.clone(),
                ),
                pre: pre.clone(),
                jobs: jobs.expect("a new instance's channel"),
                instantiate_by: Instant::now() + options.limits.timeout,
            };
            SharedPlace {
                kept: kept.clone(),
                id,
                handle: handle.expect("a shared instance's handle"),
                start: Some(start),
                sent: false,
            }
        }
    })
}

/// A request for a shared instance, and where its answer goes.
struct Job {
    id: u64,
    request: Request<HyperIncomingBody>,
    deadline: Instant,
    head_tx: oneshot::Sender<(Head, Duration)>,
    outcome_tx: watch::Sender<Option<Outcome>>,
    outcome_rx: watch::Receiver<Option<Outcome>>,
    tail: Tail,
}

/// What is left to do for a request once its run is over, whichever way.
struct Tail {
    on_done: Box<dyn FnOnce(ExecutionReport) + Send>,
    request_id: String,
    started: Instant,
    status: Option<u16>,
    reused: bool,
    instantiate: Duration,
}

impl Tail {
    fn finish(
        self,
        outcome: Outcome,
        output: GuestText,
        outcome_tx: &watch::Sender<Option<Outcome>>,
    ) {
        let wall = self.started.elapsed();
        let _ = outcome_tx.send(Some(outcome));
        let status = match (outcome, self.status) {
            (Outcome::Ok, Some(status)) => status,
            (Outcome::GuestError, _) => 500,
            (other, _) => other.response().status().as_u16(),
        };
        (self.on_done)(ExecutionReport {
            outcome,
            instantiate: self.instantiate,
            wall,
            reused: self.reused,
            status,
            output,
        });
    }
}

/// Requests an instance is serving: their tails and deadlines, kept outside
/// the store so a failed instance can still answer for them.
#[derive(Default)]
struct InFlight {
    tails: std::collections::HashMap<u64, (Tail, watch::Sender<Option<Outcome>>)>,
    deadlines: std::collections::BTreeSet<(Instant, u64)>,
}

type Shared<T> = Arc<std::sync::Mutex<T>>;

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Start {
    /// Starts the instance in a task of its own, serving `id`'s requests
    /// until nothing can send it any more or it fails.
    fn spawn(self, kept: Arc<Kept<WorkerHandle>>, id: MemberId) {
        kept.started(id);
        let Start { mut store, pre, jobs: mut rx, instantiate_by } = self;
        let stdout = store.data().stdout.clone();
        let stderr = store.data().stderr.clone();
        tokio::spawn(async move {
            let in_flight: Shared<InFlight> = Arc::default();
            let started = Instant::now();
            let ended = async {
                // Instantiation counts against the first request's deadline.
                let instantiating = pre.instantiate_async(&mut store);
                let Ok(service) =
                    tokio::time::timeout_at(instantiate_by.into(), instantiating).await
                else {
                    return Ok(Some(Outcome::Timeout));
                };
                let service = service?;
                let mut instantiate = Some(started.elapsed());
                // The instance's event loop runs only while it serves
                // requests: between them (idle) nothing of the guest runs,
                // not even tasks a request spawned, and what a request
                // spawned runs only within the deadlines of the requests
                // in flight.
                while let Some(mut first) = rx.recv().await {
                    if let Some(instantiate) = instantiate.take() {
                        first.tail.instantiate = instantiate;
                    }
                    let serving = store.run_concurrent(async |accessor| {
                        serve(accessor, &service, first, &mut rx, &kept, id, &in_flight).await
                    });
                    tokio::select! {
                        result = serving => result.and_then(|inner| inner)?,
                        () = first_deadline(&in_flight) => return Ok(Some(Outcome::Timeout)),
                    }
                }
                Ok(None)
            };
            let outcome = match ended.await {
                Ok(None) => None,
                Ok(Some(outcome)) => Some(outcome),
                Err(error) => Some(classify(&error, store.data())),
            };
            kept.close(id);
            rx.close();
            if let Some(outcome) = outcome {
                tracing::info!(
                    target: "wasmwiz::guest",
                    route = %kept.name(),
                    outcome = outcome.as_str(),
                    "a shared WASIp3 instance {}: every request it was serving ends",
                    outcome.describe()
                );
            }
            drop(store);
            // Every request still here ends with the instance (or, had it
            // been ended well, was never served: none then).
            let failed = outcome.unwrap_or(Outcome::NoResponse);
            let tails: Vec<_> = locked(&in_flight).tails.drain().map(|(_, t)| t).collect();
            for (tail, outcome_tx) in tails {
                let output = GuestText {
                    stdout: stdout.log(&tail.request_id, "stdout"),
                    stderr: stderr.log(&tail.request_id, "stderr"),
                };
                tail.finish(failed, output, &outcome_tx);
            }
            while let Ok(job) = rx.try_recv() {
                job.tail.finish(failed, GuestText::default(), &job.outcome_tx);
            }
            // Last: what the instance held on the node (its pool place).
            drop(kept.ended(id));
        });
    }
}

impl SharedPlace {
    /// Runs `request` on the instance this place is on (starting it, if it
    /// is new).
    pub(super) async fn invoke<F>(
        mut self,
        request: Request<HyperIncomingBody>,
        options: InvokeOptions,
        on_done: F,
    ) -> Response<ResponseBody>
    where
        F: FnOnce(ExecutionReport) + Send + 'static,
    {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let (head_tx, head_rx) = oneshot::channel();
        let (outcome_tx, mut outcome_rx) = watch::channel(None::<Outcome>);
        let job = Job {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            request,
            deadline: Instant::now() + options.limits.timeout,
            head_tx,
            outcome_tx,
            outcome_rx: outcome_rx.clone(),
            tail: Tail {
                on_done: Box::new(on_done),
                request_id: options.request_id.clone(),
                started: Instant::now(),
                status: None,
                reused: self.start.is_none(),
                instantiate: Duration::ZERO,
            },
        };
        if let Err(mpsc::error::SendError(job)) = self.handle.jobs.send(job) {
            // The instance ended (it failed) between this request's
            // admission and now: the request ends with it, as the requests
            // it was serving did.
            job.tail.finish(Outcome::NoResponse, GuestText::default(), &job.outcome_tx);
            return Outcome::NoResponse.response();
        }
        self.sent = true;
        if let Some(start) = self.start.take() {
            start.spawn(self.kept.clone(), self.id);
        }
        match head_rx.await {
            Ok((Ok(response), _)) => response,
            Ok((Err(code), _)) => guest_error_response(&code),
            Err(_) => match outcome_rx.wait_for(Option::is_some).await.ok().and_then(|o| *o) {
                Some(Outcome::Ok) | None => Outcome::NoResponse.response(),
                Some(outcome) => outcome.response(),
            },
        }
    }
}

/// Resolves when a request in flight passes its deadline.
async fn first_deadline(in_flight: &Shared<InFlight>) {
    loop {
        let next = locked(in_flight).deadlines.first().map(|(at, _)| *at);
        match next {
            Some(at) if at <= Instant::now() => return,
            Some(at) => tokio::time::sleep_until(at.into()).await,
            // Requests come with later deadlines than any before them: a
            // short sleep is enough to notice the first one.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Serves `first` and the requests that join it, many at once, inside the
/// instance's event loop, until none is left in flight; an error (a trap)
/// ends the instance with every request in flight.
async fn serve(
    accessor: &wasmtime::component::Accessor<InvocationState>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    kept: &Kept<WorkerHandle>,
    id: MemberId,
    in_flight: &Shared<InFlight>,
) -> wasmtime::Result<()> {
    use futures::StreamExt as _;
    let mut running = futures::stream::FuturesUnordered::new();
    let start = |job: Job| {
        locked(in_flight).deadlines.insert((job.deadline, job.id));
        serve_one(accessor, service, job, in_flight)
    };
    running.push(start(first));
    while !running.is_empty() {
        tokio::select! {
            Some(job) = rx.recv() => running.push(start(job)),
            Some(done) = running.next() => {
                done?;
                let left = u32::try_from(running.len()).unwrap_or(u32::MAX);
                let memory = accessor.with(|mut store| {
                    let data = store.data_mut();
                    data.request_ended(left);
                    data.memory_peak()
                });
                // Used up, or no idle place for it: no more requests.
                let (open, released) = kept.finished(id, true, memory, None);
                drop(released);
                if !open {
                    rx.close();
                }
            }
        }
    }
    Ok(())
}

/// One request on a shared instance: its head to its client, then the
/// loop's attention until its body has been read.
async fn serve_one(
    accessor: &wasmtime::component::Accessor<InvocationState>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    job: Job,
    in_flight: &Shared<InFlight>,
) -> wasmtime::Result<()> {
    let Job { id, request, deadline, head_tx, outcome_tx, outcome_rx, tail } = job;
    let instantiate = tail.instantiate;
    if tail.reused {
        accessor.with(|mut store| store.data_mut().another_request());
    }
    locked(in_flight).tails.insert(id, (tail, outcome_tx));
    // The store's hooks only strip forbidden headers here, as the default
    // ones do (ours change only outgoing requests).
    let (request, request_io) =
        wasmtime_wasi_http::p3::Request::from_http(wasmtime_wasi_http::default_hooks(), request);
    let answered = match service.handle(accessor, request).await? {
        Ok(response) => {
            let response = accessor.with(|mut store| response.into_http(&mut store, request_io))?;
            let (parts, body) = response.into_parts();
            let status = parts.status.as_u16();
            if let Some((tail, _)) = locked(in_flight).tails.get_mut(&id) {
                tail.status = Some(status);
            }
            let (read_tx, read_rx) = oneshot::channel();
            let body = StreamedBody {
                inner: body,
                read: Some(read_tx),
                outcome: outcome_rx,
                waiting: None,
            };
            let head = Response::from_parts(parts, body.boxed_unsync());
            if head_tx.send((Ok(head), instantiate)).is_ok() {
                let _ = read_rx.await;
            }
            Outcome::Ok
        }
        Err(code) => {
            let _ = head_tx.send((Err(code), instantiate));
            Outcome::GuestError
        }
    };
    let done = {
        let mut state = locked(in_flight);
        state.deadlines.remove(&(deadline, id));
        state.tails.remove(&id)
    };
    if let Some((tail, outcome_tx)) = done {
        // What the instance printed while this request ran (with several at
        // once, what the others printed meanwhile too).
        let output = accessor.with(|mut store| {
            let data = store.data_mut();
            GuestText {
                stdout: data.stdout.log(&tail.request_id, "stdout"),
                stderr: data.stderr.log(&tail.request_id, "stderr"),
            }
        });
        tail.finish(answered, output, &outcome_tx);
    }
    Ok(())
}
