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

#[cfg(test)]
mod tests {
    use crate::tenancy::LIMITS;

    /// The document's tier schemas say what [`LIMITS`] says: the same
    /// limits, each with its range, nullable where it may be lifted.
    #[test]
    fn the_tier_schemas_follow_the_limits_description() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        for (schema, put) in [("TierLimits", false), ("PutTier", true)] {
            let properties = doc["components"]["schemas"][schema]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{schema} has properties"));
            let documented: std::collections::BTreeSet<&str> =
                properties.keys().map(String::as_str).collect();
            let described: std::collections::BTreeSet<&str> =
                LIMITS.iter().map(|spec| spec.name).collect();
            assert_eq!(documented, described, "{schema}: the limits LIMITS describes");
            for spec in LIMITS {
                let property = &properties[spec.name];
                assert_eq!(property["minimum"].as_u64(), Some(spec.min), "{schema}.{}", spec.name);
                assert_eq!(property["maximum"].as_u64(), Some(spec.max), "{schema}.{}", spec.name);
                let null = property["type"].as_array().is_some_and(|t| t.contains(&"null".into()));
                assert_eq!(null, spec.nullable() || put, "{schema}.{}: null", spec.name);
            }
        }
    }
}
