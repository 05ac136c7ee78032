//! Push-delivery benchmarks: a local receiver answering 200 at once, and
//! Herald pushing to it over plain HTTP on loopback.

use super::{BenchArgs, Scenario, Target, call, connect, report, request, rss_mb};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use http::Method;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The clock events carry, so the receiver can compute publish→delivery latency.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[derive(Default)]
struct Sink {
    received: AtomicU64,
    /// Answer the validation event with the code (sync) or not (manual).
    manual: std::sync::atomic::AtomicBool,
    validation_url: Mutex<Option<String>>,
    latencies_us: Mutex<Vec<u64>>,
    record_latency: std::sync::atomic::AtomicBool,
}

#[derive(serde::Deserialize)]
struct Probe {
    data: ProbeData,
}

#[derive(serde::Deserialize)]
struct ProbeData {
    #[serde(default)]
    sent_us: u64,
}

async fn hook(
    State(sink): State<Arc<Sink>>,
    headers: HeaderMap,
    body: Bytes,
) -> (http::StatusCode, String) {
    if headers.get("aeg-event-type").and_then(|v| v.to_str().ok()) == Some("SubscriptionValidation")
    {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let code = v[0]["data"]["validationCode"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if sink.manual.load(Ordering::Relaxed) {
            *sink
                .validation_url
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                v[0]["data"]["validationUrl"].as_str().map(str::to_owned);
            return (http::StatusCode::OK, String::new());
        }
        return (
            http::StatusCode::OK,
            serde_json::json!({ "validationResponse": code }).to_string(),
        );
    }
    let now = epoch().elapsed().as_micros() as u64;
    if sink.record_latency.load(Ordering::Relaxed) {
        if let Ok(events) = serde_json::from_slice::<Vec<Probe>>(&body) {
            let mut l = sink.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                l.push(now.saturating_sub(e.data.sent_us));
            }
            sink.received
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        }
    } else {
        // Counting objects by their "id" key is enough and cheap.
        let n = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body).map_or(1, |v| v.len());
        sink.received.fetch_add(n as u64, Ordering::Relaxed);
    }
    (http::StatusCode::OK, String::new())
}

async fn start_sink() -> anyhow::Result<(Arc<Sink>, String)> {
    let sink = Arc::new(Sink::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((sink, url))
}

async fn webhook_subscription(
    t: &Target,
    topic: &str,
    url: &str,
    batch: u32,
) -> anyhow::Result<String> {
    let (status, _) = call(
        t,
        Method::POST,
        "/api/v1/topics",
        Bytes::from(format!(r#"{{"name":"{topic}"}}"#)),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "creating topic: {status}");
    let body = serde_json::json!({"destination": {"endpointType": "WebHook",
        "properties": {"endpointUrl": url, "maxEventsPerBatch": batch, "preferredBatchSizeInKilobytes": 1024}}});
    let (status, resp) = call(
        t,
        Method::PUT,
        &format!("/api/v1/topics/{topic}/eventSubscriptions/push"),
        Bytes::from(body.to_string()),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "creating subscription: {status}");
    let v: serde_json::Value = serde_json::from_slice(&resp)?;
    Ok(v["provisioningState"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn single_event(i: u64, with_time: bool) -> Bytes {
    let sent = if with_time {
        epoch().elapsed().as_micros() as u64
    } else {
        0
    };
    Bytes::from(format!(
        r#"[{{"id":"e-{i}","eventType":"Bench.Push","subject":"/bench","eventTime":"2026-01-01T00:00:00Z","dataVersion":"1","data":{{"sent_us":{sent},"pad":"{}"}}}}]"#,
        "x".repeat(200)
    ))
}

async fn wait_for(sink: &Sink, total: u64, limit: Duration) -> anyhow::Result<Instant> {
    let start = Instant::now();
    while sink.received.load(Ordering::Relaxed) < total {
        anyhow::ensure!(
            start.elapsed() < limit,
            "only {} of {total} events arrived",
            sink.received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Instant::now())
}

pub(crate) async fn run(
    t: &Arc<Target>,
    args: &BenchArgs,
    scenario: Scenario,
) -> anyhow::Result<()> {
    let _ = epoch();
    match scenario {
        Scenario::Push => {
            let (sink, url) = start_sink().await?;
            let state = webhook_subscription(t, "bench-push", &url, 1).await?;
            anyhow::ensure!(state == "Succeeded", "subscription is {state}");
            let mut rates = Vec::new();
            for _ in 0..args.runs {
                let before = sink.received.load(Ordering::Relaxed);
                let published = Arc::new(AtomicU64::new(0));
                let start = Instant::now();
                let deadline = start + Duration::from_secs_f64(args.seconds);
                let mut tasks = Vec::new();
                for c in 0..args.connections {
                    let (t, published) = (t.clone(), published.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut s = connect(&t).await?;
                        let mut i = c as u64 * 10_000_000;
                        while Instant::now() < deadline {
                            i += 1;
                            let req = request(
                                &t,
                                Method::POST,
                                "/topics/bench-push/api/events?api-version=2018-01-01",
                                single_event(i, false),
                            )?;
                            let resp = s.send_request(req).await?;
                            anyhow::ensure!(
                                resp.status().is_success(),
                                "publish failed: {}",
                                resp.status()
                            );
                            let _ = resp.into_body().collect().await;
                            published.fetch_add(1, Ordering::Relaxed);
                        }
                        anyhow::Ok(())
                    }));
                }
                for task in tasks {
                    task.await??;
                }
                let total = before + published.load(Ordering::Relaxed);
                let done = wait_for(&sink, total, Duration::from_secs(120)).await?;
                rates.push((total - before) as f64 / done.duration_since(start).as_secs_f64());
            }
            report("Push (e2e, 1/req)", &rates, "events/s");
        }
        Scenario::PushBatch => {
            let mut rates = Vec::new();
            for run in 0..args.runs {
                let (sink, url) = start_sink().await?;
                sink.manual.store(true, Ordering::Relaxed);
                let topic = format!("bench-batch-{run}");
                // Held in AwaitingManualAction while the backlog is published.
                let state = webhook_subscription(t, &topic, &url, 100).await?;
                anyhow::ensure!(state == "AwaitingManualAction", "subscription is {state}");
                super::fill(t, &topic, args.backlog).await?;
                let link = sink
                    .validation_url
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no validation link received"))?;
                let path = link
                    .split_once("://")
                    .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_owned()))
                    .unwrap_or_default();
                let start = Instant::now();
                let (status, _) = call(t, Method::GET, &path, Bytes::new()).await?;
                anyhow::ensure!(status.is_success(), "manual validation failed: {status}");
                let done = wait_for(&sink, args.backlog, Duration::from_secs(300)).await?;
                rates.push(args.backlog as f64 / done.duration_since(start).as_secs_f64());
            }
            report("Push (batches of 100)", &rates, "events/s");
        }
        Scenario::PushLatency => {
            let (sink, url) = start_sink().await?;
            sink.record_latency.store(true, Ordering::Relaxed);
            let state = webhook_subscription(t, "bench-latency", &url, 1).await?;
            anyhow::ensure!(state == "Succeeded", "subscription is {state}");
            let total = (500.0 * args.seconds * args.runs as f64) as u64;
            let mut s = connect(t).await?;
            let mut publish_us: Vec<u64> = Vec::with_capacity(total as usize);
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..total {
                tick.tick().await;
                let req = request(
                    t,
                    Method::POST,
                    "/topics/bench-latency/api/events?api-version=2018-01-01",
                    single_event(i, true),
                )?;
                let sent = Instant::now();
                s.ready().await?;
                let resp = s.send_request(req).await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "publish failed: {}",
                    resp.status()
                );
                let _ = resp.into_body().collect().await;
                publish_us.push(sent.elapsed().as_micros() as u64);
            }
            publish_us.sort_unstable();
            println!(
                "{:<20} publish p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
                "",
                publish_us[publish_us.len() / 2] as f64 / 1000.0,
                publish_us[publish_us.len() * 99 / 100] as f64 / 1000.0,
                publish_us[publish_us.len() - 1] as f64 / 1000.0
            );
            wait_for(&sink, total, Duration::from_secs(60)).await?;
            let mut l = sink
                .latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            l.sort_unstable();
            let pct = |p: f64| {
                l.get(((l.len() as f64 - 1.0) * p) as usize)
                    .copied()
                    .unwrap_or(0) as f64
                    / 1000.0
            };
            println!(
                "{:<20} p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({} events at 500/s)   RSS {:.0} MB (server + bench client)",
                "Push latency",
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(1.0),
                l.len(),
                rss_mb()
            );
        }
        _ => {}
    }
    Ok(())
}
