//! Tenants, API keys and tiers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ApiError, ApiJson, publish, require, rfc3339};
use crate::auth::{self, Principal, Scope, Scopes};
use crate::node::Node;
use crate::store::{ApiKeyRecord, Tenant, Tier, TierLimits, valid_name};

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "a {what} name is 1 to 63 lower-case letters, digits, `-` or `_`"
        )))
    }
}

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
    State(node): State<Arc<Node>>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantJson>), ApiError> {
    admin_only(&principal)?;
    check_name("tenant", &body.name)?;
    let tenant = node.store.create_tenant(&body.name, &body.tier).await?;
    node.plane.metrics().tenants_created.inc();
    Ok((StatusCode::CREATED, Json(tenant.into())))
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
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Json<TenantJson>, ApiError> {
    admin_only(&principal)?;
    let tenant = node.store.set_tenant_tier(&name, &body.tier).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found("tenant"),
        other => other.into(),
    })?;
    publish(&node).await;
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
        }
    }
}

/// `POST /api/v1/keys`: a tenant creates keys for itself with at most its
/// own scopes; an admin creates keys for any tenant.
pub async fn create_key(
    State(node): State<Arc<Node>>,
    principal: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NewKeyJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    // The body is optional: no body means "a key like mine, for me".
    let body: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let scopes = match &body.scopes {
        Some(names) => Scopes::parse(&names.join(",")).map_err(ApiError::bad_request)?,
        None => Scopes::TENANT_DEFAULT,
    };
    if !principal.is_admin() && !principal.scopes.covers(scopes) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a key cannot grant scopes it does not have",
        ));
    }
    let tenant = match body.tenant.as_deref() {
        None => principal.tenant.clone(),
        Some(name) if name == principal.tenant => principal.tenant.clone(),
        Some(_) if !principal.is_admin() => return Err(ApiError::not_found("tenant")),
        Some(name) => name.to_string(),
    };
    let record = node.store.tenant(&tenant).await?.ok_or_else(|| ApiError::not_found("tenant"))?;
    let (key, stored) =
        auth::issue_key(node.store.as_ref(), node.auth.salt(), record.id, scopes).await?;
    node.plane.metrics().keys_created.inc();
    Ok((
        StatusCode::CREATED,
        Json(NewKeyJson {
            id: stored.id,
            key,
            prefix: stored.prefix,
            scopes: scopes.names(),
            tenant,
        }),
    ))
}

/// `GET /api/v1/keys`: the caller's tenant's keys (every key for admins).
pub async fn list_keys(
    State(node): State<Arc<Node>>,
    principal: Principal,
) -> Result<Json<Vec<KeyJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let filter = (!principal.is_admin()).then_some(principal.tenant_id);
    let keys = node.store.keys(filter).await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// `DELETE /api/v1/keys/{id}`: revokes; effective on every node within a
/// second, at once on this one.
pub async fn revoke_key(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    let filter = (!principal.is_admin()).then_some(principal.tenant_id);
    if !node.store.revoke_key(&id, filter).await? {
        return Err(ApiError::not_found("key"));
    }
    node.auth.invalidate_all();
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
    State(node): State<Arc<Node>>,
    _principal: Principal,
) -> Result<Json<Vec<TierJson>>, ApiError> {
    let tiers = node.store.tiers().await?;
    Ok(Json(tiers.into_iter().map(|t| TierJson { name: t.name, limits: t.limits }).collect()))
}

/// Distinguishes a field that is absent (`None`) from one that is `null`
/// (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// Body of `PUT /api/v1/tiers/{name}`: a missing field takes the default,
/// `null` on a rate means unlimited.
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
}

impl PutTier {
    /// The tier's limits, defaults filled in from `defaults`.
    pub fn limits(&self, defaults: &TierLimits) -> TierLimits {
        TierLimits {
            requests_per_minute: self.requests_per_minute.unwrap_or(defaults.requests_per_minute),
            requests_per_day: self.requests_per_day.unwrap_or(defaults.requests_per_day),
            memory_limit_bytes: self.memory_limit_bytes.unwrap_or(defaults.memory_limit_bytes),
            execution_timeout_ms: self
                .execution_timeout_ms
                .unwrap_or(defaults.execution_timeout_ms),
            max_input_bytes: self.max_input_bytes.unwrap_or(defaults.max_input_bytes),
            max_component_bytes: self.max_component_bytes.unwrap_or(defaults.max_component_bytes),
            kv_max_key_bytes: self.kv_max_key_bytes.unwrap_or(defaults.kv_max_key_bytes),
            kv_max_value_bytes: self.kv_max_value_bytes.unwrap_or(defaults.kv_max_value_bytes),
            kv_max_keys: self.kv_max_keys.unwrap_or(defaults.kv_max_keys),
            kv_max_total_bytes: self.kv_max_total_bytes.unwrap_or(defaults.kv_max_total_bytes),
            max_instance_reuse: self.max_instance_reuse.unwrap_or(defaults.max_instance_reuse),
        }
    }
}

/// `PUT /api/v1/tiers/{name}` (admin): 201 created, 200 replaced.
pub async fn put_tier(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutTier>,
) -> Result<(StatusCode, Json<TierJson>), ApiError> {
    admin_only(&principal)?;
    check_name("tier", &name)?;
    let limits = body.limits(&node.tier_defaults);
    limits.check().map_err(ApiError::bad_request)?;
    let existed = node.store.tiers().await?.iter().any(|t| t.name == name);
    let tier = Tier { name, limits };
    node.store.put_tier(&tier).await?;
    publish(&node).await;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(TierJson { name: tier.name, limits: tier.limits })))
}
