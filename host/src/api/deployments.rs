//! `/api/v1/deployments`: deploy (new route or version n+1), list, roll
//! back, delete. Each change is live on this node before the answer is
//! sent, and on the others at their next sync.

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
use crate::store::Deployment;

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
    /// On the node that answered: `serving`, `compiling` or `failed`
    /// (absent when that node has not loaded the deployment yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusJson>,
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
        Self {
            status,
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

/// A version as the API lists it.
#[derive(Debug, Serialize)]
pub struct VersionJson {
    version: i64,
    component: String,
    created_at: String,
    live: bool,
    /// When it was live, oldest first (`until` absent: live now).
    live_periods: Vec<PeriodJson>,
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
    Ok(Json(
        versions
            .into_iter()
            .rev()
            .map(|v| VersionJson {
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
