//! The HTTPS listener: TLS accept and hyper, serving the API router.
//!
//! Every connection costs a file descriptor, so the listener bounds what
//! idle or slow clients can hold: a connection cap below the open-file
//! limit, a TLS-handshake timeout, a request-head timeout (which also
//! applies before the first request, so a connection that never sends one
//! is reaped quickly) and an idle keep-alive timeout between requests. A
//! connection with a request in flight (a long poll, an event stream, an
//! upload) is never timed out here. When the cap is reached, the
//! connection that has been quiet longest is closed to make room, so a
//! fresh client is served even while idle connections fill every slot.

use crate::Config;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// File descriptors kept back from the connection cap for the database,
/// blob files, the AMQP listener, outgoing webhooks and job processes.
const FD_RESERVE: u64 = 64;

/// Connections that may wait (briefly) for a slot while the cap is reached;
/// beyond them, new connections are closed at once.
const MAX_WAITING: usize = 64;

/// How long a connection accepted at the cap waits for a slot to free.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// How long a connection being closed for idleness gets to finish (h2
/// GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One warning per this interval for repeated accept failures.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Bounds on what clients can make the HTTPS listener hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request head must arrive within this of its first byte, and the
    /// first request within this of the handshake.
    pub head_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits in `config`; an unset connection cap is derived from the
    /// process's open-file limit.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_connections: config
                .max_connections
                .unwrap_or_else(|| default_max_connections(fd_soft_limit())),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            head_timeout: Duration::from_millis(config.request_head_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        }
    }
}

/// The soft open-file limit, if it can be read.
pub fn fd_soft_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the soft open-file limit to the hard one: the soft default (often
/// 1024, or 256 on some systems) is far below what a server needs, and only
/// the hard limit is a policy. Returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => tracing::debug!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

/// 80 % of the open-file limit less a reserve for everything else the
/// process opens; 1024 when the limit is unknown.
pub fn default_max_connections(soft_limit: Option<u64>) -> usize {
    let Some(soft) = soft_limit else { return 1024 };
    let cap = (soft.saturating_mul(8) / 10).saturating_sub(FD_RESERVE);
    // Below 16 the server is unusable anyway; above 64 Ki the limit is
    // effectively "unlimited" and memory becomes the bound.
    usize::try_from(cap.clamp(16, 65_536)).unwrap_or(65_536)
}

/// Serves `app` over TLS until `shutdown` is cancelled, then drains open
/// connections (for at most 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: axum::Router,
    shutdown: CancellationToken,
    limits: Limits,
) {
    tracing::info!(
        max_connections = limits.max_connections,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        head_timeout_ms = limits.head_timeout.as_millis() as u64,
        "HTTPS connection limits"
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/2 pings find peers that vanished while a long poll or stream is
    // open (no request ever ends there, so the idle timeout never fires).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let shared = Arc::new(Shared {
        tls,
        app,
        builder,
        limits: limits.clone(),
        shutdown: shutdown.clone(),
        registry: Registry::default(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING.min(limits.max_connections)));
    let tracker = TaskTracker::new();
    let mut accept_errors = RateLimited::default();
    let mut refused = RateLimited::default();
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't
                    // die, and don't log every one of a burst.
                    accept_errors.hit(|n| {
                        tracing::warn!(error = %e, failures = n, "accept failed");
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = shared.registry.register();
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Slot::Now(p),
            Err(_) => match waiting.clone().try_acquire_owned() {
                Ok(w) => {
                    // At the cap: close whichever connection has been quiet
                    // longest and let this one take its slot.
                    shared.registry.evict_quietest(conn.id);
                    Slot::Wait(w, slots.clone())
                }
                Err(_) => {
                    refused.hit(|n| {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            refused = n,
                            "connections refused: connection limit reached"
                        );
                    });
                    shared.registry.remove(conn.id);
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            let _registered = Registered(&shared.registry, conn.id);
            let _permit = match permit {
                Slot::Now(p) => p,
                Slot::Wait(w, slots) => {
                    // The victim may itself have been a connection still
                    // waiting for a slot (so nothing frees): ask again every
                    // quarter second until the wait is over.
                    let deadline = tokio::time::Instant::now() + SLOT_WAIT;
                    let got = loop {
                        let step = (tokio::time::Instant::now() + SLOT_WAIT / 8).min(deadline);
                        match tokio::time::timeout_at(step, slots.clone().acquire_owned()).await {
                            Ok(Ok(p)) => break Some(p),
                            Ok(Err(_)) => break None,
                            Err(_) if step >= deadline || conn.evict.is_cancelled() => break None,
                            Err(_) => shared.registry.evict_quietest(conn.id),
                        }
                    };
                    drop(w);
                    match got {
                        Some(p) => p,
                        None => {
                            tracing::debug!(%peer, "connection closed: no free slot");
                            return;
                        }
                    }
                }
            };
            connection(&shared, conn, stream, peer).await;
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining open connections");
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 10 s");
    }
}

enum Slot {
    Now(tokio::sync::OwnedSemaphorePermit),
    Wait(tokio::sync::OwnedSemaphorePermit, Arc<Semaphore>),
}

struct Shared {
    tls: TlsAcceptor,
    app: axum::Router,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    shutdown: CancellationToken,
    registry: Registry,
}

/// Drives one connection: handshake, then hyper, closing it when it has
/// been quiet too long, when it is evicted, or at shutdown.
async fn connection(
    shared: &Shared,
    conn: Arc<ConnState>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    let limits = &shared.limits;
    let stream = tokio::select! {
        _ = conn.evict.cancelled() => return,
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(limits.handshake_timeout, shared.tls.accept(stream)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    conn.handshaken(h2);
    let service = TowerToHyperService::new(Tracked {
        app: shared.app.clone(),
        conn: conn.clone(),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let hyper_conn = shared
        .builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    tokio::pin!(hyper_conn);
    let mut closing: Option<Instant> = None;
    loop {
        let deadline = conn.deadline(limits);
        let changed = conn.changed.notified();
        tokio::select! {
            r = hyper_conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = changed => {}
            _ = shared.shutdown.cancelled(), if closing.is_none() => {
                hyper_conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + Duration::from_secs(3600));
            }
            _ = conn.evict.cancelled(), if closing.is_none() => {
                tracing::debug!(%peer, "closing a quiet connection to make room");
                hyper_conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            _ = sleep_until(deadline), if closing.is_none() && deadline.is_some() => {
                if conn.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "closing an idle connection");
                    hyper_conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
            }
            _ = sleep_until(closing), if closing.is_some() => {
                // A request that slipped in before the close is let finish.
                if conn.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// What the listener knows about one connection's activity. Times are
/// milliseconds since `base`, so they fit atomics.
struct ConnState {
    id: u64,
    base: Instant,
    /// HTTP/2 negotiated (0/1); bytes on an idle h2 connection are pings
    /// and settings, not the start of a request.
    h2: AtomicUsize,
    /// Requests whose response has not been completely sent.
    in_flight: AtomicUsize,
    /// Requests received so far.
    requests: AtomicU64,
    /// When the last request finished (or the handshake did).
    quiet_since: AtomicU64,
    /// 1 + when the first byte arrived since `quiet_since`; 0 = none yet.
    head_started: AtomicU64,
    changed: Notify,
    evict: CancellationToken,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn handshaken(&self, h2: bool) {
        self.h2.store(usize::from(h2), Ordering::Release);
        self.quiet_since.store(self.now_ms(), Ordering::Release);
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet_since.store(self.now_ms(), Ordering::Release);
            self.head_started.store(0, Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// When the connection is due to close if nothing happens; `None`
    /// while a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let quiet = self.at(self.quiet_since.load(Ordering::Acquire));
        if self.requests.load(Ordering::Acquire) == 0 {
            // Never sent a request: the head timeout, not the keep-alive one.
            return Some(quiet + limits.head_timeout);
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 && self.h2.load(Ordering::Acquire) == 0 {
            return Some(self.at(head - 1) + limits.head_timeout);
        }
        Some(quiet + limits.idle_timeout)
    }
}

/// Every open connection, so the quietest can be evicted at the cap.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Registry {
    fn register(&self) -> Arc<ConnState> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState {
            id,
            base: Instant::now(),
            h2: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            quiet_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            changed: Notify::new(),
            evict: CancellationToken::new(),
        });
        self.lock().insert(id, conn.clone());
        conn
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the connection without a request in flight that has been quiet
    /// longest (idle, half-sent or still handshaking) to close.
    fn evict_quietest(&self, except: u64) {
        let conns = self.lock();
        let victim = conns
            .values()
            .filter(|c| {
                c.id != except
                    && !c.evict.is_cancelled()
                    && c.in_flight.load(Ordering::Acquire) == 0
            })
            .min_by_key(|c| c.at(c.quiet_since.load(Ordering::Acquire)));
        if let Some(v) = victim {
            v.evict.cancel();
        }
    }
}

/// Removes a connection from the registry when its task ends.
struct Registered<'a>(&'a Registry, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// The router, counting requests in flight until their response body has
/// been sent (or dropped), so streams and long polls count as busy.
#[derive(Clone)]
struct Tracked {
    app: axum::Router,
    conn: Arc<ConnState>,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Tracked {
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let busy = Busy::new(self.conn.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let resp = tower::ServiceExt::oneshot(app, req).await?;
            Ok(resp.map(|inner| axum::body::Body::new(GuardedBody { inner, _busy: busy })))
        })
    }
}

struct Busy(Arc<ConnState>);

impl Busy {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.begin();
        Self(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

struct GuardedBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TLS stream, noting when the first byte of a request head arrives.
struct Watched<S> {
    inner: S,
    conn: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts events and lets one through per [`LOG_INTERVAL`], with the count.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    count: u64,
}

impl RateLimited {
    fn hit(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
            log(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_follows_the_fd_limit() {
        assert_eq!(default_max_connections(Some(256)), 140);
        assert_eq!(default_max_connections(Some(1024)), 755);
        assert_eq!(default_max_connections(Some(10)), 16);
        assert_eq!(default_max_connections(Some(u64::MAX)), 65_536);
        assert_eq!(default_max_connections(None), 1024);
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let limits = Limits {
            max_connections: 4,
            handshake_timeout: Duration::from_secs(1),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        };
        let reg = Registry::default();
        let c = reg.register();
        let start = c.base;
        // Never a request: the head timeout.
        assert_eq!(c.deadline(&limits), Some(start + limits.head_timeout));
        c.begin();
        assert_eq!(c.deadline(&limits), None, "busy connections never time out");
        c.end();
        let quiet = c.at(c.quiet_since.load(Ordering::Acquire));
        assert_eq!(c.deadline(&limits), Some(quiet + limits.idle_timeout));
        // A byte of the next head: the head timeout from that byte.
        c.on_read();
        let head = c.at(c.head_started.load(Ordering::Acquire) - 1);
        assert_eq!(c.deadline(&limits), Some(head + limits.head_timeout));
        // On HTTP/2 idle bytes are pings, not a request head.
        c.h2.store(1, Ordering::Release);
        assert_eq!(c.deadline(&limits), Some(quiet + limits.idle_timeout));
    }

    #[test]
    fn eviction_picks_the_quietest_idle_connection() {
        let reg = Registry::default();
        let busy = reg.register();
        busy.begin();
        let old = reg.register();
        let new = reg.register();
        new.quiet_since.store(5, Ordering::Release);
        let me = reg.register();
        reg.evict_quietest(me.id);
        assert!(old.evict.is_cancelled());
        assert!(!busy.evict.is_cancelled() && !new.evict.is_cancelled());
        reg.evict_quietest(me.id);
        assert!(
            new.evict.is_cancelled(),
            "next quietest once the first is going"
        );
        reg.evict_quietest(me.id);
        assert!(
            !busy.evict.is_cancelled(),
            "a busy connection is never evicted"
        );
        assert!(!me.evict.is_cancelled());
    }

    #[test]
    fn rate_limited_logs_once_per_interval_with_a_count() {
        let mut r = RateLimited::default();
        let mut logged = Vec::new();
        for _ in 0..100 {
            r.hit(|n| logged.push(n));
        }
        assert_eq!(logged, vec![1]);
        r.last = Some(Instant::now() - LOG_INTERVAL);
        r.hit(|n| logged.push(n));
        assert_eq!(logged, vec![1, 100]);
    }
}
