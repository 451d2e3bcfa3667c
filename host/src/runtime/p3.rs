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
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::{oneshot, watch};
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::body::HyperIncomingBody;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use super::invoke::{ExecutionReport, InvokeOptions, Outcome, classify};
use super::output::GuestText;
use super::slots::Slot;
use super::state::InvocationState;
use crate::response::{BoxError, ResponseBody, error_response};

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
        if outcome != Outcome::Ok {
            tracing::info!(
                target: "wasmwiz::guest",
                request_id,
                outcome = outcome.as_str(),
                elapsed_ms = wall.as_millis() as u64,
                "the component {}",
                outcome.describe()
            );
        }
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
        Ok((Err(code), _)) => {
            tracing::debug!(?code, "the component answered with an error code");
            error_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "component_error",
                "the component answered with an error",
            )
        }
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
pub(super) fn service_pre(
    pre: &wasmtime::component::InstancePre<InvocationState>,
) -> Option<ServicePre<InvocationState>> {
    ServicePre::new(pre.clone()).ok()
}
