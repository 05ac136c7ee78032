//! The TCP/TLS listener, connection admission and the per-connection driver.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use fe2o3_amqp::{
    acceptor::{
        ConnectionAcceptor, ListenerConnectionHandle, SaslAcceptor, SessionAcceptor,
        sasl_acceptor::SaslServerFrame,
    },
    types::{
        definitions::ConnectionError,
        primitives::{Array, Symbol},
        sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse},
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;

use crate::{
    address::host_without_port,
    backend::HubsBackend,
    errors,
    io::{Tapped, parse_preamble},
    session::run_session,
    state::{ConnCtx, Pacer, ReaderRegistry, Shared},
};

/// Bounds on what one client can make the listener hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections; further ones are closed at once.
    pub max_connections: usize,
    /// TLS + SASL + Open must finish within this.
    pub handshake_timeout: Duration,
    /// A connection that sends no byte for this long is dropped.
    pub idle_timeout: Duration,
    /// Advertised and enforced max-frame-size.
    pub max_frame_size: u32,
    /// Max message (one event or one batch) a producer link accepts.
    pub max_message_size: u64,
    /// Highest channel number a client may use (sessions per connection - 1).
    pub channel_max: u16,
    /// Highest link handle per session (links per session - 1).
    pub handle_max: u32,
    /// Credit granted to producer links (refilled when a quarter is used).
    pub producer_credit: u32,
    /// Events fetched per backend read on consumer links.
    pub read_batch: usize,
    /// Non-epoch readers per (consumer group, partition).
    pub max_readers_per_partition: usize,
    /// TCP MSS advertised by the listening socket. The Python SDK reads
    /// `TCP_MAXSEG` after connecting and writes it back; Linux refuses
    /// values above 32767, which high-MTU links (loopback, some container
    /// networks) produce, and the SDK then fails to connect. `None` leaves
    /// the kernel default.
    pub tcp_mss: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_frame_size: 256 * 1024,
            max_message_size: 1024 * 1024,
            channel_max: 255,
            handle_max: 255,
            producer_credit: 5000,
            read_batch: 500,
            max_readers_per_partition: 5,
            tcp_mss: Some(16_384),
        }
    }
}

/// Listener configuration.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Address to bind (`0.0.0.0:5671`, `127.0.0.1:0`, ...).
    pub addr: SocketAddr,
    /// TLS server configuration; `None` = plaintext (the SDKs'
    /// `UseDevelopmentEmulator=true` mode).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Resource bounds.
    pub limits: Limits,
}

/// A bound AMQP listener; call [`AmqpListener::serve`] to run it.
pub struct AmqpListener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    conn_slots: Arc<Semaphore>,
}

impl AmqpListener {
    /// Bind the socket. Nothing is accepted until [`serve`](Self::serve).
    pub async fn bind(
        config: ListenerConfig,
        backend: Arc<dyn HubsBackend>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let tcp = bind_tcp(config.addr, config.limits.tcp_mss)?;
        let conn_slots = Arc::new(Semaphore::new(config.limits.max_connections));
        Ok(Self {
            tcp,
            tls: config.tls.map(tokio_rustls::TlsAcceptor::from),
            shared: Arc::new(Shared {
                backend,
                limits: config.limits,
                readers: ReaderRegistry::default(),
                pacer: Pacer::default(),
                shutdown,
            }),
            conn_slots,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accept connections until the shutdown token is cancelled; open
    /// connections are then closed with `amqp:connection:forced`.
    pub async fn serve(self) -> std::io::Result<()> {
        let addr = self.tcp.local_addr()?;
        tracing::info!(%addr, tls = self.tls.is_some(), "AMQP listener serving");
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                a = self.tcp.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.conn_slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: connection limit reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let tls = self.tls.clone();
            tracker.spawn(async move {
                let _permit = permit;
                handle_tcp(shared, tls, stream, peer).await;
            });
        }
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("AMQP listener: connections still open after 10 s of shutdown");
        }
        tracing::info!(%addr, "AMQP listener stopped");
        Ok(())
    }
}

/// Clients often drop the socket right after their Close: say so plainly.
fn close_reason(err: &str) -> String {
    if err.contains("Broken pipe") || err.contains("Connection reset") || err.contains("Not found")
    {
        "peer disconnected".to_string()
    } else if err.contains("connection idle") {
        "idle timeout".to_string()
    } else {
        err.to_string()
    }
}

fn bind_tcp(addr: SocketAddr, mss: Option<u32>) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if let Some(mss) = mss
        && let Err(e) = socket.set_tcp_mss(mss)
    {
        tracing::warn!(error = %e, mss, "could not set the listener's TCP MSS");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn handle_tcp(
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
    match tls {
        None => run_connection(shared, stream, peer, deadline).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => run_connection(shared, tls_stream, peer, deadline).await,
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
        },
    }
}

/// SASL: advertise what Azure clients look for, answer `ok` to all; the
/// real authentication happens at `$cbs` (PLAIN is checked after Open).
#[derive(Debug, Clone)]
struct HeraldSasl;

impl SaslAcceptor for HeraldSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("MSSBCBS"),
            Symbol::from("ANONYMOUS"),
            Symbol::from("PLAIN"),
            Symbol::from("EXTERNAL"),
        ])
    }
    fn on_init(&mut self, _init: SaslInit) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }
    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Ok,
            additional_data: None,
        })
    }
}

fn connection_acceptor(limits: &Limits) -> ConnectionAcceptor<(), HeraldSasl> {
    ConnectionAcceptor::builder()
        .container_id("herald")
        .max_frame_size(limits.max_frame_size)
        .channel_max(limits.channel_max)
        .sasl_acceptor(HeraldSasl)
        .build()
}

async fn run_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let started = Instant::now();
    let (tapped, capture) = Tapped::new(stream, shared.limits.idle_timeout);
    let acceptor = connection_acceptor(&shared.limits);
    let mut conn: ListenerConnectionHandle =
        match tokio::time::timeout_at(deadline, acceptor.accept(tapped)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "AMQP handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "AMQP handshake timed out");
                return;
            }
        };
    let preamble = {
        let captured = capture
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .unwrap_or_default();
        parse_preamble(&captured)
    };
    let open_host = preamble
        .open
        .as_ref()
        .and_then(|o| o.hostname.clone())
        .or_else(|| preamble.sasl_init.as_ref().and_then(|i| i.hostname.clone()))
        .map(|h| host_without_port(&h))
        .filter(|h| !h.is_empty());
    let container_id = preamble
        .open
        .as_ref()
        .map(|o| o.container_id.clone())
        .unwrap_or_default();
    let mechanism = preamble
        .sasl_init
        .as_ref()
        .map(|i| i.mechanism.0.clone())
        .unwrap_or_default();
    tracing::info!(%peer, host = open_host.as_deref().unwrap_or(""), container_id, sasl = mechanism, "AMQP connection opened");

    let ctx = Arc::new(ConnCtx::new(shared.clone(), peer, open_host.clone()));

    // SASL PLAIN: key name + key as a namespace-wide credential.
    if mechanism.eq_ignore_ascii_case("PLAIN") {
        let ok = match (&preamble.sasl_init, &open_host) {
            (Some(init), Some(host)) => {
                let resp = init
                    .initial_response
                    .as_ref()
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let mut parts = resp.split(|b| *b == 0);
                let _authz = parts.next();
                let user = parts
                    .next()
                    .map(|b| String::from_utf8_lossy(b).into_owned());
                let pass = parts
                    .next()
                    .map(|b| String::from_utf8_lossy(b).into_owned());
                match (user, pass) {
                    (Some(u), Some(p)) => match shared
                        .backend
                        .authorize_key(host, &u, &p, SystemTime::now())
                        .await
                    {
                        Ok(grant) => {
                            ctx.add_grant(&grant);
                            true
                        }
                        Err(e) => {
                            tracing::info!(%peer, key_name = u, error = %e, "SASL PLAIN credential refused");
                            false
                        }
                    },
                    _ => false,
                }
            }
            _ => false,
        };
        if !ok {
            let err = errors::unauthorized("Invalid SASL PLAIN credentials.");
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close_with_error(err)).await;
            tracing::info!(%peer, "AMQP connection closed: bad SASL PLAIN credentials");
            return;
        }
    }

    let sessions = tokio_util::task::TaskTracker::new();
    let reason = loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                let err = errors::error(ConnectionError::ConnectionForced.into(), "The server is shutting down.");
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.close_with_error(err)).await;
                break "server shutdown".to_string();
            }
            incoming = conn.next_incoming_session() => {
                let Some(incoming) = incoming else {
                    let outcome = tokio::time::timeout(Duration::from_secs(5), conn.on_close()).await;
                    break match outcome {
                        Ok(Ok(())) => "closed by peer".to_string(),
                        Ok(Err(e)) => close_reason(&e.to_string()),
                        Err(_) => "connection engine stopped".to_string(),
                    };
                };
                let acceptor = SessionAcceptor::builder()
                    .handle_max(shared.limits.handle_max)
                    .build();
                match acceptor.accept_incoming_session(incoming, &mut conn).await {
                    Ok(session) => {
                        let ctx = ctx.clone();
                        sessions.spawn(run_session(ctx, session));
                    }
                    Err(e) => tracing::info!(%peer, error = %e, "session refused"),
                }
            }
        }
    };
    sessions.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
    tracing::info!(%peer, reason, duration_ms = started.elapsed().as_millis() as u64, "AMQP connection closed");
}
