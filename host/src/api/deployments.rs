//! `/api/v1/deployments`: deploy (new route or version n+1, at once or as
//! a canary rollout), list, promote, roll back, delete. Each change is live
//! on this node before the answer is sent, and on the others at their next
//! sync.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiState, require, rfc3339};
use crate::auth::{Principal, Scope};
use crate::control::DeploySpec;
use crate::node::{DeploymentState, Node};
use crate::rollout::Tally;
use crate::store::{Deployment, RolloutRecord};

/// A deployment as the API shows it: secrets by name only, and where it
/// stands on the node that answers.
#[derive(Debug, Serialize)]
pub struct DeploymentJson {
    id: String,
    route: String,
    host: Option<String>,
    component: String,
    version: i64,
    created_at: String,
    config: BTreeMap<String, String>,
    secrets: Vec<String>,
    allowed_outbound_hosts: Vec<String>,
    max_instance_reuse: u32,
    max_instance_concurrency: u32,
    /// Whether requests may pick a served version with `wasmwiz-version`.
    version_pinning: bool,
    /// On the node that answered: `serving`, `compiling` or `failed`
    /// (absent when that node has not loaded the deployment yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusJson>,
    /// The rollout under way, if any: its canary beside `version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<CanaryJson>,
}

/// A running rollout as a deployment shows it.
#[derive(Debug, Serialize)]
pub struct CanaryJson {
    /// The canary version.
    version: i64,
    component: String,
    /// Its share now, percent.
    percent: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    sticky_header: Option<String>,
    /// When the next step is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_step_at: Option<String>,
    min_requests: u32,
    max_error_increase: u8,
    /// What the node that answered sent each side (absent before it has
    /// the canary compiled).
    #[serde(skip_serializing_if = "Option::is_none")]
    on_this_node: Option<TalliesJson>,
}

/// What one node sent each side of a rollout.
#[derive(Debug, Serialize)]
pub struct TalliesJson {
    stable: TallyJson,
    canary: TallyJson,
    /// Whether this node stopped the canary (the store then follows).
    stopped: bool,
}

/// Requests and errors of one side.
#[derive(Debug, Serialize)]
pub struct TallyJson {
    requests: u64,
    errors: u64,
    error_rate_percent: f64,
}

impl From<Tally> for TallyJson {
    fn from(t: Tally) -> Self {
        TallyJson {
            requests: t.requests,
            errors: t.errors,
            error_rate_percent: (t.error_percent() * 10.0).round() / 10.0,
        }
    }
}

/// Where a deployment stands on the node that answered.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    state: &'static str,
    /// The version this node serves while the live one is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    serving_version: Option<i64>,
    /// Why the live version's component cannot be compiled here.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in_s: Option<u64>,
}

impl From<DeploymentState> for StatusJson {
    fn from(state: DeploymentState) -> Self {
        let none = StatusJson {
            state: "serving",
            serving_version: None,
            error: None,
            attempts: None,
            retry_in_s: None,
        };
        match state {
            DeploymentState::Serving => none,
            DeploymentState::Compiling { serving } => {
                StatusJson { state: "compiling", serving_version: serving, ..none }
            }
            DeploymentState::Failed { serving, error, attempts, retry_in_s } => StatusJson {
                state: "failed",
                serving_version: serving,
                error: Some(error),
                attempts: Some(attempts),
                retry_in_s: Some(retry_in_s),
            },
        }
    }
}

impl DeploymentJson {
    fn on(node: &Node, d: Deployment) -> Self {
        let status = node.deployment_state(&d.id).map(Into::into);
        let rollout = d.canary.as_ref().map(|c| CanaryJson {
            version: c.version,
            component: c.component.clone(),
            percent: c.percent,
            sticky_header: c.sticky_header.clone(),
            next_step_at: c.next_at.map(rfc3339),
            min_requests: c.guard.min_requests,
            max_error_increase: c.guard.max_error_increase,
            on_this_node: node.rollout_tallies(&d.id).filter(|t| t.version == c.version).map(|t| {
                TalliesJson { stable: t.stable.into(), canary: t.canary.into(), stopped: t.stopped }
            }),
        });
        Self {
            status,
            rollout,
            version_pinning: d.version_pinning,
            id: d.id,
            route: d.route,
            host: d.host,
            component: d.component,
            version: d.version,
            created_at: rfc3339(d.created_at),
            config: d.config,
            secrets: d.secrets.into_keys().collect(),
            allowed_outbound_hosts: d.allowed_outbound_hosts,
            max_instance_reuse: d.max_instance_reuse,
            max_instance_concurrency: d.max_instance_concurrency,
        }
    }
}

/// `POST /api/v1/deployments`: 201 with the deployment (version n+1 if the
/// tenant already has the route).
pub async fn create(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    ApiJson(spec): ApiJson<DeploySpec>,
) -> Result<(StatusCode, Json<DeploymentJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let deployment = state.control.deploy(principal.tenant_id, &principal.tier, spec).await?;
    Ok((StatusCode::CREATED, Json(DeploymentJson::on(&state.node, deployment))))
}

/// `GET /api/v1/deployments`: the tenant's live deployments.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<Vec<DeploymentJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let deployments = state.control.deployments(principal.tenant_id).await?;
    Ok(Json(deployments.into_iter().map(|d| DeploymentJson::on(&state.node, d)).collect()))
}

/// Body of `POST /api/v1/deployments/{id}/rollback` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to switch to; default: the one live before the current.
    #[serde(default)]
    version: Option<i64>,
}

/// `POST /api/v1/deployments/{id}/rollback`: back to the version that was
/// live before the current one, or to `{"version": N}`.
pub async fn rollback(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<DeploymentJson>, ApiError> {
    require(&principal, Scope::Deploy)?;
    // No body (as before) means "the previous version".
    let request: RollbackRequest = super::optional_object(&body)?;
    let deployment = state.control.rollback(principal.tenant_id, &id, request.version).await?;
    Ok(Json(DeploymentJson::on(&state.node, deployment)))
}

/// `POST /api/v1/deployments/{id}/promote`: the running rollout's canary
/// becomes the live version at once.
pub async fn promote(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeploymentJson>, ApiError> {
    require(&principal, Scope::Deploy)?;
    let deployment = state.control.promote(principal.tenant_id, &id).await?;
    Ok(Json(DeploymentJson::on(&state.node, deployment)))
}

/// A rollout as the API shows it.
#[derive(Debug, Serialize)]
pub struct RolloutJson {
    /// The canary version.
    version: i64,
    /// The live version it was split with.
    stable_version: i64,
    /// `running`, `promoted`, `rolled_back`, `stopped` or `replaced`.
    state: String,
    percent: u8,
    steps: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_s: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_step_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sticky_header: Option<String>,
    min_requests: u32,
    max_error_increase: u8,
    /// Why it ended.
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<String>,
}

impl From<RolloutRecord> for RolloutJson {
    fn from(r: RolloutRecord) -> Self {
        RolloutJson {
            version: r.version,
            stable_version: r.stable,
            state: r.state,
            percent: r.percent,
            interval_s: (r.steps.len() > 1).then_some(r.interval_ms / 1000),
            steps: r.steps,
            next_step_at: r.next_at.map(rfc3339),
            sticky_header: r.sticky_header,
            min_requests: r.guard.min_requests,
            max_error_increase: r.guard.max_error_increase,
            reason: r.reason,
            started_at: rfc3339(r.started_at),
            ended_at: r.ended_at.map(rfc3339),
        }
    }
}

/// `GET /api/v1/deployments/{id}/rollouts`: every rollout, newest first.
pub async fn rollouts(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<RolloutJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let rollouts = state.control.rollouts(principal.tenant_id, &id).await?;
    Ok(Json(rollouts.into_iter().rev().map(Into::into).collect()))
}

/// A version as the API lists it.
#[derive(Debug, Serialize)]
pub struct VersionJson {
    version: i64,
    component: String,
    created_at: String,
    live: bool,
    /// When it was live, oldest first (`until` absent: live now).
    live_periods: Vec<PeriodJson>,
    /// Its last rollout as a canary, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<RolloutJson>,
}

/// A stretch of time a version was live, and what made it live.
#[derive(Debug, Serialize)]
pub struct PeriodJson {
    from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    reason: String,
}

/// `GET /api/v1/deployments/{id}/versions`: every version, newest first.
pub async fn versions(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<VersionJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let versions = state.control.versions(principal.tenant_id, &id).await?;
    let mut rollouts = state.control.rollouts(principal.tenant_id, &id).await?;
    Ok(Json(
        versions
            .into_iter()
            .rev()
            .map(|v| VersionJson {
                rollout: rollouts
                    .iter()
                    .rposition(|r| r.version == v.version)
                    .map(|at| rollouts.remove(at).into()),
                version: v.version,
                component: v.component,
                created_at: rfc3339(v.created_at),
                live: v.live,
                live_periods: v
                    .periods
                    .into_iter()
                    .map(|p| PeriodJson {
                        from: rfc3339(p.from),
                        until: p.until.map(rfc3339),
                        reason: p.reason,
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// `DELETE /api/v1/deployments/{id}`: 204; the route then answers 404.
pub async fn remove(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    state.control.delete_deployment(principal.tenant_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
