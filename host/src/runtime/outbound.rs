//! What a guest's outgoing HTTP requests (`wasi:http/outgoing-handler`) may
//! reach: only the deployment's `allowed_outbound_hosts`, deny by default.

use std::sync::Arc;

/// One entry of `allowed_outbound_hosts`: `[scheme://]host[:port]`, where
/// `host` may start with `*.` to allow every subdomain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Option<String>,
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{text}` is not an outbound host pattern: {why}");
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if scheme != "http" && scheme != "https" {
                    return Err(bad("the scheme must be http or https"));
                }
                (Some(scheme), rest)
            }
            None => (None, text),
        };
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad("give a host, not a URL with a path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?;
                (host, Some(port))
            }
            None => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name.to_string()),
            None => (false, host),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(bad("the host is not a valid DNS name"));
        }
        Ok(Self {
            scheme,
            host: name,
            wildcard,
            port,
        })
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let default_port = if scheme == "https" { 443 } else { 80 };
        if self.port.unwrap_or(default_port) != port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.strip_suffix(&self.host)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
        } else {
            host == self.host
        }
    }
}

/// A deployment's outbound policy.
#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[HostPattern]>,
}

impl OutboundPolicy {
    /// Checks one `allowed_outbound_hosts` entry.
    pub fn check_pattern(text: &str) -> Result<(), String> {
        HostPattern::parse(text).map(|_| ())
    }

    /// The policy for a list of patterns (already checked at deploy time;
    /// an entry that does not parse allows nothing).
    pub fn new(patterns: &[String]) -> Self {
        Self {
            allowed: patterns
                .iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .collect(),
        }
    }

    /// Whether any outbound request is allowed at all.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether `scheme://host:port` is on the list.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|p| p.matches(scheme, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let p = HostPattern::parse("api.example.com").unwrap();
        assert!(p.matches("https", "api.example.com", 443));
        assert!(p.matches("http", "API.example.com.", 80));
        assert!(!p.matches("https", "api.example.com", 8443));
        assert!(!p.matches("https", "evil.com", 443));

        let p = HostPattern::parse("https://*.example.com:8443").unwrap();
        assert!(p.matches("https", "a.example.com", 8443));
        assert!(p.matches("https", "a.b.example.com", 8443));
        assert!(!p.matches("https", "example.com", 8443));
        assert!(!p.matches("https", "badexample.com", 8443));
        assert!(!p.matches("http", "a.example.com", 8443));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "",
            "ftp://x.com",
            "x.com/path",
            "user@x.com",
            "x.com:port",
            "*.",
            "a..b",
            "*",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
