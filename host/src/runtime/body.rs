//! Bodies around a guest: the request body it reads (with a size cap and an
//! idle timeout) and the response body it writes (which must end with an
//! error, not a clean end, when the guest is stopped half-way).

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use wasmtime_wasi_http::p2::body::HyperIncomingBody;

use super::Outcome;
use crate::response::{BoxError, ResponseBody, error_response, retry_later};

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    /// More bytes than the cap.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// The client paused longer than the body read timeout.
    #[error("the client stopped sending the request body")]
    Timeout,
    /// The connection failed while reading.
    #[error("reading the request body failed: {0}")]
    Client(String),
    /// The node's budget for bodies read ahead is spent.
    #[error("the node holds as many request bytes as it may before admission")]
    Budget,
}

/// The bytes of request bodies a node may hold in memory before their
/// requests are admitted (`MAX_BUFFERED_INPUT`): a body of unknown length
/// is read ahead to learn its size before pool and quota admission, and
/// whoever sends such bodies slowly (no key needed) would otherwise make
/// the node hold `max_input_bytes` per connection. Past the budget a new
/// body is refused (503, retry shortly), never buffered.
#[derive(Debug)]
pub struct InputBudget {
    left: std::sync::atomic::AtomicU64,
    total: u64,
}

impl InputBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { left: bytes.into(), total: bytes })
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.total - self.left.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(bytes))
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        self.left.fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Bytes taken from an [`InputBudget`], given back when dropped (with the
/// body that holds them, at the end of the invocation at the latest).
#[derive(Debug)]
pub struct BudgetHold {
    budget: std::sync::Arc<InputBudget>,
    bytes: u64,
}

impl BudgetHold {
    /// Holds nothing yet.
    pub fn new(budget: &std::sync::Arc<InputBudget>) -> Self {
        Self { budget: budget.clone(), bytes: 0 }
    }

    /// Takes `bytes` more, if the budget has them.
    fn take(&mut self, bytes: u64) -> bool {
        let taken = self.budget.take(bytes);
        if taken {
            self.bytes += bytes;
        }
        taken
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps a [`BudgetHold`] until it is dropped.
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        hold: BudgetHold,
    }
}

impl<B> HeldBody<B> {
    /// `inner`, holding `hold`.
    pub fn new(inner: B, hold: BudgetHold) -> Self {
        Self { inner, hold }
    }
}

impl<B: Body> Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole body of unknown length into memory, refusing it as soon as
/// it grows past `cap` (so an over-size body is never buffered whole) and
/// when the client pauses longer than `idle`.
pub async fn read_capped<B>(
    body: &mut B,
    cap: u64,
    idle: Duration,
    mut hold: Option<&mut BudgetHold>,
) -> Result<Bytes, BodyReadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut collected = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyReadError::Timeout),
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(e))) => return Err(BodyReadError::Client(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() as u64 + data.len() as u64 > cap {
                return Err(BodyReadError::TooLarge(cap));
            }
            if let Some(hold) = hold.as_deref_mut()
                && !hold.take(data.len() as u64)
            {
                return Err(BodyReadError::Budget);
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// Reads and throws away what is left of a refused request body, up to
/// `max_bytes` or `max_time`, so an HTTP/1.1 client still sending it reads
/// the refusal instead of a connection reset (nginx's "lingering close").
/// A body larger than that is abandoned and the connection closed.
pub async fn discard<B>(body: B, max_bytes: u64, max_time: Duration)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut body = body;
    let mut seen = 0u64;
    let _ = tokio::time::timeout(max_time, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > max_bytes {
                    break;
                }
            }
        }
    })
    .await;
}

/// How much of a refused body is read and discarded before closing.
pub const DISCARD_MAX_BYTES: u64 = 64 << 20;
/// How long a refused body is read and discarded before closing.
pub const DISCARD_MAX_TIME: Duration = Duration::from_secs(10);

pin_project_lite::pin_project! {
    /// A request body that fails with a read timeout when the client pauses
    /// longer than `idle` between two frames.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, idle: Duration) -> Self {
        Self { inner, idle, sleep: None }
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep.set(None);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.sleep.is_none() {
                    this.sleep.set(Some(tokio::time::sleep(*this.idle)));
                }
                let sleep = this.sleep.as_pin_mut().expect("set just above");
                ready!(sleep.poll(cx));
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body ended early because the guest was stopped.
#[derive(Debug, thiserror::Error)]
#[error("the response was cut off: the component {0}")]
pub struct Truncated(&'static str);

enum Ending {
    /// The guest is still running; its outcome will arrive here.
    Pending(oneshot::Receiver<Outcome>),
    Known(Outcome),
}

pin_project_lite::pin_project! {
    /// The guest's response body. When the guest's store is dropped (time
    /// out, trap) the body channel closes as if it had ended cleanly; this
    /// wrapper waits for the invocation's outcome at the end and turns an
    /// unfinished body into an error, so hyper aborts the response and the
    /// client sees a truncated transfer instead of a short "complete" one.
    pub struct GuestBody {
        #[pin]
        inner: wasmtime_wasi_http::p2::body::HyperOutgoingBody,
        ending: Ending,
    }
}

impl GuestBody {
    /// Wraps the guest's body; `outcome` resolves when the guest finishes.
    pub fn pending(
        inner: wasmtime_wasi_http::p2::body::HyperOutgoingBody,
        outcome: oneshot::Receiver<Outcome>,
    ) -> Self {
        Self { inner, ending: Ending::Pending(outcome) }
    }

    /// Wraps the body of a guest that has already finished with `outcome`.
    pub fn finished(
        inner: wasmtime_wasi_http::p2::body::HyperOutgoingBody,
        outcome: Outcome,
    ) -> Self {
        Self { inner, ending: Ending::Known(outcome) }
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(frame) => Poll::Ready(Some(frame.map_err(Into::into))),
            None => {
                let outcome = match this.ending {
                    Ending::Known(outcome) => *outcome,
                    Ending::Pending(rx) => {
                        let outcome = match ready!(Pin::new(rx).poll(cx)) {
                            Ok(outcome) => outcome,
                            Err(_) => Outcome::Trap,
                        };
                        *this.ending = Ending::Known(outcome);
                        outcome
                    }
                };
                if outcome == Outcome::Ok {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(Box::new(Truncated(outcome.describe())))))
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Takes the whole body of a guest that has already finished, when the
/// guest wrote it all before returning: then the body is complete in the
/// host's buffer and the response goes out with a `Content-Length` (one
/// write, no chunked framing). A body with trailers keeps chunked framing;
/// one whose end is not there yet (a guest that returned without finishing
/// it) streams on from where the draining stopped, as before.
pub fn drain_finished(body: wasmtime_wasi_http::p2::body::HyperOutgoingBody) -> DrainedBody {
    let mut body = body;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut frames = VecDeque::new();
    let mut length = Some(0u64);
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return DrainedBody { frames, length, rest: None },
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers need chunked framing in HTTP/1.1: no length.
                length = match frame.data_ref() {
                    Some(data) => length.map(|n| n + data.len() as u64),
                    None => None,
                };
                frames.push_back(Ok(frame));
            }
            Poll::Ready(Some(Err(error))) => {
                frames.push_back(Err(error.into()));
                return DrainedBody { frames, length: None, rest: None };
            }
            Poll::Pending => {
                let rest = Some(GuestBody::finished(body, Outcome::Ok));
                return DrainedBody { frames, length: None, rest };
            }
        }
    }
}

/// A finished guest's response body, taken out of its channel: the frames
/// read so far and, when the end was not among them, the rest of the body.
pub struct DrainedBody {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// Data bytes left, when that is the whole body's exact size (hyper
    /// then sends `Content-Length`).
    length: Option<u64>,
    rest: Option<GuestBody>,
}

impl Body for DrainedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            if let (Some(length), Ok(frame)) = (self.length, &frame)
                && let Some(data) = frame.data_ref()
            {
                self.length = Some(length - data.len() as u64);
            }
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map(SizeHint::with_exact).unwrap_or_default()
    }
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
