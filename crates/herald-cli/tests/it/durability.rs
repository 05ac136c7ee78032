//! kill -9 durability of the event router, with the real binary: every
//! publish that was answered 200 survives a SIGKILL that lands while
//! publishers are still running, and is delivered after the restart.

use crate::binary::{Herald, free_port, start};
use crate::helpers::*;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const TOPIC: &str = "orders";
const SUB: &str = "pull";
const BATCH: usize = 10;

impl Herald {
    async fn key(&self) -> String {
        let r = self
            .req(
                self.client
                    .get(format!("{}/api/v1/topics/{TOPIC}/keys", self.origin))
                    .bearer_auth(TOKEN),
            )
            .await;
        r.expect(200)["key1"].as_str().expect("key1").to_owned()
    }

    async fn receive(&self, key: &str) -> Vec<Value> {
        let url = format!(
            "{}/topics/{TOPIC}/eventsubscriptions/{SUB}:receive?api-version=2024-06-01&maxEvents=100&maxWaitTime=1",
            self.origin
        );
        let r = self
            .req(self.client.post(url).header("aeg-sas-key", key))
            .await;
        r.expect(200)["value"].as_array().expect("value").clone()
    }

    async fn acknowledge(&self, key: &str, items: &[Value]) {
        let tokens: Vec<&str> = items
            .iter()
            .map(|i| i["brokerProperties"]["lockToken"].as_str().expect("token"))
            .collect();
        let url = format!(
            "{}/topics/{TOPIC}/eventsubscriptions/{SUB}:acknowledge?api-version=2024-06-01",
            self.origin
        );
        let r = self
            .req(
                self.client
                    .post(url)
                    .header("aeg-sas-key", key)
                    .json(&json!({ "lockTokens": tokens })),
            )
            .await;
        let b = r.expect(200);
        assert_eq!(b["succeededLockTokens"], json!(tokens), "{}", r.text);
        assert_eq!(b["failedLockTokens"], json!([]), "{}", r.text);
    }

    /// Receives and acknowledges until a receive comes back empty; returns
    /// the ids in delivery order.
    async fn drain(&self, key: &str, limit: Option<usize>) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            if limit.is_some_and(|l| ids.len() >= l) {
                return ids;
            }
            let items = self.receive(key).await;
            if items.is_empty() {
                return ids;
            }
            self.acknowledge(key, &items).await;
            ids.extend(
                items
                    .iter()
                    .map(|i| i["event"]["id"].as_str().expect("id").to_owned()),
            );
        }
    }
}

fn batch(prefix: &str) -> (Vec<String>, Value) {
    let ids: Vec<String> = (0..BATCH).map(|i| format!("{prefix}-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"id": id, "eventType": "durability.test", "subject": "orders/1",
                   "eventTime": "2024-01-01T00:00:00Z", "data": {"id": id}})
        })
        .collect();
    (ids, Value::Array(events))
}

/// What one publisher saw: batches answered 200, and the one batch that
/// was in flight when the connection died (its fate is unknown).
#[derive(Default)]
struct Outcome {
    confirmed: Vec<Vec<String>>,
    in_flight: Vec<Vec<String>>,
    statuses: Vec<u16>,
}

#[tokio::test]
async fn acknowledged_publishes_survive_kill_9() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("log dir");
    let data: PathBuf = data_dir.path().to_path_buf();
    let port = free_port();
    let herald = start(&data, port, logs.path(), 1, &[]).await;

    // A topic and a Queue subscription.
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
                .json(&json!({"deliveryConfiguration": {"deliveryMode": "Queue"}})),
        )
        .await;
    r.expect(201);
    let key = herald.key().await;
    let url = format!(
        "{}/topics/{TOPIC}/api/events?api-version=2018-01-01",
        herald.origin
    );

    // Phase 1: 200 events in 20 batches from 8 concurrent publishers.
    let mut first: BTreeSet<String> = BTreeSet::new();
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        let (client, url, key) = (herald.client.clone(), url.clone(), key.clone());
        set.spawn(async move {
            let mut ids = Vec::new();
            for b in (worker..20).step_by(8) {
                let (batch_ids, body) = batch(&format!("first-{b}"));
                let r = read(
                    client
                        .post(&url)
                        .header("aeg-sas-key", &key)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("publish reaches the server"),
                )
                .await;
                assert_eq!(r.status, 200, "batch {b}: {}", r.text);
                ids.extend(batch_ids);
            }
            ids
        });
    }
    while let Some(ids) = set.join_next().await {
        first.extend(ids.expect("publisher"));
    }
    assert_eq!(first.len(), 200);

    // Some of them are consumed before the crash (and all those locks are
    // settled, so nothing stays locked across the restart).
    let consumed_before: Vec<String> = herald.drain(&key, Some(80)).await;
    assert!(consumed_before.len() >= 80, "{}", consumed_before.len());

    // Phase 2: publishers loop until the server dies under them.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let confirmed_batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loops = tokio::task::JoinSet::new();
    for worker in 0..4usize {
        let (client, url, key) = (herald.client.clone(), url.clone(), key.clone());
        let (outcomes, confirmed_batches) = (outcomes.clone(), confirmed_batches.clone());
        loops.spawn(async move {
            let mut out = Outcome::default();
            for n in 0.. {
                let (ids, body) = batch(&format!("loop-{worker}-{n}"));
                let sent = client
                    .post(&url)
                    .header("aeg-sas-key", &key)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let status = match sent {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // The body may be cut off by the kill: then the
                        // outcome is unknown.
                        match resp.bytes().await {
                            Ok(_) => Some(status),
                            Err(_) => None,
                        }
                    }
                    Err(_) => None,
                };
                match status {
                    Some(200) => {
                        out.confirmed.push(ids);
                        confirmed_batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Some(s) => {
                        out.statuses.push(s);
                        out.in_flight.push(ids);
                        break;
                    }
                    None => {
                        out.in_flight.push(ids);
                        break;
                    }
                }
            }
            outcomes.lock().expect("outcomes").push(out);
        });
    }
    // Kill once the loops are well under way (they are still running).
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirmed_batches.load(std::sync::atomic::Ordering::SeqCst) < 30 {
        assert!(Instant::now() < deadline, "publish loop made no progress");
        assert!(!loops.is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("SIGKILL herald");
    let status = child.wait().await.expect("reap herald");
    assert!(
        !status.success(),
        "herald was killed, not stopped: {status}"
    );
    let loop_deadline = Duration::from_secs(60);
    tokio::time::timeout(loop_deadline, async {
        while let Some(done) = loops.join_next().await {
            done.expect("publish loop");
        }
    })
    .await
    .expect("every publish loop ends once the server is gone");
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    assert_eq!(outcomes.len(), 4);
    for o in &outcomes {
        assert!(
            o.statuses.is_empty(),
            "a publish was refused before the kill: {:?}",
            o.statuses
        );
        assert_eq!(o.in_flight.len(), 1, "each loop ends on the kill");
    }
    let confirmed: BTreeSet<String> = outcomes
        .iter()
        .flat_map(|o| o.confirmed.iter().flatten().cloned())
        .collect();
    let in_flight: Vec<Vec<String>> = outcomes
        .iter()
        .flat_map(|o| o.in_flight.iter().cloned())
        .collect();

    // Restart on the same data dir and port, and drain.
    let herald = start(&data, port, logs.path(), 2, &[]).await;
    assert_eq!(herald.key().await, key, "keys survive");
    let delivered = herald.drain(&key, None).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in consumed_before.iter().chain(&delivered) {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();

    let after: BTreeSet<&str> = delivered.iter().map(String::as_str).collect();
    let before: BTreeSet<&str> = consumed_before.iter().map(String::as_str).collect();
    let lost_first: Vec<&String> = first
        .iter()
        .filter(|id| !before.contains(id.as_str()) && !after.contains(id.as_str()))
        .collect();
    assert!(
        lost_first.is_empty(),
        "{} phase-1 events lost: {lost_first:?}",
        lost_first.len()
    );
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|id| !after.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} events acknowledged with 200 were lost: {lost:?}",
        lost.len(),
        confirmed.len()
    );
    // A batch is one transaction: an in-flight batch is all there or not at all.
    let mut in_flight_stored = 0;
    for ids in &in_flight {
        let present = ids.iter().filter(|id| after.contains(id.as_str())).count();
        assert!(
            present == 0 || present == ids.len(),
            "batch partly stored ({present} of {}): {ids:?}",
            ids.len()
        );
        if present > 0 {
            in_flight_stored += 1;
        }
    }
    // Nothing arrives that nobody published.
    for id in &after {
        assert!(
            first.contains(*id)
                || confirmed.contains(*id)
                || in_flight.iter().flatten().any(|i| i == id),
            "unknown event {id}"
        );
    }
    // The published counter agrees with what was stored.
    let r = herald
        .req(
            herald
                .client
                .get(format!("{}/api/v1/topics/{TOPIC}", herald.origin))
                .bearer_auth(TOKEN),
        )
        .await;
    let published = r.expect(200)["metrics"]["published"].as_i64().unwrap_or(0);
    let expected_published = (first.len() + confirmed.len() + in_flight_stored * BATCH) as i64;
    assert_eq!(published, expected_published, "metrics.published");
    println!(
        "durability: {} events confirmed before the kill ({} in phase 1, {} from the loops), \
         {} consumed before the kill, {} delivered after the restart, {} in-flight batches \
         ({} stored), {} duplicate deliveries",
        first.len() + confirmed.len(),
        first.len(),
        confirmed.len(),
        consumed_before.len(),
        delivered.len(),
        in_flight.len(),
        in_flight_stored,
        duplicates
    );
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("stop herald");
    let _ = child.wait().await;
}
