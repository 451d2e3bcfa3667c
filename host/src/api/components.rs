//! `/api/v1/components`: uploads (streamed, capped, validated, compiled),
//! listing and deletion.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
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

/// How an upload's body is encoded.
enum Encoding {
    Identity,
    Gzip,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim()) {
        None | Some("identity") => Ok(Encoding::Identity),
        Some(value) if value.eq_ignore_ascii_case("gzip") => Ok(Encoding::Gzip),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "Content-Encoding `{other}` is not supported: send the bytes as they are, or gzip"
            ),
        )),
    }
}

/// The component inside a gzip upload, refused (413) once it grows past
/// `limit`: a small bomb cannot make the node hold more than that.
async fn gunzip(compressed: Vec<u8>, limit: u64) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ApiError::bad_request(format!("the upload is not valid gzip: {e}")))?;
        if bytes.len() as u64 > limit {
            return Err(too_large(limit));
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| ApiError::internal(&e.to_string()))?
}

/// `POST /api/v1/components?name=N`: 201 new, 200 already uploaded; the
/// body may be gzipped (`Content-Encoding: gzip`), the limit applying to
/// the component, not to what is sent.
pub async fn upload(
    State(state): State<Arc<ApiState>>,
    principal: Principal,
    super::ApiQuery(query): super::ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ComponentJson>), ApiError> {
    require(&principal, Scope::Deploy)?;
    let name = query.name.unwrap_or_else(|| "component".to_string());
    // A bad name is refused before the size is looked at or a byte read.
    crate::control::service::check_component_name(&name)?;
    // The bytes are recognised by their magic number, whatever the
    // Content-Type says (curl's --data-binary sends a form type).
    let limits = state.control.tier_limits(&principal.tier).await?;
    let limit = limits.max_component_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A place among the tenant's uploads in flight (each is held in memory
    // until compiled), and room in what it may keep, before a byte is read.
    let _place = state.control.start_upload(principal.tenant_id, &limits)?;
    state.control.check_storage(principal.tenant_id, &limits, 0, false).await?;
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

    let bytes = match content_encoding(&headers)? {
        Encoding::Identity => bytes,
        Encoding::Gzip => gunzip(bytes, limit).await?,
    };
    let uploaded = state.control.upload(principal.tenant_id, &name, bytes, Some(&limits)).await?;
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
