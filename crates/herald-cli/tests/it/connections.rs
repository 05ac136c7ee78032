//! The HTTPS listener's bounds (issue 23 item 4): idle and half-sent
//! connections cannot fill the server, and they are closed after the
//! head / idle timeouts instead of living forever.

use crate::helpers::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

const CAP: usize = 8;

/// A server with a small cap and short timeouts, so the test runs in seconds.
async fn small_server(idle_ms: u64) -> TestApp {
    spawn_app_with(move |c| {
        c.max_connections = Some(CAP);
        c.handshake_timeout_ms = 1000;
        c.request_head_timeout_ms = 1000;
        c.idle_timeout_ms = idle_ms;
    })
    .await
}

fn connector(app: &TestApp) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&app.ca_path).expect("read the CA");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA is PEM")).expect("add the CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(app: &TestApp) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    connector(app)
        .connect("localhost".try_into().expect("server name"), tcp)
        .await
        .expect("TLS handshake")
}

/// Reads (and discards) until the peer closes; false if it is still open
/// after `within`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one HTTP/1.1 response head and returns it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&got, b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .expect("read the response");
        assert!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn idle_and_half_sent_connections_cannot_lock_out_a_fresh_client() {
    let app = small_server(60_000).await;
    // Twice the cap: plain TCP that never starts TLS, TLS that never sends
    // a request, and TLS with half a request head.
    let mut raw = Vec::new();
    for _ in 0..CAP {
        raw.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    let mut silent = Vec::new();
    let mut half = Vec::new();
    for i in 0..CAP {
        let mut s = tls_connect(&app).await;
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
                .await
                .expect("write half a head");
            s.flush().await.expect("flush");
            half.push(s);
        } else {
            silent.push(s);
        }
    }

    // A fresh client is served at once: the quietest connection makes room.
    let fresh = client_for(&app.ca_path);
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        fresh
            .get(format!("https://localhost:{}/healthz", app.port))
            .send(),
    )
    .await
    .expect("/healthz answers within 3 s at the connection cap")
    .expect("/healthz reaches the server");
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "/healthz took {:?}",
        started.elapsed()
    );

    // And every idle or half-sent one is closed after the 1 s timeouts.
    for s in &mut raw {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a connection that never started TLS is still open"
        );
    }
    for s in silent.iter_mut().chain(half.iter_mut()) {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "an idle or half-sent TLS connection is still open"
        );
    }
}

#[tokio::test]
async fn keep_alive_connections_close_after_the_idle_timeout_not_the_head_timeout() {
    let app = small_server(3000).await;
    let mut s = tls_connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send a request");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Past the 1 s head timeout the idle keep-alive connection is still
    // open (the head timeout runs from a head's first byte)...
    assert!(
        !closed_within(&mut s, Duration::from_millis(2000)).await,
        "closed before the idle timeout"
    );
    // ...and it still serves a second request.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send a second request");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(8)).await,
        "an idle keep-alive connection is never closed"
    );
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(2500),
        "closed after {idle:?}, before the 3 s idle timeout"
    );
}

#[tokio::test]
async fn a_slow_request_head_is_cut_at_the_head_timeout() {
    let app = small_server(60_000).await;
    let mut s = tls_connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send a request");
    read_head(&mut s).await;
    // Trickle the next head a byte every 300 ms: the head timeout runs
    // from its first byte, so the connection is cut within about 1 s.
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut s, Duration::from_millis(300)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a trickled request head was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        started.elapsed()
    );
}

/// The reported failure: with 256 file descriptors, a few hundred idle
/// connections made `/healthz` time out for everyone. Now the derived cap
/// (140 at 256) keeps descriptors free and the quietest idle connection
/// makes room for a fresh client.
#[tokio::test]
async fn a_server_with_256_fds_still_serves_past_300_idle_connections() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prlimit not installed: skipped");
        return;
    }
    let data = tempfile::tempdir().expect("data dir");
    let port = crate::binary::free_port();
    let log = data.path().join("stderr.log");
    let mut child = tokio::process::Command::new("prlimit")
        .args(["--nofile=256:256", "--"])
        .arg(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path().join("d"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--amqp-listen", "off", "--sandbox", "none"])
        .env("HERALD_ADMIN_TOKEN", TOKEN)
        .env("HERALD_REQUEST_HEAD_TIMEOUT_MS", "60000")
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_DATABASE")
        .env_remove("HERALD_DATA_DIR")
        .env_remove("HERALD_LISTEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start herald under prlimit");
    let ca = data.path().join("d").join("tls").join("ca.pem");
    let url = format!("https://localhost:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "herald exited: {}",
            crate::binary::tail(&log)
        );
        if let Ok(pem) = std::fs::read(&ca)
            && reqwest::Certificate::from_pem(&pem).is_ok()
            && client_for(&ca).get(&url).send().await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "herald never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // More idle connections than the process has descriptors; the head
    // timeout is a minute, so only the cap protects the server here.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let fresh = client_for(&ca);
        let r = tokio::time::timeout(Duration::from_secs(3), fresh.get(&url).send())
            .await
            .expect("/healthz answers within 3 s with 300 idle connections")
            .unwrap_or_else(|e| panic!("{e}: {}", crate::binary::tail(&log)));
        assert_eq!(r.status(), 200);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("accept failed"),
        "the server ran out of descriptors:\n{text}"
    );
    drop(idle);
}
