//! `/api/v1/components`: uploads (streamed, capped, validated, compiled),
//! listing and deletion.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};

use super::{ApiError, require, rfc3339};
use crate::auth::{Principal, Scope};
use crate::node::Node;
use crate::runtime::body::{DISCARD_MAX_BYTES, DISCARD_MAX_TIME, discard};
use crate::runtime::expects_continue;
use crate::store::{ComponentDeletion, ComponentMeta};

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
    State(node): State<Arc<Node>>,
    principal: Principal,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ComponentJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let name = query.name.unwrap_or_else(|| "component".to_string());
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("`name` must be 1 to 128 printable characters"));
    }
    // The bytes are recognised by their magic number, whatever the
    // Content-Type says (curl's --data-binary sends a form type).
    let tier = node
        .tier(&principal.tier)
        .ok_or_else(|| ApiError::internal(&format!("tier {} is not loaded", principal.tier)))?;
    let limit = tier.limits.max_component_bytes;
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
        let frame = match tokio::time::timeout(node.body_read_timeout, body.frame()).await {
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

    let uploaded = node.upload(principal.tenant_id, &name, bytes).await?;
    let status = if uploaded.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(uploaded.meta.into())))
}

/// `GET /api/v1/components`: the tenant's components.
pub async fn list(
    State(node): State<Arc<Node>>,
    principal: Principal,
) -> Result<Json<Vec<ComponentJson>>, ApiError> {
    require(&principal, Scope::Read)?;
    let components = node.store.components(principal.tenant_id).await?;
    Ok(Json(components.into_iter().map(Into::into).collect()))
}

/// `DELETE /api/v1/components/{digest}`: 204; 409 while deployed.
pub async fn remove(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&principal, Scope::Deploy)?;
    match node.store.delete_component(principal.tenant_id, &digest).await? {
        ComponentDeletion::Deleted => Ok(StatusCode::NO_CONTENT),
        ComponentDeletion::NotFound => Err(ApiError::not_found("component")),
        ComponentDeletion::InUse => Err(ApiError::new(
            StatusCode::CONFLICT,
            "component_in_use",
            "a deployment uses this component (or may roll back to it); delete the deployment first",
        )),
    }
}
