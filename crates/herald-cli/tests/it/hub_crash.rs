//! kill -9 durability of hub sends, with the real binary: senders post
//! batches over REST, Herald is SIGKILLed mid-stream and restarted on the
//! same data dir. Every batch answered 201 is readable afterwards, in each
//! sender's order, and each partition's sequence numbers run from 0 with
//! no gap.

use crate::binary::{Herald, free_port, start};
use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const SENDERS: usize = 4;
const BATCH: usize = 20;
const BATCHES_PER_SENDER: usize = 400;
/// Kill once this many batches were acknowledged.
const KILL_AFTER: usize = 300;

#[tokio::test]
async fn acknowledged_hub_sends_survive_kill_9() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("log dir");
    let data = data_dir.path().to_path_buf();
    let port = free_port();
    let herald = start(&data, port, logs.path(), 1, &[]).await;
    let api = |path: &str| format!("{}/api/v1/hubs/namespaces/default{path}", herald.origin);
    herald
        .req(
            herald
                .client
                .post(api("/eventhubs"))
                .bearer_auth(TOKEN)
                .json(&json!({"name": "crash", "partitionCount": 2})),
        )
        .await
        .expect(201);
    let keys = herald
        .req(
            herald
                .client
                .post(api(
                    "/authorizationRules/RootManageSharedAccessKey/listKeys",
                ))
                .bearer_auth(TOKEN),
        )
        .await;
    let key = keys.expect(200)["primaryKey"].as_str().unwrap().to_owned();
    let token = herald_hubs::sign(
        "sb://default.servicebus.localhost/crash",
        "RootManageSharedAccessKey",
        &key,
        now() + 3600,
    );
    let ns = format!("https://default.servicebus.localhost:{port}");

    // Each sender keys its events, so they share one partition, in order.
    let acked = Arc::new(AtomicUsize::new(0));
    let confirmed: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let (client, token, ns, acked, confirmed) = (
            herald.client.clone(),
            token.clone(),
            ns.clone(),
            acked.clone(),
            confirmed.clone(),
        );
        senders.spawn(async move {
            for b in 0..BATCHES_PER_SENDER {
                let ids: Vec<String> = (0..BATCH).map(|i| format!("s{s}-{:06}", b * BATCH + i)).collect();
                let body: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"Body": id, "BrokerProperties": {"PartitionKey": format!("sender-{s}")}}))
                    .collect();
                let sent = client
                    .post(format!("{ns}/crash/messages"))
                    .header("Authorization", &token)
                    .header("Content-Type", "application/vnd.microsoft.servicebus.json")
                    .body(Value::Array(body).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        confirmed.lock().unwrap().extend(ids);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    // The kill: this batch's fate is unknown, and the sender stops.
                    _ => return,
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "sending made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("SIGKILL herald");
    let status = child.wait().await.expect("reap herald");
    assert!(
        !status.success(),
        "herald was killed, not stopped: {status}"
    );
    while senders.join_next().await.is_some() {}
    let acked_at_kill = acked.load(Ordering::SeqCst);
    assert!(
        acked_at_kill < SENDERS * BATCHES_PER_SENDER,
        "the kill landed after sending ended"
    );

    let herald = start(&data, port, logs.path(), 2, &[]).await;
    let mut seen: BTreeMap<String, (u32, i64)> = BTreeMap::new();
    for p in 0..2u32 {
        let mut from = 0;
        loop {
            let r = herald
                .req(
                    herald
                        .client
                        .get(format!("{ns}/crash/consumergroups/$Default/partitions/{p}/messages?fromSequenceNumber={from}&max=10000"))
                        .header("Authorization", &token),
                )
                .await;
            let page = r.expect(200).clone();
            let events = page["value"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                break;
            }
            for e in &events {
                let seq = e["sequenceNumber"].as_i64().unwrap();
                assert_eq!(
                    seq, from,
                    "partition {p}: sequence numbers run without a gap"
                );
                from += 1;
                seen.insert(e["body"].as_str().unwrap().to_owned(), (p, seq));
            }
        }
    }
    let confirmed = confirmed.lock().unwrap().clone();
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // Each sender's events are in its order, on one partition.
    for s in 0..SENDERS {
        let mine: Vec<&(u32, i64)> = seen
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("s{s}-")))
            .map(|(_, v)| v)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
            "sender {s} kept its order"
        );
    }
    println!(
        "hub kill -9: {acked_at_kill} of {} batches ({} events) acknowledged at the kill; all {} readable after restart, {} stored in all (unacknowledged in-flight batches may land)",
        SENDERS * BATCHES_PER_SENDER,
        acked_at_kill * BATCH,
        confirmed.len(),
        seen.len()
    );
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("stop herald");
    let _ = child.wait().await;
}
