//! `/api/v1/tenants/{name}/grants`: what a tenant may deploy inside. An
//! admin lists, grants and revokes; a tenant may list its own.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiState, require, rfc3339};
use crate::auth::{Principal, Scope};
use crate::control::GrantSpec;
use crate::router::Grant;
use crate::store::GrantRecord;

/// A grant as the API shows it: a route or a host.
#[derive(Debug, Serialize)]
pub struct GrantJson {
    /// `grt_...`; absent for a default grant, which cannot be revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
}

impl GrantJson {
    fn of(grant: &Grant) -> Self {
        let (route, host) = match grant {
            Grant::Path(pattern) => (Some(pattern.to_string()), None),
            Grant::Host(host) => (None, Some(host.clone())),
        };
        Self { id: None, route, host, created_at: None }
    }
}

impl From<GrantRecord> for GrantJson {
    fn from(record: GrantRecord) -> Self {
        Self {
            id: Some(record.id),
            created_at: Some(rfc3339(record.created_at)),
            ..GrantJson::of(&record.grant)
        }
    }
}

/// The answer of `GET /api/v1/tenants/{name}/grants`.
#[derive(Debug, Serialize)]
pub struct GrantsJson {
    tenant: String,
    /// What every tenant may use without asking (`/<name>/...`, and the
    /// host `<name>.<WASMWIZ_BASE_DOMAIN>` when one is set).
    defaults: Vec<GrantJson>,
    /// What an operator granted.
    grants: Vec<GrantJson>,
}

/// Body of `POST /api/v1/tenants/{name}/grants`: one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    host: Option<String>,
}

/// A tenant's key may read its own tenant's grants; an admin any.
fn may_read(principal: &Principal, tenant: &str) -> Result<(), ApiError> {
    require(principal, Scope::Read)?;
    if principal.is_admin() || principal.tenant == tenant {
        Ok(())
    } else {
        Err(ApiError::not_found("tenant"))
    }
}

fn admin_only(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_admin() { Ok(()) } else { Err(ApiError::missing_scope(Scope::Admin)) }
}

/// `GET /api/v1/tenants/{name}/grants`.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(tenant): Path<String>,
) -> Result<Json<GrantsJson>, ApiError> {
    may_read(&principal, &tenant)?;
    let (defaults, grants) = state.control.grants(&tenant).await?;
    Ok(Json(GrantsJson {
        tenant,
        defaults: defaults.iter().map(GrantJson::of).collect(),
        grants: grants.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /api/v1/tenants/{name}/grants` (admin): 201; 409 when it overlaps
/// another tenant's.
pub async fn create(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<NewGrant>,
) -> Result<(StatusCode, Json<GrantJson>), ApiError> {
    admin_only(&principal)?;
    let spec = match (body.route, body.host) {
        (Some(route), None) => GrantSpec::Route(route),
        (None, Some(host)) => GrantSpec::Host(host),
        _ => {
            return Err(ApiError::bad_request(
                "a grant is {\"route\": \"/shop/...\"} or {\"host\": \"shop.example.com\"}",
            ));
        }
    };
    let record = state.control.grant(&tenant, &spec).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// `DELETE /api/v1/tenants/{name}/grants/{id}` (admin): 204; 409 while a
/// deployment of the tenant needs it.
pub async fn remove(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin_only(&principal)?;
    state.control.revoke_grant(&tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
