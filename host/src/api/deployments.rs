//! `/api/v1/deployments`: deploy (new route or version n+1), list, roll
//! back, delete. Each change is live on this node before the answer is
//! sent, and on the others at their next sync.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, publish, require, rfc3339};
use crate::auth::{Principal, Scope};
use crate::node::Node;
use crate::router::RoutePattern;
use crate::runtime::MAX_INSTANCE_REUSE;
use crate::store::{Deployment, NewDeployment};

/// Most entries in `config` plus `secrets`.
const MAX_CONFIG_ENTRIES: usize = 256;
/// Longest configuration name.
const MAX_CONFIG_NAME: usize = 256;
/// Longest configuration value.
const MAX_CONFIG_VALUE: usize = 64 << 10;
/// Most entries in `allowed_outbound_hosts`.
const MAX_OUTBOUND_HOSTS: usize = 64;

/// Body of `POST /api/v1/deployments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    route: String,
    component: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    /// Requests one instance may serve: 1 (the default) gives every request
    /// a fresh instance; more keeps an instance that ended well for later
    /// requests of this deployment (faster, but requests see what earlier
    /// ones left in the guest's memory).
    #[serde(default = "one")]
    max_instance_reuse: u32,
}

fn one() -> u32 {
    1
}

/// A deployment as the API shows it: secrets by name only.
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
}

impl From<Deployment> for DeploymentJson {
    fn from(d: Deployment) -> Self {
        Self {
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
        }
    }
}

fn check_config(
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if config.len() + secrets.len() > MAX_CONFIG_ENTRIES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_CONFIG_ENTRIES} config and secret entries"
        )));
    }
    for (name, value) in config.iter().chain(secrets) {
        if name.is_empty() || name.len() > MAX_CONFIG_NAME || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "config names must be 1 to {MAX_CONFIG_NAME} printable characters"
            )));
        }
        if value.len() > MAX_CONFIG_VALUE {
            return Err(ApiError::bad_request(format!("the value of `{name}` is over 64 KiB")));
        }
    }
    if let Some(both) = config.keys().find(|k| secrets.contains_key(*k)) {
        return Err(ApiError::bad_request(format!("`{both}` is both config and a secret")));
    }
    Ok(())
}

fn check_outbound_hosts(hosts: &[String]) -> Result<(), ApiError> {
    if hosts.len() > MAX_OUTBOUND_HOSTS {
        return Err(ApiError::bad_request(format!("at most {MAX_OUTBOUND_HOSTS} outbound hosts")));
    }
    for host in hosts {
        crate::runtime::OutboundPolicy::check_pattern(host).map_err(ApiError::bad_request)?;
    }
    Ok(())
}

/// `POST /api/v1/deployments`: 201 with the deployment (version n+1 if the
/// tenant already has the route).
pub async fn create(
    State(node): State<Arc<Node>>,
    principal: Principal,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<DeploymentJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let reserved: Vec<&str> = node.extra_reserved.iter().map(String::as_str).collect();
    let pattern = RoutePattern::parse(&request.route, request.host.as_deref(), &reserved)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_route", e.to_string()))?;
    check_config(&request.config, &request.secrets)?;
    check_outbound_hosts(&request.allowed_outbound_hosts)?;
    if !(1..=MAX_INSTANCE_REUSE).contains(&request.max_instance_reuse) {
        return Err(ApiError::bad_request(format!(
            "max_instance_reuse must be 1 (a fresh instance for every request) to \
             {MAX_INSTANCE_REUSE}"
        )));
    }
    // A tier this node has not loaded yet (created a moment ago through
    // another node) caps nothing here; the route table applies it anyway.
    let allowed = node
        .tier(&principal.tier)
        .map_or(MAX_INSTANCE_REUSE, |tier| tier.limits.max_instance_reuse);
    if request.max_instance_reuse > allowed {
        return Err(ApiError::bad_request(format!(
            "the {} tier allows max_instance_reuse up to {allowed}",
            principal.tier
        )));
    }
    let deployment = node
        .store
        .deploy(&NewDeployment {
            tenant_id: principal.tenant_id,
            route: pattern.to_string(),
            host: pattern.host().map(str::to_string),
            component: request.component,
            config: request.config,
            secrets: request.secrets,
            allowed_outbound_hosts: request.allowed_outbound_hosts,
            max_instance_reuse: request.max_instance_reuse,
        })
        .await?;
    publish(&node).await;
    Ok((StatusCode::CREATED, Json(deployment.into())))
}

/// `GET /api/v1/deployments`: the tenant's live deployments.
pub async fn list(
    State(node): State<Arc<Node>>,
    principal: Principal,
) -> Result<Json<Vec<DeploymentJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let deployments = node.store.deployments(Some(principal.tenant_id)).await?;
    Ok(Json(deployments.into_iter().map(Into::into).collect()))
}

/// `POST /api/v1/deployments/{id}/rollback`: back to the previous version.
pub async fn rollback(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeploymentJson>, ApiError> {
    require(&principal, Scope::Deploy)?;
    let deployment = node.store.rollback(principal.tenant_id, &id).await?;
    publish(&node).await;
    Ok(Json(deployment.into()))
}

/// `DELETE /api/v1/deployments/{id}`: 204; the route then answers 404.
pub async fn remove(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    if !node.store.delete_deployment(principal.tenant_id, &id).await? {
        return Err(ApiError::not_found("deployment"));
    }
    publish(&node).await;
    Ok(StatusCode::NO_CONTENT)
}
