//! `GET /api/docs`: the OpenAPI 3.1 document of API v1. A test checks that
//! every route the server has is in it (and the other way round).

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/docs`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
