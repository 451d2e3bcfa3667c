//! Tenants, API keys and tiers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::usage::CountsJson;
use super::{ApiError, ApiJson, ApiState, publish, require, rfc3339};
use crate::auth::{Principal, Scope, Scopes};
use crate::control::{Actor, TierBase};
use crate::quota::{DAY, unix_now};
use crate::store::{ApiKeyRecord, Tenant};
use crate::tenancy::{TierLimits, TierPatch};

fn admin_only(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_admin() { Ok(()) } else { Err(ApiError::missing_scope(Scope::Admin)) }
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize)]
pub struct TenantJson {
    name: String,
    tier: String,
    created_at: String,
}

impl From<Tenant> for TenantJson {
    fn from(t: Tenant) -> Self {
        Self { name: t.name, tier: t.tier, created_at: rfc3339(t.created_at) }
    }
}

/// Body of `POST /api/v1/tenants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    #[serde(default = "default_tier")]
    tier: String,
}

fn default_tier() -> String {
    "free".to_string()
}

/// `POST /api/v1/tenants` (admin): 201.
pub async fn create_tenant(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantJson>), ApiError> {
    admin_only(&principal)?;
    let tenant = state.control.create_tenant(&body.name, &body.tier).await?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

/// A tenant in the admin's list: with what it did today.
#[derive(Debug, Serialize)]
pub struct ListedTenantJson {
    #[serde(flatten)]
    tenant: TenantJson,
    /// Today (UTC), across every node (this node's unwritten counts too).
    today: CountsJson,
}

/// `GET /api/v1/tenants` (admin): every tenant, with today's usage.
pub async fn list_tenants(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<Vec<ListedTenantJson>>, ApiError> {
    admin_only(&principal)?;
    let tenants = state.control.tenants().await?;
    let day = (unix_now() / DAY) as i64;
    let mut today: HashMap<_, _> =
        state.node.store().usage_on_day(day).await?.into_iter().collect();
    let usage = state.node.usage();
    Ok(Json(
        tenants
            .into_iter()
            .map(|t| {
                let counts = today.remove(&t.id).unwrap_or_default().plus(&usage.pending(t.id));
                ListedTenantJson { tenant: t.into(), today: counts.into() }
            })
            .collect(),
    ))
}

/// Who is calling: `GET /api/v1/me`, any key.
#[derive(Debug, Serialize)]
pub struct MeJson {
    tenant: String,
    tier: String,
    key_id: String,
    prefix: String,
    scopes: Vec<&'static str>,
}

/// `GET /api/v1/me`: the caller's tenant, tier and key (what the console
/// signs in with).
pub async fn me(principal: Principal) -> Json<MeJson> {
    Json(MeJson {
        tenant: principal.tenant,
        tier: principal.tier,
        key_id: principal.key_id,
        prefix: principal.prefix,
        scopes: principal.scopes.names(),
    })
}

/// Body of `PATCH /api/v1/tenants/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    tier: String,
}

/// `PATCH /api/v1/tenants/{name}` (admin): change of tier, live on every
/// node within a second.
pub async fn update_tenant(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Json<TenantJson>, ApiError> {
    admin_only(&principal)?;
    let tenant = state.control.set_tenant_tier(&name, &body.tier).await?;
    publish(&state.node).await;
    Ok(Json(tenant.into()))
}

/// Body of `POST /api/v1/keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The tenant the key is for (admins only; default: the caller's).
    #[serde(default)]
    tenant: Option<String>,
    /// Scopes (default: deploy and read).
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// A new key, shown once.
#[derive(Debug, Serialize)]
pub struct NewKeyJson {
    id: String,
    key: String,
    prefix: String,
    scopes: Vec<&'static str>,
    tenant: String,
}

/// A key as listed: never the secret.
#[derive(Debug, Serialize)]
pub struct KeyJson {
    id: String,
    prefix: String,
    scopes: Vec<&'static str>,
    tenant: String,
    created_at: String,
    revoked: bool,
    /// When it last authenticated a request (to the minute); `null`: never.
    last_used_at: Option<String>,
}

impl From<ApiKeyRecord> for KeyJson {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            prefix: k.prefix,
            scopes: Scopes::parse(&k.scopes).unwrap_or_default().names(),
            tenant: k.tenant,
            created_at: rfc3339(k.created_at),
            revoked: k.revoked_at.is_some(),
            last_used_at: k.last_used_at.map(rfc3339),
        }
    }
}

/// `POST /api/v1/keys`: a tenant creates keys for itself with at most its
/// own scopes; an admin creates keys for any tenant.
pub async fn create_key(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NewKeyJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    // The body is optional: no body means "a key like mine, for me".
    let body: CreateKey = super::optional_object(&body)?;
    let scopes = match &body.scopes {
        Some(names) => {
            // One scope per item, spelled exactly: `""`, `"read,deploy"` or
            // `" read"` is not a scope (as the API document's enum says).
            if let Some(bad) =
                names.iter().find(|n| !matches!(n.as_str(), "admin" | "deploy" | "read"))
            {
                return Err(ApiError::bad_request(format!(
                    "unknown scope `{bad}` (admin, deploy, read)"
                )));
            }
            Some(Scopes::parse(&names.join(",")).map_err(ApiError::bad_request)?)
        }
        None => None,
    };
    let issued =
        state.control.create_key(Actor::Key(&principal), body.tenant.as_deref(), scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewKeyJson {
            id: issued.record.id,
            key: issued.key,
            prefix: issued.record.prefix,
            scopes: issued.scopes.names(),
            tenant: issued.tenant,
        }),
    ))
}

/// `GET /api/v1/keys`: the caller's tenant's keys (every key for admins).
pub async fn list_keys(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<Vec<KeyJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let keys = state.control.keys(Actor::Key(&principal)).await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// `DELETE /api/v1/keys/{id}`: revokes; effective on every node within a
/// second, at once on this one.
pub async fn revoke_key(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    state.control.revoke_key(Actor::Key(&principal), &id).await?;
    state.auth.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

/// A tier as the API shows it.
#[derive(Debug, Serialize)]
pub struct TierJson {
    name: String,
    #[serde(flatten)]
    limits: TierLimits,
}

/// `GET /api/v1/tiers` (any key).
pub async fn list_tiers(
    State(state): State<Arc<ApiState>>,
    _principal: Principal,
) -> Result<Json<Vec<TierJson>>, ApiError> {
    let tiers = state.control.tiers().await?;
    Ok(Json(tiers.into_iter().map(|t| TierJson { name: t.name, limits: t.limits }).collect()))
}

/// Distinguishes a field that is absent (`None`) from one that is `null`
/// (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `PUT /api/v1/tiers/{name}`: a missing field takes the default,
/// `null` on a rate or on `max_concurrency` means unlimited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTier {
    #[serde(default, deserialize_with = "present")]
    requests_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_day: Option<Option<u64>>,
    memory_limit_bytes: Option<u64>,
    execution_timeout_ms: Option<u64>,
    max_input_bytes: Option<u64>,
    max_component_bytes: Option<u64>,
    kv_max_key_bytes: Option<u64>,
    kv_max_value_bytes: Option<u64>,
    kv_max_keys: Option<u64>,
    kv_max_total_bytes: Option<u64>,
    max_instance_reuse: Option<u32>,
    max_instance_concurrency: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    max_concurrency: Option<Option<u32>>,
}

impl From<PutTier> for TierPatch {
    fn from(body: PutTier) -> Self {
        TierPatch {
            requests_per_minute: body.requests_per_minute,
            requests_per_day: body.requests_per_day,
            memory_limit_bytes: body.memory_limit_bytes,
            execution_timeout_ms: body.execution_timeout_ms,
            max_input_bytes: body.max_input_bytes,
            max_component_bytes: body.max_component_bytes,
            kv_max_key_bytes: body.kv_max_key_bytes,
            kv_max_value_bytes: body.kv_max_value_bytes,
            kv_max_keys: body.kv_max_keys,
            kv_max_total_bytes: body.kv_max_total_bytes,
            max_instance_reuse: body.max_instance_reuse,
            max_instance_concurrency: body.max_instance_concurrency,
            max_concurrency: body.max_concurrency,
        }
    }
}

/// `PUT /api/v1/tiers/{name}` (admin): 201 created, 200 replaced.
pub async fn put_tier(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutTier>,
) -> Result<(StatusCode, Json<TierJson>), ApiError> {
    admin_only(&principal)?;
    let (tier, created) = state.control.put_tier(&name, &body.into(), TierBase::Defaults).await?;
    publish(&state.node).await;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(TierJson { name: tier.name, limits: tier.limits })))
}
