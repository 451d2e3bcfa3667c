//! Tenants, API keys and tiers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::usage::CountsJson;
use super::{ApiError, ApiJson, ApiState, require, rfc3339};
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
    public_url: String,
}

/// `GET /api/v1/me`: the caller's tenant, tier and key (what the console
/// signs in with), and where tenants' routes answer (`PUBLIC_URL`: the
/// console, on an origin of its own, shows invoke URLs there).
pub async fn me(State(state): State<Arc<ApiState>>, principal: Principal) -> Json<MeJson> {
    Json(MeJson {
        public_url: state.public_url.clone(),
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

/// Body of `PUT /api/v1/tiers/{name}`: any of the limits of
/// [`LIMITS`](crate::tenancy::LIMITS); a missing one takes the default,
/// `null` on one that allows it means no limit.
pub type PutTier = serde_json::Map<String, serde_json::Value>;

/// `GET /api/v1/tier-limits` (any key): what each limit of a tier is, as
/// the console's tier editor and clients show it.
pub async fn tier_limits(_principal: Principal) -> Json<Vec<LimitJson>> {
    Json(
        crate::tenancy::LIMITS
            .iter()
            .map(|spec| LimitJson {
                name: spec.name,
                help: spec.help.trim(),
                unit: spec.unit(),
                nullable: spec.nullable(),
                min: spec.min,
                max: spec.max,
            })
            .collect(),
    )
}

/// One limit, as `GET /api/v1/tier-limits` describes it.
#[derive(Debug, Serialize)]
pub struct LimitJson {
    name: &'static str,
    help: &'static str,
    unit: &'static str,
    nullable: bool,
    min: u64,
    max: u64,
}

/// `PUT /api/v1/tiers/{name}` (admin): 201 created, 200 replaced.
pub async fn put_tier(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutTier>,
) -> Result<(StatusCode, Json<TierJson>), ApiError> {
    admin_only(&principal)?;
    let (tier, created) =
        state.control.put_tier(&name, &TierPatch(body), TierBase::Defaults).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(TierJson { name: tier.name, limits: tier.limits })))
}
