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
pub const RESERVED_PATHS: &[&str] = &["/api", "/health", "/ready", "/metrics", "/console"];

/// Spin's route syntax, for messages.
pub const ROUTE_SYNTAX: &str =
    "Spin's route syntax: `/path` for that path only, `/path/...` for it and everything below";

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
    #[error("`{0}` is reserved for the host (/api/, /health, /ready, /metrics, /console)")]
    Reserved(String),
    /// A `*`, which Spin's syntax gives no meaning.
    #[error(
        "`*` has no meaning in a route: `{0}/...` serves {0} and everything below it ({ROUTE_SYNTAX})"
    )]
    Glob(String),
    /// A `:name` segment (a route parameter), which WasmWiz does not match.
    #[error(
        "route parameters such as `{0}` are not supported: deploy the prefix (`/x/...`) and read \
         the path in the component ({ROUTE_SYNTAX})"
    )]
    Parameter(String),
    /// A `.` or `..` segment, which clients resolve before sending.
    #[error("a route may not contain `.` or `..` segments ({ROUTE_SYNTAX})")]
    DotSegment,
    /// A character that has no place in a path, or a bad `%` escape.
    #[error("a route may not contain `{0}` ({ROUTE_SYNTAX}; other characters percent-encoded)")]
    Unsupported(char),
    /// A percent-encoded `.`, `/`, `\`, NUL or other unreserved character.
    #[error(
        "a route may not contain `{0}`: an encoded `.`, `/` or `\\` could be decoded by a proxy \
         and reach another route, and an encoded letter, digit, `-`, `_` or `~` is written as \
         the character itself"
    )]
    EncodedCharacter(String),
    /// A grant that would take every route (`/...`), or one bound to a host.
    #[error("{0}")]
    NotGrantable(String),
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
    /// Parses a new route (Spin syntax) and an optional host, refusing
    /// characters the syntax gives no meaning, the reserved paths in
    /// [`RESERVED_PATHS`] and any in `extra_reserved` (such as a custom
    /// metrics path).
    pub fn parse(
        route: &str,
        host: Option<&str>,
        extra_reserved: &[&str],
    ) -> Result<Self, RouteError> {
        let pattern = Self::parse_unreserved(route, host)?;
        for reserved in RESERVED_PATHS.iter().chain(extra_reserved) {
            if pattern.claims(reserved) {
                return Err(RouteError::Reserved(route.to_string()));
            }
        }
        Ok(pattern)
    }

    /// Parses a new route like [`Self::parse`], without refusing reserved
    /// paths (for `wasmwiz run`, which has no API of its own to protect).
    pub fn parse_unreserved(route: &str, host: Option<&str>) -> Result<Self, RouteError> {
        let pattern = Self::parse_stored(route, host)?;
        check_syntax(&pattern.path)?;
        Ok(pattern)
    }

    /// Parses a route as the store holds it: one accepted before the
    /// syntax was checked as strictly (`/x/*`, a literal path then) is
    /// still served as it was.
    pub fn parse_stored(route: &str, host: Option<&str>) -> Result<Self, RouteError> {
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

/// Refuses what Spin's syntax gives no meaning in a route's path (the part
/// before any `/...`): `*`, `:name` segments, `.` and `..` segments, and
/// characters that have no place in a URL path unencoded.
fn check_syntax(path: &str) -> Result<(), RouteError> {
    for segment in path.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err(RouteError::DotSegment);
        }
        if segment.starts_with(':') {
            return Err(RouteError::Parameter(segment.to_string()));
        }
        let bytes = segment.as_bytes();
        for (i, c) in segment.char_indices() {
            let allowed = c.is_ascii_alphanumeric()
                || matches!(c, '-' | '.' | '_' | '~' | '!' | '$' | '&' | '\'' | '(' | ')')
                || matches!(c, '+' | ',' | ';' | '=' | ':' | '@');
            match c {
                '*' => {
                    let prefix = path.split('*').next().unwrap_or("").trim_end_matches('/');
                    return Err(RouteError::Glob(prefix.to_string()));
                }
                '%' => {
                    let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                    if !(hex(i + 1) && hex(i + 2)) {
                        return Err(RouteError::Unsupported('%'));
                    }
                    let byte = u8::from_str_radix(&segment[i + 1..i + 3], 16).unwrap_or(0);
                    // `%2e`, `%2f`, `%5c`: a dot segment or a separator in
                    // disguise, which a proxy in front may decode and so
                    // route elsewhere than this node does. An escaped
                    // unreserved character (`%41`) never matches: requests
                    // are matched with those decoded.
                    if matches!(byte, b'/' | b'\\') || is_unreserved(byte) || byte == 0 {
                        return Err(RouteError::EncodedCharacter(segment[i..i + 3].to_string()));
                    }
                }
                _ if !allowed => return Err(RouteError::Unsupported(c)),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether `byte` is an unreserved character of RFC 3986 (letters,
/// digits, `-`, `.`, `_`, `~`): escaping one changes nothing, so a request
/// path is matched with them decoded.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Why a request path was refused before routing (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("a `%` in the path is not followed by two hex digits")]
    BadEscape,
    /// An encoded `/`, `\` or NUL, or a literal `\`: a separator that
    /// proxies and servers read differently.
    #[error(
        "the path holds an encoded `/`, `\\` or NUL, or a `\\`, which proxies read differently"
    )]
    AmbiguousSeparator,
}

/// The path a request is routed by, as a normalising proxy or browser in
/// front of the node would see it: escaped unreserved characters decoded
/// (`%2e` is `.`, `%41` is `A`), runs of `/` merged, and `.` and `..`
/// segments resolved (never above the root) as RFC 3986 §5.2.4 says. A
/// path can then reach only the route it names once normalised: `/a/../b`
/// is `/b`, never `a`'s route. Refused: a malformed escape, an encoded `/`,
/// `\` or NUL, a literal `\`.
///
/// Borrowed, and one scan of the bytes, for the paths clients send.
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    let mut plain = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => plain = false,
            b'/' if matches!(bytes.get(i + 1), Some(b'/' | b'.')) => plain = false,
            _ => {}
        }
    }
    if plain {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    // Decode escaped unreserved characters; keep every other escape as it
    // came (its case too: `%C3%A9` and `%c3%a9` are for the route to name).
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::AmbiguousSeparator),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let Some(hex) = hex else { return Err(PathError::BadEscape) };
                let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("00"), 16)
                    .map_err(|_| PathError::BadEscape)?;
                if matches!(byte, b'/' | b'\\' | 0) {
                    return Err(PathError::AmbiguousSeparator);
                }
                if is_unreserved(byte) {
                    decoded.push(char::from(byte));
                } else {
                    decoded.push_str(&path[i..i + 3]);
                }
                i += 3;
            }
            _ => {
                // Copy up to the next byte of interest in one piece.
                let next = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\'))
                    .map_or(bytes.len(), |n| i + n);
                decoded.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    // Resolve the segments. A trailing `/`, `.` or `..` leaves the path
    // ending in `/` (a directory), as in RFC 3986.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut directory = false;
    for (n, segment) in segments.iter().enumerate() {
        directory = false;
        match *segment {
            "" if n != last => {} // `//`: merged
            "." => directory = true,
            ".." => {
                out.pop();
                directory = true;
            }
            other => out.push(other),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || directory || decoded.ends_with('/') && !normal.ends_with('/') {
        normal.push('/');
    }
    Ok(std::borrow::Cow::Owned(normal))
}

/// What a tenant may deploy inside.
///
/// Every tenant is granted `/<tenant-name>/...` (and, with a base domain,
/// the host `<tenant-name>.<base-domain>`) without asking; an operator
/// grants more. Grants of two tenants never overlap, so no tenant can
/// deploy a route that takes another's requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// Host-less routes at or below this pattern: `/shop/...` grants
    /// `/shop`, `/shop/cart` and `/shop/cart/...`; an exact `/about` grants
    /// that route alone.
    Path(RoutePattern),
    /// Every route bound to this host, whatever its path.
    Host(String),
}

impl Grant {
    /// A path grant: a host-less route, neither the root wildcard nor a
    /// reserved path.
    pub fn path(route: &str, extra_reserved: &[&str]) -> Result<Self, RouteError> {
        let pattern = RoutePattern::parse(route, None, extra_reserved)?;
        if pattern.wildcard && pattern.path.is_empty() {
            return Err(RouteError::NotGrantable(
                "`/...` takes every path of every tenant and is granted to no one".into(),
            ));
        }
        Ok(Grant::Path(pattern))
    }

    /// A host grant.
    pub fn host(host: &str) -> Result<Self, RouteError> {
        normalize_host(host).map(Grant::Host)
    }

    /// What every tenant may use without asking: `/<tenant>/...`, and
    /// `<tenant>.<base_domain>` when there is a base domain.
    pub fn defaults(tenant: &str, base_domain: Option<&str>) -> Vec<Grant> {
        let mut defaults = vec![Grant::Path(RoutePattern {
            host: None,
            path: format!("/{tenant}"),
            wildcard: true,
        })];
        if let Some(base) = base_domain {
            defaults.push(Grant::Host(format!("{tenant}.{base}")));
        }
        defaults
    }

    /// Whether `route` is inside this grant.
    pub fn covers(&self, route: &RoutePattern) -> bool {
        match self {
            Grant::Host(host) => route.host.as_deref() == Some(host.as_str()),
            Grant::Path(grant) => route.host.is_none() && grant.contains(route),
        }
    }

    /// Whether a route could be inside both grants (they may not belong to
    /// two tenants).
    pub fn overlaps(&self, other: &Grant) -> bool {
        match (self, other) {
            (Grant::Host(a), Grant::Host(b)) => a == b,
            (Grant::Path(a), Grant::Path(b)) => a.contains(b) || b.contains(a),
            _ => false,
        }
    }
}

/// Why `tenant`, holding `grants` (its defaults among them), may not deploy
/// `route`, naming what it may use: the store's refusal, and the CLI's
/// before an upload.
pub fn not_granted(tenant: &str, grants: &[Grant], route: &RoutePattern) -> String {
    let list = grants.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let place = match route.host() {
        Some(host) => format!("{route} on host {host}"),
        None => route.to_string(),
    };
    format!(
        "tenant {tenant} may deploy only inside what it is granted ({list}); {place} is not \
         (an operator grants more with `wasmwiz admin tenant grant`)"
    )
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Path(pattern) => write!(f, "{pattern}"),
            Grant::Host(host) => write!(f, "host {host}"),
        }
    }
}

impl RoutePattern {
    /// Whether every path `other` serves is one this pattern serves (the
    /// host aside).
    fn contains(&self, other: &RoutePattern) -> bool {
        if self.wildcard {
            self.matches_path(&other.path)
        } else {
            !other.wildcard && self.path == other.path
        }
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

/// Who a route or a host belongs to (a tenant's id): on a host one tenant
/// holds, no other tenant's routes answer.
pub type Owner = i64;

/// A value of the table and who its route belongs to.
#[derive(Debug)]
struct Entry<T> {
    value: T,
    owner: Option<Owner>,
}

#[derive(Debug)]
struct PathTable<T> {
    exact: HashMap<Box<str>, Entry<T>>,
    /// Keyed by the wildcard's prefix (`""` for `/...`).
    prefix: HashMap<Box<str>, Entry<T>>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self { exact: HashMap::new(), prefix: HashMap::new() }
    }
}

impl<T> PathTable<T> {
    fn lookup(&self, path: &str) -> Option<&Entry<T>> {
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
///
/// A host may be held by one owner (a tenant granted it): a request for
/// that host reaches only that owner's routes, bound to the host or not.
/// Another tenant's host-less routes answer there as if absent (`404`), so
/// no tenant's page is served on another tenant's origin, where that
/// tenant's script could read it.
#[derive(Debug)]
pub struct RouteTable<T> {
    by_host: HashMap<Box<str>, PathTable<T>>,
    any_host: PathTable<T>,
    /// Hosts held by an owner.
    host_owners: HashMap<Box<str>, Owner>,
    len: usize,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            by_host: HashMap::new(),
            any_host: PathTable::default(),
            host_owners: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `pattern` with no owner (`wasmwiz run`),
    /// returning the value it replaces.
    pub fn insert(&mut self, pattern: &RoutePattern, value: T) -> Option<T> {
        self.insert_owned(pattern, value, None)
    }

    /// Adds `value` under `pattern`, a route of `owner`, returning the
    /// value it replaces. A route bound to a host makes `owner` that
    /// host's holder.
    pub fn insert_owned(
        &mut self,
        pattern: &RoutePattern,
        value: T,
        owner: Option<Owner>,
    ) -> Option<T> {
        let table = match &pattern.host {
            Some(host) => {
                if let Some(owner) = owner {
                    self.host_owners.insert(host.as_str().into(), owner);
                }
                self.by_host.entry(host.as_str().into()).or_default()
            }
            None => &mut self.any_host,
        };
        let map = if pattern.wildcard { &mut table.prefix } else { &mut table.exact };
        let replaced = map.insert(pattern.path.as_str().into(), Entry { value, owner });
        if replaced.is_none() {
            self.len += 1;
        }
        replaced.map(|entry| entry.value)
    }

    /// Marks `host` (normalized) as held by `owner`: only its routes answer
    /// there, whether or not any is bound to the host.
    pub fn hold_host(&mut self, host: &str, owner: Owner) {
        self.host_owners.insert(host.into(), owner);
    }

    /// The value whose route is the most specific match for a request to
    /// `host` (already normalized by [`request_host`]) and `path`
    /// (normalized by [`normalize_path`]).
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&T> {
        if let Some(host) = host {
            if let Some(table) = self.by_host.get(host)
                && let Some(found) = table.lookup(path)
            {
                return Some(&found.value);
            }
            if let Some(holder) = self.host_owners.get(host) {
                return self
                    .any_host
                    .lookup(path)
                    .filter(|found| found.owner == Some(*holder))
                    .map(|found| &found.value);
            }
        }
        self.any_host.lookup(path).map(|found| &found.value)
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
    use std::borrow::Cow;

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
    fn characters_spin_gives_no_meaning_are_refused_with_the_syntax() {
        let err = RoutePattern::parse("/visits2/*", None, &[]).unwrap_err();
        assert_eq!(err, RouteError::Glob("/visits2".into()));
        assert!(err.to_string().contains("`/visits2/...` serves /visits2"), "{err}");
        assert!(matches!(
            RoutePattern::parse("/users/:id", None, &[]),
            Err(RouteError::Parameter(p)) if p == ":id"
        ));
        assert_eq!(RoutePattern::parse("/a/../b", None, &[]), Err(RouteError::DotSegment));
        assert_eq!(RoutePattern::parse("/a/./b", None, &[]), Err(RouteError::DotSegment));
        for bad in ["/a{b}", "/a<b", "/a|b", "/a^b", "/a\"b", "/é", "/a[0]"] {
            assert!(
                matches!(RoutePattern::parse(bad, None, &[]), Err(RouteError::Unsupported(_))),
                "{bad}"
            );
        }
        assert_eq!(RoutePattern::parse("/a%2", None, &[]), Err(RouteError::Unsupported('%')));
        for good in ["/a-b_c.d~e", "/v1.2/...", "/a%20b", "/x@y:z/...", "/a=b;c,d+e!f$g&h'(i)"] {
            assert!(RoutePattern::parse(good, None, &[]).is_ok(), "{good}");
        }
        // A route stored before these checks is still served as it was.
        assert!(RoutePattern::parse_stored("/visits2/*", None).is_ok());
    }

    fn grant(route: &str) -> Grant {
        Grant::path(route, &[]).unwrap()
    }

    #[test]
    fn a_grant_covers_the_routes_at_and_below_it() {
        let shop = grant("/shop/...");
        for inside in ["/shop", "/shop/...", "/shop/cart", "/shop/cart/..."] {
            assert!(shop.covers(&pattern(inside)), "{inside}");
        }
        for outside in ["/shopping", "/...", "/sho", "/other/shop"] {
            assert!(!shop.covers(&pattern(outside)), "{outside}");
        }
        let hosted = RoutePattern::parse("/shop", Some("x.example.com"), &[]).unwrap();
        assert!(!shop.covers(&hosted), "a path grant covers host-less routes only");
        let exact = grant("/about");
        assert!(exact.covers(&pattern("/about")));
        assert!(!exact.covers(&pattern("/about/...")));
        assert!(!exact.covers(&pattern("/about/x")));
        let host = Grant::host("Shop.Example.com").unwrap();
        assert!(host.covers(&RoutePattern::parse("/...", Some("shop.example.com"), &[]).unwrap()));
        assert!(!host.covers(&pattern("/x")));
        assert_eq!(host.to_string(), "host shop.example.com");
    }

    #[test]
    fn grants_overlap_when_a_route_could_be_inside_both() {
        assert!(grant("/shop/...").overlaps(&grant("/shop/cart")));
        assert!(grant("/shop/cart/...").overlaps(&grant("/shop/...")));
        assert!(grant("/shop").overlaps(&grant("/shop/...")));
        assert!(grant("/a").overlaps(&grant("/a")));
        assert!(!grant("/a").overlaps(&grant("/a/b")), "two exact routes own a path each");
        assert!(!grant("/shop/...").overlaps(&grant("/shopping/...")));
        assert!(!grant("/shop/...").overlaps(&Grant::host("shop.example.com").unwrap()));
        let defaults = Grant::defaults("acme", Some("edge.example.com"));
        assert_eq!(defaults[0].to_string(), "/acme/...");
        assert_eq!(defaults[1].to_string(), "host acme.edge.example.com");
        assert!(defaults[0].overlaps(&grant("/acme/shop")));
    }

    #[test]
    fn the_root_and_reserved_paths_are_granted_to_no_one() {
        assert!(matches!(Grant::path("/...", &[]), Err(RouteError::NotGrantable(_))));
        assert!(matches!(Grant::path("/api/...", &[]), Err(RouteError::Reserved(_))));
        assert!(matches!(Grant::path("/console", &[]), Err(RouteError::Reserved(_))));
        assert!(matches!(Grant::host("not a host"), Err(RouteError::BadHost(_))));
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
    fn request_paths_are_normalised_as_a_proxy_would() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        for (raw, normal) in [
            ("/a/b", "/a/b"),
            ("/", "/"),
            ("/a/../b/x", "/b/x"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E./b/", "/b/"),
            ("/a/./b", "/a/b"),
            ("/a//b", "/a/b"),
            ("//b/x", "/b/x"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/%61cme/x", "/acme/x"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a/.hidden/..x", "/a/.hidden/..x"),
            ("/a/", "/a/"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(normal), "{raw}");
            // Idempotent: what it gives is already normal.
            assert_eq!(n(normal).as_deref(), Ok(normal), "{normal}");
        }
        for raw in ["/a%2fb", "/a%2F..%2Fb", "/a%5cb", "/a\\b", "/a%00", "/a%zz", "/a%4"] {
            assert!(n(raw).is_err(), "{raw}");
        }
        assert!(matches!(normalize_path("/hello/world"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn routes_with_disguised_dots_or_separators_are_refused() {
        for route in ["/a/%2e%2e/b/...", "/a/%2E", "/a%2fb", "/a%5Cb", "/%61cme", "/a%00"] {
            assert!(
                matches!(
                    RoutePattern::parse(route, None, &[]),
                    Err(RouteError::EncodedCharacter(_))
                ),
                "{route}"
            );
        }
        assert!(RoutePattern::parse("/caf%C3%A9/...", None, &[]).is_ok());
    }

    #[test]
    fn a_held_host_reaches_only_its_holders_routes() {
        let mut t = RouteTable::new();
        t.insert_owned(&pattern("/a/..."), "a", Some(1));
        t.insert_owned(&pattern("/b/h"), "b", Some(2));
        t.insert_owned(&RoutePattern::parse("/", Some("a.test"), &[]).unwrap(), "a-root", Some(1));
        t.hold_host("b.test", 2);
        assert_eq!(t.lookup(Some("a.test"), "/"), Some(&"a-root"));
        assert_eq!(t.lookup(Some("a.test"), "/a/x"), Some(&"a"), "its own host-less route");
        assert_eq!(t.lookup(Some("a.test"), "/b/h"), None, "another tenant's route");
        assert_eq!(t.lookup(Some("b.test"), "/b/h"), Some(&"b"));
        assert_eq!(t.lookup(Some("b.test"), "/a/x"), None);
        // A host nobody holds serves every host-less route.
        assert_eq!(t.lookup(Some("shared.example"), "/b/h"), Some(&"b"));
        assert_eq!(t.lookup(None, "/a/x"), Some(&"a"));
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

/// Properties of the router, for any set of routes and requests drawn from
/// a small alphabet (so that routes collide, nest and share prefixes).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "c"]), 0..4)
            .prop_map(|segments| segments.iter().map(|s| format!("/{s}")).collect::<String>())
    }

    fn host() -> impl Strategy<Value = Option<&'static str>> {
        prop::sample::select(vec![None, Some("x.example"), Some("y.example")])
    }

    /// A route: a path (`/` alone only as the root wildcard) and whether
    /// it is a wildcard.
    fn route() -> impl Strategy<Value = (String, bool, Option<&'static str>)> {
        (path(), any::<bool>(), host()).prop_map(|(path, wildcard, host)| {
            let wildcard = wildcard || path.is_empty();
            (path, wildcard, host)
        })
    }

    fn spin((path, wildcard, _): &(String, bool, Option<&'static str>)) -> String {
        if *wildcard { format!("{path}/...") } else { path.clone() }
    }

    /// A request path: a route-like path, maybe with a trailing slash.
    fn request() -> impl Strategy<Value = (String, bool, Option<&'static str>)> {
        (path(), any::<bool>(), host())
    }

    /// The specification of a lookup, by brute force: among the routes of
    /// the request's host if any matches, else among the host-less ones,
    /// an exact route over a wildcard, and the longest wildcard.
    fn most_specific(
        patterns: &[(RoutePattern, usize)],
        host: Option<&str>,
        path: &str,
    ) -> Option<usize> {
        let best = |on_host: Option<&str>| {
            patterns
                .iter()
                .filter(|(p, _)| p.host() == on_host && p.matches_path(path))
                .max_by_key(|(p, _)| (!p.is_wildcard(), p.path.len()))
                .map(|(_, i)| *i)
        };
        host.and_then(|h| best(Some(h))).or_else(|| best(None))
    }

    /// A raw request path as a client or an attacker may send it: segments
    /// of names, dots, encoded dots, empty ones.
    fn raw_path() -> impl Strategy<Value = String> {
        let segment = prop::sample::select(vec![
            "a", "b", "ab", ".", "..", "%2e", "%2E%2e", ".%2e", "", "%61", "c",
        ]);
        (prop::collection::vec(segment, 0..7), any::<bool>()).prop_map(|(segments, slash)| {
            let mut path: String = segments.iter().map(|s| format!("/{s}")).collect();
            if slash || path.is_empty() {
                path.push('/');
            }
            path
        })
    }

    /// The reference: a stack of decoded segments, as RFC 3986 §5.2.4 and
    /// every normalising proxy resolve them.
    fn reference(raw: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        for segment in raw.split('/').skip(1) {
            let segment = segment.replace("%2e", ".").replace("%2E", ".").replace("%61", "a");
            match segment.as_str() {
                "" | "." => {}
                ".." => {
                    stack.pop();
                }
                other => stack.push(other.to_string()),
            }
        }
        stack
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// No request path reaches a route outside the prefix it names once
        /// normalised: the normal form has the reference's segments, and the
        /// route matched covers the normal form (so `/a/../b` never reaches
        /// `/a/...`).
        #[test]
        fn a_path_reaches_only_the_route_it_names_once_normalised(
            routes in prop::collection::vec(route(), 1..12),
            raw in raw_path(),
        ) {
            let normal = normalize_path(&raw).unwrap().into_owned();
            let segments: Vec<&str> = normal.split('/').skip(1).filter(|s| !s.is_empty()).collect();
            prop_assert_eq!(segments, reference(&raw), "{} -> {}", raw, normal);
            prop_assert!(!normal.contains("//") && !normal.contains("/./") && !normal.contains("/../"));
            prop_assert!(!normal.contains('%'), "{}", normal);
            let mut table = RouteTable::new();
            for r in &routes {
                let pattern = RoutePattern::parse(&spin(r), None, &[]).unwrap();
                table.insert(&pattern, pattern.clone());
            }
            if let Some(matched) = table.lookup(None, &normal) {
                prop_assert!(matched.matches_path(&normal), "{} matched {}", normal, matched);
            }
        }

        /// On a host a tenant holds, no other tenant's route answers, bound
        /// to the host or not.
        #[test]
        fn a_held_host_never_serves_another_tenants_route(
            routes in prop::collection::vec((route(), 0i64..3), 1..16),
            held in prop::collection::vec((host(), 0i64..3), 0..3),
            requests in prop::collection::vec(request(), 1..24),
        ) {
            let mut table = RouteTable::new();
            let mut holders: HashMap<&str, i64> = HashMap::new();
            for (host, owner) in &held {
                if let Some(host) = host {
                    holders.insert(host, *owner);
                }
            }
            for (r, owner) in &routes {
                // A host-bound route belongs to the host's holder.
                let owner = r.2.and_then(|h| holders.get(h).copied()).unwrap_or(*owner);
                if let Some(host) = r.2 {
                    holders.entry(host).or_insert(owner);
                }
                let pattern = RoutePattern::parse(&spin(r), r.2, &[]).unwrap();
                table.insert_owned(&pattern, owner, Some(owner));
            }
            for (host, owner) in &holders {
                table.hold_host(host, *owner);
            }
            for (path, slash, host) in &requests {
                let path = if *slash || path.is_empty() { format!("{path}/") } else { path.clone() };
                if let Some(holder) = host.and_then(|h| holders.get(h))
                    && let Some(owner) = table.lookup(*host, &path)
                {
                    prop_assert_eq!(owner, holder, "{} on {:?}", path, host);
                }
            }
        }

        /// The most specific route wins, for every request.
        #[test]
        fn the_most_specific_route_wins(
            routes in prop::collection::vec(route(), 1..12),
            requests in prop::collection::vec(request(), 1..24),
        ) {
            let mut table = RouteTable::new();
            let mut patterns: Vec<(RoutePattern, usize)> = Vec::new();
            for (i, r) in routes.iter().enumerate() {
                let pattern = RoutePattern::parse(&spin(r), r.2, &[]).unwrap();
                // A later route on the same pattern replaces the earlier.
                patterns.retain(|(p, _)| p != &pattern);
                patterns.push((pattern.clone(), i));
                table.insert(&pattern, i);
            }
            for (path, slash, host) in &requests {
                let path = if *slash || path.is_empty() { format!("{path}/") } else { path.clone() };
                prop_assert_eq!(
                    table.lookup(*host, &path).copied(),
                    most_specific(&patterns, *host, &path),
                    "{} on {:?}", path, host
                );
            }
        }

        /// Grants that do not overlap (what the store lets two tenants
        /// hold) never both cover a route: no route can be deployed by two
        /// tenants.
        #[test]
        fn no_route_is_inside_two_tenants_grants(
            a in prop::collection::vec(route(), 1..5),
            b in prop::collection::vec(route(), 1..5),
            routes in prop::collection::vec(route(), 1..24),
        ) {
            let grants = |routes: &[(String, bool, Option<&'static str>)]| -> Vec<Grant> {
                routes
                    .iter()
                    .filter_map(|r| match r.2 {
                        Some(host) => Grant::host(host).ok(),
                        None => Grant::path(&spin(r), &[]).ok(),
                    })
                    .collect()
            };
            let a = grants(&a);
            // B holds only what overlaps none of A's (as the store refuses).
            let b: Vec<Grant> =
                grants(&b).into_iter().filter(|g| !a.iter().any(|x| x.overlaps(g))).collect();
            for r in &routes {
                let pattern = RoutePattern::parse(&spin(r), r.2, &[]).unwrap();
                let in_a = a.iter().any(|g| g.covers(&pattern));
                let in_b = b.iter().any(|g| g.covers(&pattern));
                prop_assert!(!(in_a && in_b), "{} is inside both tenants' grants", pattern);
            }
        }

        /// A route one tenant deploys inside its grants never changes what
        /// a request to another tenant's route resolves to; except, by
        /// design, on a host granted to the deploying tenant, whose routes
        /// bound to it come before every tenant's host-less ones there.
        #[test]
        fn a_deployment_never_changes_what_another_tenants_route_matches(
            a_grants in prop::collection::vec(route(), 1..4),
            b_grant in route(),
            a_routes in prop::collection::vec(route(), 1..10),
            (b_below, b_wildcard) in (path(), any::<bool>()),
            requests in prop::collection::vec(request(), 1..24),
        ) {
            let to_grant = |r: &(String, bool, Option<&'static str>)| match r.2 {
                Some(host) => Grant::host(host).ok(),
                None => Grant::path(&spin(r), &[]).ok(),
            };
            let Some(b) = to_grant(&b_grant) else { return Ok(()) };
            // A holds only what does not overlap B's grant (the store
            // refuses the rest).
            let a: Vec<Grant> = a_grants
                .iter()
                .filter_map(to_grant)
                .filter(|g| !g.overlaps(&b))
                .collect();
            // B's route, inside its grant by construction.
            let b_pattern = match &b {
                Grant::Host(host) => {
                    let route = if b_wildcard || b_below.is_empty() {
                        format!("{b_below}/...")
                    } else {
                        b_below.clone()
                    };
                    RoutePattern::parse(&route, Some(host), &[]).unwrap()
                }
                Grant::Path(grant) if grant.is_wildcard() => {
                    let path = format!("{}{b_below}", grant.path);
                    let route = if b_wildcard || path.is_empty() { format!("{path}/...") } else { path };
                    RoutePattern::parse(&route, None, &[]).unwrap()
                }
                Grant::Path(grant) => grant.clone(),
            };
            prop_assert!(b.covers(&b_pattern), "{} outside {}", b_pattern, b);
            let mut before = RouteTable::new();
            for r in &a_routes {
                let pattern = RoutePattern::parse(&spin(r), r.2, &[]).unwrap();
                if a.iter().any(|g| g.covers(&pattern)) {
                    before.insert(&pattern, spin(r) + r.2.unwrap_or(""));
                }
            }
            let mut after = RouteTable::new();
            for r in &a_routes {
                let pattern = RoutePattern::parse(&spin(r), r.2, &[]).unwrap();
                if a.iter().any(|g| g.covers(&pattern)) {
                    after.insert(&pattern, spin(r) + r.2.unwrap_or(""));
                }
            }
            after.insert(&b_pattern, "B".to_string());
            for (path, slash, host) in &requests {
                if matches!((&b, host), (Grant::Host(owned), Some(h)) if owned == h) {
                    continue;
                }
                let path = if *slash || path.is_empty() { format!("{path}/") } else { path.clone() };
                if let Some(a_target) = before.lookup(*host, &path) {
                    prop_assert_eq!(
                        after.lookup(*host, &path), Some(a_target),
                        "B's {} took {} on {:?}", b_pattern, path, host
                    );
                }
            }
        }
    }
}
