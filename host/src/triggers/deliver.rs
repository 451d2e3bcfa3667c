//! Delivering a trigger: the request a schedule's firing or a queue's
//! message becomes, sent through the node's own data plane (routing,
//! admission, quota, limits, logs, usage and metrics as for any request),
//! and what its answer means.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt as _, Full};

use crate::dataplane::DataPlane;
use crate::response::HostError;

/// Host answers that mean the request was not run at all: the tenant's
/// quota or share of the node is used up, or the deployment is not ready
/// here. A trigger refused so is tried again later without counting it.
const REFUSALS: &[&str] = &[
    "quota_exceeded",
    "concurrency_limit",
    "instance_pool_full",
    "fair_share_exceeded",
    "input_budget_exhausted",
    "deployment_compiling",
    "deployment_unavailable",
];

/// How a trigger's request was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The deployment answered 2xx.
    Done {
        /// The status.
        status: u16,
    },
    /// It ran and failed: another status, a trap, a timeout (the host's
    /// code, or `status N` for the guest's own answer).
    Failed {
        /// The status.
        status: u16,
        /// Why, in a word.
        outcome: String,
    },
    /// It did not run: refused by the tenant's quota or the node (not an
    /// attempt); try again after `retry_after`.
    Refused {
        /// The status.
        status: u16,
        /// The host's code.
        code: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// No route of that deployment serves its host and path any more.
    Gone {
        /// The host's code (`not_found`, `not_this_deployment`).
        code: String,
    },
}

impl Answer {
    /// The status the deployment's answer had.
    pub fn status(&self) -> u16 {
        match self {
            Answer::Done { status }
            | Answer::Failed { status, .. }
            | Answer::Refused { status, .. } => *status,
            Answer::Gone { code } if code == "not_found" => 404,
            Answer::Gone { .. } => 409,
        }
    }

    /// In a word, for firings' records and metrics: `ok`, the failure's
    /// outcome, or `refused: <code>`.
    pub fn outcome(&self) -> String {
        match self {
            Answer::Done { .. } => "ok".into(),
            Answer::Failed { outcome, .. } => outcome.clone(),
            Answer::Refused { code, .. } => format!("refused: {code}"),
            Answer::Gone { code } => format!("gone: {code}"),
        }
    }
}

/// A request the node makes itself.
#[derive(Debug)]
pub struct Trigger<'a> {
    /// The deployment it is for.
    pub deployment: &'a str,
    /// Its `Host`: the deployment's host, or where clients reach the node.
    pub host: &'a str,
    /// The request's method.
    pub method: Method,
    /// Path and query.
    pub path: &'a str,
    /// Headers to set (`wasmwiz-trigger` and the like).
    pub headers: Vec<(&'static str, String)>,
    /// Its `Content-Type`, if it has a body.
    pub content_type: Option<&'a str>,
    /// Its body.
    pub body: Bytes,
}

/// Sends `trigger` through `plane` and reads the answer (its body is read
/// to the end and dropped: the guest's run ends with it).
pub async fn deliver(plane: &DataPlane, trigger: Trigger<'_>) -> Answer {
    let mut request = match Request::builder()
        .method(trigger.method)
        .uri(trigger.path)
        .body(Full::new(trigger.body))
    {
        Ok(request) => request,
        Err(e) => {
            return Answer::Failed { status: 400, outcome: format!("bad request: {e}") };
        }
    };
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(trigger.host) {
        headers.insert(header::HOST, host);
    }
    if let Some(kind) = trigger.content_type.and_then(|c| HeaderValue::from_str(c).ok()) {
        headers.insert(header::CONTENT_TYPE, kind);
    }
    for (name, value) in trigger.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    let response = plane.trigger(request, trigger.deployment).await;
    let status = response.status().as_u16();
    let host_code = response.extensions().get::<HostError>().map(|e| e.0.clone());
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs);
    // Read to the end, keeping nothing: a streaming guest finishes only
    // once its body has been taken (its execution timeout bounds how long).
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    match host_code {
        Some(code) if REFUSALS.contains(&code.as_str()) => {
            Answer::Refused { status, code, retry_after }
        }
        Some(code) if code == "not_found" || code == "not_this_deployment" => Answer::Gone { code },
        Some(code) => Answer::Failed { status, outcome: code },
        None if (200..300).contains(&status) => Answer::Done { status },
        None => Answer::Failed { status, outcome: format!("status {status}") },
    }
}
