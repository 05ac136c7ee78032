//! VaultStore scenarios, written once and run on SQLite and on PostgreSQL
//! (when HERALD_TEST_DATABASE_URL or CI=true provides one), plus
//! PostgreSQL-only races between several nodes on one database.

// A test binary has no outside: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

mod common;

use herald_core::EventGridEvent;
use herald_core::vault::VaultSettings;
use herald_storage::*;
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

// ---------------------------------------------------------------- fixtures

fn vault(name: &str) -> (VaultRecord, TopicRecord) {
    vault_with(name, 3600)
}

fn vault_with(name: &str, near_expiry_secs: i64) -> (VaultRecord, TopicRecord) {
    let id = format!("vault-{name}");
    (
        VaultRecord {
            id: id.clone().into(),
            name: name.to_owned(),
            settings: VaultSettings {
                retention_days: 7,
                purge_protection: name.ends_with('p'),
                near_expiry_secs,
            },
            created: 1_000,
        },
        TopicRecord {
            id: format!("topic-{name}").into(),
            kind: "system".into(),
            name: format!("{name}-topic"),
            arm_id: format!("/arm/vaults/{name}"),
            created: 1_000,
            input_schema: "EventGridSchema".into(),
            input_mapping: None,
            key1: Vec::new(),
            key2: Vec::new(),
        },
    )
}

fn version(v: &str, exp: Option<i64>) -> VersionRecord {
    VersionRecord {
        version: v.to_owned(),
        ordinal: 0,
        enabled: true,
        nbf: Some(10),
        exp,
        created: 100,
        updated: 100,
        content_type: Some("text/plain".into()),
        tags: r#"{"a":"b"}"#.into(),
        value: vec![0, 1, 2, 255, v.len() as u8],
        wrapped_key: vec![9, 8, 7],
    }
}

fn event(kind: &str, name: &str, v: &str) -> EventGridEvent {
    EventGridEvent {
        id: format!("{kind}-{name}-{v}-{}", uuid::Uuid::new_v4().simple()),
        topic: "/arm/vaults/x".into(),
        subject: name.to_owned(),
        event_type: format!("Microsoft.KeyVault.{kind}"),
        event_time: "2024-01-01T00:00:00.0000000Z".into(),
        data: json!({
            "Id": format!("https://x/secrets/{name}/{v}"),
            "ObjectName": name,
            "Version": v,
        }),
        data_version: "1".into(),
        metadata_version: "1".into(),
    }
}

async fn put(
    s: &dyn VaultStore,
    vault_id: &str,
    name: &str,
    v: &str,
    exp: Option<i64>,
) -> SecretRecord {
    s.put_version(
        vault_id,
        &name.to_lowercase(),
        name,
        &version(v, exp),
        &event("SecretNewVersionCreated", name, v),
    )
    .await
    .expect("put_version")
    .expect("not refused")
}

async fn all_events(s: &dyn VaultStore, topic_id: &str) -> Vec<LoggedEvent> {
    s.read_events(topic_id, 0, i64::MAX).await.expect("read")
}

// --------------------------------------------------------------- scenarios

async fn scenario_settings_and_tokens(s: &dyn VaultStore) {
    assert_eq!(s.setting("k").await.unwrap(), None);
    assert_eq!(s.init_setting("k", "first").await.unwrap(), "first");
    assert_eq!(s.init_setting("k", "second").await.unwrap(), "first");
    assert_eq!(s.setting("k").await.unwrap().as_deref(), Some("first"));
    assert_eq!(s.setting("other").await.unwrap(), None);

    let t = TokenRecord {
        id: "tok1".into(),
        name: "admin".into(),
        role: "admin".into(),
        created: 42,
    };
    assert_eq!(s.count_tokens("admin").await.unwrap(), 0);
    s.put_token("h1", &t).await.unwrap();
    // Same hash again: ignored, the first record stays.
    s.put_token(
        "h1",
        &TokenRecord {
            name: "changed".into(),
            ..t.clone()
        },
    )
    .await
    .unwrap();
    s.put_token(
        "h2",
        &TokenRecord {
            id: "tok2".into(),
            role: "reader".into(),
            ..t.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.token_by_hash("h1").await.unwrap(), Some(t.clone()));
    assert_eq!(s.token_by_hash("nope").await.unwrap(), None);
    assert_eq!(s.count_tokens("admin").await.unwrap(), 1);
    assert_eq!(s.count_tokens("reader").await.unwrap(), 1);
    assert_eq!(s.count_tokens("other").await.unwrap(), 0);
}

async fn scenario_vaults(s: &dyn VaultStore) {
    let (kb, tb) = vault("b");
    let (ka, ta) = vault("a");
    let (kup, tup) = vault("B-upp");
    assert!(s.create_vault(&kb, &tb).await.unwrap());
    assert!(s.create_vault(&ka, &ta).await.unwrap());
    assert!(s.create_vault(&kup, &tup).await.unwrap());
    // Same vault name: refused.
    let (mut dup, mut dup_t) = vault("a");
    dup.id = "other-id".into();
    dup_t.id = "other-topic".into();
    dup_t.name = "fresh-topic-name".into();
    assert!(!s.create_vault(&dup, &dup_t).await.unwrap());
    assert!(s.topic_for_vault("other-id").await.unwrap().is_none());
    // Topic name taken: refused, and no vault is left behind.
    let (c, mut ct) = vault("c");
    ct.name = ta.name.clone();
    assert!(!s.create_vault(&c, &ct).await.unwrap());
    assert!(s.vault_by_name("c").await.unwrap().is_none());

    assert_eq!(s.vault_by_name("a").await.unwrap(), Some(ka.clone()));
    assert_eq!(s.vault_by_name("A").await.unwrap(), None);
    let names: Vec<String> = s
        .list_vaults()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    // Byte order, like SQLite: upper case sorts before lower case.
    assert_eq!(names, ["B-upp", "a", "b"]);
    assert_eq!(s.list_vaults().await.unwrap()[1], ka);
    assert_eq!(
        s.vault_by_name("B-upp").await.unwrap().unwrap().settings,
        kup.settings
    );

    let topic = s.topic_for_vault(&ka.id).await.unwrap().expect("topic");
    assert_eq!(topic, ta);
    assert!(s.topic_for_vault("missing").await.unwrap().is_none());

    // A secret under the vault goes with it.
    put(s, &kb.id, "S", "v1", None).await;
    assert!(s.delete_vault("b").await.unwrap());
    assert!(!s.delete_vault("b").await.unwrap());
    assert!(s.vault_by_name("b").await.unwrap().is_none());
    assert!(s.topic_for_vault(&kb.id).await.unwrap().is_none());
    assert!(s.get_version(&kb.id, "s", None).await.unwrap().is_none());
    // The name (and its topic name) can be reused.
    assert!(s.create_vault(&kb, &tb).await.unwrap());
}

async fn scenario_secrets(s: &dyn VaultStore) {
    let (kv, topic) = vault("kv");
    assert!(s.create_vault(&kv, &topic).await.unwrap());
    let vid = kv.id.as_str();

    let first = put(s, vid, "MySecret", "v1", None).await;
    assert_eq!(
        first,
        SecretRecord {
            vault_id: vid.into(),
            key: "mysecret".into(),
            name: "MySecret".into(),
            deleted_at: None,
            purge_at: None,
        }
    );
    // A second version under another spelling keeps the first spelling,
    // and its event is re-spelled.
    let again = put(s, vid, "MYSECRET", "v2", Some(5_000)).await;
    assert_eq!(again.name, "MySecret");
    let events = all_events(s, &topic.id).await;
    assert_eq!(events.len(), 2);
    assert!(events[0].seq < events[1].seq);
    assert!(events.iter().all(|e| e.topic_id == topic.id));
    assert_eq!(events[1].event.subject, "MySecret");
    assert_eq!(events[1].event.data["ObjectName"], "MySecret");
    assert_eq!(events[1].event.data["Id"], "https://x/secrets/MySecret/v2");

    // get_version: latest, by version, unknown.
    let (sec, latest) = s.get_version(vid, "mysecret", None).await.unwrap().unwrap();
    assert_eq!(sec, first);
    assert_eq!(latest.version, "v2");
    assert_eq!(latest.ordinal, 2);
    assert_eq!(
        latest,
        VersionRecord {
            ordinal: 2,
            ..version("v2", Some(5_000))
        }
    );
    let (_, v1) = s
        .get_version(vid, "mysecret", Some("v1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v1.ordinal, v1.exp), (1, None));
    assert!(
        s.get_version(vid, "mysecret", Some("v9"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_version(vid, "nope", None).await.unwrap().is_none());
    assert!(
        s.get_version("other-vault", "mysecret", None)
            .await
            .unwrap()
            .is_none()
    );

    // A version id is unique per secret.
    assert!(
        s.put_version(
            vid,
            "mysecret",
            "MySecret",
            &version("v1", None),
            &event("SecretNewVersionCreated", "MySecret", "v1")
        )
        .await
        .is_err()
    );
    assert_eq!(
        all_events(s, &topic.id).await.len(),
        2,
        "failed write logs nothing"
    );

    // list_versions paging by ordinal; all_versions.
    put(s, vid, "MySecret", "v3", None).await;
    let (sec, page) = s
        .list_versions(vid, "mysecret", None, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sec.name, "MySecret");
    assert_eq!(page.iter().map(|v| v.ordinal).collect::<Vec<_>>(), [1, 2]);
    let (_, page) = s
        .list_versions(vid, "mysecret", Some(2), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        page.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
        ["v3"]
    );
    let (_, page) = s
        .list_versions(vid, "mysecret", Some(3), 2)
        .await
        .unwrap()
        .unwrap();
    assert!(page.is_empty(), "an empty page of an existing secret");
    assert!(
        s.list_versions(vid, "nope", None, 2)
            .await
            .unwrap()
            .is_none()
    );
    let (_, all) = s.all_versions(vid, "mysecret").await.unwrap().unwrap();
    assert_eq!(
        all.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(),
        ["v1", "v2", "v3"]
    );
    assert!(s.all_versions(vid, "nope").await.unwrap().is_none());

    // list_secrets: byte order of keys, paged by key.
    for name in ["b", "a", "c-1", "C", "c_2"] {
        put(s, vid, name, &format!("{name}-v"), None).await;
    }
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_secrets(vid, after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        for (sec, v) in &page {
            // Each row carries the latest version.
            let (_, cur) = s.get_version(vid, &sec.key, None).await.unwrap().unwrap();
            assert_eq!(&cur, v);
        }
        after = page.last().map(|(s, _)| s.key.clone());
        keys.extend(page.into_iter().map(|(s, _)| s.key));
    }
    // Keys are lower-cased names; "c" (from "C") sorts before "c-1" < "c_2".
    assert_eq!(keys, ["a", "b", "c", "c-1", "c_2", "mysecret"]);
    assert!(
        s.list_secrets("other-vault", None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // update_version: latest and by version; None leaves fields.
    let patch = VersionPatch {
        enabled: Some(false),
        nbf: Some(None),
        exp: Some(Some(9_000)),
        content_type: Some(None),
        tags: Some("{}".into()),
        updated: 777,
    };
    let (sec, upd) = s
        .update_version(vid, "mysecret", None, &patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sec.name, "MySecret");
    assert_eq!(upd.version, "v3");
    assert_eq!(
        (
            upd.enabled,
            upd.nbf,
            upd.exp,
            upd.content_type.clone(),
            upd.tags.as_str(),
            upd.updated
        ),
        (false, None, Some(9_000), None, "{}", 777)
    );
    assert_eq!(upd.value, version("v3", None).value);
    let (_, stored) = s.get_version(vid, "mysecret", None).await.unwrap().unwrap();
    assert_eq!(stored, upd);
    let only_tags = VersionPatch {
        tags: Some(r#"{"x":"y"}"#.into()),
        updated: 778,
        ..Default::default()
    };
    let (_, v1) = s
        .update_version(vid, "mysecret", Some("v1"), &only_tags)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        v1,
        VersionRecord {
            ordinal: 1,
            tags: r#"{"x":"y"}"#.into(),
            updated: 778,
            ..version("v1", None)
        }
    );
    assert!(
        s.update_version(vid, "mysecret", Some("v9"), &only_tags)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.update_version(vid, "nope", None, &only_tags)
            .await
            .unwrap()
            .is_none()
    );
    let events_before_delete = all_events(s, &topic.id).await.len();
    assert_eq!(events_before_delete, 8, "update_version logs nothing");

    // Soft delete, then everything but recover/purge refuses.
    let (del, latest) = s
        .soft_delete(vid, "mysecret", 1_000, 2_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((del.deleted_at, del.purge_at), (Some(1_000), Some(2_000)));
    assert_eq!(latest.version, "v3");
    assert!(
        s.soft_delete(vid, "mysecret", 1, 2)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.soft_delete(vid, "nope", 1, 2).await.unwrap().is_none());
    assert!(
        s.get_version(vid, "mysecret", None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.list_versions(vid, "mysecret", None, 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.all_versions(vid, "mysecret").await.unwrap().is_none());
    assert!(
        s.update_version(vid, "mysecret", None, &only_tags)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.put_version(
            vid,
            "mysecret",
            "MySecret",
            &version("v4", None),
            &event("SecretNewVersionCreated", "MySecret", "v4")
        )
        .await
        .unwrap(),
        Err(WriteRefused::Deleted)
    );
    assert_eq!(all_events(s, &topic.id).await.len(), events_before_delete);
    assert!(
        !s.list_secrets(vid, None, 100)
            .await
            .unwrap()
            .iter()
            .any(|(s, _)| s.key == "mysecret")
    );
    let (gd, gv) = s.get_deleted(vid, "mysecret").await.unwrap().unwrap();
    assert_eq!((gd, gv), (del.clone(), latest.clone()));
    assert!(s.get_deleted(vid, "a").await.unwrap().is_none());

    // list_deleted: paged by key.
    s.soft_delete(vid, "b", 1_100, 3_000)
        .await
        .unwrap()
        .unwrap();
    s.soft_delete(vid, "a", 1_200, 1_500)
        .await
        .unwrap()
        .unwrap();
    let d1 = s.list_deleted(vid, None, 2).await.unwrap();
    assert_eq!(
        d1.iter().map(|(s, _)| s.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let d2 = s.list_deleted(vid, Some("b"), 2).await.unwrap();
    assert_eq!(
        d2.iter().map(|(s, _)| s.key.as_str()).collect::<Vec<_>>(),
        ["mysecret"]
    );
    assert_eq!(d2[0].1.version, "v3");

    // recover
    assert!(s.recover(vid, "c").await.unwrap().is_none(), "live secret");
    let (rec, rv) = s.recover(vid, "mysecret").await.unwrap().unwrap();
    assert_eq!((rec.deleted_at, rec.purge_at), (None, None));
    assert_eq!(rv.version, "v3");
    assert!(s.recover(vid, "mysecret").await.unwrap().is_none());
    assert!(s.get_deleted(vid, "mysecret").await.unwrap().is_none());
    assert_eq!(put(s, vid, "mysecret", "v4", None).await.name, "MySecret");

    // purge only soft-deleted secrets.
    assert!(!s.purge(vid, "mysecret").await.unwrap(), "live secret");
    assert!(s.purge(vid, "b").await.unwrap());
    assert!(!s.purge(vid, "b").await.unwrap());
    assert!(s.get_deleted(vid, "b").await.unwrap().is_none());
    // A purged name starts over.
    let fresh = put(s, vid, "B", "b-new", None).await;
    assert_eq!(fresh.name, "B");
    let (_, bv) = s.get_version(vid, "b", None).await.unwrap().unwrap();
    assert_eq!(bv.ordinal, 1);

    // restore_secret: refused onto live or deleted names.
    let backup = vec![
        VersionRecord {
            ordinal: 1,
            ..version("r1", None)
        },
        VersionRecord {
            ordinal: 3,
            ..version("r3", Some(10))
        },
    ];
    let restore_events = vec![
        event("SecretNewVersionCreated", "Restored", "r1"),
        event("SecretNewVersionCreated", "Restored", "r3"),
    ];
    let n = all_events(s, &topic.id).await.len();
    assert_eq!(
        s.restore_secret(vid, "c", "c", &backup, &restore_events)
            .await
            .unwrap(),
        Err(WriteRefused::Exists)
    );
    assert_eq!(
        s.restore_secret(vid, "a", "a", &backup, &restore_events)
            .await
            .unwrap(),
        Err(WriteRefused::Deleted)
    );
    assert_eq!(all_events(s, &topic.id).await.len(), n);
    let restored = s
        .restore_secret(vid, "restored", "Restored", &backup, &restore_events)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        restored,
        SecretRecord {
            vault_id: vid.into(),
            key: "restored".into(),
            name: "Restored".into(),
            deleted_at: None,
            purge_at: None,
        }
    );
    let (_, rv) = s.get_version(vid, "restored", None).await.unwrap().unwrap();
    assert_eq!(rv, backup[1]);
    let (_, all) = s.all_versions(vid, "restored").await.unwrap().unwrap();
    assert_eq!(all, backup);
    let events = all_events(s, &topic.id).await;
    assert_eq!(events.len(), n + 2);
    assert_eq!(events[n].event, restore_events[0]);
    assert_eq!(events[n + 1].event, restore_events[1]);
    // The next write continues after the highest restored ordinal.
    put(s, vid, "Restored", "r4", None).await;
    let (_, r4) = s.get_version(vid, "restored", None).await.unwrap().unwrap();
    assert_eq!(r4.ordinal, 4);
    // Restoring with no versions is allowed (current ordinal 1).
    let empty = s
        .restore_secret(vid, "empty", "Empty", &[], &[])
        .await
        .unwrap();
    assert!(empty.is_ok());

    // purge_due: only soft-deleted secrets whose purge date passed.
    s.soft_delete(vid, "c", 1_300, 2_500)
        .await
        .unwrap()
        .unwrap();
    assert!(s.purge_due(1_000).await.unwrap().is_empty());
    let mut due = s.purge_due(2_000).await.unwrap();
    due.sort();
    // mysecret was recovered; a's purge_at is 1_500.
    assert_eq!(due, [("kv".to_owned(), "a".to_owned())]);
    let due = s.purge_due(2_500).await.unwrap();
    assert_eq!(due, [("kv".to_owned(), "C".to_owned())]);
    assert!(s.purge_due(i64::MAX).await.unwrap().is_empty());
    assert!(s.get_deleted(vid, "a").await.unwrap().is_none());
    assert!(s.get_deleted(vid, "c").await.unwrap().is_none());
    assert!(s.list_deleted(vid, None, 10).await.unwrap().is_empty());
    assert!(
        s.get_version(vid, "mysecret", None)
            .await
            .unwrap()
            .is_some()
    );
}

async fn scenario_expiry(s: &dyn VaultStore) {
    let (kv, topic) = vault_with("exp", 100);
    assert!(s.create_vault(&kv, &topic).await.unwrap());
    let vid = kv.id.as_str();
    put(s, vid, "Soon", "s1", Some(1_000)).await;
    put(s, vid, "Later", "l1", Some(2_000)).await;
    put(s, vid, "Never", "n1", None).await;
    // An old version's exp does not count, only the current version's.
    put(s, vid, "Old", "o1", Some(500)).await;
    put(s, vid, "Old", "o2", None).await;
    // Deleted secrets are not scanned.
    put(s, vid, "Gone", "g1", Some(500)).await;
    s.soft_delete(vid, "gone", 1, 99_999)
        .await
        .unwrap()
        .unwrap();
    let logged = all_events(s, &topic.id).await.len();

    assert!(s.due_expiries(899, 10).await.unwrap().is_empty());
    let due = s.due_expiries(900, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let d = &due[0];
    assert_eq!(d.kind, ExpiryKind::NearExpiry);
    assert_eq!(d.vault, kv);
    assert_eq!(d.secret.name, "Soon");
    assert_eq!((d.version.version.as_str(), d.version.ordinal), ("s1", 1));

    let near = event("SecretNearExpiry", "Soon", "s1");
    assert!(
        s.record_expiry(vid, "soon", 1, ExpiryKind::NearExpiry, &near)
            .await
            .unwrap()
    );
    assert!(
        !s.record_expiry(vid, "soon", 1, ExpiryKind::NearExpiry, &near)
            .await
            .unwrap(),
        "recorded once"
    );
    assert!(s.due_expiries(999, 10).await.unwrap().is_empty());
    // Past exp: Expired (ordered by exp), and Later is near.
    let due = s.due_expiries(1_950, 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|d| (d.secret.key.as_str(), d.kind))
            .collect::<Vec<_>>(),
        [
            ("soon", ExpiryKind::Expired),
            ("later", ExpiryKind::NearExpiry)
        ]
    );
    assert_eq!(s.due_expiries(1_950, 1).await.unwrap().len(), 1, "limit");
    let expired = event("SecretExpired", "Soon", "s1");
    assert!(
        s.record_expiry(vid, "soon", 1, ExpiryKind::Expired, &expired)
            .await
            .unwrap()
    );
    assert!(
        !s.record_expiry(vid, "soon", 1, ExpiryKind::Expired, &expired)
            .await
            .unwrap()
    );
    // Unknown versions record nothing.
    assert!(
        !s.record_expiry(vid, "soon", 9, ExpiryKind::Expired, &expired)
            .await
            .unwrap()
    );
    // A version past exp that never had its near-expiry recorded: near first.
    let due = s.due_expiries(5_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].secret.key.as_str(), due[0].kind),
        ("later", ExpiryKind::NearExpiry)
    );
    let events = all_events(s, &topic.id).await;
    assert_eq!(events.len(), logged + 2);
    assert_eq!(events[logged].event, near);
    assert_eq!(events[logged + 1].event, expired);

    // A new exp re-arms both markers; the same exp does not.
    let same = VersionPatch {
        exp: Some(Some(1_000)),
        updated: 1,
        ..Default::default()
    };
    s.update_version(vid, "soon", None, &same)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.due_expiries(5_000, 10)
            .await
            .unwrap()
            .iter()
            .all(|d| d.secret.key != "soon")
    );
    let moved = VersionPatch {
        exp: Some(Some(3_000)),
        updated: 2,
        ..Default::default()
    };
    s.update_version(vid, "soon", None, &moved)
        .await
        .unwrap()
        .unwrap();
    let due = s.due_expiries(2_950, 10).await.unwrap();
    assert!(
        due.iter()
            .any(|d| d.secret.key == "soon" && d.kind == ExpiryKind::NearExpiry)
    );
    assert!(
        s.record_expiry(vid, "soon", 1, ExpiryKind::NearExpiry, &near)
            .await
            .unwrap()
    );
    // Removing exp takes the version off the schedule.
    let cleared = VersionPatch {
        exp: Some(None),
        updated: 3,
        ..Default::default()
    };
    s.update_version(vid, "later", None, &cleared)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.due_expiries(i64::MAX / 2, 10)
            .await
            .unwrap()
            .iter()
            .all(|d| d.secret.key != "later")
    );
}

async fn scenario_read_events(s: &dyn VaultStore) {
    let (a, ta) = vault("ra");
    let (b, tb) = vault("rb");
    assert!(s.create_vault(&a, &ta).await.unwrap());
    assert!(s.create_vault(&b, &tb).await.unwrap());
    for i in 0..5 {
        put(s, &a.id, "x", &format!("a{i}"), None).await;
        put(s, &b.id, "x", &format!("b{i}"), None).await;
    }
    let all = all_events(s, &ta.id).await;
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(all.iter().all(|e| e.topic_id == ta.id));
    assert_eq!(
        all.iter()
            .map(|e| e.event.data["Version"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
            .collect::<Vec<_>>(),
        ["a0", "a1", "a2", "a3", "a4"]
    );
    // Paging with a cursor.
    let p1 = s.read_events(&ta.id, 0, 2).await.unwrap();
    assert_eq!(p1.len(), 2);
    let p2 = s.read_events(&ta.id, p1[1].seq, 2).await.unwrap();
    assert_eq!(p2.len(), 2);
    assert_eq!(p2[0].seq, all[2].seq);
    let p3 = s.read_events(&ta.id, p2[1].seq, 2).await.unwrap();
    assert_eq!(p3.len(), 1);
    assert!(
        s.read_events(&ta.id, p3[0].seq, 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.read_events("no-topic", 0, 10).await.unwrap().is_empty());
    assert_eq!(all_events(s, &tb.id).await.len(), 5);
}

// ------------------------------------------------------------ run on both

macro_rules! on_both {
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

on_both!(settings_and_tokens, scenario_settings_and_tokens);
on_both!(vaults, scenario_vaults);
on_both!(secrets, scenario_secrets);
on_both!(expiry, scenario_expiry);
on_both!(read_events, scenario_read_events);

// ------------------------------------------- PostgreSQL: several nodes

/// Two nodes (separate pools) on one fresh database, and its URL.
async fn pg_nodes_at() -> Option<(String, Arc<PgStorage>, Arc<PgStorage>)> {
    let url = common::fresh_pg_url().await?;
    let a = PgStorage::open(&url).await.expect("open node a");
    let b = PgStorage::open(&url).await.expect("open node b");
    Some((url, Arc::new(a), Arc::new(b)))
}

async fn pg_nodes() -> Option<(Arc<PgStorage>, Arc<PgStorage>)> {
    pg_nodes_at().await.map(|(_, a, b)| (a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_record_expiry_exactly_once_across_nodes() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    let (kv, topic) = vault_with("race", 100);
    assert!(a.create_vault(&kv, &topic).await.unwrap());
    const N: usize = 30;
    for i in 0..N {
        put(&*a, &kv.id, &format!("s{i}"), "v1", Some(1_000)).await;
    }
    let logged = all_events(&*a, &topic.id).await.len();
    // Several scanners per node race over the same due list, twice (near
    // expiry, then expiry).
    for now in [950, 1_000] {
        let mut tasks = Vec::new();
        for scanner in 0..6 {
            let node = if scanner % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            tasks.push(tokio::spawn(async move {
                let due = node.due_expiries(now, 1_000).await.unwrap();
                let mut won = Vec::new();
                for d in due {
                    let e = event("Lifecycle", &d.secret.name, &d.version.version);
                    if node
                        .record_expiry(&d.vault.id, &d.secret.key, d.version.ordinal, d.kind, &e)
                        .await
                        .unwrap()
                    {
                        won.push((d.secret.key.clone(), d.kind == ExpiryKind::Expired));
                    }
                }
                won
            }));
        }
        let mut wins = Vec::new();
        for t in tasks {
            wins.extend(t.await.unwrap());
        }
        let unique: HashSet<_> = wins.iter().cloned().collect();
        assert_eq!(
            wins.len(),
            N,
            "each fact recorded exactly once at now={now}"
        );
        assert_eq!(unique.len(), N);
    }
    let events = all_events(&*b, &topic.id).await;
    assert_eq!(events.len(), logged + 2 * N);
    assert!(
        a.due_expiries(i64::MAX / 2, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_concurrent_put_version_takes_distinct_ordinals() {
    let Some((url, a, b)) = pg_nodes_at().await else {
        return;
    };
    let (kv, topic) = vault("puts");
    assert!(a.create_vault(&kv, &topic).await.unwrap());
    const N: usize = 40;
    let mut tasks = Vec::new();
    for i in 0..N {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let vid = kv.id.clone();
        tasks.push(tokio::spawn(async move {
            node.put_version(
                &vid,
                "shared",
                "Shared",
                &version(&format!("v{i:02}"), None),
                &event("SecretNewVersionCreated", "Shared", &format!("v{i:02}")),
            )
            .await
            .unwrap()
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().name, "Shared");
    }
    let (_, all) = a.all_versions(&kv.id, "shared").await.unwrap().unwrap();
    assert_eq!(
        all.iter().map(|v| v.ordinal).collect::<Vec<_>>(),
        (1..=N as i64).collect::<Vec<_>>()
    );
    let (_, latest) = b
        .get_version(&kv.id, "shared", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.ordinal, N as i64);
    // One event per version, each committed with it.
    let events = all_events(&*a, &topic.id).await;
    assert_eq!(events.len(), N);
    let ids: BTreeSet<_> = events.iter().map(|e| e.event.id.clone()).collect();
    assert_eq!(ids.len(), N);
    // Per topic, seq order is commit order, so events come in ordinal order.
    assert_eq!(
        events
            .iter()
            .map(|e| e.event.data["Version"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
            .collect::<Vec<_>>(),
        all.iter().map(|v| v.version.clone()).collect::<Vec<_>>()
    );
    // Counted as published once per event.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let published: i64 =
        sqlx::query_scalar("SELECT value FROM counters WHERE scope = $1 AND name = 'published'")
            .bind(topic.id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(published, N as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_event_log_cursor_never_skips_under_concurrent_appends() {
    // A follower reading `seq > cursor` while two nodes append to the same
    // topic must see every event exactly once: per topic, seq order is
    // commit order.
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    let (kv, topic) = vault("follow");
    assert!(a.create_vault(&kv, &topic).await.unwrap());
    const WRITERS: usize = 8;
    const PER: usize = 15;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let node = if w % 2 == 0 { a.clone() } else { b.clone() };
        let vid = kv.id.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER {
                // Distinct secrets, so writers only meet in the log.
                put(&*node, &vid, &format!("w{w}-{i}"), "v", None).await;
            }
        }));
    }
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let node = b.clone();
        let topic_id = topic.id.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                // Read the flag before the page: an empty page after the
                // writers finished means the follower has caught up.
                let done = writers_done.load(std::sync::atomic::Ordering::SeqCst);
                let page = node.read_events(&topic_id, cursor, 7).await.unwrap();
                if page.is_empty() && done {
                    return seen;
                }
                if let Some(last) = page.last() {
                    cursor = last.seq;
                }
                seen.extend(page.into_iter().map(|e| e.event.id));
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.await.unwrap();
    assert_eq!(
        all_events(&*a, &topic.id).await.len(),
        WRITERS * PER,
        "everything was logged"
    );
    assert_eq!(seen.len(), WRITERS * PER, "the cursor skipped no event");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), WRITERS * PER);
    assert_eq!(unique.len(), WRITERS * PER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_purge_due_reports_each_secret_once() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    let (kv, topic) = vault("purge");
    assert!(a.create_vault(&kv, &topic).await.unwrap());
    const N: usize = 40;
    for i in 0..N {
        let name = format!("p{i:02}");
        put(&*a, &kv.id, &name, "v", None).await;
        a.soft_delete(&kv.id, &name, 10, 100 + i as i64)
            .await
            .unwrap()
            .unwrap();
    }
    // One that is not due yet, and one live.
    put(&*a, &kv.id, "later", "v", None).await;
    a.soft_delete(&kv.id, "later", 10, 10_000)
        .await
        .unwrap()
        .unwrap();
    put(&*a, &kv.id, "live", "v", None).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(
            async move { node.purge_due(1_000).await.unwrap() },
        ));
    }
    let mut purged = Vec::new();
    for t in tasks {
        purged.extend(t.await.unwrap());
    }
    purged.sort();
    let expected: Vec<(String, String)> = (0..N)
        .map(|i| ("purge".to_owned(), format!("p{i:02}")))
        .collect();
    assert_eq!(purged, expected);
    assert!(a.get_deleted(&kv.id, "later").await.unwrap().is_some());
    assert!(a.get_version(&kv.id, "live", None).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_racing_creates_and_restores() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    // init_setting: one value wins everywhere.
    let (ra, rb) = tokio::join!(a.init_setting("seed", "A"), b.init_setting("seed", "B"));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra, rb);
    assert_eq!(a.setting("seed").await.unwrap(), Some(ra));

    // create_vault of one name: exactly one wins.
    let (kv, topic) = vault("same");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (mut v, mut t) = (kv.clone(), topic.clone());
        v.id = format!("id-{i}").into();
        t.id = format!("topic-{i}").into();
        tasks.push(tokio::spawn(async move {
            node.create_vault(&v, &t).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    let winner = a.vault_by_name("same").await.unwrap().unwrap();
    assert!(a.topic_for_vault(&winner.id).await.unwrap().is_some());
    assert_eq!(a.list_vaults().await.unwrap().len(), 1);

    // restore_secret of one name: one restores, the others see it exists.
    let backup = vec![VersionRecord {
        ordinal: 1,
        ..version("r1", None)
    }];
    let mut tasks = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (vid, backup) = (winner.id.clone(), backup.clone());
        tasks.push(tokio::spawn(async move {
            node.restore_secret(
                &vid,
                "r",
                "R",
                &backup,
                &[event("SecretNewVersionCreated", "R", "r1")],
            )
            .await
            .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(
        outcomes
            .iter()
            .filter(|o| o.is_err())
            .all(|o| *o == Err(WriteRefused::Exists))
    );
    let sys = a.topic_for_vault(&winner.id).await.unwrap().unwrap();
    assert_eq!(all_events(&*a, &sys.id).await.len(), 1);

    // update_version is a locked read-modify-write: patches of different
    // fields racing from both nodes are all kept (no lost update).
    let patches = [
        VersionPatch {
            enabled: Some(false),
            ..Default::default()
        },
        VersionPatch {
            nbf: Some(Some(77)),
            ..Default::default()
        },
        VersionPatch {
            exp: Some(Some(88)),
            ..Default::default()
        },
        VersionPatch {
            content_type: Some(Some("application/json".into())),
            ..Default::default()
        },
        VersionPatch {
            tags: Some(r#"{"race":"won"}"#.into()),
            ..Default::default()
        },
    ];
    for round in 0..5 {
        let mut tasks = Vec::new();
        for (i, p) in patches.iter().enumerate() {
            let node = if (i + round) % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let (vid, p) = (winner.id.clone(), p.clone());
            tasks.push(tokio::spawn(async move {
                node.update_version(&vid, "r", None, &p)
                    .await
                    .unwrap()
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (_, v) = a.get_version(&winner.id, "r", None).await.unwrap().unwrap();
        assert_eq!(
            (
                v.enabled,
                v.nbf,
                v.exp,
                v.content_type.as_deref(),
                v.tags.as_str()
            ),
            (
                false,
                Some(77),
                Some(88),
                Some("application/json"),
                r#"{"race":"won"}"#
            )
        );
        // Reset for the next round.
        let reset = VersionPatch {
            enabled: Some(true),
            nbf: Some(None),
            exp: Some(None),
            content_type: Some(None),
            tags: Some("{}".into()),
            updated: 0,
        };
        a.update_version(&winner.id, "r", None, &reset)
            .await
            .unwrap()
            .unwrap();
    }
}
