//! kill -9 durability of push delivery, with the real binary: 20,000 events
//! are published to a topic whose WebHook subscription points at an
//! in-process receiver that counts event ids; Herald is SIGKILLed while
//! publishers and deliveries are both in full flow, then restarted on the
//! same data dir and port. Every event whose publish was answered 200
//! arrives at least once; duplicates (same id delivered again) are counted
//! and printed.

use crate::binary::{Herald, free_port, start};
use crate::helpers::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const TOPIC: &str = "pushcrash";
/// Loopback receivers need the allow-list; retries are compressed.
const PUSH_ARGS: &[&str] = &[
    "--delivery-allowed-cidrs",
    "127.0.0.0/8",
    "--delivery-retry-scale",
    "0.001",
];
const SUB: &str = "hook";
const EVENTS: usize = 20_000;
const PUBLISH_BATCH: usize = 50;
const PUBLISHERS: usize = 8;
const MAX_EVENTS_PER_BATCH: u64 = 10;
/// Kill once this many events were acknowledged, and either this many
/// were delivered or publishing is close to its end.
const KILL_AFTER_CONFIRMED: usize = 6_000;
const KILL_AFTER_DELIVERED: usize = 3_000;
const KILL_BEFORE_CONFIRMED: usize = 16_000;
/// Pause between one publisher's batches, so that deliveries run alongside
/// publishing (unpaced, publishing starves delivery and the kill would
/// land before much was pushed).
const PUBLISH_PACE: Duration = Duration::from_millis(40);
/// Events claimed as retries when the kill lands stay locked for the
/// engine's in-flight lock (120 s, not scaled by --delivery-retry-scale),
/// so allow a little more than that after the restart.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(150);
/// First deliveries later than this after the restart are reported as late.
const LATE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The counting receiver

#[derive(Default)]
struct Counts {
    /// Delivery count and first arrival per event id.
    ids: Mutex<HashMap<String, (u32, Instant)>>,
    posts: AtomicUsize,
    events: AtomicUsize,
}

async fn hook(State(counts): State<Arc<Counts>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if headers.get("aeg-event-type").and_then(|v| v.to_str().ok()) == Some("SubscriptionValidation")
    {
        let code = body[0]["data"]["validationCode"].clone();
        return axum::Json(json!({ "validationResponse": code })).into_response();
    }
    let Value::Array(events) = body else {
        return (axum::http::StatusCode::BAD_REQUEST, "expected a JSON array").into_response();
    };
    counts.posts.fetch_add(1, Ordering::Relaxed);
    counts.events.fetch_add(events.len(), Ordering::Relaxed);
    let mut ids = counts.ids.lock().expect("ids");
    for e in &events {
        if let Some(id) = e["id"].as_str() {
            ids.entry(id.to_owned())
                .or_insert_with(|| (0, Instant::now()))
                .0 += 1;
        }
    }
    axum::http::StatusCode::OK.into_response()
}

async fn start_receiver(counts: Arc<Counts>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(counts);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("receiver serves");
    });
    format!("http://{addr}/hook")
}

// ---------------------------------------------------------------------------
fn batch_body(ids: &[String]) -> String {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"id": id, "eventType": "push.crash.test", "subject": "orders/1",
                   "eventTime": "2024-01-01T00:00:00Z", "data": {"id": id}, "dataVersion": "1"})
        })
        .collect();
    Value::Array(events).to_string()
}

/// What one publisher saw.
#[derive(Default)]
struct Published {
    /// Events of batches answered 200.
    confirmed: Vec<String>,
    /// Batches whose outcome was unknown (the connection died); they were
    /// published again until a 200 came back.
    republished: usize,
}

#[tokio::test]
async fn acknowledged_events_are_pushed_after_kill_9() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("log dir");
    let data: PathBuf = data_dir.path().to_path_buf();
    let port = free_port();
    let counts = Arc::new(Counts::default());
    let endpoint = start_receiver(counts.clone()).await;
    let herald = start(&data, port, logs.path(), 1, PUSH_ARGS).await;

    // A topic and a validated WebHook subscription to the receiver.
    let r = herald
        .req(
            herald
                .client
                .post(format!("{}/api/v1/topics", herald.origin))
                .bearer_auth(TOKEN)
                .json(&json!({ "name": TOPIC })),
        )
        .await;
    r.expect(201);
    let r = herald
        .req(
            herald
                .client
                .put(format!(
                    "{}/api/v1/topics/{TOPIC}/eventSubscriptions/{SUB}",
                    herald.origin
                ))
                .bearer_auth(TOKEN)
                .json(
                    &json!({"destination": {"endpointType": "WebHook", "properties": {
                    "endpointUrl": endpoint, "maxEventsPerBatch": MAX_EVENTS_PER_BATCH}}}),
                ),
        )
        .await;
    assert_eq!(
        r.expect(201)["provisioningState"],
        "Succeeded",
        "{}",
        r.text
    );
    let r = herald
        .req(
            herald
                .client
                .get(format!("{}/api/v1/topics/{TOPIC}/keys", herald.origin))
                .bearer_auth(TOKEN),
        )
        .await;
    let key = r.expect(200)["key1"].as_str().expect("key1").to_owned();
    let url = format!(
        "{}/topics/{TOPIC}/api/events?api-version=2018-01-01",
        herald.origin
    );

    // Publishers: each sends its share in batches and retries a batch until
    // it is answered 200, so they ride through the kill and the restart.
    let confirmed_events = Arc::new(AtomicUsize::new(0));
    let mut publishers = tokio::task::JoinSet::new();
    let batches = EVENTS / PUBLISH_BATCH;
    for worker in 0..PUBLISHERS {
        let (client, url, key) = (herald.client.clone(), url.clone(), key.clone());
        let confirmed_events = confirmed_events.clone();
        publishers.spawn(async move {
            let mut out = Published::default();
            let deadline = Instant::now() + Duration::from_secs(180);
            for b in (worker..batches).step_by(PUBLISHERS) {
                let ids: Vec<String> = (0..PUBLISH_BATCH)
                    .map(|i| format!("ev-{:05}", b * PUBLISH_BATCH + i))
                    .collect();
                let body = batch_body(&ids);
                let mut tries = 0;
                loop {
                    tries += 1;
                    let sent = client
                        .post(&url)
                        .header("aeg-sas-key", &key)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let status = match sent {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            resp.bytes().await.ok().map(|_| status)
                        }
                        Err(_) => None,
                    };
                    match status {
                        Some(200) => break,
                        Some(s) if s < 500 => panic!("batch {b} refused with {s}"),
                        // Unknown outcome (or a 5xx while the server is
                        // going down): send the same events again.
                        _ => {
                            assert!(
                                Instant::now() < deadline,
                                "batch {b} never accepted ({tries} tries)"
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if tries > 1 {
                    out.republished += 1;
                }
                tokio::time::sleep(PUBLISH_PACE).await;
                confirmed_events.fetch_add(ids.len(), Ordering::SeqCst);
                out.confirmed.extend(ids);
            }
            out
        });
    }

    // SIGKILL while publishing and delivering are both under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (acked, delivered) = (
            confirmed_events.load(Ordering::SeqCst),
            counts.events.load(Ordering::SeqCst),
        );
        if acked >= KILL_AFTER_CONFIRMED
            && delivered > 0
            && (delivered >= KILL_AFTER_DELIVERED || acked >= KILL_BEFORE_CONFIRMED)
        {
            break;
        }
        assert!(Instant::now() < deadline, "publishing made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("SIGKILL herald");
    let status = child.wait().await.expect("reap herald");
    assert!(
        !status.success(),
        "herald was killed, not stopped: {status}"
    );
    let confirmed_at_kill = confirmed_events.load(Ordering::SeqCst);
    let delivered_at_kill = counts.events.load(Ordering::SeqCst);
    assert!(
        confirmed_at_kill < EVENTS,
        "the kill landed after publishing ended ({confirmed_at_kill} confirmed)"
    );

    // Restart on the same data dir and port; the publishers carry on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let herald = start(&data, port, logs.path(), 2, PUSH_ARGS).await;
    let restarted = Instant::now();
    let mut confirmed: BTreeSet<String> = BTreeSet::new();
    let mut republished = 0;
    while let Some(p) = publishers.join_next().await {
        let p = p.expect("publisher");
        republished += p.republished;
        confirmed.extend(p.confirmed);
    }
    assert_eq!(confirmed.len(), EVENTS, "every batch is finally accepted");

    // Every acknowledged event arrives at least once.
    let deadline = restarted + DELIVERY_DEADLINE;
    let missing = loop {
        let missing: Vec<String> = {
            let ids = counts.ids.lock().expect("ids");
            confirmed
                .iter()
                .filter(|id| !ids.contains_key(id.as_str()))
                .cloned()
                .collect()
        };
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all_delivered_after = restarted.elapsed();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never arrived within {DELIVERY_DEADLINE:?} of the restart, \
         e.g. {:?}",
        missing.len(),
        confirmed.len(),
        &missing[..missing.len().min(20)]
    );
    // Let stragglers (late redeliveries) land before counting duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (unique, duplicates, max_copies, unknown, late) = {
        let ids = counts.ids.lock().expect("ids");
        let duplicates: u32 = ids.values().map(|(c, _)| c - 1).sum();
        let max_copies = ids.values().map(|(c, _)| *c).max().unwrap_or(0);
        let late = ids
            .values()
            .filter(|(_, first)| *first > restarted + LATE)
            .count();
        let unknown: Vec<String> = ids
            .keys()
            .filter(|id| !confirmed.contains(id.as_str()))
            .cloned()
            .collect();
        (ids.len(), duplicates, max_copies, unknown, late)
    };
    assert!(unknown.is_empty(), "unknown events delivered: {unknown:?}");
    println!(
        "push crash: {EVENTS} events published by {PUBLISHERS} publishers in batches of \
         {PUBLISH_BATCH} (maxEventsPerBatch {MAX_EVENTS_PER_BATCH}); killed at {confirmed_at_kill} \
         acknowledged / {delivered_at_kill} delivered; {republished} batches re-published after an \
         unknown outcome; all {unique} ids delivered {:.1} s after the restart in {} POSTs carrying \
         {} events; {late} ids first arrived more than {LATE:?} after the restart; \
         duplicates: {duplicates} (max {max_copies} copies of one id)",
        all_delivered_after.as_secs_f64(),
        counts.posts.load(Ordering::SeqCst),
        counts.events.load(Ordering::SeqCst),
    );
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("stop herald");
    let _ = child.wait().await;
}
