//! The outbound HTTP client for webhook deliveries, with an SSRF guard.
//!
//! Every target address is checked twice: literal IPs when the URL is
//! checked, and every resolved address inside the connector's DNS resolver,
//! so a name that later rebinds to an internal address still cannot be
//! reached. Redirects are never followed and response bodies are bounded.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::Method;
use ::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, NaiveDateTime, Utc};
use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Settings of the delivery client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// CIDRs that are reachable even though the guard would refuse them
    /// (e.g. `127.0.0.0/8` for local development and tests).
    pub allowed_cidrs: Vec<IpNet>,
    /// Whole-request timeout: connect, send, headers and body.
    pub timeout: Duration,
    /// How much of a response body is kept; the rest is not read.
    pub max_response_bytes: usize,
    /// CAs trusted in addition to the built-in web PKI roots.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// Herald's own webhooks: reached directly, past the guard.
    pub internal: Option<InternalTarget>,
}

/// This server's own endpoints (Automation webhooks). Deliveries to them are
/// sent to the local listener, trusting the server's CA; the guard would
/// otherwise refuse loopback, and the public name may not resolve here.
#[derive(Debug, Clone)]
pub struct InternalTarget {
    /// URL prefixes such as `https://localhost:8443/webhooks`.
    pub prefixes: Vec<String>,
    /// Where this server listens.
    pub local_addr: SocketAddr,
    /// The CA of the server's certificate.
    pub ca: Option<reqwest::Certificate>,
}

impl InternalTarget {
    fn matches(&self, url: &str) -> bool {
        self.prefixes.iter().any(|p| {
            url.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
        })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allowed_cidrs: Vec::new(),
            timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024,
            extra_roots: Vec::new(),
            internal: None,
        }
    }
}

/// Why a target URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("unsupported URL scheme {0:?}: only http and https are allowed")]
    UnsupportedScheme(String),
    #[error("the URL must not contain user info (user:password@)")]
    UserInfo,
    #[error("the URL has no host")]
    MissingHost,
    #[error(
        "address {addr} is not allowed as a delivery target ({reason}); add it to the allowed CIDRs to permit it"
    )]
    Blocked { addr: IpAddr, reason: &'static str },
}

impl TargetError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Blocked { .. } => FailureKind::Blocked,
            _ => FailureKind::Other,
        }
    }
}

/// Why a request produced no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No complete response head within the timeout.
    TimedOut,
    /// The host name could not be resolved.
    ResolutionError,
    /// Connect, TLS or connection-level I/O failure.
    SocketError,
    /// The SSRF guard refused the target address.
    Blocked,
    /// Anything else (bad URL, invalid header, protocol error).
    Other,
}

impl FailureKind {
    /// Name as used for `lastDeliveryOutcome` where Event Grid has one.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimedOut => "TimedOut",
            Self::ResolutionError => "ResolutionError",
            Self::SocketError => "SocketError",
            Self::Blocked => "Blocked",
            Self::Other => "Other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP response, whatever its status (3xx included).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` as delta-seconds or HTTP-date, relative to now.
    pub retry_after: Option<Duration>,
    pub headers: HeaderMap,
    /// At most `max_response_bytes` of the body.
    pub body: Bytes,
    /// From the start of the request until the (bounded) body was read.
    pub latency: Duration,
}

/// Result of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    Response(Response),
    Failed {
        kind: FailureKind,
        message: String,
        latency: Duration,
    },
}

/// The outbound client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct DeliveryClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    internal: Option<(InternalTarget, reqwest::Client)>,
    guard: Arc<Guard>,
    max_response_bytes: usize,
}

impl fmt::Debug for DeliveryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryClient")
            .field("allowed_cidrs", &self.inner.guard.allowed)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl DeliveryClient {
    pub fn new(cfg: ClientConfig) -> anyhow::Result<Self> {
        let guard = Arc::new(Guard::new(cfg.allowed_cidrs));
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // A proxy would resolve the target itself, bypassing the guard.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .tcp_nodelay(true);
        for cert in cfg.extra_roots {
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .context("building the delivery HTTP client")?;
        let internal = match cfg.internal {
            Some(t) => {
                let mut b = reqwest::Client::builder()
                    .use_rustls_tls()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(cfg.timeout)
                    .tcp_nodelay(true);
                for p in &t.prefixes {
                    if let Some(host) = Url::parse(p)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_owned))
                    {
                        b = b.resolve(&host, t.local_addr);
                    }
                }
                if let Some(ca) = &t.ca {
                    b = b.add_root_certificate(ca.clone());
                }
                Some((t, b.build().context("building the internal HTTP client")?))
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                internal,
                guard,
                max_response_bytes: cfg.max_response_bytes,
            }),
        })
    }

    /// Validates a webhook URL up front (subscription create/update): http or
    /// https only, no userinfo, literal IPs checked against the guard.
    pub fn check_target(&self, url: &str) -> Result<(), TargetError> {
        if self.internal_client(url).is_some() {
            return Ok(());
        }
        self.parse_target(url).map(|_| ())
    }

    fn internal_client(&self, url: &str) -> Option<&reqwest::Client> {
        let (target, client) = self.inner.internal.as_ref()?;
        target.matches(url).then_some(client)
    }

    /// Sends one request (POST deliveries, OPTIONS handshake, GET) and never
    /// follows redirects; reads at most `max_response_bytes` of the body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Outcome {
        let started = Instant::now();
        if let Some(client) = self.internal_client(url) {
            return match Url::parse(url) {
                Ok(u) => {
                    self.dispatch(client, method, u, headers, body, started)
                        .await
                }
                Err(e) => Outcome::Failed {
                    kind: FailureKind::Other,
                    message: e.to_string(),
                    latency: started.elapsed(),
                },
            };
        }
        match self.parse_target(url) {
            Ok(url) => {
                self.dispatch(&self.inner.client, method, url, headers, body, started)
                    .await
            }
            Err(e) => Outcome::Failed {
                kind: e.kind(),
                message: e.to_string(),
                latency: started.elapsed(),
            },
        }
    }

    fn parse_target(&self, url: &str) -> Result<Url, TargetError> {
        let url = Url::parse(url).map_err(|e| TargetError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::UnsupportedScheme(url.scheme().to_string()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::UserInfo);
        }
        let check = |ip: IpAddr| {
            self.inner
                .guard
                .check(ip)
                .map_err(|reason| TargetError::Blocked { addr: ip, reason })
        };
        let host = url.host_str().ok_or(TargetError::MissingHost)?;
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip = v6
                .parse::<Ipv6Addr>()
                .map_err(|e| TargetError::InvalidUrl(e.to_string()))?;
            check(IpAddr::V6(ip))?;
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            // The URL parser has already normalised forms like `0x7f.1`.
            check(IpAddr::V4(ip))?;
        } else {
            // RFC 6761: these names always mean loopback, so refuse them now
            // rather than at the first delivery.
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                // Usable if either loopback is allowed; report 127.0.0.1.
                let v4 = check(IpAddr::V4(Ipv4Addr::LOCALHOST));
                check(IpAddr::V6(Ipv6Addr::LOCALHOST)).or(v4)?;
            }
        }
        Ok(url)
    }

    async fn dispatch(
        &self,
        client: &reqwest::Client,
        method: Method,
        url: Url,
        headers: &[(String, String)],
        body: Bytes,
        started: Instant,
    ) -> Outcome {
        let failed = |kind, message: String| Outcome::Failed {
            kind,
            message,
            latency: started.elapsed(),
        };
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return failed(FailureKind::Other, format!("invalid header name {name:?}"));
            };
            // Values may be secrets: name the header, never echo the value.
            let Ok(value) = HeaderValue::from_str(value) else {
                return failed(
                    FailureKind::Other,
                    format!("invalid value for header {name}"),
                );
            };
            map.append(name, value);
        }
        let mut request = client.request(method, url).headers(map);
        if !body.is_empty() {
            request = request.body(body);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(classify(&e), error_message(e)),
        };
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let body = read_bounded(&mut response, self.inner.max_response_bytes).await;
        Outcome::Response(Response {
            status,
            retry_after,
            headers,
            body,
            latency: started.elapsed(),
        })
    }
}

/// Reads up to `limit` bytes. The status is already known, so a body that
/// fails or stalls mid-way still yields the response with what was read.
async fn read_bounded(response: &mut reqwest::Response, limit: usize) -> Bytes {
    let hint = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(8 * 1024);
    let mut buf = BytesMut::with_capacity(hint.min(limit));
    while buf.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %error_message(e), "response body read failed");
                break;
            }
        }
    }
    buf.freeze()
}

/// Parses `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date,
/// returned as the wait from `now` (zero for a date in the past).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// IMF-fixdate, plus the obsolete RFC 850 and asctime forms recipients
/// must still accept.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc2822(value) {
        return Some(at.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(value, fmt).ok())
        .map(|at| at.and_utc())
}

/// reqwest error → failure kind, looking through the source chain for the
/// resolver's own error and for connection-level I/O errors.
fn classify(err: &reqwest::Error) -> FailureKind {
    let mut io_failure = false;
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        let mut found = e.downcast_ref::<ResolveError>();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // io::Error::source skips its payload, so look at it directly.
            found = found.or_else(|| io.get_ref().and_then(|i| i.downcast_ref::<ResolveError>()));
            io_failure = true;
        }
        if let Some(resolve) = found {
            return match resolve {
                ResolveError::Blocked { .. } => FailureKind::Blocked,
                ResolveError::Lookup { .. } | ResolveError::NoAddresses { .. } => {
                    FailureKind::ResolutionError
                }
            };
        }
        source = e.source();
    }
    if err.is_timeout() {
        FailureKind::TimedOut
    } else if err.is_connect() || io_failure {
        FailureKind::SocketError
    } else {
        FailureKind::Other
    }
}

/// The error and its causes, without the URL (its query string may hold a
/// receiver's secret, and this text ends up in the delivery log).
fn error_message(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}

#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
    #[error("{host} resolves only to blocked addresses, e.g. {addr} ({reason})")]
    Blocked {
        host: String,
        addr: IpAddr,
        reason: &'static str,
    },
}

/// Resolves with the system resolver and drops every address the guard
/// refuses. The connector only dials what this returns.
struct GuardedResolver {
    guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.clone(),
                    source,
                })?;
            let mut allowed: Vec<SocketAddr> = Vec::new();
            let mut refused = None;
            for addr in found {
                match guard.check(addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(reason) => refused = Some((addr.ip(), reason)),
                }
            }
            if allowed.is_empty() {
                let err = match refused {
                    Some((addr, reason)) => ResolveError::Blocked { host, addr, reason },
                    None => ResolveError::NoAddresses { host },
                };
                return Err(err.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The SSRF guard: special-purpose ranges are refused unless allowed.
#[derive(Debug, Default)]
struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// `Err(reason)` when the address may not be contacted.
    fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match ip {
            IpAddr::V4(v4) => blocked_v4(v4).map_or(Ok(()), Err),
            IpAddr::V6(v6) => match classify_v6(v6) {
                V6Class::Global => Ok(()),
                V6Class::Blocked(reason) => Err(reason),
                // The packet ends up at the embedded IPv4 address.
                V6Class::Embeds(v4) => self.check(IpAddr::V4(v4)),
            },
        }
    }
}

/// IPv4 special-purpose ranges (IANA registry) that a webhook must not reach.
const BLOCKED_V4: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "\"this network\" 0.0.0.0/8"),
    (0x0A00_0000, 8, "private 10.0.0.0/8"),
    (
        0x6440_0000,
        10,
        "shared address space (CGNAT) 100.64.0.0/10",
    ),
    (0x7F00_0000, 8, "loopback 127.0.0.0/8"),
    (
        0xA9FE_0000,
        16,
        "link-local 169.254.0.0/16 (cloud metadata)",
    ),
    (0xAC10_0000, 12, "private 172.16.0.0/12"),
    (0xC000_0000, 24, "IETF protocol assignments 192.0.0.0/24"),
    (0xC000_0200, 24, "documentation 192.0.2.0/24"),
    (0xC058_6300, 24, "6to4 relay anycast 192.88.99.0/24"),
    (0xC0A8_0000, 16, "private 192.168.0.0/16"),
    (0xC612_0000, 15, "benchmarking 198.18.0.0/15"),
    (0xC633_6400, 24, "documentation 198.51.100.0/24"),
    (0xCB00_7100, 24, "documentation 203.0.113.0/24"),
    (0xE000_0000, 4, "multicast 224.0.0.0/4"),
    (0xF000_0000, 4, "reserved 240.0.0.0/4 (incl. broadcast)"),
];

/// IPv6 ranges inside global unicast 2000::/3 that are not reachable targets.
const BLOCKED_V6_GLOBAL: &[(u128, u8, &str)] = &[
    (0x2001_0db8 << 96, 32, "documentation 2001:db8::/32"),
    (
        0x2001 << 112,
        23,
        "IETF protocol assignments 2001::/23 (Teredo, benchmarking)",
    ),
    (0x3fff << 112, 20, "documentation 3fff::/20"),
];

fn v4_in(value: u32, base: u32, len: u8) -> bool {
    let shift = 32u32.saturating_sub(len.into());
    value.checked_shr(shift).unwrap_or(0) == base.checked_shr(shift).unwrap_or(0)
}

fn v6_in(value: u128, base: u128, len: u8) -> bool {
    let shift = 128u32.saturating_sub(len.into());
    value.checked_shr(shift).unwrap_or(0) == base.checked_shr(shift).unwrap_or(0)
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let value = u32::from(ip);
    BLOCKED_V4
        .iter()
        .find(|(base, len, _)| v4_in(value, *base, *len))
        .map(|(_, _, reason)| *reason)
}

enum V6Class {
    Global,
    Blocked(&'static str),
    Embeds(Ipv4Addr),
}

fn classify_v6(ip: Ipv6Addr) -> V6Class {
    let value = u128::from(ip);
    let v4_low = Ipv4Addr::from((value & 0xFFFF_FFFF) as u32);
    if ip.is_unspecified() {
        return V6Class::Blocked("unspecified ::");
    }
    if ip.is_loopback() {
        return V6Class::Blocked("loopback ::1");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (deprecated compatible).
    if value >> 32 == 0xFFFF || value >> 32 == 0 {
        return V6Class::Embeds(v4_low);
    }
    // NAT64 well-known prefix: a gateway forwards to the embedded address.
    if v6_in(value, 0x0064_ff9b << 96, 96) {
        return V6Class::Embeds(v4_low);
    }
    if v6_in(value, 0x2002 << 112, 16) {
        // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        return V6Class::Embeds(Ipv4Addr::from(((value >> 80) & 0xFFFF_FFFF) as u32));
    }
    if !v6_in(value, 0x2000 << 112, 3) {
        return V6Class::Blocked(match ip.segments()[0] {
            0xfc00..=0xfdff => "unique local fc00::/7 (incl. AWS metadata fd00:ec2::254)",
            0xfe80..=0xfebf => "link-local fe80::/10",
            0xfec0..=0xfeff => "site-local fec0::/10",
            0xff00..=0xffff => "multicast ff00::/8",
            _ => "not global unicast (outside 2000::/3)",
        });
    }
    BLOCKED_V6_GLOBAL
        .iter()
        .find(|(base, len, _)| v6_in(value, *base, *len))
        .map_or(V6Class::Global, |(_, _, reason)| V6Class::Blocked(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::http::header::LOCATION;
    use axum::routing::{any, get, post};
    use std::str::FromStr;

    fn guard(allowed: &[&str]) -> Guard {
        Guard::new(allowed.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_special_purpose_ranges() {
        let g = guard(&[]);
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
            // Embedded IPv4 forms of blocked addresses.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::1",
            "2002:7f00:0001::",
        ] {
            assert!(g.check(ip(addr)).is_err(), "{addr} should be blocked");
        }
    }

    #[test]
    fn permits_public_addresses() {
        let g = guard(&[]);
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(g.check(ip(addr)), Ok(()), "{addr} should be allowed");
        }
    }

    #[test]
    fn allow_list_opens_ranges() {
        let g = guard(&["127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]);
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "::ffff:127.0.0.1",
            "64:ff9b::a01:203",
            "fd00:ec2::254",
        ] {
            assert_eq!(g.check(ip(addr)), Ok(()), "{addr} should be allowed");
        }
        for addr in ["::1", "169.254.169.254", "192.168.0.1", "fc00::1"] {
            assert!(g.check(ip(addr)).is_err(), "{addr} should still be blocked");
        }
    }

    #[test]
    fn check_target_rules() {
        let client = DeliveryClient::new(ClientConfig::default()).unwrap();
        for url in [
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "https://localhost/hook",
            "http://api.localhost./hook",
        ] {
            assert!(
                matches!(client.check_target(url), Err(TargetError::Blocked { .. })),
                "{url} should be blocked"
            );
        }
        assert_eq!(
            client.check_target("ftp://example.com/"),
            Err(TargetError::UnsupportedScheme("ftp".into()))
        );
        assert_eq!(
            client.check_target("https://user:pw@example.com/"),
            Err(TargetError::UserInfo)
        );
        assert!(matches!(
            client.check_target("not a url"),
            Err(TargetError::InvalidUrl(_))
        ));
        assert!(client.check_target("file:///etc/passwd").is_err());
        assert!(client.check_target("").is_err());
        assert_eq!(
            client.check_target("https://receiver.example/api/hook?code=abc"),
            Ok(())
        );
        assert_eq!(client.check_target("http://93.184.215.14:8080/"), Ok(()));

        let allowed = DeliveryClient::new(ClientConfig {
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            ..ClientConfig::default()
        })
        .unwrap();
        assert_eq!(allowed.check_target("http://localhost:8080/"), Ok(()));
        assert_eq!(allowed.check_target("http://127.0.0.1:8080/"), Ok(()));
        assert!(allowed.check_target("http://[::1]:8080/").is_err());
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:49:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let secs = |s| parse_retry_after(s, now);
        assert_eq!(secs("5"), Some(Duration::from_secs(5)));
        assert_eq!(secs(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            secs("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            secs("Sun Nov  6 08:49:37 1994"),
            Some(Duration::from_secs(37))
        );
        assert_eq!(secs("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "99999999999999999999999",
            "Sun, 99 Nov",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn resolver_drops_blocked_addresses() {
        let blocked = GuardedResolver {
            guard: Arc::new(guard(&[])),
        };
        let err = blocked
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        assert!(
            matches!(
                err.downcast_ref::<ResolveError>(),
                Some(ResolveError::Blocked { .. })
            ),
            "{err}"
        );

        let open = GuardedResolver {
            guard: Arc::new(guard(&["127.0.0.0/8"])),
        };
        let addrs: Vec<_> = open
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
    }

    fn http_date(at: DateTime<Utc>) -> String {
        at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    }

    async fn receiver() -> SocketAddr {
        let app = Router::new()
            .route(
                "/echo",
                any(|headers: axum::http::HeaderMap, body: Bytes| async move {
                    let tag = headers
                        .get("x-test")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    ([("x-echo", tag)], body)
                }),
            )
            .route(
                "/redirect",
                any(|| async { (StatusCode::FOUND, [(LOCATION, "/echo")], "moved") }),
            )
            .route("/big", get(|| async { vec![b'x'; 1 << 20] }))
            .route(
                "/busy",
                post(|| async { (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, "5")]) }),
            )
            .route(
                "/busy-date",
                post(|| async {
                    let at = Utc::now() + chrono::Duration::seconds(120);
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(RETRY_AFTER, http_date(at))],
                    )
                }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn local_client(timeout: Duration) -> DeliveryClient {
        DeliveryClient::new(ClientConfig {
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            timeout,
            ..ClientConfig::default()
        })
        .unwrap()
    }

    fn expect_response(outcome: Outcome) -> Response {
        match outcome {
            Outcome::Response(r) => r,
            Outcome::Failed { kind, message, .. } => panic!("{kind}: {message}"),
        }
    }

    #[tokio::test]
    async fn loopback_blocked_without_allow_list() {
        let addr = receiver().await;
        let client = DeliveryClient::new(ClientConfig::default()).unwrap();
        for url in [
            format!("http://{addr}/echo"),
            format!("http://localhost:{}/echo", addr.port()),
        ] {
            match client.send(Method::POST, &url, &[], Bytes::new()).await {
                Outcome::Failed { kind, .. } => assert_eq!(kind, FailureKind::Blocked),
                Outcome::Response(r) => panic!("{url} reached: {}", r.status),
            }
        }
        // Past check_target, the resolver itself refuses the name.
        let url = Url::parse(&format!("http://localhost:{}/echo", addr.port())).unwrap();
        let outcome = client
            .dispatch(
                &client.inner.client,
                Method::POST,
                url,
                &[],
                Bytes::new(),
                Instant::now(),
            )
            .await;
        match outcome {
            Outcome::Failed { kind, message, .. } => {
                assert_eq!(kind, FailureKind::Blocked, "{message}");
                assert!(message.contains("blocked"), "{message}");
            }
            Outcome::Response(r) => panic!("reached: {}", r.status),
        }
    }

    #[tokio::test]
    async fn allowed_delivery_round_trip() {
        let addr = receiver().await;
        let client = local_client(Duration::from_secs(10));
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-test".to_string(), "hello".to_string()),
        ];
        for host in [addr.to_string(), format!("localhost:{}", addr.port())] {
            let url = format!("http://{host}/echo?code=abc");
            let outcome = client
                .send(Method::POST, &url, &headers, Bytes::from_static(b"[1]"))
                .await;
            let r = expect_response(outcome);
            assert_eq!(r.status, 200);
            assert_eq!(r.body, Bytes::from_static(b"[1]"));
            assert_eq!(r.headers.get("x-echo").unwrap(), "hello");
            assert_eq!(r.retry_after, None);
        }
        let options = client
            .send(
                Method::OPTIONS,
                &format!("http://{addr}/echo"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(expect_response(options).status, 200);

        let bad_header = vec![("bad header".to_string(), "x".to_string())];
        let outcome = client
            .send(
                Method::POST,
                &format!("http://{addr}/echo"),
                &bad_header,
                Bytes::new(),
            )
            .await;
        assert!(matches!(
            outcome,
            Outcome::Failed {
                kind: FailureKind::Other,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn redirect_is_not_followed() {
        let addr = receiver().await;
        let client = local_client(Duration::from_secs(10));
        let r = expect_response(
            client
                .send(
                    Method::POST,
                    &format!("http://{addr}/redirect"),
                    &[],
                    Bytes::from_static(b"x"),
                )
                .await,
        );
        assert_eq!(r.status, 302);
        assert_eq!(r.body, Bytes::from_static(b"moved"));
        assert_eq!(r.headers.get(LOCATION).unwrap(), "/echo");
    }

    #[tokio::test]
    async fn body_is_truncated_to_the_bound() {
        let addr = receiver().await;
        let client = local_client(Duration::from_secs(10));
        let r = expect_response(
            client
                .send(
                    Method::GET,
                    &format!("http://{addr}/big"),
                    &[],
                    Bytes::new(),
                )
                .await,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 64 * 1024);
        assert!(r.body.iter().all(|&b| b == b'x'));
    }

    #[tokio::test]
    async fn retry_after_is_parsed() {
        let addr = receiver().await;
        let client = local_client(Duration::from_secs(10));
        let busy = expect_response(
            client
                .send(
                    Method::POST,
                    &format!("http://{addr}/busy"),
                    &[],
                    Bytes::new(),
                )
                .await,
        );
        assert_eq!(busy.status, 503);
        assert_eq!(busy.retry_after, Some(Duration::from_secs(5)));

        let dated = expect_response(
            client
                .send(
                    Method::POST,
                    &format!("http://{addr}/busy-date"),
                    &[],
                    Bytes::new(),
                )
                .await,
        );
        assert_eq!(dated.status, 429);
        let wait = dated.retry_after.expect("an HTTP-date Retry-After");
        assert!(
            wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn timeout_maps_to_timed_out() {
        let addr = receiver().await;
        let client = local_client(Duration::from_millis(300));
        let outcome = client
            .send(
                Method::POST,
                &format!("http://{addr}/slow"),
                &[],
                Bytes::new(),
            )
            .await;
        match outcome {
            Outcome::Failed { kind, latency, .. } => {
                assert_eq!(kind, FailureKind::TimedOut);
                assert!(latency < Duration::from_secs(4), "{latency:?}");
            }
            Outcome::Response(r) => panic!("got {}", r.status),
        }
    }

    #[tokio::test]
    async fn connection_refused_is_a_socket_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = local_client(Duration::from_secs(5));
        let outcome = client
            .send(Method::POST, &format!("http://{addr}/x"), &[], Bytes::new())
            .await;
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    kind: FailureKind::SocketError,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn tls_failure_is_a_socket_error() {
        let addr = receiver().await;
        let client = local_client(Duration::from_secs(5));
        let outcome = client
            .send(
                Method::POST,
                &format!("https://{addr}/echo"),
                &[],
                Bytes::new(),
            )
            .await;
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    kind: FailureKind::SocketError,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn unresolvable_name_is_a_resolution_error() {
        let client = local_client(Duration::from_secs(10));
        let outcome = client
            .send(
                Method::POST,
                "http://does-not-exist.invalid/",
                &[],
                Bytes::new(),
            )
            .await;
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    kind: FailureKind::ResolutionError,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
}
