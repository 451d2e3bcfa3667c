//! `/api/v1/schedules` and `/api/v1/queues`: a tenant's schedules and
//! their firings; its queues, publishing, and their dead letters.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery, ApiState, require, rfc3339};
use crate::auth::{Principal, Scope};
use crate::control::{QueueSpec, ScheduleSpec, Scheduled};
use crate::store::{QueueRecord, RunRecord};
use crate::triggers::queues::{DeadLetter, Refused};

/// A schedule as the API shows it.
#[derive(Debug, Serialize)]
pub struct ScheduleJson {
    id: String,
    deployment: String,
    cron: String,
    path: String,
    method: String,
    body: String,
    created_at: String,
    /// The next due times (UTC).
    next_runs: Vec<String>,
}

impl From<Scheduled> for ScheduleJson {
    fn from(s: Scheduled) -> Self {
        let r = s.record;
        Self {
            id: r.id,
            deployment: r.deployment_id,
            cron: r.spec,
            path: r.path,
            method: r.method,
            body: r.body,
            created_at: rfc3339(r.created_at),
            next_runs: s.next_runs.into_iter().map(rfc3339).collect(),
        }
    }
}

/// `POST /api/v1/schedules`: 201 with the schedule and its next due times.
pub async fn create_schedule(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> Result<(StatusCode, Json<ScheduleJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let made = state.control.create_schedule(principal.tenant_id, &principal.tier, spec).await?;
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// `GET /api/v1/schedules`: the tenant's schedules.
pub async fn list_schedules(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<Vec<ScheduleJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let schedules = state.control.schedules(principal.tenant_id).await?;
    Ok(Json(schedules.into_iter().map(Into::into).collect()))
}

/// `DELETE /api/v1/schedules/{id}`: 204; no firing starts after it.
pub async fn remove_schedule(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    state.control.delete_schedule(principal.tenant_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A firing as the API shows it.
#[derive(Debug, Serialize)]
pub struct RunJson {
    /// The due time it fired for.
    due_at: String,
    /// When the answer came (absent: still firing, or its node died and
    /// another will take it over).
    #[serde(skip_serializing_if = "Option::is_none")]
    fired_at: Option<String>,
    node: String,
    /// `firing` or `done`.
    status: &'static str,
    /// The answer's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<i64>,
    /// The guest's outcome (`ok`, `trap`, `timeout` ...) or why the node
    /// refused it (`quota_exceeded` ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    /// How long after the due time the request was made, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    lateness_ms: Option<i64>,
}

impl From<RunRecord> for RunJson {
    fn from(r: RunRecord) -> Self {
        Self {
            due_at: rfc3339(r.due_at),
            fired_at: r.fired_at.map(rfc3339),
            node: r.node,
            status: if r.fired_at.is_some() { "done" } else { "firing" },
            http_status: r.status,
            outcome: r.outcome,
            lateness_ms: Some((r.started_at - r.due_at).max(0)),
        }
    }
}

/// `?limit=` of the runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/schedules/{id}/runs`: the newest firings, newest first.
pub async fn schedule_runs(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<Vec<RunJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let limit = i64::from(in_range(query.limit, 100, 100)?);
    let runs = state.control.schedule_runs(principal.tenant_id, &id, limit).await?;
    Ok(Json(runs.into_iter().map(Into::into).collect()))
}

/// `?limit=`: `default` when absent, else 1 to `most` (400 otherwise).
fn in_range(limit: Option<u32>, default: u32, most: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=most).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!("`limit` must be 1 to {most}"))),
    }
}

/// A queue as the API shows it, with how full it is.
#[derive(Debug, Serialize)]
pub struct QueueJson {
    name: String,
    deployment: String,
    path: String,
    max_attempts: u32,
    visibility_timeout_s: u32,
    created_at: String,
    /// Messages waiting or being delivered (absent: the backend did not
    /// answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<u64>,
    /// Messages in the dead letters.
    #[serde(skip_serializing_if = "Option::is_none")]
    dead: Option<u64>,
    /// When the oldest waiting message was published.
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_published_at: Option<String>,
}

async fn queue_json(state: &ApiState, q: QueueRecord) -> QueueJson {
    let depth = state.node.queues().backend().depth(&q).await.ok();
    QueueJson {
        waiting: depth.map(|d| d.waiting),
        dead: depth.map(|d| d.dead),
        oldest_published_at: depth.and_then(|d| d.oldest_ms).map(rfc3339),
        name: q.name,
        deployment: q.deployment_id,
        path: q.path,
        max_attempts: q.max_attempts,
        visibility_timeout_s: q.visibility_timeout_s,
        created_at: rfc3339(q.created_at),
    }
}

/// `POST /api/v1/queues`: 201 with the queue.
pub async fn create_queue(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    ApiJson(spec): ApiJson<QueueSpec>,
) -> Result<(StatusCode, Json<QueueJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let queue = state.control.create_queue(principal.tenant_id, &principal.tier, spec).await?;
    // Published to this node's list at once (the others read it within a
    // second, and on a miss).
    let _ = state.node.queues().refresh().await;
    Ok((StatusCode::CREATED, Json(queue_json(&state, queue).await)))
}

/// `GET /api/v1/queues`: the tenant's queues.
pub async fn list_queues(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<Vec<QueueJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let mut out = Vec::new();
    for queue in state.control.queues(principal.tenant_id).await? {
        out.push(queue_json(&state, queue).await);
    }
    Ok(Json(out))
}

/// `DELETE /api/v1/queues/{name}`: 204; its messages are gone.
pub async fn remove_queue(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    let queue = state.control.delete_queue(principal.tenant_id, &name).await?;
    let queues = state.node.queues();
    if let Err(e) = queues.backend().forget(&queue).await {
        tracing::warn!(queue = %queue.id, error = %e, "a deleted queue's messages were not removed");
    }
    let _ = queues.refresh().await;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer to a publish.
#[derive(Debug, Serialize)]
pub struct Published {
    id: String,
}

fn refused(r: Refused) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        r.code,
        r.message,
    )
}

/// `POST /api/v1/queues/{name}/messages`: the body is the message, its
/// `Content-Type` kept; 202 `{"id"}` once it is stored.
pub async fn publish(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    require(&principal, Scope::Deploy)?;
    if !crate::tenancy::valid_name(&name) {
        return Err(ApiError::not_found("queue"));
    }
    let limits = state.control.tier_limits(&principal.tier).await?;
    let max = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("a message may be at most {max} bytes on this tier (max_message_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_message_bytes) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, max);
    let bytes = match tokio::time::timeout(state.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) | Err(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the message's body did not arrive",
            ));
        }
    };
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let id = state
        .node
        .queues()
        .publish(principal.tenant_id, &limits, &name, bytes, content_type)
        .await
        .map_err(refused)?;
    Ok((StatusCode::ACCEPTED, Json(Published { id })))
}

/// A dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeadJson {
    id: String,
    attempts: u32,
    last_error: String,
    published_at: String,
    size: usize,
    content_type: String,
}

impl From<DeadLetter> for DeadJson {
    fn from(d: DeadLetter) -> Self {
        Self {
            id: d.id,
            attempts: d.attempts,
            last_error: d.last_error,
            published_at: rfc3339(d.published_ms),
            size: d.size,
            content_type: d.content_type,
        }
    }
}

/// `?limit=` of the dead letters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    #[serde(default)]
    limit: Option<u32>,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "the queue backend is unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "queues_unavailable",
        "the queue backend is unavailable; retry shortly",
    )
}

/// `GET /api/v1/queues/{name}/dead`: the dead letters, oldest first.
pub async fn dead(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<DeadQuery>,
) -> Result<Json<Vec<DeadJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let queue = state.control.queue(principal.tenant_id, &name).await?;
    let limit = usize::try_from(in_range(query.limit, 100, 1000)?).unwrap_or(100);
    let dead = state.node.queues().backend().dead(&queue, limit).await.map_err(unavailable)?;
    Ok(Json(dead.into_iter().map(Into::into).collect()))
}

/// How many dead letters a redrive put back.
#[derive(Debug, Serialize)]
pub struct Redriven {
    redriven: u64,
}

/// `POST /api/v1/queues/{name}/dead/redrive`: every dead letter back in
/// the queue, its attempts from zero.
pub async fn redrive(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Redriven>, ApiError> {
    require(&principal, Scope::Deploy)?;
    let queue = state.control.queue(principal.tenant_id, &name).await?;
    let redriven = state.node.queues().backend().redrive(&queue).await.map_err(unavailable)?;
    tracing::info!(tenant_id = principal.tenant_id, queue = %name, redriven, "dead letters redriven");
    Ok(Json(Redriven { redriven }))
}
