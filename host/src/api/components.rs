//! `/api/v1/components`: uploads (streamed, capped, validated, compiled),
//! listing and deletion.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, require, rfc3339};
use crate::auth::{Principal, Scope};
use crate::runtime::body::{DISCARD_MAX_BYTES, DISCARD_MAX_TIME, discard};
use crate::runtime::expects_continue;
use crate::store::ComponentMeta;

/// Query of an upload.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// A name for the component (default: `component`).
    name: Option<String>,
}

/// A component as the API shows it.
#[derive(Debug, Serialize)]
pub struct ComponentJson {
    digest: String,
    name: String,
    size: u64,
    world: String,
    compile_ms: u64,
    created_at: String,
}

impl From<ComponentMeta> for ComponentJson {
    fn from(meta: ComponentMeta) -> Self {
        Self {
            digest: meta.digest,
            name: meta.name,
            size: meta.size,
            world: meta.world,
            compile_ms: meta.compile_ms,
            created_at: rfc3339(meta.created_at),
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "component_too_large",
        format!("components may be at most {limit} bytes on this tier"),
    )
}

/// `POST /api/v1/components?name=N`: 201 new, 200 already uploaded.
pub async fn upload(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ComponentJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let name = query.name.unwrap_or_else(|| "component".to_string());
    // The bytes are recognised by their magic number, whatever the
    // Content-Type says (curl's --data-binary sends a form type).
    let limit = state.control.upload_limit(&principal.tier).await?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > limit) {
        if length <= DISCARD_MAX_BYTES && !expects_continue(&headers) {
            discard(body, DISCARD_MAX_BYTES, DISCARD_MAX_TIME).await;
        }
        return Err(too_large(limit));
    }

    // Streamed: refused the moment it grows past the cap, never held whole
    // beyond it.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout(state.body_read_timeout, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the client stopped sending the upload",
                ));
            }
            Ok(None) => break,
            Ok(Some(frame)) => frame,
        };
        let frame = frame.map_err(|_| ApiError::bad_request("the upload was interrupted"))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            discard(body, DISCARD_MAX_BYTES, DISCARD_MAX_TIME).await;
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }

    let uploaded = state.control.upload(principal.tenant_id, &name, bytes).await?;
    let status = if uploaded.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(uploaded.meta.into())))
}

/// `GET /api/v1/components`: the tenant's components.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
) -> Result<Json<Vec<ComponentJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let components = state.control.components(principal.tenant_id).await?;
    Ok(Json(components.into_iter().map(Into::into).collect()))
}

/// `DELETE /api/v1/components/{digest}`: 204; 409 while deployed.
pub async fn remove(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    state.control.delete_component(principal.tenant_id, &digest).await?;
    Ok(StatusCode::NO_CONTENT)
}
