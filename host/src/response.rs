//! HTTP response helpers shared by the data plane and the control plane:
//! the one response body type hyper serves, and JSON error answers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};

/// Errors a response body may end with; hyper aborts the response on one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the server sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Marks an answer the host made instead of a guest (in the response's
/// extensions), with its error code: how the node's own requests (a
/// schedule's firing, a queue's delivery) tell a refusal (`quota_exceeded`,
/// `instance_pool_full` ...) from whatever a guest answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostError(pub String);

/// A JSON error answer: `{"error":{"code":"...","message":"..."}}`.
///
/// `message` is shown to the client: it must never carry a host path, a
/// backtrace or another tenant's detail.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.extensions_mut().insert(HostError(code.to_string()));
    response
}

/// [`error_response`] plus a `Retry-After` header, in seconds.
pub fn retry_later(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_secs: u64,
) -> Response<ResponseBody> {
    let mut response = error_response(status, code, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}
