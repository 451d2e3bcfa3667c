//! `GET /api/docs`: the OpenAPI 3.1 document of API v1. Tests check that
//! every operation the router has is in it and in README's API table, and
//! that every operation they name is one the router has.

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
    use std::collections::BTreeSet;

    use crate::tenancy::LIMITS;

    /// Every `(method, path)` the API's router has, read from its source
    /// (`.route("PATH", get(..).post(..))`, one per line), with the front
    /// door's `/health` and `/ready`.
    fn router_operations() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let mut operations = BTreeSet::new();
        for line in source.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(".route(\"") else { continue };
            let path = rest.split('"').next().unwrap();
            let handlers = &rest[path.len()..];
            for method in ["get", "post", "put", "patch", "delete"] {
                if handlers.contains(&format!(" {method}("))
                    || handlers.contains(&format!(".{method}("))
                {
                    operations.insert((method.to_string(), path.to_string()));
                }
            }
        }
        assert!(operations.len() > 20, "the router's routes are read: {operations:?}");
        for path in ["/health", "/ready"] {
            operations.insert(("get".into(), path.into()));
        }
        operations
    }

    #[test]
    fn the_document_has_every_operation_of_the_router_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let routed = router_operations();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routed but not in openapi.json: {undocumented:?}");
        assert!(unrouted.is_empty(), "in openapi.json but not routed: {unrouted:?}");
    }

    #[test]
    fn readmes_api_table_names_every_route_and_only_routes() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("## The API").expect("README has The API");
        let table = &readme[start..];
        let table = &table[..table[3..].find("\n## ").map_or(table.len(), |end| end + 3)];
        let routed: BTreeSet<String> = router_operations()
            .into_iter()
            .filter_map(|(_, path)| path.strip_prefix("/api/v1").map(str::to_string))
            .collect();
        // Paths as the table writes them: `METHOD /path` (a query after `?`).
        let named: BTreeSet<String> = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .flat_map(|method| {
                let opening = format!("`{method} /");
                table
                    .match_indices(&opening)
                    .map(|(at, _)| {
                        let path = &table[at + opening.len() - 1..];
                        path[..path.find(['`', '?', ' ']).unwrap()].to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let missing: Vec<_> = routed.difference(&named).collect();
        assert!(missing.is_empty(), "README's API table does not name {missing:?}");
        let routed: BTreeSet<String> = routed.into_iter().chain(["/api/docs".into()]).collect();
        let unknown: Vec<_> = named.difference(&routed).collect();
        assert!(unknown.is_empty(), "README's API table names paths no route has: {unknown:?}");
    }

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
