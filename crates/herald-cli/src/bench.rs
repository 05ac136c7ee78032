//! `herald bench`: load figures printed by a real client over real HTTPS.
//!
//! Starts Herald in-process on a temp data dir, opens
//! keep-alive HTTP/1.1 connections over TLS and drives one operation for a
//! fixed time per run. Prints each run and the median, so figures in notes
//! come from a command anyone can re-run.

#[path = "bench_automation.rs"]
mod automation;
#[path = "bench_blob.rs"]
mod blob;
#[path = "bench_hubs.rs"]
mod hubs;
#[path = "bench_push.rs"]
mod push;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// GET of the latest version of one secret
    SecretGet,
    /// The same GET with a principal's access token (ES256 JWT from the
    /// token endpoint, `get` access policy) instead of the admin token
    SecretGetToken,
    /// Durable SET (new version) of secrets
    SecretSet,
    /// Durable publish of 100 x 1 KB event batches, with 1, 10 and 100 matching subscriptions
    Publish,
    /// Pull receive (maxEvents 100) + acknowledge on one subscription
    PullReceiveAck,
    /// Single-event publishes from all connections, each pushed alone to a local webhook (end to end)
    Push,
    /// Push delivery of a queued backlog with maxEventsPerBatch 100
    PushBatch,
    /// Publish-to-delivery latency at a steady 500 events/s, and memory
    PushLatency,
    /// Webhook POST until the job is Running (200 sequential calls)
    WebhookRunning,
    /// A trivial bash runbook end to end through ?wait (200 sequential calls)
    WebhookWait,
    /// Sustained trivial jobs per second (1000 webhook calls per run)
    Jobs,
    /// Durable hub ingest over AMQP (TLS): batches of 1,000 events of 100 B, then of 1 KB
    HubIngest,
    /// One AMQP consumer reading a hub partition backlog (--hub-events) from the start
    HubRead,
    /// Hub send-to-receive latency over AMQP at 1,000 events/s
    HubLatency,
    /// 1 KB block blob PUTs, Shared Key signed, over HTTPS keep-alive
    BlobPut,
    /// 1 KB block blob GETs, Shared Key signed, over HTTPS keep-alive
    BlobGet,
    /// A 1 GiB upload in 4 MiB blocks, with peak RSS
    BlobUpload,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// What to measure (repeat to run several)
    #[arg(long = "scenario", value_enum, default_values_t = vec![Scenario::SecretGet, Scenario::SecretSet, Scenario::Publish, Scenario::PullReceiveAck])]
    scenarios: Vec<Scenario>,
    /// Concurrent keep-alive connections
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per run
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs per scenario; the median is reported
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Subscription counts for the publish scenario
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 10, 100])]
    subscriptions: Vec<usize>,
    /// Events queued (and then drained) per run of the pull scenario
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Storage URL [default: SQLite in a temp dir]; postgres://... benchmarks PostgreSQL
    #[arg(long)]
    database: Option<String>,
    /// Herald nodes sharing the database (PostgreSQL only); connections are spread over them
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// AMQP connections (one sender link each, on its own partition) for hub-ingest
    #[arg(long, default_value_t = 2)]
    amqp_connections: usize,
    /// Backlog (events of 100 B) the hub-read consumer reads per run
    #[arg(long, default_value_t = 1_000_000)]
    hub_events: u64,
}

const TOKEN: &str = "hrd_bench_token_0123456789abcdef";

pub(crate) struct Target {
    addrs: Vec<SocketAddr>,
    next: AtomicU64,
    host: String,
    tls: TlsConnector,
    /// The first node's AMQP (TLS) listener.
    amqp: Option<SocketAddr>,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Warnings and errors only (RUST_LOG overrides), so figures stay readable.
    if std::env::var_os("RUST_LOG").is_none() {
        crate::serve::init_logging_with("warn");
    } else {
        crate::serve::init_logging("text");
    }
    if args.nodes > 1
        && !args
            .database
            .as_deref()
            .is_some_and(|d| d.starts_with("postgres"))
    {
        return Err(anyhow!("--nodes > 1 needs --database postgres://..."));
    }
    // Nodes of one database share the master key, as in production.
    let master_key = {
        use base64::Engine;
        let mut k = [0u8; 32];
        for (i, b) in uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .chain(uuid::Uuid::new_v4().as_bytes())
            .enumerate()
        {
            k[i] = *b;
        }
        base64::engine::general_purpose::STANDARD.encode(k)
    };
    let mut dirs = Vec::new();
    let mut infos = Vec::new();
    let shutdown = CancellationToken::new();
    let mut servings = Vec::new();
    for _ in 0..args.nodes.max(1) {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let config = herald_server::Config {
            data_dir: dir.path().to_path_buf(),
            listen: listener.local_addr()?,
            admin_token: Some(TOKEN.into()),
            master_key: Some(master_key.clone()),
            database: args.database.clone(),
            delivery_allowed_cidrs: vec!["127.0.0.0/8".into()],
            amqp_listen: "127.0.0.1:0".into(),
            ..Default::default()
        };
        let server = herald_node::Node::build(config, listener).await?;
        infos.push(server.info.clone());
        servings.push(tokio::spawn(server.serve(shutdown.clone())));
        dirs.push(dir);
    }
    let info = infos[0].clone();

    let mut roots = rustls::RootCertStore::empty();
    for i in &infos {
        let ca = i
            .ca_path
            .clone()
            .ok_or_else(|| anyhow!("bench needs the generated CA"))?;
        for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(&ca)?)) {
            let cert: CertificateDer<'static> = cert?;
            roots.add(cert)?;
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let target = Arc::new(Target {
        addrs: infos.iter().map(|i| i.addr).collect(),
        next: AtomicU64::new(0),
        host: "localhost".into(),
        tls: TlsConnector::from(Arc::new(client)),
        amqp: info.amqp_addr,
    });

    println!(
        "herald bench: {} connections, {} runs x {:.1}s, {} node(s) in-process from {} (storage: {})",
        args.connections,
        args.runs,
        args.seconds,
        infos.len(),
        info.addr,
        info.storage
    );
    for scenario in &args.scenarios {
        if *scenario == Scenario::Publish {
            for &subs in &args.subscriptions {
                let topic = format!("bench-pub-{subs}");
                setup_topic(&target, &topic, subs).await?;
                let body = event_batch(100);
                let path = format!("/topics/{topic}/api/events?api-version=2018-01-01");
                let rates = measure(&target, &args, "publish", move |_| {
                    (Method::POST, path.clone(), body.clone())
                })
                .await?;
                let events: Vec<f64> = rates.iter().map(|r| r * 100.0).collect();
                report(&format!("Publish ({subs} subs)"), &events, "events/s");
            }
            continue;
        }
        if matches!(
            scenario,
            Scenario::Push | Scenario::PushBatch | Scenario::PushLatency
        ) {
            push::run(&target, &args, *scenario).await?;
            continue;
        }
        if matches!(
            scenario,
            Scenario::WebhookRunning | Scenario::WebhookWait | Scenario::Jobs
        ) {
            automation::run(&target, &args, *scenario).await?;
            continue;
        }
        if matches!(
            scenario,
            Scenario::HubIngest | Scenario::HubRead | Scenario::HubLatency
        ) {
            hubs::run(&target, &args, *scenario).await?;
            continue;
        }
        if matches!(
            scenario,
            Scenario::BlobPut | Scenario::BlobGet | Scenario::BlobUpload
        ) {
            blob::run(&target, &args, *scenario).await?;
            continue;
        }
        if *scenario == Scenario::PullReceiveAck {
            setup_topic(&target, "bench-pull", 1).await?;
            let mut rates = Vec::new();
            for _ in 0..args.runs {
                fill(&target, "bench-pull", args.backlog).await?;
                rates.push(drain(&target, "bench-pull", "sub-0", args.backlog, 4).await?);
            }
            report("PullReceiveAck", &rates, "events/s");
            continue;
        }
        let rates = match scenario {
            Scenario::SecretGet => {
                one_request(
                    &target,
                    Method::PUT,
                    "/secrets/bench?api-version=7.6",
                    r#"{"value":"benchmark-value"}"#,
                )
                .await?;
                measure(&target, &args, "secret-get", |_| {
                    (
                        Method::GET,
                        "/secrets/bench/?api-version=7.6".into(),
                        Bytes::new(),
                    )
                })
                .await?
            }
            Scenario::SecretGetToken => {
                one_request(
                    &target,
                    Method::PUT,
                    "/secrets/bench?api-version=7.6",
                    r#"{"value":"benchmark-value"}"#,
                )
                .await?;
                let token: Arc<str> = principal_token(&target).await?.into();
                measure_as(&target, &args, "secret-get-token", token, |_| {
                    (
                        Method::GET,
                        "/secrets/bench/?api-version=7.6".into(),
                        Bytes::new(),
                    )
                })
                .await?
            }
            Scenario::Publish
            | Scenario::PullReceiveAck
            | Scenario::Push
            | Scenario::PushBatch
            | Scenario::PushLatency
            | Scenario::WebhookRunning
            | Scenario::WebhookWait
            | Scenario::Jobs
            | Scenario::HubIngest
            | Scenario::HubRead
            | Scenario::HubLatency
            | Scenario::BlobPut
            | Scenario::BlobGet
            | Scenario::BlobUpload => continue,
            Scenario::SecretSet => {
                measure(&target, &args, "secret-set", |i| {
                    (
                        Method::PUT,
                        format!("/secrets/bench-{}?api-version=7.6", i % 256),
                        Bytes::from_static(
                            br#"{"value":"a new benchmark value","contentType":"text/plain"}"#,
                        ),
                    )
                })
                .await?
            }
        };
        report(&format!("{scenario:?}"), &rates, "req/s");
    }
    shutdown.cancel();
    for s in servings {
        let _ = s.await;
    }
    drop(dirs);
    Ok(())
}

/// One request on a fresh connection; returns status and body.
async fn call(
    t: &Target,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let mut s = connect(t).await?;
    let resp = s.send_request(request(t, method, path, body)?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A topic with `subs` Queue subscriptions that match every event.
async fn setup_topic(t: &Target, topic: &str, subs: usize) -> anyhow::Result<()> {
    let (status, _) = call(
        t,
        Method::POST,
        "/api/v1/topics",
        Bytes::from(format!(r#"{{"name":"{topic}"}}"#)),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "creating topic {topic}: {status}");
    for i in 0..subs {
        let (status, _) = call(
            t,
            Method::PUT,
            &format!("/api/v1/topics/{topic}/eventSubscriptions/sub-{i}"),
            Bytes::from_static(br#"{"deliveryConfiguration":{"deliveryMode":"Queue","queue":{"receiveLockDurationInSeconds":300}}}"#),
        )
        .await?;
        anyhow::ensure!(status.is_success(), "creating subscription: {status}");
    }
    Ok(())
}

/// `n` Event Grid events of about 1 KB each, as one publish body.
fn event_batch(n: usize) -> Bytes {
    let pad = "x".repeat(800);
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("evt-{i}"), "eventType": "Bench.Event", "subject": format!("/bench/{i}"),
                "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1.0",
                "data": {"index": i, "payload": pad},
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&events).unwrap_or_default())
}

/// Publishes `total` events in batches of 100 from 8 connections.
pub(crate) async fn fill(t: &Arc<Target>, topic: &str, total: u64) -> anyhow::Result<()> {
    let body = event_batch(100);
    let batches = total.div_ceil(100);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (t, body, next) = (t.clone(), body.clone(), next.clone());
        let path = format!("/topics/{topic}/api/events?api-version=2018-01-01");
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t).await?;
            while next.fetch_add(1, Ordering::Relaxed) < batches {
                let resp = s
                    .send_request(request(&t, Method::POST, &path, body.clone())?)
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "publish failed: {}",
                    resp.status()
                );
                let _ = resp.into_body().collect().await;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct ReceiveResult {
    value: Vec<ReceiveItem>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiveItem {
    broker_properties: Broker,
    #[serde(rename = "event")]
    _event: serde::de::IgnoredAny,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Broker {
    lock_token: String,
}

/// Receives (100 at a time) and acknowledges until `total` events are
/// settled; returns events per second.
async fn drain(
    t: &Arc<Target>,
    topic: &str,
    sub: &str,
    total: u64,
    receivers: usize,
) -> anyhow::Result<f64> {
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let (t, acked) = (t.clone(), acked.clone());
        let receive = format!(
            "/topics/{topic}/eventsubscriptions/{sub}:receive?api-version=2024-06-01&maxEvents=100&maxWaitTime=0"
        );
        let ack =
            format!("/topics/{topic}/eventsubscriptions/{sub}:acknowledge?api-version=2024-06-01");
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t).await?;
            while acked.load(Ordering::Relaxed) < total {
                let resp = s
                    .send_request(request(&t, Method::POST, &receive, Bytes::new())?)
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "receive failed: {}",
                    resp.status()
                );
                let body = resp.into_body().collect().await?.to_bytes();
                // Typed and skipping the events, so the client spends little CPU.
                let v: ReceiveResult = serde_json::from_slice(&body)?;
                let tokens: Vec<String> = v
                    .value
                    .into_iter()
                    .map(|e| e.broker_properties.lock_token)
                    .collect();
                if tokens.is_empty() {
                    if start.elapsed() > Duration::from_secs(120) {
                        anyhow::bail!("drain stalled");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let n = tokens.len() as u64;
                let body = Bytes::from(serde_json::to_vec(
                    &serde_json::json!({ "lockTokens": tokens }),
                )?);
                let resp = s
                    .send_request(request(&t, Method::POST, &ack, body)?)
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "acknowledge failed: {}",
                    resp.status()
                );
                let _ = resp.into_body().collect().await;
                acked.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(acked.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

pub(crate) fn report(name: &str, rates: &[f64], unit: &str) {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "{name:<20} median {median:>10.0} {unit}   runs: [{}]",
        runs.join(", ")
    );
}

pub(crate) async fn connect(
    t: &Target,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    // Connections are spread over the nodes, as a load balancer would.
    let i = t.next.fetch_add(1, Ordering::Relaxed) as usize % t.addrs.len();
    let tcp = tokio::net::TcpStream::connect(t.addrs[i]).await?;
    tcp.set_nodelay(true)?;
    let tls = t
        .tls
        .connect(ServerName::try_from(t.host.clone())?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

pub(crate) fn request(
    t: &Target,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    request_as(t, method, path, body, TOKEN)
}

fn request_as(
    t: &Target,
    method: Method,
    path: &str,
    body: Bytes,
    token: &str,
) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header(
            http::header::HOST,
            format!("{}:{}", t.host, t.addrs[0].port()),
        )
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?)
}

async fn one_request(
    t: &Target,
    method: Method,
    path: &str,
    body: &'static str,
) -> anyhow::Result<()> {
    let mut s = connect(t).await?;
    let resp = s
        .send_request(request(
            t,
            method,
            path,
            Bytes::from_static(body.as_bytes()),
        )?)
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "setup request failed: {}",
        resp.status()
    );
    Ok(())
}

/// A principal with a `get` policy on the default vault, and its token.
async fn principal_token(t: &Target) -> anyhow::Result<String> {
    let json = |(status, body): (http::StatusCode, Bytes)| -> anyhow::Result<serde_json::Value> {
        anyhow::ensure!(status.is_success(), "setup request failed: {status}");
        Ok(serde_json::from_slice(&body)?)
    };
    let p = json(
        call(
            t,
            Method::POST,
            "/api/v1/principals",
            Bytes::from_static(br#"{"displayName":"bench"}"#),
        )
        .await?,
    )?;
    let app = p["appId"].as_str().unwrap_or_default().to_owned();
    let tenant = p["tenantId"].as_str().unwrap_or_default().to_owned();
    let s = json(
        call(
            t,
            Method::POST,
            &format!("/api/v1/principals/{app}/secrets"),
            Bytes::new(),
        )
        .await?,
    )?;
    let secret = s["secretText"].as_str().unwrap_or_default().to_owned();
    json(
        call(
            t,
            Method::PUT,
            &format!("/api/v1/vaults/default/accessPolicies/{app}"),
            Bytes::from_static(br#"{"permissions":{"secrets":["get"]}}"#),
        )
        .await?,
    )?;
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &app)
        .append_pair("client_secret", &secret)
        .append_pair("scope", "https://vault.azure.net/.default")
        .finish();
    let tok = json(
        call(
            t,
            Method::POST,
            &format!("/{tenant}/oauth2/v2.0/token"),
            Bytes::from(form),
        )
        .await?,
    )?;
    Ok(tok["access_token"].as_str().unwrap_or_default().to_owned())
}

async fn measure<F>(
    t: &Arc<Target>,
    args: &BenchArgs,
    label: &str,
    make: F,
) -> anyhow::Result<Vec<f64>>
where
    F: Fn(u64) -> (Method, String, Bytes) + Send + Sync + 'static + Clone,
{
    measure_as(t, args, label, TOKEN.into(), make).await
}

async fn measure_as<F>(
    t: &Arc<Target>,
    args: &BenchArgs,
    label: &str,
    token: Arc<str>,
    make: F,
) -> anyhow::Result<Vec<f64>>
where
    F: Fn(u64) -> (Method, String, Bytes) + Send + Sync + 'static + Clone,
{
    let mut rates = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            let t = t.clone();
            let done = done.clone();
            let failed = failed.clone();
            let make = make.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = connect(&t).await?;
                let mut i = c as u64 * 1_000_003;
                while Instant::now() < deadline {
                    let (m, p, b) = make(i);
                    i += 1;
                    let resp = s.send_request(request_as(&t, m, &p, b, &token)?).await?;
                    let ok = resp.status().is_success();
                    // Drain the body so the connection can be reused.
                    let _ = resp.into_body().collect().await;
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await.context("bench connection task")??;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = done.load(Ordering::Relaxed) as f64 / elapsed;
        let failures = failed.load(Ordering::Relaxed);
        anyhow::ensure!(
            failures == 0,
            "{label}: {failures} requests failed during run {run}"
        );
        rates.push(rate);
    }
    Ok(rates)
}

/// This process's resident set (server and bench client together).
pub(crate) fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
