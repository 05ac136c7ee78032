//! The outbound HTTP client for webhook deliveries, with an SSRF guard.
//!
//! Every target address is checked twice: literal IPs when the URL is
//! checked, and every resolved address inside the connector's DNS resolver,
//! so a name that later rebinds to an internal address still cannot be
//! reached. Redirects are never followed and response bodies are bounded.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::Method;
use ::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use ipnet::IpNet;
use reqwest::Url;

mod failure;
mod guard;
mod retry_after;
#[cfg(test)]
mod tests;

pub use failure::FailureKind;
use failure::{classify, error_message};
use guard::{Guard, GuardedResolver};
pub use retry_after::parse_retry_after;

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
    /// Not a URL at all.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Neither http nor https.
    #[error("unsupported URL scheme {0:?}: only http and https are allowed")]
    UnsupportedScheme(String),
    /// Credentials in the URL would end up in logs and the delivery log.
    #[error("the URL must not contain user info (user:password@)")]
    UserInfo,
    /// Nothing to connect to.
    #[error("the URL has no host")]
    MissingHost,
    /// A literal address the SSRF guard refuses, and the range it is in.
    #[error(
        "address {addr} is not allowed as a delivery target ({reason}); add it to the allowed CIDRs to permit it"
    )]
    Blocked {
        /// The refused address.
        addr: IpAddr,
        /// The special-purpose range it belongs to.
        reason: &'static str,
    },
}

impl TargetError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Blocked { .. } => FailureKind::Blocked,
            _ => FailureKind::Other,
        }
    }
}

/// An HTTP response, whatever its status (3xx included).
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// `Retry-After` as delta-seconds or HTTP-date, relative to now.
    pub retry_after: Option<Duration>,
    /// The response headers (handshakes read their consent from them).
    pub headers: HeaderMap,
    /// At most `max_response_bytes` of the body.
    pub body: Bytes,
    /// From the start of the request until the (bounded) body was read.
    pub latency: Duration,
}

/// Result of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The receiver answered, whatever the status.
    Response(Response),
    /// No response.
    Failed {
        /// Why there was no response.
        kind: FailureKind,
        /// The error and its causes, without the URL (it may hold a secret).
        message: String,
        /// How long the attempt took.
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
    /// Builds the guarded client (and the internal one, if configured).
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
