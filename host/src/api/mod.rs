//! The control plane: REST + JSON under `/api/v1`, authenticated with
//! `Authorization: Bearer <key>`. Not on the invocation path.
//!
//! Every error is `{"error":{"code","message"}}` with the status README.md
//! gives; 5xx details are logged, never sent.
//!
//! # Layout
//! - `components`: uploads, listing, deletion.
//! - `deployments`: deploy (at once or as a canary), list, promote, roll
//!   back, delete.
//! - `tenants`: tenants, tiers and keys (the admin side).
//! - `grants`: the routes and hosts a tenant may deploy inside.
//! - `usage`: the caller's quota windows, usage totals and usage history.
//! - `logs`: the caller's log stream (recent events, or followed).
//! - `triggers`: schedules, queues, publishing and dead letters.
//! - `docs`: the OpenAPI document at `/api/docs`.

mod components;
mod deployments;
mod docs;
mod grants;
mod logs;
mod tenants;
mod triggers;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};

use crate::auth::{AuthError, Authenticator, Principal, Scope};
use crate::control::{ControlError, ControlPlane};
use crate::node::Node;
use crate::runtime::CompileError;
use crate::store::StoreError;

pub use docs::OPENAPI;

/// What the handlers share: the control-plane service every change goes
/// through, the node that serves the changes, and the key checks.
#[derive(Debug)]
pub struct ApiState {
    /// Validates and makes every change.
    pub control: ControlPlane,
    /// This node: a change is made live here before it is answered.
    pub node: Arc<Node>,
    /// API key checks.
    pub auth: Authenticator,
    /// Longest pause inside an upload's body.
    pub body_read_timeout: Duration,
    /// Where tenants' routes answer, as their clients reach them.
    pub public_url: String,
}

/// The API's routes (paths as in README.md, "The API", and `/api/docs`).
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/components", post(components::upload).get(components::list))
        .route("/api/v1/components/{digest}", delete(components::remove))
        .route("/api/v1/deployments", post(deployments::create).get(deployments::list))
        .route("/api/v1/deployments/{id}/rollback", post(deployments::rollback))
        .route("/api/v1/deployments/{id}/promote", post(deployments::promote))
        .route("/api/v1/deployments/{id}/rollouts", get(deployments::rollouts))
        .route("/api/v1/deployments/{id}/versions", get(deployments::versions))
        .route("/api/v1/deployments/{id}", delete(deployments::remove))
        .route("/api/v1/tenants", post(tenants::create_tenant).get(tenants::list_tenants))
        .route("/api/v1/tenants/{name}", patch(tenants::update_tenant))
        .route("/api/v1/tenants/{name}/grants", get(grants::list).post(grants::create))
        .route("/api/v1/tenants/{name}/grants/{id}", delete(grants::remove))
        .route("/api/v1/keys", post(tenants::create_key).get(tenants::list_keys))
        .route("/api/v1/keys/{id}", delete(tenants::revoke_key))
        .route("/api/v1/me", get(tenants::me))
        .route("/api/v1/tier-limits", get(tenants::tier_limits))
        .route("/api/v1/tiers", get(tenants::list_tiers))
        .route("/api/v1/tiers/{name}", put(tenants::put_tier))
        .route("/api/v1/usage", get(usage::usage))
        .route("/api/v1/usage/history", get(usage::history))
        .route("/api/v1/logs", get(logs::logs))
        .route("/api/v1/schedules", post(triggers::create_schedule).get(triggers::list_schedules))
        .route("/api/v1/schedules/{id}", delete(triggers::remove_schedule))
        .route("/api/v1/schedules/{id}/runs", get(triggers::schedule_runs))
        .route("/api/v1/queues", post(triggers::create_queue).get(triggers::list_queues))
        .route("/api/v1/queues/{name}", delete(triggers::remove_queue))
        .route("/api/v1/queues/{name}/messages", post(triggers::publish))
        .route("/api/v1/queues/{name}/dead", get(triggers::dead))
        .route("/api/v1/queues/{name}/dead/redrive", post(triggers::redrive))
        .route("/api/docs", get(docs::openapi))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .with_state(state)
}

/// An API error: a status, a stable code and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    import: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), import: None }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found` (also for other tenants' objects: no enumeration).
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    /// 403 `forbidden` for a missing scope.
    pub fn missing_scope(scope: Scope) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key lacks the `{}` scope", scope.as_str()),
        )
    }

    /// 500, with the detail logged and not sent.
    pub fn internal(detail: &str) -> Self {
        tracing::error!(detail, "internal error in the API");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(import) = self.import {
            error["import"] = serde_json::Value::String(import);
        }
        let mut response =
            (self.status, axum::Json(serde_json::json!({ "error": error }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            StoreError::Invalid(message) => ApiError::bad_request(message),
            StoreError::NotGranted(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "route_not_granted", message)
            }
            StoreError::Unavailable(detail) => {
                tracing::warn!(detail, "the store is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable; retry shortly",
                )
            }
            StoreError::Full(detail) => {
                tracing::error!(detail, "the store's disk is full: changes are refused");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    "the store has no space left for this change; retry once an operator \
                     has freed space",
                )
            }
            StoreError::Internal(detail) => ApiError::internal(&detail),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing | AuthError::Invalid => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
            }
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<CompileError> for ApiError {
    fn from(error: CompileError) -> Self {
        match &error {
            CompileError::Internal(detail) => return ApiError::internal(detail),
            CompileError::NoSpace(detail) => {
                tracing::error!(detail, "no space left for compiled code under WASMWIZ_DATA_DIR");
            }
            _ => {}
        }
        let import = error.import().map(str::to_string);
        let mut api = ApiError::new(error.status(), error.code(), error.to_string());
        api.import = import;
        api
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::Invalid(message) => ApiError::bad_request(message),
            ControlError::Route(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_route", e.to_string())
            }
            ControlError::NotGranted(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "route_not_granted", message)
            }
            ControlError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            ControlError::NotFound(what) => ApiError::not_found(what),
            ControlError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            ControlError::Compile(e) => e.into(),
            ControlError::NoCompiler => ApiError::internal("uploads need a serving node"),
            ControlError::Limit { status, code, message } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                code,
                message,
            ),
            ControlError::Store(e) => e.into(),
        }
    }
}

impl FromRequestParts<Arc<ApiState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, ApiError> {
        let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        Ok(state.auth.authenticate(header).await?)
    }
}

/// Refuses the request unless the key has `scope` (admin keys have all).
pub fn require(principal: &Principal, scope: Scope) -> Result<(), ApiError> {
    if principal.scopes.has(scope) || principal.is_admin() {
        Ok(())
    } else {
        Err(ApiError::missing_scope(scope))
    }
}

/// A JSON body whose rejections are JSON errors too.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<serde_json::Value>::from_request(request, state).await {
            // Every request body of the API is an object (serde would also
            // take a struct's fields as an array).
            Ok(axum::Json(value)) if !value.is_object() => {
                Err(ApiError::bad_request("the body must be a JSON object"))
            }
            Ok(axum::Json(mut value)) => {
                whole_numbers(&mut value);
                serde_json::from_value::<T>(value)
                    .map(ApiJson)
                    .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
            }
            Err(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    "unsupported_media_type"
                } else {
                    "bad_request"
                };
                Err(ApiError::new(
                    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                        status
                    } else {
                        StatusCode::BAD_REQUEST
                    },
                    code,
                    rejection.body_text(),
                ))
            }
        }
    }
}

/// An optional JSON object body: no body at all is `T`'s default; anything
/// else must be a JSON object of `T`'s fields.
pub fn optional_object<T>(body: &[u8]) -> Result<T, ApiError>
where
    T: Default + serde::de::DeserializeOwned,
{
    if body.is_empty() {
        return Ok(T::default());
    }
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    whole_numbers(&mut value);
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

/// Writes every whole number of a body as an integer: JSON (and the API
/// document's `integer`) counts `2.0` as the integer 2, serde's integers take
/// only `2`. No field of the API is a fractional number, so nothing else
/// changes: `2.5` is still refused where an integer is due.
fn whole_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) else {
                return;
            };
            // From -2^63 up to 2^64 (`u64::MAX as f64`), excluded: past them
            // no integer type of the API reaches.
            if (0.0..u64::MAX as f64).contains(&f) {
                *n = serde_json::Number::from(f as u64);
            } else if (i64::MIN as f64..0.0).contains(&f) {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// A query string whose rejections (a malformed or repeated parameter) are
/// JSON errors too.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// Makes a committed change live on this node before answering. If that
/// fails the change is still committed, and the sync loop retries.
/// Unix milliseconds as RFC 3339 (`2026-11-27T04:17:40.934Z`).
pub fn rfc3339(ms: i64) -> String {
    crate::logs::rfc3339_ms(ms)
}
