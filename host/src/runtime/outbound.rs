//! What a guest's outgoing HTTP requests (`wasi:http/outgoing-handler`) may
//! reach: only the deployment's `allowed_outbound_hosts`, deny by default;
//! and never the operator's own network (loopback, private, link-local,
//! unspecified, ... addresses) unless the operator allows it, checked on
//! the address a name resolves to, at connect time, so a permitted name
//! that resolves to 127.0.0.1 or 10.0.0.5 is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Defaults of [`OutboundSettings`].
pub mod defaults {
    use std::time::Duration;

    /// Outgoing requests one invocation may make.
    pub const MAX_REQUESTS: u32 = 16;
    /// Time to connect (and finish TLS) unless the guest asks for less.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Time to the first response byte unless the guest asks for less.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// What kind of network an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Reachable on the Internet.
    Public,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 and unique-local (`fc00::/7`) and site-local (`fec0::/10`).
    Private,
    /// `100.64.0.0/10`: carrier-grade NAT, shared address space.
    SharedAddressSpace,
    /// `169.254.0.0/16`, `fe80::/10`: includes cloud metadata services.
    LinkLocal,
    /// Multicast and broadcast.
    Multicast,
    /// Documentation, benchmarking, protocol assignments, reserved ranges.
    Reserved,
}

/// Classifies an address; IPv4-mapped, NAT64 and 6to4 IPv6 addresses are
/// classified by the IPv4 address inside them.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    let table: &[([u8; 4], u32, AddressClass)] = &[
        ([0, 0, 0, 0], 8, Unspecified),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedAddressSpace),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, Reserved),   // IETF protocol assignments
        ([192, 0, 2, 0], 24, Reserved),   // TEST-NET-1
        ([192, 88, 99, 0], 24, Reserved), // 6to4 relay anycast
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Reserved),   // benchmarking
        ([198, 51, 100, 0], 24, Reserved), // TEST-NET-2
        ([203, 0, 113, 0], 24, Reserved),  // TEST-NET-3
        ([224, 0, 0, 0], 4, Multicast),
        ([255, 255, 255, 255], 32, Multicast), // broadcast
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map_or(Public, |(_, _, class)| *class)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    if ip.is_unspecified() {
        return Unspecified;
    }
    if ip.is_loopback() {
        return Loopback;
    }
    let embedded_v4 = |ip: Ipv6Addr, from: usize| {
        let o = ip.octets();
        Ipv4Addr::new(o[from], o[from + 1], o[from + 2], o[from + 3])
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if in_v6(ip, [0, 0, 0, 0, 0, 0, 0, 0], 96) {
        return classify_v4(embedded_v4(ip, 12)); // IPv4-compatible (deprecated)
    }
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return classify_v4(embedded_v4(ip, 12)); // NAT64
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return classify_v4(embedded_v4(ip, 2)); // 6to4
    }
    let table: &[([u16; 8], u32, AddressClass)] = &[
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Reserved), // discard-only
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Reserved), // documentation
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Reserved), // IETF protocol assignments, Teredo
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Private),  // unique local
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, LinkLocal),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Private), // site-local (deprecated)
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Multicast),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map_or(Public, |(_, _, class)| *class)
}

/// A network an operator allows guests to reach despite its class
/// (`OUTBOUND_ALLOWED_NETWORKS`, e.g. `10.20.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u32,
}

impl Network {
    /// Parses `ADDR/PREFIX` (or a bare address).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| format!("`{text}` is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: bad prefix"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, net.segments(), self.prefix),
            _ => false,
        }
    }
}

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
                let port = port.parse::<u16>().map_err(|_| bad("the port is not a number"))?;
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
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(bad("the host is not a valid DNS name or IPv4 address"));
        }
        Ok(Self { scheme, host: name, wildcard, port })
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
            host.strip_suffix(&self.host).is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
        } else {
            host == self.host
        }
    }
}

/// The operator's settings for every deployment's outbound requests.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// Networks guests may reach even though they are not public.
    pub allowed_networks: Vec<Network>,
    /// Requests per invocation.
    pub max_requests: u32,
    /// Connect (and TLS) timeout.
    pub connect_timeout: Duration,
    /// First-byte and between-bytes timeout.
    pub response_timeout: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allowed_networks: Vec::new(),
            max_requests: defaults::MAX_REQUESTS,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            response_timeout: defaults::RESPONSE_TIMEOUT,
        }
    }
}

/// A deployment's outbound policy.
#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[HostPattern]>,
    settings: Arc<OutboundSettings>,
}

impl OutboundPolicy {
    /// Checks one `allowed_outbound_hosts` entry.
    pub fn check_pattern(text: &str) -> Result<(), String> {
        HostPattern::parse(text).map(|_| ())
    }

    /// The policy for a list of patterns (checked at deploy time; an entry
    /// that does not parse allows nothing).
    pub fn new(patterns: &[String], settings: Arc<OutboundSettings>) -> Self {
        Self {
            allowed: patterns.iter().filter_map(|p| HostPattern::parse(p).ok()).collect(),
            settings,
        }
    }

    /// Whether `scheme://host:port` is on the list.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|p| p.matches(scheme, host, port))
    }

    /// Whether a guest may connect to `ip`.
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        classify(ip) == AddressClass::Public
            || self.settings.allowed_networks.iter().any(|net| net.contains(ip))
    }

    /// Requests per invocation.
    pub fn max_requests(&self) -> u32 {
        self.settings.max_requests
    }

    /// Sends `request` if the policy allows it: the host must be on the
    /// list, and the address it resolves to must be allowed.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let uri = request.uri().clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(Error::HttpProtocolError),
        };
        let host =
            uri.host().ok_or(Error::HttpRequestUriInvalid)?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !self.allows(if https { "https" } else { "http" }, &host, port) {
            return Err(Error::HttpRequestDenied);
        }
        let settings = &self.settings;
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .map_or(settings.connect_timeout, |t| t.min(settings.connect_timeout));
        let response_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .map_or(settings.response_timeout, |t| t.min(settings.response_timeout));

        // Resolve, then keep only the addresses the guest may reach; the
        // connection goes to one of those, never to the name again.
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(
                connect_timeout,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| Error::DnsTimeout)?
            .map_err(|_| Error::DnsError { rcode: Some("lookup failed".into()), info_code: None })?
            .collect(),
        };
        let allowed: Vec<SocketAddr> =
            candidates.iter().copied().filter(|a| self.allows_address(a.ip())).collect();
        if allowed.is_empty() {
            return Err(if candidates.is_empty() {
                Error::DestinationNotFound
            } else {
                Error::DestinationIpProhibited
            });
        }
        let stream = tokio::time::timeout(connect_timeout, connect_any(&allowed))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Connect)?;
        let _ = stream.set_nodelay(true);

        let mut request = request;
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let response = if https {
            let server_name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls =
                tokio::time::timeout(connect_timeout, tls_connector().connect(server_name, stream))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(Error::Tls)?;
            exchange(tls, request, response_timeout).await?
        } else {
            exchange(stream, request, response_timeout).await?
        };
        Ok(response)
    }
}

async fn connect_any(addresses: &[SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// One HTTP/1.1 exchange on `io`; the connection is driven by a task that
/// ends with the response body.
async fn exchange<I>(
    io: I,
    request: http::Request<WasiBody>,
    timeout: Duration,
) -> Result<http::Response<WasiBody>, Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = tokio::time::timeout(timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let (parts, body) = response.into_parts();
    // The body keeps the connection task alive until it is dropped.
    let body = DriverBody { inner: body, _driver: AbortOnDrop(driver) };
    Ok(http::Response::from_parts(parts, body.map_err(Error::from).boxed_unsync()))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pin_project_lite::pin_project! {
    struct DriverBody {
        #[pin]
        inner: hyper::body::Incoming,
        _driver: AbortOnDrop,
    }
}

impl http_body::Body for DriverBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn every_ipv4_range_is_classified() {
        use AddressClass::*;
        for (ip, class) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("100.128.0.0", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("169.254.169.254", LinkLocal),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.0", Public),
            ("192.0.0.8", Reserved),
            ("192.0.2.1", Reserved),
            ("192.88.99.1", Reserved),
            ("192.168.1.1", Private),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.255", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.255", Multicast),
            ("1.1.1.1", Public),
            ("8.8.8.8", Public),
            ("93.184.216.34", Public),
            ("11.0.0.1", Public),
            ("192.169.0.1", Public),
        ] {
            assert_eq!(v4(ip), class, "{ip}");
        }
    }

    #[test]
    fn every_ipv6_range_is_classified() {
        use AddressClass::*;
        for (ip, class) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("2002:7f00:1::", Loopback),
            ("2002:0808:0808::", Public),
            ("100::1", Reserved),
            ("2001:db8::1", Reserved),
            ("2001::1", Reserved),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001::1", Public),
        ] {
            assert_eq!(v4(ip), class, "{ip}");
        }
    }

    #[test]
    fn operator_networks_open_specific_ranges() {
        let settings = OutboundSettings {
            allowed_networks: vec![
                Network::parse("127.0.0.0/8").unwrap(),
                Network::parse("fd00::/8").unwrap(),
            ],
            ..OutboundSettings::default()
        };
        let policy = OutboundPolicy::new(&[], Arc::new(settings));
        assert!(policy.allows_address("127.0.0.1".parse().unwrap()));
        assert!(policy.allows_address("fd00::5".parse().unwrap()));
        assert!(!policy.allows_address("10.0.0.1".parse().unwrap()));
        assert!(!policy.allows_address("169.254.169.254".parse().unwrap()));
        assert!(policy.allows_address("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
        assert_eq!(Network::parse("10.1.2.3").unwrap(), Network::parse("10.1.2.3/32").unwrap());
    }

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
        for bad in ["", "ftp://x.com", "x.com/path", "user@x.com", "x.com:port", "*.", "a..b", "*"]
        {
            assert!(HostPattern::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let policy = OutboundPolicy::default();
        assert!(!policy.allows("https", "example.com", 443));
    }
}
