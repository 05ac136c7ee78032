//! IdentityStore and access-policy scenarios, written once and run on SQLite
//! and on PostgreSQL (when HERALD_TEST_DATABASE_URL or CI=true provides one).

#![allow(unreachable_pub)]

mod common;

use herald_core::EventGridEvent;
use herald_core::vault::VaultSettings;
use herald_storage::*;
use serde_json::json;

fn principal(app: &str) -> PrincipalRecord {
    PrincipalRecord {
        app_id: app.to_owned(),
        object_id: format!("oid-{app}"),
        display_name: format!("app {app}"),
        builtin: app == "builtin",
        created: 10,
    }
}

fn secret(app: &str, key: &str, expires: i64) -> ClientSecretRecord {
    ClientSecretRecord {
        app_id: app.to_owned(),
        key_id: key.to_owned(),
        display_name: "rotation".into(),
        hint: "abc".into(),
        hash: format!("hash-{key}"),
        created: 20,
        expires,
    }
}

fn event(subject: &str) -> EventGridEvent {
    EventGridEvent {
        id: uuid::Uuid::new_v4().to_string(),
        topic: "/arm/vaults/kv".into(),
        subject: subject.into(),
        event_type: "Microsoft.KeyVault.VaultAccessPolicyChanged".into(),
        event_time: "2026-01-01T00:00:00.0000000Z".into(),
        data: json!({"VaultName": "kv"}),
        data_version: "1".into(),
        metadata_version: "1".into(),
    }
}

async fn make_vault(s: &dyn Storage, name: &str) -> VaultRecord {
    let v = VaultRecord {
        id: format!("vault-{name}").into(),
        name: name.to_owned(),
        settings: VaultSettings {
            retention_days: 7,
            purge_protection: false,
            near_expiry_secs: 3600,
        },
        created: 1,
    };
    let t = TopicRecord {
        id: format!("topic-{name}").into(),
        kind: "system".into(),
        name: format!("{name}-topic"),
        arm_id: format!("/arm/vaults/{name}"),
        created: 1,
        input_schema: "EventGridSchema".into(),
        input_mapping: None,
        key1: Vec::new(),
        key2: Vec::new(),
    };
    assert!(s.create_vault(&v, &t).await.unwrap());
    v
}

async fn scenario_principals_and_secrets(s: &dyn Storage) {
    assert!(s.create_principal(&principal("a")).await.unwrap());
    assert!(s.create_principal(&principal("builtin")).await.unwrap());
    // The app id and the object id are both unique.
    assert!(!s.create_principal(&principal("a")).await.unwrap());
    let mut clash = principal("c");
    clash.object_id = "oid-a".into();
    assert!(!s.create_principal(&clash).await.unwrap());

    let got = s.principal("a").await.unwrap().expect("principal a");
    assert_eq!(got, principal("a"));
    assert!(s.principal("builtin").await.unwrap().unwrap().builtin);
    assert!(s.principal("nobody").await.unwrap().is_none());
    assert_eq!(s.list_principals().await.unwrap().len(), 2);

    // Several secrets at once, for rotation; none for a missing principal.
    assert!(s.add_client_secret(&secret("a", "k1", 100)).await.unwrap());
    assert!(s.add_client_secret(&secret("a", "k2", 200)).await.unwrap());
    assert!(
        !s.add_client_secret(&secret("nobody", "k3", 100))
            .await
            .unwrap()
    );
    let keys: Vec<_> = s
        .client_secrets("a")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert!(s.remove_client_secret("a", "k1").await.unwrap());
    assert!(!s.remove_client_secret("a", "k1").await.unwrap());
    assert_eq!(
        s.client_secrets("a").await.unwrap(),
        [secret("a", "k2", 200)]
    );

    // Deleting a principal takes its secrets and its policies with it.
    let v = make_vault(s, "kv").await;
    let policy = AccessPolicyRecord {
        object_id: "oid-a".into(),
        app_id: "a".into(),
        secrets: r#"["get"]"#.into(),
        updated: 30,
    };
    s.set_access_policy(v.id.as_str(), &policy, &event("a"))
        .await
        .unwrap();
    assert!(s.delete_principal("a").await.unwrap());
    assert!(!s.delete_principal("a").await.unwrap());
    assert!(s.client_secrets("a").await.unwrap().is_empty());
    assert!(s.access_policies(v.id.as_str()).await.unwrap().is_empty());
}

async fn scenario_access_policies(s: &dyn Storage) {
    let v = make_vault(s, "kv").await;
    let topic = s.topic_for_vault(v.id.as_str()).await.unwrap().unwrap();
    let before = s.head_seq(topic.id.as_str()).await.unwrap();
    let mut p = AccessPolicyRecord {
        object_id: "oid-a".into(),
        app_id: "a".into(),
        secrets: r#"["get"]"#.into(),
        updated: 30,
    };
    s.set_access_policy(v.id.as_str(), &p, &event("kv"))
        .await
        .unwrap();
    // Setting again replaces the permissions (az keyvault set-policy).
    p.secrets = r#"["get","list"]"#.into();
    p.updated = 31;
    s.set_access_policy(v.id.as_str(), &p, &event("kv"))
        .await
        .unwrap();
    assert_eq!(s.access_policies(v.id.as_str()).await.unwrap(), [p.clone()]);
    // Each change logged one event on the vault's system topic.
    assert_eq!(s.head_seq(topic.id.as_str()).await.unwrap(), before + 2);

    assert!(
        s.delete_access_policy(v.id.as_str(), "oid-a", &event("kv"))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_access_policy(v.id.as_str(), "oid-a", &event("kv"))
            .await
            .unwrap()
    );
    assert!(s.access_policies(v.id.as_str()).await.unwrap().is_empty());
    // A delete that removed nothing logs nothing.
    assert_eq!(s.head_seq(topic.id.as_str()).await.unwrap(), before + 3);

    // A vault's policies go with the vault.
    s.set_access_policy(v.id.as_str(), &p, &event("kv"))
        .await
        .unwrap();
    assert!(s.delete_vault("kv").await.unwrap());
    assert!(s.access_policies(v.id.as_str()).await.unwrap().is_empty());
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

both_engines!(principals_and_secrets, scenario_principals_and_secrets);
both_engines!(access_policies, scenario_access_policies);
