//! Route matching: Spin's route syntax, pure logic, no I/O.
//!
//! A route is `/hello` (that path only) or `/hello/...` (`/hello` and
//! everything below it), optionally bound to one `Host`. The most specific
//! match wins: a host route over a host-less one, exact over wildcard, a
//! longer prefix over a shorter one.
//!
//! A [`RouteTable`] answers a lookup with at most one hash probe per path
//! segment, so its cost does not grow with the number of routes: the table
//! is built once per change and then only read (see `ArcSwap` in the users).

use std::collections::HashMap;
use std::fmt;

/// Paths the host answers itself; no deployment may claim them.
pub const RESERVED_PATHS: &[&str] = &["/api", "/health", "/ready", "/metrics"];

/// Longest route pattern accepted.
const MAX_ROUTE_LENGTH: usize = 1024;

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The pattern does not start with `/`.
    #[error("a route must start with `/`, got `{0}`")]
    NoLeadingSlash(String),
    /// The pattern is longer than [`MAX_ROUTE_LENGTH`].
    #[error("a route may be at most {MAX_ROUTE_LENGTH} bytes long")]
    TooLong,
    /// The pattern holds a character that cannot be part of a path.
    #[error("a route may not contain `{0}`")]
    BadCharacter(char),
    /// `...` appears somewhere other than as the last segment.
    #[error("`...` may only end a route, as in `/hello/...`")]
    MisplacedWildcard,
    /// The pattern has an empty segment (`//`).
    #[error("a route may not contain an empty segment (`//`)")]
    EmptySegment,
    /// The pattern overlaps a path the host answers itself.
    #[error("`{0}` is reserved for the host (/api/, /health, /ready, /metrics)")]
    Reserved(String),
    /// The host name is not a valid DNS name.
    #[error("`{0}` is not a valid host name")]
    BadHost(String),
}

/// A parsed route pattern: an optional host, a path, and whether the path is
/// a wildcard prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutePattern {
    host: Option<String>,
    /// For a wildcard, the prefix without `/...` (`""` for the root).
    path: String,
    wildcard: bool,
}

impl RoutePattern {
    /// Parses `route` (Spin syntax) and an optional host, refusing the
    /// reserved paths in [`RESERVED_PATHS`] and any in `extra_reserved`
    /// (such as a custom metrics path).
    pub fn parse(
        route: &str,
        host: Option<&str>,
        extra_reserved: &[&str],
    ) -> Result<Self, RouteError> {
        let pattern = Self::parse_any(route, host)?;
        for reserved in RESERVED_PATHS.iter().chain(extra_reserved) {
            if pattern.claims(reserved) {
                return Err(RouteError::Reserved(route.to_string()));
            }
        }
        Ok(pattern)
    }

    /// Parses `route` and an optional host without refusing reserved paths
    /// (for `wasmwiz run`, which has no API of its own to protect).
    pub fn parse_any(route: &str, host: Option<&str>) -> Result<Self, RouteError> {
        if !route.starts_with('/') {
            return Err(RouteError::NoLeadingSlash(route.to_string()));
        }
        if route.len() > MAX_ROUTE_LENGTH {
            return Err(RouteError::TooLong);
        }
        if let Some(bad) = route
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
        {
            return Err(RouteError::BadCharacter(bad));
        }
        let (path, wildcard) = match route.strip_suffix("/...") {
            Some(prefix) => (prefix, true),
            None => (route, false),
        };
        if path.contains("...") {
            return Err(RouteError::MisplacedWildcard);
        }
        if path.contains("//") {
            return Err(RouteError::EmptySegment);
        }
        Ok(RoutePattern {
            host: host.map(normalize_host).transpose()?,
            path: path.to_string(),
            wildcard,
        })
    }

    /// Whether this pattern would take requests for `reserved` or below it
    /// away from the host.
    fn claims(&self, reserved: &str) -> bool {
        let reserved = reserved.trim_end_matches('/');
        let under = |path: &str| {
            path == reserved
                || path.strip_prefix(reserved).is_some_and(|rest| rest.starts_with('/'))
        };
        // `/api/...`, `/health`, `/metrics/x`: inside a reserved area. The
        // root wildcard is fine: reserved paths are dispatched before routes.
        under(&self.path) && !self.path.is_empty()
    }

    /// The host this route is bound to, if any (lower case, no port).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Whether this is a wildcard (`/...`) route.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether deploying this pattern would take requests away from
    /// `existing`: same host, and `existing` is a wildcard that covers this
    /// pattern's path, which would become the more specific match. (The
    /// reverse, a wildcard around a more specific route, takes nothing: the
    /// more specific route still wins its paths.)
    pub fn would_take_from(&self, existing: &RoutePattern) -> bool {
        self.host == existing.host && existing.wildcard && existing.matches_path(&self.path)
    }

    /// Whether `path` would be served by this pattern (ignoring the host).
    pub fn matches_path(&self, path: &str) -> bool {
        if !self.wildcard {
            return path == self.path;
        }
        self.path.is_empty()
            || path == self.path
            || path.strip_prefix(self.path.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for RoutePattern {
    /// The route in Spin syntax, as a user wrote it (`/hello/...`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard { write!(f, "{}/...", self.path) } else { f.write_str(&self.path) }
    }
}

/// Lower-cases a host name and checks it is a plausible DNS name.
fn normalize_host(host: &str) -> Result<String, RouteError> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid { Ok(host) } else { Err(RouteError::BadHost(host)) }
}

/// The host part of a request's authority or `Host` header, normalized the
/// way [`RoutePattern`] stores hosts: lower case, no port, no trailing dot.
pub fn request_host(authority: &str) -> String {
    let without_port = if authority.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        authority.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        authority.split(':').next().unwrap_or("")
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug)]
struct PathTable<T> {
    exact: HashMap<Box<str>, T>,
    /// Keyed by the wildcard's prefix (`""` for `/...`).
    prefix: HashMap<Box<str>, T>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), prefix: HashMap::new() }
    }
}

impl<T> PathTable<T> {
    fn lookup(&self, path: &str) -> Option<&T> {
        if let Some(found) = self.exact.get(path) {
            return Some(found);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Try the path itself, then cut one segment at a time: `/a/b/c`,
        // `/a/b`, `/a`, and finally `` (the root wildcard).
        let mut candidate = path;
        loop {
            if let Some(found) = self.prefix.get(candidate) {
                return Some(found);
            }
            match candidate.rfind('/') {
                Some(cut) => candidate = &candidate[..cut],
                None => return None,
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty()
    }
}

/// An immutable-once-built map from route patterns to values.
#[derive(Debug)]
pub struct RouteTable<T> {
    by_host: HashMap<Box<str>, PathTable<T>>,
    any_host: PathTable<T>,
    len: usize,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self { by_host: HashMap::new(), any_host: PathTable::default(), len: 0 }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `pattern`, returning the value it replaces.
    pub fn insert(&mut self, pattern: &RoutePattern, value: T) -> Option<T> {
        let table = match &pattern.host {
            Some(host) => self.by_host.entry(host.as_str().into()).or_default(),
            None => &mut self.any_host,
        };
        let map = if pattern.wildcard { &mut table.prefix } else { &mut table.exact };
        let replaced = map.insert(pattern.path.as_str().into(), value);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// The value whose route is the most specific match for a request to
    /// `host` (already normalized by [`request_host`]) and `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&T> {
        if let Some(table) = host.and_then(|h| self.by_host.get(h))
            && let Some(found) = table.lookup(path)
        {
            return Some(found);
        }
        self.any_host.lookup(path)
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.any_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(route: &str) -> RoutePattern {
        RoutePattern::parse(route, None, &[]).unwrap()
    }

    fn table(routes: &[(&str, Option<&str>)]) -> RouteTable<String> {
        let mut table = RouteTable::new();
        for (route, host) in routes {
            let p = RoutePattern::parse(route, *host, &[]).unwrap();
            let name = match host {
                Some(h) => format!("{h}{route}"),
                None => route.to_string(),
            };
            table.insert(&p, name);
        }
        table
    }

    #[test]
    fn exact_route_matches_only_its_path() {
        let t = table(&[("/hello", None)]);
        assert_eq!(t.lookup(None, "/hello").map(String::as_str), Some("/hello"));
        assert_eq!(t.lookup(None, "/hello/"), None);
        assert_eq!(t.lookup(None, "/hello/x"), None);
        assert_eq!(t.lookup(None, "/hellox"), None);
    }

    #[test]
    fn wildcard_matches_itself_and_below_but_not_siblings() {
        let t = table(&[("/hello/...", None)]);
        for path in ["/hello", "/hello/", "/hello/world", "/hello/a/b/c"] {
            assert_eq!(t.lookup(None, path).map(String::as_str), Some("/hello/..."), "{path}");
        }
        assert_eq!(t.lookup(None, "/helloworld"), None);
        assert_eq!(t.lookup(None, "/"), None);
    }

    #[test]
    fn root_wildcard_matches_everything() {
        let t = table(&[("/...", None)]);
        for path in ["/", "/x", "/a/b", ""] {
            assert_eq!(t.lookup(None, path).map(String::as_str), Some("/..."), "{path}");
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let t = table(&[
            ("/...", None),
            ("/a/...", None),
            ("/a/b/...", None),
            ("/a/b", None),
            ("/a/...", Some("api.example.com")),
        ]);
        let get = |host, path| t.lookup(host, path).map(String::as_str);
        assert_eq!(get(None, "/a/b"), Some("/a/b"), "exact beats wildcard");
        assert_eq!(get(None, "/a/b/c"), Some("/a/b/..."), "longer prefix wins");
        assert_eq!(get(None, "/a/x"), Some("/a/..."));
        assert_eq!(get(None, "/z"), Some("/..."));
        assert_eq!(
            get(Some("api.example.com"), "/a/b"),
            Some("api.example.com/a/..."),
            "a host route beats a host-less one, even an exact one"
        );
        assert_eq!(
            get(Some("api.example.com"), "/z"),
            Some("/..."),
            "no host match falls back to host-less routes"
        );
        assert_eq!(get(Some("other.example.com"), "/a/b"), Some("/a/b"));
    }

    #[test]
    fn reserved_paths_are_refused() {
        for route in [
            "/api",
            "/api/...",
            "/api/v1/x",
            "/health",
            "/ready",
            "/metrics",
            "/metrics/...",
            "/health/...",
        ] {
            assert!(
                matches!(RoutePattern::parse(route, None, &[]), Err(RouteError::Reserved(_))),
                "{route} should be reserved"
            );
        }
        for route in ["/apis", "/healthz", "/...", "/readyness/..."] {
            assert!(RoutePattern::parse(route, None, &[]).is_ok(), "{route} should be allowed");
        }
        assert!(matches!(
            RoutePattern::parse("/internal/metrics", None, &["/internal/metrics"]),
            Err(RouteError::Reserved(_))
        ));
    }

    #[test]
    fn malformed_routes_are_refused() {
        assert!(matches!(
            RoutePattern::parse("hello", None, &[]),
            Err(RouteError::NoLeadingSlash(_))
        ));
        assert!(matches!(
            RoutePattern::parse("/a/.../b", None, &[]),
            Err(RouteError::MisplacedWildcard)
        ));
        assert!(matches!(RoutePattern::parse("/a//b", None, &[]), Err(RouteError::EmptySegment)));
        assert!(matches!(
            RoutePattern::parse("/a b", None, &[]),
            Err(RouteError::BadCharacter(' '))
        ));
        assert!(matches!(
            RoutePattern::parse("/a?b", None, &[]),
            Err(RouteError::BadCharacter('?'))
        ));
        let long = format!("/{}", "a".repeat(2000));
        assert!(matches!(RoutePattern::parse(&long, None, &[]), Err(RouteError::TooLong)));
        assert!(matches!(
            RoutePattern::parse("/a", Some("bad host"), &[]),
            Err(RouteError::BadHost(_))
        ));
    }

    #[test]
    fn patterns_print_in_spin_syntax() {
        assert_eq!(pattern("/hello/...").to_string(), "/hello/...");
        assert_eq!(pattern("/...").to_string(), "/...");
        assert_eq!(pattern("/hello").to_string(), "/hello");
        assert!(pattern("/hello/...").matches_path("/hello/x"));
        assert!(!pattern("/hello/...").matches_path("/hellox"));
    }

    #[test]
    fn a_route_inside_a_wildcard_would_take_from_it() {
        let wild = pattern("/a/...");
        assert!(pattern("/a").would_take_from(&wild), "exact at the wildcard's root");
        assert!(pattern("/a/b").would_take_from(&wild));
        assert!(pattern("/a/b/...").would_take_from(&wild));
        assert!(pattern("/a/...").would_take_from(&wild), "the same wildcard");
        assert!(!pattern("/ab").would_take_from(&wild));
        assert!(!pattern("/...").would_take_from(&wild), "a wider wildcard takes nothing");
        assert!(!pattern("/a/b").would_take_from(&pattern("/a")), "exact routes own one path");
        assert!(pattern("/x").would_take_from(&pattern("/...")), "everything is under the root");
        let hosted = RoutePattern::parse("/a/b", Some("h.example"), &[]).unwrap();
        assert!(!hosted.would_take_from(&wild), "different hosts never overlap");
    }

    #[test]
    fn request_hosts_are_normalized() {
        assert_eq!(request_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(request_host("example.com."), "example.com");
        assert_eq!(request_host("[::1]:80"), "::1");
        let p = RoutePattern::parse("/x", Some("API.example.COM."), &[]).unwrap();
        assert_eq!(p.host(), Some("api.example.com"));
    }

    #[test]
    fn replacing_a_route_keeps_the_count() {
        let mut t = RouteTable::new();
        assert!(t.insert(&pattern("/a"), 1).is_none());
        assert_eq!(t.insert(&pattern("/a"), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(None, "/a"), Some(&2));
    }

    #[test]
    fn ten_thousand_routes_resolve_by_prefix() {
        let mut t = RouteTable::new();
        for i in 0..10_000 {
            t.insert(&pattern(&format!("/r{i}/...")), i);
        }
        assert_eq!(t.lookup(None, "/r9999/x/y"), Some(&9999));
        assert_eq!(t.lookup(None, "/r10000"), None);
    }
}
