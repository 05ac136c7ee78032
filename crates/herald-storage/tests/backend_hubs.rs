//! HubStore scenarios, written once and run on SQLite and on PostgreSQL
//! (when HERALD_TEST_DATABASE_URL or CI=true provides one), plus a
//! PostgreSQL race: two nodes appending to one partition at once.

// A test binary has no outside: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

mod common;

use bytes::Bytes;
use herald_hubs::{NewEvent, decode_segment, encode_append, stamp_append};
use herald_storage::*;
use std::sync::Arc;

fn namespace(name: &str) -> (NamespaceRecord, PolicyRecord) {
    let ns = NamespaceRecord {
        id: NamespaceId::generate(),
        key: name.to_lowercase(),
        name: name.to_owned(),
        created: 1_000,
    };
    let root = policy(&ns, "", ROOT_POLICY, 1_000);
    (ns, root)
}

fn policy(ns: &NamespaceRecord, hub_id: &str, name: &str, at: i64) -> PolicyRecord {
    PolicyRecord {
        namespace_id: ns.id.clone(),
        hub_id: hub_id.to_owned(),
        key: name.to_lowercase(),
        name: name.to_owned(),
        rights: r#"["Manage","Send","Listen"]"#.into(),
        primary_key: b"sealed-1".to_vec(),
        secondary_key: b"sealed-2".to_vec(),
        created: at,
        updated: at,
    }
}

fn hub(ns: &NamespaceRecord, name: &str, partitions: i64) -> HubRecord {
    HubRecord {
        id: HubId::generate(),
        namespace_id: ns.id.clone(),
        key: name.to_lowercase(),
        name: name.to_owned(),
        partition_count: partitions,
        retention_hours: 168,
        created: 2_000,
        updated: 2_000,
    }
}

fn default_group() -> ConsumerGroupRecord {
    ConsumerGroupRecord {
        key: "$default".into(),
        name: "$Default".into(),
        user_metadata: String::new(),
        created: 2_000,
    }
}

/// An append of `n` events whose bodies say where they came from.
fn segment(hub: &HubRecord, partition: i64, tag: &str, n: usize, now_ms: i64) -> NewSegment {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new(Bytes::from(format!("{tag}-{i}"))))
        .collect();
    let payload = encode_append(0, now_ms, &events).expect("encode");
    NewSegment {
        hub_id: hub.id.clone(),
        partition,
        count: n as i64,
        bytes: events.iter().map(|e| e.body.len() as i64).sum(),
        now_ms,
        payload,
    }
}

/// Every event of a partition from `from`, decoded, as (seq, body).
async fn read_all(
    s: &dyn Storage,
    hub: &HubRecord,
    partition: i64,
    from: i64,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for seg in s
        .read_segments(hub.id.as_str(), partition, from, 1_000_000)
        .await
        .expect("read")
    {
        for e in decode_segment(&seg.payload).expect("decode") {
            if e.sequence_number >= from {
                out.push((
                    e.sequence_number,
                    String::from_utf8_lossy(&e.body).into_owned(),
                ));
            }
        }
    }
    out
}

async fn scenario_namespaces_hubs_groups_policies(s: &dyn Storage) {
    let (ns, root) = namespace("Contoso-Orders");
    assert!(s.create_namespace(&ns, &root).await.unwrap());
    assert!(
        !s.create_namespace(&namespace("contoso-orders").0, &root)
            .await
            .unwrap(),
        "names are case-insensitive"
    );
    assert_eq!(
        s.namespace("contoso-orders").await.unwrap().unwrap().name,
        "Contoso-Orders"
    );
    assert_eq!(s.list_namespaces().await.unwrap().len(), 1);
    let ps = s.policies(ns.id.as_str(), "").await.unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].name, ROOT_POLICY);

    let h = hub(&ns, "Orders", 4);
    assert!(s.create_hub(&h, &default_group()).await.unwrap());
    assert!(
        !s.create_hub(&hub(&ns, "orders", 2), &default_group())
            .await
            .unwrap()
    );
    let parts = s.partitions(h.id.as_str()).await.unwrap();
    assert_eq!(
        parts.iter().map(|p| p.partition).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(parts.iter().all(PartitionRecord::is_empty));
    assert_eq!(
        s.consumer_groups(h.id.as_str()).await.unwrap()[0].name,
        "$Default"
    );

    // Partitions may be raised, never lowered.
    assert!(s.update_hub(h.id.as_str(), 6, 24, 3_000).await.unwrap());
    assert!(s.update_hub(h.id.as_str(), 2, 24, 3_000).await.unwrap());
    let got = s.hub(ns.id.as_str(), "orders").await.unwrap().unwrap();
    assert_eq!((got.partition_count, got.retention_hours), (6, 24));
    assert_eq!(s.partitions(h.id.as_str()).await.unwrap().len(), 6);
    assert!(!s.update_hub("ehb_missing", 6, 24, 3_000).await.unwrap());

    let g = ConsumerGroupRecord {
        key: "analytics".into(),
        name: "Analytics".into(),
        user_metadata: "a".into(),
        created: 4_000,
    };
    assert!(s.put_consumer_group(h.id.as_str(), &g).await.unwrap());
    let g2 = ConsumerGroupRecord {
        user_metadata: "b".into(),
        ..g.clone()
    };
    assert!(
        !s.put_consumer_group(h.id.as_str(), &g2).await.unwrap(),
        "a second put updates"
    );
    let groups = s.consumer_groups(h.id.as_str()).await.unwrap();
    assert_eq!(
        groups.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(),
        vec!["$default", "analytics"]
    );
    assert_eq!(groups[1].user_metadata, "b");
    s.put_checkpoint(h.id.as_str(), "analytics", 1, 41, 5_000)
        .await
        .unwrap();
    s.put_checkpoint(h.id.as_str(), "analytics", 1, 42, 5_001)
        .await
        .unwrap();
    let cps = s.checkpoints(h.id.as_str(), "analytics").await.unwrap();
    assert_eq!(
        cps,
        vec![CheckpointRecord {
            partition: 1,
            seq: 42,
            updated: 5_001
        }]
    );
    assert!(
        s.delete_consumer_group(h.id.as_str(), "analytics")
            .await
            .unwrap()
    );
    assert!(
        !s.delete_consumer_group(h.id.as_str(), "analytics")
            .await
            .unwrap()
    );
    assert!(
        s.checkpoints(h.id.as_str(), "analytics")
            .await
            .unwrap()
            .is_empty(),
        "checkpoints go with their group"
    );

    // Policies on the hub are apart from the namespace's.
    let send = policy(&ns, h.id.as_str(), "Sender", 6_000);
    assert!(s.put_policy(&send).await.unwrap());
    let regenerated = PolicyRecord {
        primary_key: b"sealed-3".to_vec(),
        updated: 6_001,
        ..send.clone()
    };
    assert!(
        !s.put_policy(&regenerated).await.unwrap(),
        "a second put replaces"
    );
    let got = s
        .policy(ns.id.as_str(), h.id.as_str(), "sender")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            got.primary_key.as_slice(),
            got.secondary_key.as_slice(),
            got.created
        ),
        (&b"sealed-3"[..], &b"sealed-2"[..], 6_000)
    );
    assert!(
        s.policy(ns.id.as_str(), "", "sender")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.delete_policy(ns.id.as_str(), h.id.as_str(), "sender")
            .await
            .unwrap()
    );
    assert!(
        !s.delete_policy(ns.id.as_str(), h.id.as_str(), "sender")
            .await
            .unwrap()
    );

    // Deleting the hub takes its policies; deleting the namespace takes the rest.
    s.put_policy(&send).await.unwrap();
    assert!(
        s.delete_hub(ns.id.as_str(), "ORDERS".to_lowercase().as_str())
            .await
            .unwrap()
    );
    assert!(
        s.policies(ns.id.as_str(), h.id.as_str())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.partitions(h.id.as_str()).await.unwrap().is_empty());
    let h2 = hub(&ns, "payments", 1);
    s.create_hub(&h2, &default_group()).await.unwrap();
    s.append_segment(segment(&h2, 0, "p", 3, 7_000), stamp_append)
        .await
        .unwrap()
        .unwrap();
    assert!(s.delete_namespace("contoso-orders").await.unwrap());
    assert!(s.list_hubs(ns.id.as_str()).await.unwrap().is_empty());
    assert!(
        s.read_segments(h2.id.as_str(), 0, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.policies(ns.id.as_str(), "").await.unwrap().is_empty());
    assert!(!s.delete_namespace("contoso-orders").await.unwrap());
}

async fn scenario_append_read_prune(s: &dyn Storage) {
    let (ns, root) = namespace("streams-ns");
    s.create_namespace(&ns, &root).await.unwrap();
    let h = hub(&ns, "telemetry", 2);
    s.create_hub(&h, &default_group()).await.unwrap();

    // Sequence numbers are dense from 0 per partition; enqueued time never goes back.
    let a = s
        .append_segment(segment(&h, 0, "a", 3, 10_000), stamp_append)
        .await
        .unwrap()
        .unwrap();
    let b = s
        .append_segment(segment(&h, 0, "b", 2, 9_000), stamp_append)
        .await
        .unwrap()
        .unwrap();
    let c = s
        .append_segment(segment(&h, 1, "c", 1, 11_000), stamp_append)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.first_seq, b.first_seq, c.first_seq), (0, 3, 0));
    assert_eq!((a.enqueued, b.enqueued), (10_000, 10_000));
    assert!(
        s.append_segment(segment(&h, 7, "x", 1, 1), stamp_append)
            .await
            .unwrap()
            .is_none(),
        "no such partition"
    );
    s.append_segment(segment(&h, 0, "d", 4, 20_000), stamp_append)
        .await
        .unwrap()
        .unwrap();

    let all = read_all(s, &h, 0, 0).await;
    assert_eq!(
        all.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        (0..9).collect::<Vec<_>>()
    );
    assert_eq!(all[3].1, "b-0");
    assert_eq!(
        read_all(s, &h, 0, 4).await[0],
        (4, "b-1".to_owned()),
        "a read may start inside a segment"
    );
    assert!(read_all(s, &h, 0, 9).await.is_empty());
    // max_events bounds the segments read (whole segments).
    let some = s.read_segments(h.id.as_str(), 0, 1, 3).await.unwrap();
    assert_eq!(
        some.iter().map(|g| g.first_seq).collect::<Vec<_>>(),
        vec![0, 3]
    );

    let heads = s.partitions(h.id.as_str()).await.unwrap();
    assert_eq!(
        (
            heads[0].begin_seq,
            heads[0].next_seq,
            heads[0].last_enqueued,
            heads[0].events_in
        ),
        (0, 9, 20_000, 9)
    );
    assert_eq!(heads[1].next_seq, 1);
    assert_eq!(
        s.first_seq_after(h.id.as_str(), 0, 10_000).await.unwrap(),
        Some(5)
    );
    assert_eq!(
        s.first_seq_after(h.id.as_str(), 0, 20_000).await.unwrap(),
        None
    );

    // Retention drops whole appends and moves the partitions' beginnings.
    assert_eq!(s.prune_segments(h.id.as_str(), 15_000).await.unwrap(), 6);
    let heads = s.partitions(h.id.as_str()).await.unwrap();
    assert_eq!((heads[0].begin_seq, heads[0].next_seq), (5, 9));
    assert!(
        heads[1].is_empty(),
        "an emptied partition begins at its head"
    );
    assert_eq!(heads[1].begin_seq, 1);
    assert_eq!(
        read_all(s, &h, 0, 0).await.first().map(|(q, _)| *q),
        Some(5)
    );
    assert_eq!(s.prune_segments(h.id.as_str(), 15_000).await.unwrap(), 0);
    // After pruning, numbering carries on.
    let e = s
        .append_segment(segment(&h, 1, "e", 1, 30_000), stamp_append)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.first_seq, 1);

    // Outgoing counts add up per partition; an unknown hub is ignored.
    let id = h.id.as_str().to_owned();
    s.add_outgoing(vec![(id.clone(), 0, 3, 300), (id.clone(), 1, 1, 10)])
        .await
        .unwrap();
    s.add_outgoing(vec![(id, 0, 2, 200), ("ehb_none".into(), 0, 9, 9)])
        .await
        .unwrap();
    s.add_outgoing(Vec::new()).await.unwrap();
    let heads = s.partitions(h.id.as_str()).await.unwrap();
    assert_eq!((heads[0].events_out, heads[0].bytes_out), (5, 500));
    assert_eq!((heads[1].events_out, heads[1].bytes_out), (1, 10));
}

macro_rules! both_engines {
    ($name:ident, $scenario:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let (_dir, sqlite) = common::sqlite().await;
                super::$scenario(&sqlite).await;
            }

            #[tokio::test]
            #[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
            async fn postgres() {
                let pg = common::postgres().await.expect("PostgreSQL is configured");
                super::$scenario(&pg).await;
            }
        }
    };
}

both_engines!(
    namespaces_hubs_groups_policies,
    scenario_namespaces_hubs_groups_policies
);
both_engines!(append_read_prune, scenario_append_read_prune);

/// Two nodes on one PostgreSQL append to one partition at once: the
/// sequence numbers stay dense, and each node's events keep their order.
#[tokio::test]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn two_nodes_append_densely_to_one_partition() {
    let Some(url) = common::fresh_pg_url().await else {
        eprintln!("PostgreSQL not configured: skipped");
        return;
    };
    let a: Arc<dyn Storage> = Arc::new(PgStorage::open(&url).await.expect("node a"));
    let b: Arc<dyn Storage> = Arc::new(PgStorage::open(&url).await.expect("node b"));
    let (ns, root) = namespace("race-ns");
    a.create_namespace(&ns, &root).await.unwrap();
    let h = hub(&ns, "race", 1);
    a.create_hub(&h, &default_group()).await.unwrap();
    let mut tasks = Vec::new();
    for (node, s) in [("a", a.clone()), ("b", b.clone())] {
        for w in 0..4 {
            let (s, h) = (s.clone(), h.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let tag = format!("{node}{w}-{i:02}");
                    s.append_segment(
                        segment(&h, 0, &tag, 1 + i % 3, 1_000 + i as i64),
                        stamp_append,
                    )
                    .await
                    .unwrap()
                    .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = read_all(&*a, &h, 0, 0).await;
    let expected: i64 = 8 * (0..25).map(|i| 1 + i % 3).sum::<usize>() as i64;
    assert_eq!(all.len() as i64, expected);
    assert!(
        all.iter().enumerate().all(|(i, (q, _))| *q == i as i64),
        "dense from 0"
    );
    // Each writer's appends appear in the order it made them.
    for node in ["a", "b"] {
        for w in 0..4 {
            let prefix = format!("{node}{w}-");
            let mine: Vec<&String> = all
                .iter()
                .map(|(_, b)| b)
                .filter(|b| b.starts_with(&prefix))
                .collect();
            let mut sorted = mine.clone();
            sorted.sort();
            assert_eq!(mine, sorted, "writer {prefix} kept its order");
        }
    }
    let heads = b.partitions(h.id.as_str()).await.unwrap();
    assert_eq!(heads[0].next_seq, expected);
}
