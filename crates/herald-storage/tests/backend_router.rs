//! RouterStore scenarios, written once against the trait object and run on
//! SQLite and (when a PostgreSQL URL is configured) on PostgreSQL. The
//! `race_*` scenarios run several tasks at once: on SQLite the writer
//! serialises them; on PostgreSQL they are real concurrent transactions,
//! standing in for several nodes on one database.

// A test binary has no outside: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

mod common;

use herald_core::ProvisioningState;
use herald_router::dead_letter::claim_rule;
use herald_storage::*;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type Store = Arc<dyn RouterStore>;

const LOCK_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn topic(name: &str) -> TopicRecord {
    TopicRecord {
        id: format!("topic-{name}").into(),
        kind: "custom".into(),
        name: name.into(),
        arm_id: format!(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.EventGrid/topics/{name}"
        ),
        created: 1_700_000_000,
        input_schema: "EventGridSchema".into(),
        input_mapping: None,
        key1: vec![1, 2, 3],
        key2: Vec::new(),
    }
}

fn sub(topic_id: &str, name: &str) -> SubscriptionRecord {
    SubscriptionRecord {
        id: format!("{topic_id}/sub-{name}").into(),
        topic_id: topic_id.into(),
        name: name.into(),
        config: r#"{"destination":{"endpointType":"StorageQueue"}}"#.into(),
        provisioning_state: ProvisioningState::Succeeded,
        state_reason: None,
        created: 1_700_000_001,
        updated: 1_700_000_001,
    }
}

/// Events whose types alternate keep / skip, starting with keep.
fn events(n: usize, tag: &str) -> Vec<NewLogEvent> {
    (0..n)
        .map(|i| NewLogEvent {
            event_id: format!("{tag}-{i}"),
            event_type: if i % 2 == 0 { "keep" } else { "skip" }.into(),
            subject: format!("/{tag}/{i}"),
            body: format!(r#"{{"id":"{tag}-{i}"}}"#),
        })
        .collect()
}

fn kept(n: usize, tag: &str) -> Vec<NewLogEvent> {
    events(n, tag)
        .into_iter()
        .map(|mut e| {
            e.event_type = "keep".into();
            e
        })
        .collect()
}

fn all() -> Matcher {
    Arc::new(|_: &LogRow| true)
}

fn keep_only() -> Matcher {
    Arc::new(|r: &LogRow| r.event_type == "keep")
}

fn opts(max: i64, now: i64) -> ClaimOptions {
    ClaimOptions {
        max,
        now_ms: now,
        lock_ms: LOCK_MS,
        dead_letter: claim_rule(10, DAY_MS),
        scan_limit: 1000,
    }
}

fn attempt(sub_id: &str, seq: i64, n: i64, at: i64, status: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        subscription_id: sub_id.into(),
        seq,
        event_ids: vec![format!("ev-{seq}")],
        attempt: n,
        at_ms: at,
        status,
        latency_ms: 12,
        outcome: if status == Some(200) {
            "Delivered"
        } else {
            "HttpError"
        }
        .into(),
        response: status.map(|s| format!("status {s}")),
    }
}

async fn counter(s: &Store, scope: &str, name: &str) -> i64 {
    s.counters(scope)
        .await
        .expect("counters")
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

/// A topic with one event published before its subscription exists (which
/// the subscription never sees), and the subscription.
async fn setup(s: &Store, name: &str) -> (TopicRecord, SubscriptionRecord) {
    let t = topic(name);
    assert!(s.create_topic(&t).await.expect("create topic"));
    // Also keeps the scenarios clear of a SQLite quirk: a topic's first
    // append returns the new counter row's rowid instead of the last seq.
    s.append_events(&t.id, events(1, "before"))
        .await
        .expect("append");
    let sb = sub(&t.id, "main");
    assert!(s.put_subscription(&sb).await.expect("put subscription"));
    (t, sb)
}

// ---------------------------------------------------------------- scenarios

async fn topics(s: Store) {
    let t = topic("orders");
    assert!(s.create_topic(&t).await.unwrap());
    // The name is taken, whatever the id.
    let again = TopicRecord {
        id: "another-id".into(),
        ..t.clone()
    };
    assert!(!s.create_topic(&again).await.unwrap());
    assert_eq!(s.topic_by_name("orders").await.unwrap(), Some(t.clone()));
    assert_eq!(s.topic_by_name("missing").await.unwrap(), None);

    let mut mapped = topic("Beta");
    mapped.input_schema = "CustomEventSchema".into();
    mapped.input_mapping = Some(r#"{"id":{"sourceField":"x"}}"#.into());
    assert!(s.create_topic(&mapped).await.unwrap());
    assert!(s.create_topic(&topic("alpha")).await.unwrap());
    let names: Vec<String> = s
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["Beta", "alpha", "orders"], "byte order, as SQLite");
    assert_eq!(s.topic_by_name("Beta").await.unwrap(), Some(mapped));

    assert!(s.set_topic_key(&t.id, 2, b"second").await.unwrap());
    assert!(s.set_topic_key(&t.id, 1, b"first").await.unwrap());
    assert!(!s.set_topic_key("no-such-topic", 1, b"x").await.unwrap());
    let got = s.topic_by_name("orders").await.unwrap().unwrap();
    assert_eq!(
        (got.key1, got.key2),
        (b"first".to_vec(), b"second".to_vec())
    );

    // System topics are not deleted here.
    let mut system = topic("vault-events");
    system.kind = "system".into();
    system.key1 = Vec::new();
    assert!(s.create_topic(&system).await.unwrap());
    assert!(!s.delete_topic("vault-events").await.unwrap());
    assert!(s.topic_by_name("vault-events").await.unwrap().is_some());

    // A custom topic goes with its log, subscriptions and their queues.
    let sb = sub(&t.id, "s");
    assert!(s.put_subscription(&sb).await.unwrap());
    s.append_events(&t.id, events(3, "o")).await.unwrap();
    assert_eq!(
        s.claim(&sb.id, &t.id, opts(10, now_ms()), all())
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(s.delete_topic("orders").await.unwrap());
    assert!(!s.delete_topic("orders").await.unwrap());
    assert!(!s.delete_topic("never-was").await.unwrap());
    assert_eq!(s.topic_by_name("orders").await.unwrap(), None);
    assert_eq!(s.head_seq(&t.id).await.unwrap(), 0);
    assert!(s.list_subscriptions(&t.id).await.unwrap().is_empty());
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);
    assert_eq!(s.next_due(&sb.id).await.unwrap(), None);
    // The name is free again.
    assert!(s.create_topic(&t).await.unwrap());
}

async fn log_and_subscriptions(s: Store) {
    let t = topic("log");
    assert!(s.create_topic(&t).await.unwrap());
    assert_eq!(s.head_seq(&t.id).await.unwrap(), 0);
    // (The return value of a topic's first append is not checked: SQLite
    // returns the rowid of the counter row it creates, not the last seq.)
    s.append_events(&t.id, events(3, "a")).await.unwrap();
    let last = s.head_seq(&t.id).await.unwrap();
    assert!(last >= 3);
    let more = s.append_events(&t.id, events(2, "a2")).await.unwrap();
    assert_eq!(more, last + 2);
    let last = more;
    assert_eq!(s.head_seq(&t.id).await.unwrap(), last);
    // Other topics' events do not move this head.
    let other = topic("other");
    assert!(s.create_topic(&other).await.unwrap());
    s.append_events(&other.id, events(2, "x")).await.unwrap();
    let other_last = s.head_seq(&other.id).await.unwrap();
    assert!(other_last > last);
    assert_eq!(s.head_seq(&t.id).await.unwrap(), last);

    // A new subscription starts at the head: earlier events are not its.
    let sb = sub(&t.id, "s1");
    assert!(s.put_subscription(&sb).await.unwrap());
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);
    let w = s
        .peek_fresh(&sb.id, &t.id, None, 10, 100, all())
        .await
        .unwrap()
        .unwrap();
    assert!(w.rows.is_empty());
    assert_eq!(w.cursor, w.next_cursor);
    assert!(
        s.claim(&sb.id, &t.id, opts(10, now_ms()), all())
            .await
            .unwrap()
            .is_empty()
    );
    let last2 = s.append_events(&t.id, events(2, "b")).await.unwrap();
    assert_eq!(last2, other_last + 2, "one seq per event, in order");
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 2);

    // Putting it again replaces its properties, keeps its id and cursor.
    let replaced = SubscriptionRecord {
        id: "ignored".into(),
        config: r#"{"changed":true}"#.into(),
        provisioning_state: ProvisioningState::Updating,
        state_reason: Some("because".into()),
        updated: 1_800_000_000,
        ..sb.clone()
    };
    assert!(!s.put_subscription(&replaced).await.unwrap());
    let got = s.subscription(&t.id, "s1").await.unwrap().unwrap();
    assert_eq!(
        got,
        SubscriptionRecord {
            id: sb.id.clone(),
            created: sb.created,
            ..replaced.clone()
        }
    );
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 2);
    assert_eq!(s.subscription(&t.id, "nope").await.unwrap(), None);

    for name in ["a-sub", "B-sub"] {
        assert!(s.put_subscription(&sub(&t.id, name)).await.unwrap());
    }
    assert!(s.put_subscription(&sub(&other.id, "z")).await.unwrap());
    let names: Vec<String> = s
        .list_subscriptions(&t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["B-sub", "a-sub", "s1"]);
    let ids: Vec<SubscriptionId> = s
        .all_subscriptions()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 4);

    let before = now_ms() / 1000;
    s.set_subscription_state(&sb.id, ProvisioningState::Failed, Some("endpoint gone"))
        .await
        .unwrap();
    let got = s.subscription(&t.id, "s1").await.unwrap().unwrap();
    assert_eq!(got.provisioning_state, ProvisioningState::Failed);
    assert_eq!(got.state_reason.as_deref(), Some("endpoint gone"));
    assert!(got.updated >= before && got.updated <= now_ms() / 1000 + 1);
    s.set_subscription_state(&sb.id, ProvisioningState::Succeeded, None)
        .await
        .unwrap();
    let got = s.subscription(&t.id, "s1").await.unwrap().unwrap();
    assert_eq!(got.state_reason, None);
    // Unknown ids are a no-op.
    s.set_subscription_state("missing", ProvisioningState::Failed, None)
        .await
        .unwrap();

    assert!(s.delete_subscription(&t.id, "s1").await.unwrap());
    assert!(!s.delete_subscription(&t.id, "s1").await.unwrap());
    assert_eq!(s.subscription(&t.id, "s1").await.unwrap(), None);
    assert_eq!(
        s.counters(&t.id).await.unwrap(),
        vec![("published".to_owned(), 7)]
    );
    assert!(s.counters("nothing").await.unwrap().is_empty());
}

async fn queue_claim_and_settle(s: Store) {
    let (t, sb) = setup(&s, "queue").await;
    let now = now_ms();
    s.append_events(&t.id, events(6, "q")).await.unwrap();
    let m = keep_only();

    // Two of the three matches; the cursor stops after the second.
    let c1 = s
        .claim(&sb.id, &t.id, opts(2, now), m.clone())
        .await
        .unwrap();
    assert_eq!(c1.len(), 2);
    assert_eq!(
        c1.iter()
            .map(|c| c.row.event_id.as_str())
            .collect::<Vec<_>>(),
        ["q-0", "q-2"]
    );
    for c in &c1 {
        assert_eq!(c.delivery_count, 1);
        assert_eq!(lock_token_seq(&c.lock_token), Some(c.row.seq));
        assert_eq!(c.row.event_type, "keep");
        assert_eq!(c.row.subject, format!("/q/{}", &c.row.event_id[2..]));
        assert!(c.row.published_at * 1000 <= now_ms() + 1000);
    }
    assert_ne!(c1[0].lock_token, c1[1].lock_token);
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 3 + 2);
    assert_eq!(s.next_due(&sb.id).await.unwrap(), Some(now + LOCK_MS));
    assert_eq!(counter(&s, &sb.id, "matched").await, 2);
    assert_eq!(counter(&s, &sb.id, "unmatched").await, 1);

    // Locked messages are not due: only the third match comes.
    let c2 = s
        .claim(&sb.id, &t.id, opts(10, now), m.clone())
        .await
        .unwrap();
    assert_eq!(c2.len(), 1);
    assert_eq!(c2[0].row.event_id, "q-4");
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 3);
    assert_eq!(counter(&s, &sb.id, "matched").await, 3);
    assert_eq!(counter(&s, &sb.id, "unmatched").await, 3);
    assert!(
        s.claim(&sb.id, &t.id, opts(10, now), m.clone())
            .await
            .unwrap()
            .is_empty()
    );

    // Acknowledge: one result per token, in order; duplicates and junk lose.
    let r = s
        .settle(
            &sb.id,
            vec![
                c1[0].lock_token.clone(),
                "not-a-token".into(),
                c1[0].lock_token.clone(),
                lock_token(c1[1].row.seq),
            ],
            SettleAction::Acknowledge,
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        vec![
            Ok(()),
            Err(SettleFailure::TokenLost),
            Err(SettleFailure::TokenLost),
            Err(SettleFailure::TokenLost)
        ]
    );
    assert_eq!(counter(&s, &sb.id, "delivered").await, 1);
    assert_eq!(
        s.settle(
            &sb.id,
            vec![c1[0].lock_token.clone()],
            SettleAction::Acknowledge,
            now + 2
        )
        .await
        .unwrap(),
        vec![Err(SettleFailure::TokenLost)]
    );
    // Tokens belong to their subscription.
    let other = sub(&t.id, "other");
    assert!(s.put_subscription(&other).await.unwrap());
    assert_eq!(
        s.settle(
            &other.id,
            vec![c1[1].lock_token.clone()],
            SettleAction::Acknowledge,
            now + 2
        )
        .await
        .unwrap(),
        vec![Err(SettleFailure::TokenLost)]
    );
    assert_eq!(
        s.settle(&sb.id, Vec::new(), SettleAction::Acknowledge, now)
            .await
            .unwrap(),
        vec![]
    );

    // Renew: extends the lock, unless held too long.
    let q2 = &c1[1];
    let renew = |max_hold_ms| SettleAction::RenewLock {
        lock_ms: 120_000,
        max_hold_ms,
    };
    assert_eq!(
        s.settle(
            &sb.id,
            vec![q2.lock_token.clone()],
            renew(300_000),
            now + 1000
        )
        .await
        .unwrap(),
        vec![Ok(())]
    );
    assert_eq!(
        s.settle(&sb.id, vec![q2.lock_token.clone()], renew(0), now + 1000)
            .await
            .unwrap(),
        vec![Err(SettleFailure::TokenLost)]
    );
    assert_eq!(s.next_due(&sb.id).await.unwrap(), Some(now + LOCK_MS));

    // Release: due again after the delay, then handed out with a new token.
    let q4 = &c2[0];
    assert_eq!(
        s.settle(
            &sb.id,
            vec![q4.lock_token.clone()],
            SettleAction::Release { delay_ms: 500 },
            now
        )
        .await
        .unwrap(),
        vec![Ok(())]
    );
    assert_eq!(s.next_due(&sb.id).await.unwrap(), Some(now + 500));
    assert!(
        s.claim(&sb.id, &t.id, opts(10, now + 499), m.clone())
            .await
            .unwrap()
            .is_empty()
    );
    let again = s
        .claim(&sb.id, &t.id, opts(10, now + 500), m.clone())
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].row.seq, q4.row.seq);
    assert_eq!(again[0].delivery_count, 2);
    assert_ne!(again[0].lock_token, q4.lock_token);
    assert_eq!(
        s.settle(
            &sb.id,
            vec![q4.lock_token.clone()],
            SettleAction::Reject,
            now + 600
        )
        .await
        .unwrap(),
        vec![Err(SettleFailure::TokenLost)]
    );

    // Reject: dead-lettered with its delivery count.
    assert_eq!(
        s.settle(
            &sb.id,
            vec![again[0].lock_token.clone()],
            SettleAction::Reject,
            now + 600
        )
        .await
        .unwrap(),
        vec![Ok(())]
    );
    let dl = s.dead_letters(&sb.id, 0, 100).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (dl[0].seq, dl[0].reason.as_str(), dl[0].delivery_count),
        (q4.row.seq, "Rejected", 2)
    );
    assert_eq!(dl[0].body, q4.row.body);
    assert_eq!(dl[0].published_at, q4.row.published_at);
    assert_eq!(dl[0].dead_lettered_at, (now + 600) / 1000);
    assert_eq!(dl[0].last_outcome, None);
    assert_eq!(counter(&s, &sb.id, "deadLettered").await, 1);

    // An expired lock makes the message due again; the old token is lost.
    let later = now + 1000 + 120_000;
    let re = s
        .claim(&sb.id, &t.id, opts(10, later), m.clone())
        .await
        .unwrap();
    assert_eq!(re.len(), 1);
    assert_eq!((re[0].row.seq, re[0].delivery_count), (q2.row.seq, 2));
    assert_eq!(
        s.settle(
            &sb.id,
            vec![q2.lock_token.clone()],
            SettleAction::Acknowledge,
            later
        )
        .await
        .unwrap(),
        vec![Err(SettleFailure::TokenLost)]
    );
    // An expired token cannot be settled either.
    assert_eq!(
        s.settle(
            &sb.id,
            vec![re[0].lock_token.clone()],
            SettleAction::Acknowledge,
            later + LOCK_MS
        )
        .await
        .unwrap(),
        vec![Err(SettleFailure::TokenLost)]
    );

    // Past the delivery count: dead-lettered instead of handed out.
    let capped = ClaimOptions {
        dead_letter: claim_rule(2, DAY_MS),
        ..opts(10, later + LOCK_MS)
    };
    assert!(
        s.claim(&sb.id, &t.id, capped, m.clone())
            .await
            .unwrap()
            .is_empty()
    );
    let dl = s.dead_letters(&sb.id, 0, 100).await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(
        (dl[1].seq, dl[1].reason.as_str(), dl[1].delivery_count),
        (q2.row.seq, "MaxDeliveryAttemptsExceeded", 2)
    );
    assert_eq!(s.next_due(&sb.id).await.unwrap(), None);
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);

    // Time to live: in flight, and fresh from the log.
    s.append_events(&t.id, kept(1, "ttl1")).await.unwrap();
    let c = s
        .claim(&sb.id, &t.id, opts(10, now), m.clone())
        .await
        .unwrap();
    assert_eq!(c.len(), 1);
    s.settle(
        &sb.id,
        vec![c[0].lock_token.clone()],
        SettleAction::Release { delay_ms: 0 },
        now,
    )
    .await
    .unwrap();
    s.append_events(&t.id, kept(1, "ttl2")).await.unwrap();
    let expired_at = now + 2 * DAY_MS;
    assert!(
        s.claim(&sb.id, &t.id, opts(10, expired_at), m.clone())
            .await
            .unwrap()
            .is_empty()
    );
    let dl = s.dead_letters(&sb.id, 0, 100).await.unwrap();
    assert_eq!(dl.len(), 4);
    assert_eq!(
        (dl[2].reason.as_str(), dl[2].delivery_count),
        ("TimeToLiveExceeded", 1)
    );
    assert_eq!(
        (dl[3].reason.as_str(), dl[3].delivery_count),
        ("TimeToLiveExceeded", 0)
    );
    assert_eq!(counter(&s, &sb.id, "deadLettered").await, 4);
    assert_eq!(counter(&s, &sb.id, "matched").await, 5);

    // Paging.
    let page = s.dead_letters(&sb.id, dl[0].id, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|d| d.id).collect::<Vec<_>>(),
        [dl[1].id, dl[2].id]
    );
    assert!(s.dead_letters(&other.id, 0, 10).await.unwrap().is_empty());

    // Replay: back on the queue, counted once; unknown or foreign ids skipped.
    let n = s
        .replay_dead_letters(&sb.id, vec![dl[1].id, dl[0].id, 999_999], now)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        s.replay_dead_letters(&sb.id, vec![dl[0].id], now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.replay_dead_letters(&other.id, vec![dl[2].id], now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.dead_letters(&sb.id, 0, 100).await.unwrap().len(), 2);
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 2);
    assert_eq!(s.next_due(&sb.id).await.unwrap(), Some(now));
    let back = s
        .claim(&sb.id, &t.id, opts(10, now), m.clone())
        .await
        .unwrap();
    let mut seqs: Vec<i64> = back.iter().map(|c| c.row.seq).collect();
    seqs.sort();
    let mut want = vec![dl[0].seq, dl[1].seq];
    want.sort();
    assert_eq!(seqs, want);
    assert!(back.iter().all(|c| c.delivery_count == 1));
    let acks = s
        .settle(
            &sb.id,
            back.iter().map(|c| c.lock_token.clone()).collect(),
            SettleAction::Acknowledge,
            now,
        )
        .await
        .unwrap();
    assert!(acks.iter().all(|r| r.is_ok()));
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);
    assert_eq!(counter(&s, &sb.id, "delivered").await, 3);

    // A claim of a subscription that does not exist finds nothing.
    assert!(
        s.claim("missing", &t.id, opts(10, now), all())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn push_windows(s: Store) {
    let (t, sb) = setup(&s, "push").await;
    let now = now_ms();
    // keep, skip, keep, skip, keep, skip, keep
    s.append_events(&t.id, events(7, "p")).await.unwrap();
    let m = keep_only();

    let small = s
        .peek_fresh(&sb.id, &t.id, None, 2, 1000, m.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(small.rows.len(), 2);
    assert_eq!(small.next_cursor, small.rows[1].seq + 1);
    assert_eq!((small.matched, small.unmatched), (2, 1));
    // Reading is free: nothing moved.
    let w = s
        .peek_fresh(&sb.id, &t.id, None, 10, 1000, m.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.cursor, small.cursor);
    assert_eq!(w.rows.len(), 4);
    assert_eq!((w.matched, w.unmatched), (4, 3));
    assert_eq!(w.next_cursor, s.head_seq(&t.id).await.unwrap() + 1);
    // A scan limit bounds the rows looked at.
    let limited = s
        .peek_fresh(&sb.id, &t.id, None, 10, 3, m.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((limited.matched, limited.unmatched), (2, 1));
    // `from` reads past the caller's own cursor.
    let from = s
        .peek_fresh(&sb.id, &t.id, Some(small.next_cursor), 10, 1000, m.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from.cursor, small.next_cursor);
    assert_eq!(from.rows.len(), 2);
    assert_eq!(
        s.peek_fresh("missing", &t.id, None, 10, 1000, m.clone())
            .await
            .unwrap()
            .map(|w| w.cursor),
        None
    );

    let outcomes = vec![
        FreshOutcome::Retry {
            seq: w.rows[2].seq,
            retry_at_ms: now + 5000,
            outcome: "HttpError",
            status: Some(503),
        },
        // Expired before it was ever sent: no attempt is counted.
        FreshOutcome::DeadLetter {
            row: w.rows[3].clone(),
            reason: "TimeToLiveExceeded",
            outcome: "Canceled",
            status: None,
            attempted: false,
        },
    ];
    let attempts = vec![
        attempt(&sb.id, w.rows[0].seq, 1, now, Some(200)),
        attempt(&sb.id, w.rows[2].seq, 1, now + 1, Some(503)),
    ];
    let window = (w.cursor, w.next_cursor, w.matched, w.unmatched);
    assert!(
        s.commit_fresh(&sb.id, window, 2, outcomes.clone(), attempts.clone(), now)
            .await
            .unwrap()
    );
    let counters_after = s.counters(&sb.id).await.unwrap();
    assert_eq!(
        counters_after,
        vec![
            ("deadLettered".to_owned(), 1),
            ("delivered".to_owned(), 2),
            ("failed".to_owned(), 2),
            ("matched".to_owned(), 4),
            ("unmatched".to_owned(), 3),
        ]
    );
    // The same window again (a stale cursor): nothing is written.
    assert!(
        !s.commit_fresh(&sb.id, window, 2, outcomes, attempts, now)
            .await
            .unwrap()
    );
    assert!(
        !s.commit_fresh(
            &sb.id,
            (small.cursor, small.next_cursor, 2, 1),
            2,
            Vec::new(),
            Vec::new(),
            now
        )
        .await
        .unwrap()
    );
    assert_eq!(s.counters(&sb.id).await.unwrap(), counters_after);
    assert_eq!(s.attempts(&sb.id, None, 0, 100).await.unwrap().len(), 2);
    let dl = s.dead_letters(&sb.id, 0, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (
            dl[0].seq,
            dl[0].reason.as_str(),
            dl[0].delivery_count,
            dl[0].last_outcome.as_deref()
        ),
        (w.rows[3].seq, "TimeToLiveExceeded", 0, Some("Canceled"))
    );
    assert_eq!(s.next_due(&sb.id).await.unwrap(), Some(now + 5000));
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 1);
    let empty = s
        .peek_fresh(&sb.id, &t.id, None, 10, 1000, m.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(empty.cursor, w.next_cursor);
    assert_eq!(empty.next_cursor, empty.cursor);
    assert!(empty.rows.is_empty());

    // Retries go through claim (scan_limit 0: no new log rows).
    let retry_opts = |at| ClaimOptions {
        scan_limit: 0,
        ..opts(10, at)
    };
    s.append_events(&t.id, kept(2, "late")).await.unwrap();
    assert!(
        s.claim(&sb.id, &t.id, retry_opts(now + 4999), m.clone())
            .await
            .unwrap()
            .is_empty()
    );
    let r1 = s
        .claim(&sb.id, &t.id, retry_opts(now + 5000), m.clone())
        .await
        .unwrap();
    assert_eq!(r1.len(), 1);
    assert_eq!((r1[0].row.seq, r1[0].delivery_count), (w.rows[2].seq, 2));
    assert_eq!(
        s.settle(
            &sb.id,
            vec![r1[0].lock_token.clone()],
            SettleAction::Retry {
                delay_ms: 1000,
                outcome: "Timeout",
                status: None
            },
            now + 5000
        )
        .await
        .unwrap(),
        vec![Ok(())]
    );
    assert_eq!(s.next_due(&sb.id).await.unwrap(), Some(now + 6000));
    assert_eq!(counter(&s, &sb.id, "failed").await, 3);
    let r2 = s
        .claim(&sb.id, &t.id, retry_opts(now + 6000), m.clone())
        .await
        .unwrap();
    assert_eq!(r2[0].delivery_count, 3);
    assert_eq!(
        s.settle(
            &sb.id,
            vec![r2[0].lock_token.clone()],
            SettleAction::DeadLetter {
                reason: "MaxDeliveryAttemptsExceeded",
                outcome: "HttpError",
                status: Some(500),
                attempted: true,
            },
            now + 6000
        )
        .await
        .unwrap(),
        vec![Ok(())]
    );
    let dl = s.dead_letters(&sb.id, 0, 10).await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(
        (
            dl[1].reason.as_str(),
            dl[1].delivery_count,
            dl[1].last_outcome.as_deref()
        ),
        ("MaxDeliveryAttemptsExceeded", 3, Some("HttpError"))
    );
    assert_eq!(counter(&s, &sb.id, "failed").await, 4);
    assert_eq!(counter(&s, &sb.id, "deadLettered").await, 2);
    assert_eq!(s.next_due(&sb.id).await.unwrap(), None);
    // The two late events were not touched by the retry claims.
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 2);

    // The delivery log.
    s.record_attempts(Vec::new()).await.unwrap();
    s.record_attempts(vec![
        attempt(&sb.id, 1, 2, now + 10, None),
        attempt(&sb.id, 2, 3, now + 20, Some(500)),
        attempt(&sb.id, 3, 1, now + 30_000, Some(200)),
    ])
    .await
    .unwrap();
    let log = s.attempts(&sb.id, None, 0, 100).await.unwrap();
    assert_eq!(log.len(), 5);
    assert!(log.windows(2).all(|p| p[0].0 < p[1].0));
    let (_, a) = &log[1];
    let want = attempt(&sb.id, w.rows[2].seq, 1, now + 1, Some(503));
    assert_eq!(
        (
            &a.subscription_id,
            a.seq,
            &a.event_ids,
            a.attempt,
            a.at_ms,
            a.status,
            a.latency_ms,
            &a.outcome,
            &a.response
        ),
        (
            &want.subscription_id,
            want.seq,
            &want.event_ids,
            want.attempt,
            want.at_ms,
            want.status,
            want.latency_ms,
            &want.outcome,
            &want.response
        )
    );
    assert_eq!(log[2].1.status, None);
    assert_eq!(log[2].1.response, None);
    let page = s.attempts(&sb.id, None, log[1].0, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [log[2].0, log[3].0]
    );
    assert!(s.attempts("missing", None, 0, 10).await.unwrap().is_empty());

    // A batch is one record that lists its events; the event filter finds
    // it by any of them, and ids that merely contain another do not match.
    let mut batch = attempt(&sb.id, 7, 1, now + 40_000, Some(200));
    batch.event_ids = vec!["b-1".into(), "b-\"2\"".into(), "b-3".into()];
    s.record_attempts(vec![batch.clone()]).await.unwrap();
    let all = s.attempts(&sb.id, None, 0, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[5].1.event_ids, batch.event_ids);
    assert_eq!(all[5].1.seq, 7);
    for id in ["b-1", "b-\"2\"", "b-3"] {
        let hit = s.attempts(&sb.id, Some(id), 0, 100).await.unwrap();
        assert_eq!(hit.len(), 1, "{id}");
        assert_eq!(hit[0].0, all[5].0);
    }
    assert!(
        s.attempts(&sb.id, Some("b-"), 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.attempts(&sb.id, Some("3"), 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let single = s.attempts(&sb.id, Some("ev-3"), 0, 100).await.unwrap();
    assert_eq!(single.len(), 1);
    assert_eq!(single[0].1.status, Some(200));
    assert_eq!(s.prune_attempts(now + 21).await.unwrap(), 4);
    assert_eq!(s.attempts(&sb.id, None, 0, 100).await.unwrap().len(), 2);
    assert_eq!(s.prune_attempts(now).await.unwrap(), 0);
}

async fn validations(s: Store) {
    let (t, sb) = setup(&s, "val").await;
    let sb2 = sub(&t.id, "second");
    assert!(s.put_subscription(&sb2).await.unwrap());
    s.put_validation(&sb.id, "code-1", "hash-1", 100)
        .await
        .unwrap();
    // Replaced by a newer handshake.
    s.put_validation(&sb.id, "code-2", "hash-2", 200)
        .await
        .unwrap();
    assert!(s.take_validation("hash-1").await.unwrap().is_none());
    let got = s.take_validation("hash-2").await.unwrap().unwrap();
    assert_eq!(
        (
            got.subscription_id.as_str(),
            got.code.as_str(),
            got.expires_at
        ),
        (sb.id.as_str(), "code-2", 200)
    );
    assert!(s.take_validation("hash-2").await.unwrap().is_none());

    s.put_validation(&sb.id, "c", "h-a", 100).await.unwrap();
    s.put_validation(&sb2.id, "c", "h-b", 300).await.unwrap();
    let expired = s.expired_validations(150).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].subscription_id, sb.id);
    assert!(s.expired_validations(150).await.unwrap().is_empty());
    assert!(s.take_validation("h-a").await.unwrap().is_none());
    assert_eq!(
        s.take_validation("h-b")
            .await
            .unwrap()
            .map(|v| v.subscription_id),
        Some(sb2.id.clone())
    );
    // Expiry is inclusive.
    s.put_validation(&sb.id, "c", "h-c", 400).await.unwrap();
    assert_eq!(s.expired_validations(400).await.unwrap().len(), 1);
}

async fn signing_secrets(s: Store) {
    let (_, sb) = setup(&s, "sign").await;
    let one = s
        .add_signing_secret(&sb.id, b"one", 1000, 1060)
        .await
        .unwrap();
    assert_eq!(
        s.signing_secrets(&sb.id, 1000).await.unwrap(),
        vec![(one, b"one".to_vec())]
    );
    let two = s
        .add_signing_secret(&sb.id, b"two", 1010, 1070)
        .await
        .unwrap();
    assert!(two > one);
    // During the overlap both sign, newest first.
    assert_eq!(
        s.signing_secrets(&sb.id, 1010).await.unwrap(),
        vec![(two, b"two".to_vec()), (one, b"one".to_vec())]
    );
    assert_eq!(
        s.signing_secrets(&sb.id, 1070).await.unwrap(),
        vec![(two, b"two".to_vec())]
    );
    // An immediate rotation retires everything else and drops the retired.
    let three = s
        .add_signing_secret(&sb.id, b"three", 1100, 1100)
        .await
        .unwrap();
    assert_eq!(
        s.signing_secrets(&sb.id, 0).await.unwrap(),
        vec![(three, b"three".to_vec())]
    );
    assert!(s.signing_secrets("missing", 0).await.unwrap().is_empty());
}

// ------------------------------------------------------------ concurrency

/// Several receivers drain one queue at once: every event is handed out
/// exactly once (claims move the cursor under a lock).
async fn race_claim_fresh(s: Store) {
    let (t, sb) = setup(&s, "race-fresh").await;
    let last = s.append_events(&t.id, kept(240, "r")).await.unwrap();
    let now = now_ms();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, t, sb) = (s.clone(), t.clone(), sb.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = s
                    .claim(&sb.id, &t.id, opts(7, now), all())
                    .await
                    .expect("claim");
                if c.is_empty() {
                    return got;
                }
                got.extend(c.iter().map(|c| c.row.seq));
                let r = s
                    .settle(
                        &sb.id,
                        c.into_iter().map(|c| c.lock_token).collect(),
                        SettleAction::Acknowledge,
                        now,
                    )
                    .await
                    .expect("settle");
                assert!(r.iter().all(|r| r.is_ok()));
            }
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("task"));
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 240, "no event handed out twice");
    assert_eq!(unique.len(), 240);
    assert_eq!(unique.last().copied(), Some(last));
    assert_eq!(counter(&s, &sb.id, "matched").await, 240);
    assert_eq!(counter(&s, &sb.id, "delivered").await, 240);
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);
}

/// Several receivers take due in-flight messages at once: disjoint sets.
async fn race_claim_due(s: Store) {
    let (t, sb) = setup(&s, "race-due").await;
    s.append_events(&t.id, kept(120, "d")).await.unwrap();
    let now = now_ms();
    let first = s.claim(&sb.id, &t.id, opts(500, now), all()).await.unwrap();
    assert_eq!(first.len(), 120);
    let r = s
        .settle(
            &sb.id,
            first.iter().map(|c| c.lock_token.clone()).collect(),
            SettleAction::Release { delay_ms: 0 },
            now,
        )
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.is_ok()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, t, sb) = (s.clone(), t.clone(), sb.clone());
        tasks.push(tokio::spawn(async move {
            let o = ClaimOptions {
                scan_limit: 0,
                ..opts(5, now)
            };
            let mut got = Vec::new();
            loop {
                let c = s
                    .claim(&sb.id, &t.id, o.clone(), all())
                    .await
                    .expect("claim");
                if c.is_empty() {
                    return got;
                }
                got.extend(c.into_iter().map(|c| (c.row.seq, c.delivery_count)));
            }
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("task"));
    }
    let unique: HashSet<i64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(seen.len(), 120, "no message claimed twice");
    assert_eq!(unique.len(), 120);
    assert!(seen.iter().all(|(_, n)| *n == 2));
}

/// Publishers and receivers at once: no event is skipped (seq order is
/// commit order per topic) or handed out twice, and counters add up.
async fn race_publish_and_claim(s: Store) {
    let (t, sb) = setup(&s, "race-pub").await;
    let now = now_ms();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (s, t, done) = (s.clone(), t.clone(), done.clone());
        publishers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..40 {
                let n = 1 + (i % 3);
                let last = s
                    .append_events(&t.id, kept(n, &format!("p{p}-{i}")))
                    .await
                    .expect("append");
                seqs.extend((last + 1 - n as i64)..=last);
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            seqs
        }));
    }
    let mut receivers = Vec::new();
    for _ in 0..4 {
        let (s, t, sb, done) = (s.clone(), t.clone(), sb.clone(), done.clone());
        receivers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst) == 4;
                let c = s
                    .claim(&sb.id, &t.id, opts(5, now), all())
                    .await
                    .expect("claim");
                if c.is_empty() {
                    if finished {
                        return got;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                }
                got.extend(c.iter().map(|c| c.row.seq));
                s.settle(
                    &sb.id,
                    c.into_iter().map(|c| c.lock_token).collect(),
                    SettleAction::Acknowledge,
                    now,
                )
                .await
                .expect("settle");
            }
        }));
    }
    let mut published = BTreeSet::new();
    for p in publishers {
        published.extend(p.await.expect("publisher"));
    }
    let mut received = Vec::new();
    for r in receivers {
        received.extend(r.await.expect("receiver"));
    }
    let total = 4 * (0..40).map(|i| 1 + (i % 3)).sum::<usize>();
    assert_eq!(published.len(), total);
    let unique: BTreeSet<i64> = received.iter().copied().collect();
    assert_eq!(received.len(), total, "each event received once");
    assert_eq!(unique, published, "no event skipped");
    assert_eq!(counter(&s, &t.id, "published").await, 1 + total as i64);
    assert_eq!(counter(&s, &sb.id, "delivered").await, total as i64);
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);
}

/// Windows committed from the same cursor: exactly one wins. Two workers
/// racing over a log deliver each event in exactly one committed window.
async fn race_commit_fresh(s: Store) {
    let (t, sb) = setup(&s, "race-commit").await;
    s.append_events(&t.id, kept(10, "c")).await.unwrap();
    let w = s
        .peek_fresh(&sb.id, &t.id, None, 100, 1000, all())
        .await
        .unwrap()
        .unwrap();
    let window = (w.cursor, w.next_cursor, w.matched, w.unmatched);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (s, sb) = (s.clone(), sb.clone());
        tasks.push(tokio::spawn(async move {
            s.commit_fresh(&sb.id, window, 10, Vec::new(), Vec::new(), now_ms())
                .await
                .expect("commit")
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.expect("task"));
    }
    assert_eq!(wins, 1);
    assert_eq!(counter(&s, &sb.id, "delivered").await, 10);

    let last = s.append_events(&t.id, kept(300, "w")).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (s, t, sb) = (s.clone(), t.clone(), sb.clone());
        workers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            loop {
                let w = s
                    .peek_fresh(&sb.id, &t.id, None, 17, 1000, all())
                    .await
                    .expect("peek")
                    .expect("subscription");
                if w.next_cursor == w.cursor {
                    return committed;
                }
                let seqs: Vec<i64> = w.rows.iter().map(|r| r.seq).collect();
                let ok = s
                    .commit_fresh(
                        &sb.id,
                        (w.cursor, w.next_cursor, w.matched, w.unmatched),
                        seqs.len() as i64,
                        Vec::new(),
                        Vec::new(),
                        now_ms(),
                    )
                    .await
                    .expect("commit");
                if ok {
                    committed.extend(seqs);
                }
            }
        }));
    }
    let mut all_committed = Vec::new();
    for w in workers {
        all_committed.extend(w.await.expect("worker"));
    }
    let unique: BTreeSet<i64> = all_committed.iter().copied().collect();
    assert_eq!(all_committed.len(), 300, "each event committed once");
    assert_eq!(unique.len(), 300);
    assert_eq!(unique.last().copied(), Some(last));
    assert_eq!(counter(&s, &sb.id, "delivered").await, 310);
    assert_eq!(counter(&s, &sb.id, "matched").await, 310);
    assert_eq!(s.backlog(&sb.id).await.unwrap(), 0);
}

/// Take-once operations: one taker wins.
async fn race_take_once(s: Store) {
    let (t, sb) = setup(&s, "race-once").await;
    s.put_validation(&sb.id, "code", "the-hash", 100)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.take_validation("the-hash").await.expect("take")
        }));
    }
    let mut taken = 0;
    for t in tasks {
        taken += usize::from(t.await.expect("task").is_some());
    }
    assert_eq!(taken, 1);

    let mut ids = Vec::new();
    for i in 0..6 {
        let x = sub(&t.id, &format!("v{i}"));
        assert!(s.put_subscription(&x).await.unwrap());
        s.put_validation(&x.id, "c", &format!("h{i}"), 10 + i)
            .await
            .unwrap();
        ids.push(x.id);
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.expired_validations(1000).await.expect("expired")
        }));
    }
    let mut expired = Vec::new();
    for t in tasks {
        expired.extend(
            t.await
                .expect("task")
                .into_iter()
                .map(|v| v.subscription_id),
        );
    }
    expired.sort();
    ids.sort();
    assert_eq!(expired, ids, "each expired validation reported once");

    // One token, settled by many at once: one acknowledgement.
    s.append_events(&t.id, kept(1, "one")).await.unwrap();
    let now = now_ms();
    let c = s.claim(&sb.id, &t.id, opts(1, now), all()).await.unwrap();
    assert_eq!(c.len(), 1);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (s, sb, token) = (s.clone(), sb.clone(), c[0].lock_token.clone());
        let action = if i % 2 == 0 {
            SettleAction::Acknowledge
        } else {
            SettleAction::Reject
        };
        tasks.push(tokio::spawn(async move {
            s.settle(&sb.id, vec![token], action, now)
                .await
                .expect("settle")
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("task").iter().filter(|r| r.is_ok()).count();
    }
    assert_eq!(ok, 1);
    assert_eq!(
        counter(&s, &sb.id, "delivered").await + counter(&s, &sb.id, "deadLettered").await,
        1
    );

    // Dead letters replayed by several callers at once: each once.
    s.append_events(&t.id, kept(20, "dl")).await.unwrap();
    let c = s.claim(&sb.id, &t.id, opts(50, now), all()).await.unwrap();
    assert_eq!(c.len(), 20);
    s.settle(
        &sb.id,
        c.iter().map(|c| c.lock_token.clone()).collect(),
        SettleAction::Reject,
        now,
    )
    .await
    .unwrap();
    let dl: Vec<i64> = s
        .dead_letters(&sb.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (s, sb) = (s.clone(), sb.clone());
        let mut ids = dl.clone();
        if i % 2 == 1 {
            ids.reverse();
        }
        tasks.push(tokio::spawn(async move {
            s.replay_dead_letters(&sb.id, ids, now)
                .await
                .expect("replay")
        }));
    }
    let mut replayed = 0;
    for t in tasks {
        replayed += t.await.expect("task");
    }
    assert_eq!(replayed as usize, dl.len());
    assert!(s.dead_letters(&sb.id, 0, 100).await.unwrap().is_empty());
    assert_eq!(s.backlog(&sb.id).await.unwrap(), dl.len() as i64);
}

/// Concurrent rotations: the newest secret retires the others.
async fn race_signing(s: Store) {
    let (_, sb) = setup(&s, "race-sign").await;
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let (s, sb) = (s.clone(), sb.clone());
        tasks.push(tokio::spawn(async move {
            s.add_signing_secret(&sb.id, &[i], 1000, 1000)
                .await
                .expect("add")
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 6);
    let active = s.signing_secrets(&sb.id, 1000).await.unwrap();
    assert_eq!(
        active.len(),
        1,
        "one active secret after immediate rotations"
    );
}

/// Events with full Event Grid bodies, so the log can be read back.
fn logged(n: usize, tag: &str) -> Vec<NewLogEvent> {
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i}");
            NewLogEvent {
                body: serde_json::json!({
                    "id": id, "topic": "/t", "subject": format!("/{tag}/{i}"),
                    "eventType": "keep", "eventTime": "2024-01-01T00:00:00.0000000Z",
                    "data": {}, "dataVersion": "1", "metadataVersion": "1",
                })
                .to_string(),
                event_id: id,
                event_type: "keep".into(),
                subject: format!("/{tag}/{i}"),
            }
        })
        .collect()
}

/// The ids of the events left in a topic's log, oldest first.
async fn log_ids(s: &Arc<dyn Storage>, topic_id: &str) -> Vec<String> {
    s.read_events(topic_id, 0, i64::MAX)
        .await
        .expect("read the log")
        .into_iter()
        .map(|e| e.event.id)
        .collect()
}

async fn settle_ok(s: &Arc<dyn Storage>, sub: &str, tokens: Vec<String>, action: SettleAction) {
    let n = tokens.len();
    let r = s.settle(sub, tokens, action, now_ms()).await.unwrap();
    assert_eq!(r, vec![Ok(()); n], "{action:?}");
}

/// Retention: consumed events go, except those an in-flight message or a
/// dead letter still refers to; a topic without subscriptions keeps
/// nothing; the maximum age removes everything older, with its messages.
async fn event_log_retention(s: Arc<dyn Storage>) {
    const WEEK_MS: i64 = 7 * DAY_MS;
    // Two events per transaction: the chunking and its resumption run too.
    const CHUNK: i64 = 2;
    let now = now_ms();
    let t = topic("kept");
    assert!(s.create_topic(&t).await.unwrap());
    // Published before any subscription: nobody will ever read it.
    s.append_events(&t.id, logged(1, "before")).await.unwrap();
    let (a, b) = (sub(&t.id, "a"), sub(&t.id, "b"));
    assert!(s.put_subscription(&a).await.unwrap());
    assert!(s.put_subscription(&b).await.unwrap());
    s.append_events(&t.id, logged(10, "e")).await.unwrap();
    let lonely = topic("lonely");
    assert!(s.create_topic(&lonely).await.unwrap());
    s.append_events(&lonely.id, logged(3, "l")).await.unwrap();

    // a takes all ten: e3 stays locked, e5 is dead-lettered, e7 is released
    // for later; the rest are acknowledged.
    let ca = s.claim(&a.id, &t.id, opts(10, now), all()).await.unwrap();
    assert_eq!(ca.len(), 10);
    let token = |i: usize| ca[i].lock_token.clone();
    let seq_of = |i: usize| ca[i].row.seq;
    settle_ok(
        &s,
        &a.id,
        [0, 1, 2, 4, 6, 8, 9].map(token).to_vec(),
        SettleAction::Acknowledge,
    )
    .await;
    settle_ok(&s, &a.id, vec![token(5)], SettleAction::Reject).await;
    settle_ok(
        &s,
        &a.id,
        vec![token(7)],
        SettleAction::Release { delay_ms: 0 },
    )
    .await;
    // b has read and acknowledged e0..e5 only.
    let cb = s.claim(&b.id, &t.id, opts(6, now), all()).await.unwrap();
    assert_eq!(cb.len(), 6);
    settle_ok(
        &s,
        &b.id,
        cb.iter().map(|c| c.lock_token.clone()).collect(),
        SettleAction::Acknowledge,
    )
    .await;

    // Below b's cursor, except what a still holds; all of the lonely topic.
    assert_eq!(s.prune_event_log(now, WEEK_MS, CHUNK).await.unwrap(), 5 + 3);
    assert_eq!(
        log_ids(&s, &t.id).await,
        ["e-3", "e-5", "e-6", "e-7", "e-8", "e-9"]
    );
    assert!(log_ids(&s, &lonely.id).await.is_empty());
    assert_eq!(s.prune_event_log(now, WEEK_MS, CHUNK).await.unwrap(), 0);

    // A subscription created now keeps what is published after it.
    let late = sub(&lonely.id, "late");
    assert!(s.put_subscription(&late).await.unwrap());
    s.append_events(&lonely.id, logged(2, "late"))
        .await
        .unwrap();

    // b catches up: only the in-flight e7 survives above e5.
    let cb = s.claim(&b.id, &t.id, opts(10, now), all()).await.unwrap();
    assert_eq!(cb.len(), 4);
    settle_ok(
        &s,
        &b.id,
        cb.iter().map(|c| c.lock_token.clone()).collect(),
        SettleAction::Acknowledge,
    )
    .await;
    assert_eq!(s.prune_event_log(now, WEEK_MS, CHUNK).await.unwrap(), 3);
    assert_eq!(log_ids(&s, &t.id).await, ["e-3", "e-5", "e-7"]);
    assert_eq!(log_ids(&s, &lonely.id).await, ["late-0", "late-1"]);

    // Once acknowledged, e3 goes; the dead letter keeps e5 for a replay.
    settle_ok(&s, &a.id, vec![token(3)], SettleAction::Acknowledge).await;
    assert_eq!(s.prune_event_log(now, WEEK_MS, CHUNK).await.unwrap(), 1);
    assert_eq!(log_ids(&s, &t.id).await, ["e-5", "e-7"]);

    // A message whose event is gone (a retry recorded for e0) is removed.
    let w = s
        .peek_fresh(&b.id, &t.id, None, 10, 100, all())
        .await
        .unwrap()
        .unwrap();
    assert!(w.rows.is_empty());
    let dangling = FreshOutcome::Retry {
        seq: seq_of(0),
        retry_at_ms: now,
        outcome: "HttpError",
        status: Some(500),
    };
    assert!(
        s.commit_fresh(
            &b.id,
            (w.cursor, w.next_cursor, 0, 0),
            0,
            vec![dangling],
            Vec::new(),
            now
        )
        .await
        .unwrap()
    );
    assert_eq!(s.next_due(&b.id).await.unwrap(), Some(now));

    // Six days on, nothing is old enough yet.
    assert_eq!(
        s.prune_event_log(now + 6 * DAY_MS, WEEK_MS, CHUNK)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.next_due(&b.id).await.unwrap(), None, "dangling message");
    assert_eq!(log_ids(&s, &t.id).await, ["e-5", "e-7"]);
    assert_eq!(log_ids(&s, &lonely.id).await, ["late-0", "late-1"]);
    assert_eq!(s.backlog(&a.id).await.unwrap(), 1, "e7 in flight");
    assert_eq!(s.backlog(&late.id).await.unwrap(), 2);

    // Past the maximum age everything goes, in flight or not.
    assert_eq!(
        s.prune_event_log(now + 8 * DAY_MS, WEEK_MS, CHUNK)
            .await
            .unwrap(),
        4
    );
    assert!(log_ids(&s, &t.id).await.is_empty());
    assert!(log_ids(&s, &lonely.id).await.is_empty());
    assert_eq!(s.next_due(&a.id).await.unwrap(), None, "e7's message went");
    assert_eq!(s.backlog(&a.id).await.unwrap(), 0);
    assert_eq!(s.backlog(&late.id).await.unwrap(), 0);
    // The dead letter keeps its own copy; replaying it finds no event.
    let dl = s.dead_letters(&a.id, 0, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].seq, seq_of(5));
    assert!(dl[0].body.contains("\"e-5\""), "{}", dl[0].body);
    assert_eq!(
        s.replay_dead_letters(&a.id, vec![dl[0].id], now)
            .await
            .unwrap(),
        0
    );

    // New events after all that are delivered as usual.
    s.append_events(&t.id, logged(1, "after")).await.unwrap();
    let ca = s.claim(&a.id, &t.id, opts(10, now), all()).await.unwrap();
    assert_eq!(
        ca.iter()
            .map(|c| c.row.event_id.as_str())
            .collect::<Vec<_>>(),
        ["after-0"]
    );
}

// ------------------------------------------------------------ the engines

macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (_dir, s) = common::sqlite().await;
                super::$scenario(Arc::new(s)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
            async fn postgres() {
                let Some(s) = common::postgres().await else {
                    eprintln!("no PostgreSQL configured (HERALD_TEST_DATABASE_URL); skipped");
                    return;
                };
                super::$scenario(Arc::new(s)).await;
            }
        }
    )*};
}

on_both_engines!(
    topics,
    log_and_subscriptions,
    queue_claim_and_settle,
    push_windows,
    validations,
    signing_secrets,
    race_claim_fresh,
    race_claim_due,
    race_publish_and_claim,
    race_commit_fresh,
    race_take_once,
    race_signing,
    event_log_retention,
);

/// PostgreSQL only: an append on one node wakes the others (NOTIFY sent in
/// the append's transaction, `topic:<id>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn postgres_append_wakes_other_nodes() {
    let Some(url) = common::fresh_pg_url().await else {
        eprintln!("no PostgreSQL configured (HERALD_TEST_DATABASE_URL); skipped");
        return;
    };
    let a = PgStorage::open(&url).await.expect("node a");
    let b = PgStorage::open(&url).await.expect("node b");
    let mut rx = b.wakeups().expect("postgres has wake-ups");
    let t = topic("wake");
    assert!(a.create_topic(&t).await.unwrap());
    let want = format!("topic:{}", t.id);
    // b's LISTEN connection comes up in the background: publish until heard.
    let heard = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            a.append_events(&t.id, kept(1, "w")).await.unwrap();
            let wait = tokio::time::timeout(std::time::Duration::from_millis(300), async {
                loop {
                    match rx.recv().await {
                        Ok(p) if p == want => return true,
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
            });
            if wait.await == Ok(true) {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "node b never heard node a's append");
}
