//! The client against local receivers: the guard at the URL check and at
//! connect time, redirects, body bounds, Retry-After and failure kinds.

use super::*;
use axum::Router;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::routing::{any, get, post};
use chrono::DateTime;

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
