//! Every secrets operation and its error cases, plus the management API,
//! checked against the Key Vault spec over HTTPS.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

const DAY: i64 = 86_400;

fn attrs_are_integers(b: &Value) {
    for k in ["created", "updated", "recoverableDays"] {
        assert!(
            b["attributes"][k].is_i64(),
            "attributes.{k} must be an integer: {b}"
        );
    }
}

#[tokio::test]
async fn set_creates_versions_and_get_reads_latest_or_by_version() {
    let app = spawn_app().await;
    let before = now();
    let first = app
        .set(
            DEFAULT,
            "db-password",
            json!({"value": "s3cr3t-1", "contentType": "text/plain", "tags": {"owner": "team-a"}}),
        )
        .await;
    assert_eq!(first["value"], "s3cr3t-1");
    assert_eq!(first["contentType"], "text/plain");
    assert_eq!(first["tags"], json!({"owner": "team-a"}));
    let id1 = first["id"].as_str().expect("id").to_owned();
    let prefix = format!("https://localhost:{}/secrets/db-password/", app.port);
    assert!(id1.starts_with(&prefix), "{id1}");
    let v1 = version_of(&id1);
    let a = &first["attributes"];
    assert_eq!(a["enabled"], true);
    assert_eq!(a["recoverableDays"], 90);
    assert_eq!(a["recoveryLevel"], "Recoverable+Purgeable");
    attrs_are_integers(&first);
    let created = a["created"].as_i64().expect("created");
    assert!(created >= before && created <= now(), "created {created}");
    assert_eq!(a["created"], a["updated"]);
    for absent in ["kid", "managed", "previousVersion"] {
        assert!(first.get(absent).is_none(), "{absent} must be omitted");
    }
    assert!(
        a.get("exp").is_none() && a.get("nbf").is_none(),
        "null attributes omitted"
    );

    // SET on an existing name creates a new version.
    let second = app
        .set(
            DEFAULT,
            "db-password",
            json!({"value": "s3cr3t-2", "attributes": {"exp": 1_900_000_000, "nbf": 1_700_000_000}}),
        )
        .await;
    let id2 = second["id"].as_str().expect("id").to_owned();
    let v2 = version_of(&id2);
    assert_ne!(v1, v2);
    assert_eq!(second["attributes"]["exp"], 1_900_000_000);
    assert_eq!(second["attributes"]["nbf"], 1_700_000_000);
    assert!(
        second.get("tags").is_none(),
        "a new version starts without tags"
    );

    // Latest, with the SDK's trailing slash and without it.
    for path in ["/secrets/db-password/", "/secrets/db-password"] {
        let r = app.kv(Method::GET, DEFAULT, path, None).await;
        let b = r.expect(200);
        assert_eq!(b["value"], "s3cr3t-2", "{path}");
        assert_eq!(b["id"], id2.as_str(), "{path}");
    }
    // By version.
    let r = app
        .kv(
            Method::GET,
            DEFAULT,
            &format!("/secrets/db-password/{v1}"),
            None,
        )
        .await;
    let b = r.expect(200);
    assert_eq!(b["value"], "s3cr3t-1");
    assert_eq!(b["id"], id1.as_str());
    assert_eq!(b["tags"], json!({"owner": "team-a"}));

    // An unknown (well-formed or not) version is SecretNotFound.
    for v in ["0123456789abcdef0123456789abcdef", "not-a-version"] {
        let r = app
            .kv(
                Method::GET,
                DEFAULT,
                &format!("/secrets/db-password/{v}"),
                None,
            )
            .await;
        r.expect_error(404, "SecretNotFound");
        assert_eq!(r.message(), not_found_message("db-password"));
    }

    // nbf/exp are informational: an expired version still reads.
    let expired = app
        .set(
            DEFAULT,
            "old",
            json!({"value": "x", "attributes": {"exp": 1_000_000_000}}),
        )
        .await;
    assert_eq!(expired["attributes"]["exp"], 1_000_000_000);
    app.kv(Method::GET, DEFAULT, "/secrets/old/", None)
        .await
        .expect(200);
}

#[tokio::test]
async fn every_sdk_api_version_is_accepted() {
    let app = spawn_app().await;
    app.set_value(DEFAULT, "n", "v").await;
    for v in [
        "2026-04-01",
        "2025-07-01",
        "7.6",
        "7.5",
        "7.4",
        "7.3",
        "7.2",
        "7.1",
        "7.0",
        "2016-10-01",
        "7.6-preview",
    ] {
        let r = app
            .kv(
                Method::GET,
                DEFAULT,
                &format!("/secrets/n/?api-version={v}"),
                None,
            )
            .await;
        assert_eq!(r.expect(200)["value"], "v", "api-version {v}");
    }
}

#[tokio::test]
async fn unknown_secret_is_404_with_the_exact_message() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/secrets/nope/"),
        (Method::GET, "/secrets/nope"),
        (Method::GET, "/secrets/nope/versions"),
        (Method::DELETE, "/secrets/nope"),
        (Method::POST, "/secrets/nope/backup"),
    ] {
        let r = app.kv(method.clone(), DEFAULT, path, None).await;
        r.expect_error(404, "SecretNotFound");
        assert_eq!(r.message(), not_found_message("nope"), "{method} {path}");
    }
    let r = app
        .kv(
            Method::PATCH,
            DEFAULT,
            "/secrets/nope/",
            Some(json!({"contentType": "x"})),
        )
        .await;
    r.expect_error(404, "SecretNotFound");
    assert_eq!(r.message(), not_found_message("nope"));

    for (method, path) in [
        (Method::GET, "/deletedsecrets/nope"),
        (Method::DELETE, "/deletedsecrets/nope"),
        (Method::POST, "/deletedsecrets/nope/recover"),
    ] {
        let r = app.kv(method.clone(), DEFAULT, path, None).await;
        r.expect_error(404, "SecretNotFound");
        assert_eq!(
            r.message(),
            "Deleted Secret not found: nope",
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn list_pages_with_absolute_next_links_over_many_secrets() {
    let app = spawn_app().await;
    let vault = "paging";
    app.create_vault(json!({"name": vault})).await;
    for i in 0..30 {
        app.set_value(vault, &format!("s-{i:02}"), &format!("value-{i}"))
            .await;
    }
    // One deleted (excluded), one disabled (included), one with two versions.
    app.kv(Method::DELETE, vault, "/secrets/s-05", None)
        .await
        .expect(200);
    app.set(
        vault,
        "s-07",
        json!({"value": "off", "attributes": {"enabled": false}}),
    )
    .await;

    // Default page size is 25.
    let first = app.kv(Method::GET, vault, "/secrets", None).await;
    let page = first.expect(200);
    assert_eq!(page["value"].as_array().expect("array").len(), 25);
    assert!(page["nextLink"].is_string());

    let origin = app.vault_origin(vault);
    let r = app
        .kv(Method::GET, vault, "/secrets?maxresults=7", None)
        .await;
    let mut page = r.expect(200).clone();
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let items = page["value"].as_array().expect("value array");
        assert!(items.len() <= 7);
        for item in items {
            assert!(item.get("value").is_none(), "list items never carry value");
            let id = item["id"].as_str().expect("id");
            let name = id
                .strip_prefix(&format!("{origin}/secrets/"))
                .unwrap_or_else(|| panic!("item id {id} not on {origin}"));
            assert!(!name.contains('/'), "list ids are unversioned: {id}");
            names.push(name.to_owned());
            assert!(item["attributes"]["created"].is_i64());
        }
        match page["nextLink"].as_str() {
            Some(next) if !next.is_empty() => {
                assert!(
                    next.starts_with(&format!("{origin}/secrets?")),
                    "nextLink must be absolute on the vault host: {next}"
                );
                assert!(next.contains("$skiptoken="), "{next}");
                assert!(next.contains("maxresults=7"), "maxresults echoed: {next}");
                // The SDK swaps in its own api-version and keeps the rest.
                let next = next.replace("api-version=7.6", "api-version=2026-04-01");
                page = app.get_url(&next).await.expect(200).clone();
            }
            _ => {
                assert!(page["nextLink"].is_null(), "last page has nextLink null");
                break;
            }
        }
    }
    assert_eq!(pages, 5, "29 secrets in pages of 7");
    let mut expected: Vec<String> = (0..30)
        .filter(|i| *i != 5)
        .map(|i| format!("s-{i:02}"))
        .collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "every live secret exactly once, in name order"
    );

    let all = app.list_all(vault, "/secrets?maxresults=25").await;
    let s07 = all
        .iter()
        .find(|i| i["id"].as_str().is_some_and(|id| id.ends_with("/s-07")))
        .expect("disabled secret is listed");
    assert_eq!(
        s07["attributes"]["enabled"], false,
        "latest version's attributes"
    );
}

#[tokio::test]
async fn versions_page_in_creation_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let b = app.set_value(DEFAULT, "rotated", &format!("v{i}")).await;
        ids.push(b["id"].as_str().expect("id").to_owned());
    }
    app.set_value(DEFAULT, "other", "x").await;

    let r = app
        .kv(
            Method::GET,
            DEFAULT,
            "/secrets/rotated/versions?maxresults=2",
            None,
        )
        .await;
    let first = r.expect(200);
    assert_eq!(first["value"].as_array().expect("array").len(), 2);
    let next = first["nextLink"].as_str().expect("a next page");
    assert!(
        next.starts_with(&format!(
            "https://localhost:{}/secrets/rotated/versions?",
            app.port
        )),
        "{next}"
    );
    assert!(next.contains("maxresults=2"));

    let items = app
        .list_all(DEFAULT, "/secrets/rotated/versions?maxresults=2")
        .await;
    let got: Vec<&str> = items
        .iter()
        .map(|i| i["id"].as_str().expect("versioned id"))
        .collect();
    assert_eq!(got, ids, "all versions, versioned ids, oldest first");
    assert!(items.iter().all(|i| i.get("value").is_none()));

    let items = app.list_all(DEFAULT, "/secrets/rotated/versions").await;
    assert_eq!(items.len(), 5);
}

#[tokio::test]
async fn patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let b = app
        .set(
            DEFAULT,
            "cfg",
            json!({"value": "keep-me", "contentType": "text/plain", "tags": {"a": "1"},
                   "attributes": {"exp": 1_900_000_000, "nbf": 1_700_000_000}}),
        )
        .await;
    let id = b["id"].as_str().expect("id").to_owned();
    let v = version_of(&id);
    let path = format!("/secrets/cfg/{v}");

    let r = app
        .kv(
            Method::PATCH,
            DEFAULT,
            &path,
            Some(json!({"tags": {"b": "2"}})),
        )
        .await;
    let p = r.expect(200);
    assert!(p.get("value").is_none(), "PATCH answers without value");
    assert_eq!(p["id"], id.as_str());
    assert_eq!(p["tags"], json!({"b": "2"}));
    assert_eq!(p["contentType"], "text/plain");
    assert_eq!(p["attributes"]["exp"], 1_900_000_000);
    assert_eq!(p["attributes"]["nbf"], 1_700_000_000);
    assert_eq!(p["attributes"]["enabled"], true);

    let r = app
        .kv(
            Method::PATCH,
            DEFAULT,
            &path,
            Some(json!({"contentType": "application/json", "attributes": {"exp": 1_950_000_000}})),
        )
        .await;
    let p = r.expect(200);
    assert_eq!(p["tags"], json!({"b": "2"}), "tags unchanged when absent");
    assert_eq!(p["contentType"], "application/json");
    assert_eq!(p["attributes"]["exp"], 1_950_000_000);
    assert_eq!(p["attributes"]["nbf"], 1_700_000_000, "nbf unchanged");
    assert!(
        p["attributes"]["updated"].as_i64() >= p["attributes"]["created"].as_i64(),
        "{p}"
    );

    // `value` cannot change through PATCH.
    app.kv(
        Method::PATCH,
        DEFAULT,
        &path,
        Some(json!({"value": "changed?"})),
    )
    .await
    .expect(200);
    let g = app.kv(Method::GET, DEFAULT, &path, None).await;
    let g = g.expect(200);
    assert_eq!(g["value"], "keep-me");
    assert_eq!(g["contentType"], "application/json");
    assert_eq!(g["tags"], json!({"b": "2"}));

    // PATCH of the latest version, with and without the trailing slash.
    for latest in ["/secrets/cfg/", "/secrets/cfg"] {
        let r = app
            .kv(
                Method::PATCH,
                DEFAULT,
                latest,
                Some(json!({"tags": {"via": latest}})),
            )
            .await;
        let p = r.expect(200);
        assert_eq!(p["id"], id.as_str(), "{latest}");
        assert_eq!(p["tags"], json!({"via": latest}));
    }

    // PATCH touches one version only.
    let newer = app.set_value(DEFAULT, "cfg", "second").await;
    app.kv(
        Method::PATCH,
        DEFAULT,
        &path,
        Some(json!({"tags": {"old": "yes"}})),
    )
    .await
    .expect(200);
    let latest = app.kv(Method::GET, DEFAULT, "/secrets/cfg/", None).await;
    let latest = latest.expect(200);
    assert_eq!(latest["id"], newer["id"]);
    assert!(latest.get("tags").is_none(), "{latest}");
}

#[tokio::test]
async fn disabled_version_get_is_403_but_other_operations_work() {
    let app = spawn_app().await;
    let b = app.set_value(DEFAULT, "toggle", "hidden").await;
    let v = version_of(b["id"].as_str().expect("id"));
    let by_version = format!("/secrets/toggle/{v}");
    let r = app
        .kv(
            Method::PATCH,
            DEFAULT,
            &by_version,
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(r.expect(200)["attributes"]["enabled"], false);

    for path in [by_version.as_str(), "/secrets/toggle/", "/secrets/toggle"] {
        let r = app.kv(Method::GET, DEFAULT, path, None).await;
        r.expect_error(403, "Forbidden");
        assert_eq!(
            r.message(),
            "Operation get is not allowed on a disabled secret.",
            "{path}"
        );
        assert_eq!(r.inner(), Some("SecretDisabled"), "{path}: {}", r.text);
        assert!(!r.text.contains("hidden"), "no value in the error");
    }
    // List, versions and backup stay allowed.
    let items = app.list_all(DEFAULT, "/secrets").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["attributes"]["enabled"], false);
    let versions = app.list_all(DEFAULT, "/secrets/toggle/versions").await;
    assert_eq!(versions.len(), 1);
    app.kv(Method::POST, DEFAULT, "/secrets/toggle/backup", None)
        .await
        .expect(200);

    // A newer enabled version is readable while the old one stays blocked.
    app.set_value(DEFAULT, "toggle", "visible").await;
    let r = app.kv(Method::GET, DEFAULT, "/secrets/toggle/", None).await;
    assert_eq!(r.expect(200)["value"], "visible");
    app.kv(Method::GET, DEFAULT, &by_version, None)
        .await
        .expect_error(403, "Forbidden");

    // Re-enabling through PATCH makes it readable again.
    app.kv(
        Method::PATCH,
        DEFAULT,
        &by_version,
        Some(json!({"attributes": {"enabled": true}})),
    )
    .await
    .expect(200);
    let r = app.kv(Method::GET, DEFAULT, &by_version, None).await;
    assert_eq!(r.expect(200)["value"], "hidden");

    // Disabled at creation: the SET answer still carries the value, GET is 403.
    let b = app
        .set(
            DEFAULT,
            "born-off",
            json!({"value": "x", "attributes": {"enabled": false}}),
        )
        .await;
    assert_eq!(b["attributes"]["enabled"], false);
    app.kv(Method::GET, DEFAULT, "/secrets/born-off/", None)
        .await
        .expect_error(403, "Forbidden");
    // Delete is allowed for a disabled secret.
    app.kv(Method::DELETE, DEFAULT, "/secrets/born-off", None)
        .await
        .expect(200);
}

#[tokio::test]
async fn delete_get_deleted_conflict_recover_and_purge() {
    let app = spawn_app().await;
    let origin = app.vault_origin(DEFAULT);
    app.set_value(DEFAULT, "db-pass", "first").await;
    let latest = app
        .set(
            DEFAULT,
            "db-pass",
            json!({"value": "second", "tags": {"t": "1"}, "contentType": "text/plain"}),
        )
        .await;
    let latest_id = latest["id"].as_str().expect("id").to_owned();

    let before = now();
    let r = app
        .kv(Method::DELETE, DEFAULT, "/secrets/db-pass", None)
        .await;
    let d = r.expect(200).clone();
    assert!(d.get("value").is_none(), "DeletedSecretBundle has no value");
    assert_eq!(d["id"], latest_id.as_str());
    assert_eq!(d["recoveryId"], format!("{origin}/deletedsecrets/db-pass"));
    assert_eq!(d["tags"], json!({"t": "1"}));
    assert_eq!(d["contentType"], "text/plain");
    let deleted = d["deletedDate"].as_i64().expect("integer deletedDate");
    assert!(
        deleted >= before && deleted <= now(),
        "deletedDate {deleted}"
    );
    assert_eq!(
        d["scheduledPurgeDate"]
            .as_i64()
            .expect("integer scheduledPurgeDate"),
        deleted + 90 * DAY,
        "purge is scheduled 90 days after deletion"
    );
    assert_eq!(d["attributes"]["recoveryLevel"], "Recoverable+Purgeable");

    // Gone from the live API, visible at once in the deleted one.
    let r = app
        .kv(Method::GET, DEFAULT, "/secrets/db-pass/", None)
        .await;
    r.expect_error(404, "SecretNotFound");
    assert_eq!(r.message(), not_found_message("db-pass"));
    assert!(app.list_all(DEFAULT, "/secrets").await.is_empty());
    app.kv(Method::GET, DEFAULT, "/secrets/db-pass/versions", None)
        .await
        .expect_error(404, "SecretNotFound");
    let r = app
        .kv(Method::GET, DEFAULT, "/deletedsecrets/db-pass", None)
        .await;
    let g = r.expect(200);
    assert_eq!(g["recoveryId"], d["recoveryId"]);
    assert_eq!(g["deletedDate"], d["deletedDate"]);
    assert_eq!(g["scheduledPurgeDate"], d["scheduledPurgeDate"]);
    assert_eq!(g["id"], latest_id.as_str());
    assert!(g.get("value").is_none());

    let listed = app.list_all(DEFAULT, "/deletedsecrets").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], format!("{origin}/secrets/db-pass"));
    assert_eq!(listed[0]["recoveryId"], d["recoveryId"]);
    assert_eq!(listed[0]["deletedDate"], d["deletedDate"]);
    assert_eq!(listed[0]["scheduledPurgeDate"], d["scheduledPurgeDate"]);
    assert!(listed[0].get("value").is_none());

    // SET while deleted: 409 with the exact body.
    let r = app
        .kv(
            Method::PUT,
            DEFAULT,
            "/secrets/db-pass",
            Some(json!({"value": "again"})),
        )
        .await;
    r.expect_error(409, "Conflict");
    assert_eq!(r.message(), deleted_conflict_message("db-pass"));
    assert_eq!(r.inner(), Some("ObjectIsDeletedButRecoverable"));
    // A second DELETE finds nothing live.
    app.kv(Method::DELETE, DEFAULT, "/secrets/db-pass", None)
        .await
        .expect_error(404, "SecretNotFound");

    // Recover: SecretBundle without value, every version back.
    let r = app
        .kv(
            Method::POST,
            DEFAULT,
            "/deletedsecrets/db-pass/recover",
            None,
        )
        .await;
    let rec = r.expect(200);
    assert!(rec.get("value").is_none());
    assert!(rec.get("recoveryId").is_none());
    assert_eq!(rec["id"], latest_id.as_str());
    let r = app
        .kv(Method::GET, DEFAULT, "/secrets/db-pass/", None)
        .await;
    assert_eq!(r.expect(200)["value"], "second");
    assert_eq!(
        app.list_all(DEFAULT, "/secrets/db-pass/versions")
            .await
            .len(),
        2
    );
    app.kv(Method::GET, DEFAULT, "/deletedsecrets/db-pass", None)
        .await
        .expect_error(404, "SecretNotFound");
    app.kv(
        Method::POST,
        DEFAULT,
        "/deletedsecrets/db-pass/recover",
        None,
    )
    .await
    .expect_error(404, "SecretNotFound");

    // Purge: 204 with an empty body, then the name is free.
    app.kv(Method::DELETE, DEFAULT, "/secrets/db-pass", None)
        .await
        .expect(200);
    let r = app
        .kv(Method::DELETE, DEFAULT, "/deletedsecrets/db-pass", None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty(), "purge answers with no body: {}", r.text);
    let r = app
        .kv(Method::GET, DEFAULT, "/deletedsecrets/db-pass", None)
        .await;
    r.expect_error(404, "SecretNotFound");
    assert_eq!(r.message(), "Deleted Secret not found: db-pass");
    assert!(app.list_all(DEFAULT, "/deletedsecrets").await.is_empty());
    let fresh = app.set_value(DEFAULT, "db-pass", "reborn").await;
    assert_ne!(fresh["id"], latest_id.as_str());
    assert_eq!(
        app.list_all(DEFAULT, "/secrets/db-pass/versions")
            .await
            .len(),
        1,
        "purge removed every old version"
    );
}

#[tokio::test]
async fn deleted_secrets_list_pages() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.set_value(DEFAULT, &format!("gone-{i}"), "x").await;
        app.kv(Method::DELETE, DEFAULT, &format!("/secrets/gone-{i}"), None)
            .await
            .expect(200);
    }
    app.set_value(DEFAULT, "alive", "x").await;
    let r = app
        .kv(Method::GET, DEFAULT, "/deletedsecrets?maxresults=2", None)
        .await;
    let next = r.expect(200)["nextLink"]
        .as_str()
        .expect("next page")
        .to_owned();
    assert!(
        next.starts_with(&format!("https://localhost:{}/deletedsecrets?", app.port)),
        "{next}"
    );
    let items = app.list_all(DEFAULT, "/deletedsecrets?maxresults=2").await;
    let ids: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("https://localhost:{}/secrets/gone-{i}", app.port))
        .collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn purge_protection_refuses_purge_but_allows_recover() {
    let app = spawn_app().await;
    let vault = "locked";
    let v = app
        .create_vault(
            json!({"name": vault, "softDeleteRetentionInDays": 7, "enablePurgeProtection": true}),
        )
        .await;
    assert_eq!(v["recoveryLevel"], "CustomizedRecoverable");
    let b = app.set_value(vault, "keep", "v").await;
    assert_eq!(b["attributes"]["recoverableDays"], 7);
    assert_eq!(b["attributes"]["recoveryLevel"], "CustomizedRecoverable");

    let r = app.kv(Method::DELETE, vault, "/secrets/keep", None).await;
    let d = r.expect(200);
    assert_eq!(
        d["scheduledPurgeDate"].as_i64().expect("purge date"),
        d["deletedDate"].as_i64().expect("deleted date") + 7 * DAY
    );
    let r = app
        .kv(Method::DELETE, vault, "/deletedsecrets/keep", None)
        .await;
    r.expect_error(403, "Forbidden");
    assert!(
        r.message().starts_with(&format!(
            "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Key Vault service will automatically purge it after the retention period has passed. Vault: {vault};location="
        )),
        "{}",
        r.message()
    );
    // Still there, and recoverable.
    app.kv(Method::GET, vault, "/deletedsecrets/keep", None)
        .await
        .expect(200);
    app.kv(Method::DELETE, vault, "/deletedsecrets/unknown", None)
        .await
        .expect_error(404, "SecretNotFound");
    app.kv(Method::POST, vault, "/deletedsecrets/keep/recover", None)
        .await
        .expect(200);
    let r = app.kv(Method::GET, vault, "/secrets/keep/", None).await;
    assert_eq!(r.expect(200)["value"], "v");
}

#[tokio::test]
async fn backup_purge_restore_brings_back_every_version() {
    let app = spawn_app().await;
    let vault = "backups";
    app.create_vault(json!({"name": vault})).await;
    let bodies = [
        json!({"value": "alpha", "contentType": "text/plain", "tags": {"n": "1"}}),
        json!({"value": "beta", "attributes": {"exp": 1_900_000_000, "enabled": false}}),
        json!({"value": "gamma", "tags": {"n": "3"}, "contentType": "application/x-pem"}),
    ];
    let mut originals = Vec::new();
    for b in &bodies {
        originals.push(app.set(vault, "Api-Key", b.clone()).await);
    }
    let r = app
        .kv(Method::POST, vault, "/secrets/api-key/backup", None)
        .await;
    let blob = r.expect(200)["value"].as_str().expect("blob").to_owned();
    assert!(
        !blob.is_empty()
            && blob
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "backup is base64url"
    );
    for secret in ["alpha", "beta", "gamma"] {
        assert!(!blob.contains(secret), "backup blob is not plaintext");
    }

    app.kv(Method::DELETE, vault, "/secrets/Api-Key", None)
        .await
        .expect(200);
    // Restore onto a soft-deleted name: the deleted-but-recoverable conflict.
    let r = app
        .kv(
            Method::POST,
            vault,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    r.expect_error(409, "Conflict");
    assert_eq!(r.message(), deleted_conflict_message("Api-Key"));
    assert_eq!(r.inner(), Some("ObjectIsDeletedButRecoverable"));

    app.kv(Method::DELETE, vault, "/deletedsecrets/api-key", None)
        .await
        .expect(204);
    app.kv(Method::GET, vault, "/secrets/Api-Key/", None)
        .await
        .expect_error(404, "SecretNotFound");

    let r = app
        .kv(
            Method::POST,
            vault,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    let restored = r.expect(200);
    assert!(
        restored.get("value").is_none(),
        "restore answers without value"
    );
    assert_eq!(
        restored["id"], originals[2]["id"],
        "latest version restored"
    );
    assert_eq!(restored["tags"], json!({"n": "3"}));

    let versions = app.list_all(vault, "/secrets/api-key/versions").await;
    let ids: Vec<&Value> = versions.iter().map(|v| &v["id"]).collect();
    let want: Vec<&Value> = originals.iter().map(|o| &o["id"]).collect();
    assert_eq!(ids, want, "every version, same ids, same order");

    for (orig, body) in originals.iter().zip(&bodies) {
        let v = version_of(orig["id"].as_str().expect("id"));
        let r = app
            .kv(Method::GET, vault, &format!("/secrets/api-key/{v}"), None)
            .await;
        if body["attributes"]["enabled"] == false {
            r.expect_error(403, "Forbidden");
            let listed = versions
                .iter()
                .find(|x| x["id"] == orig["id"])
                .expect("listed");
            assert_eq!(listed["attributes"]["enabled"], false);
            assert_eq!(listed["attributes"]["exp"], 1_900_000_000);
            continue;
        }
        let got = r.expect(200);
        assert_eq!(got["value"], body["value"]);
        assert_eq!(got["tags"], orig["tags"]);
        assert_eq!(got["contentType"], orig["contentType"]);
        assert_eq!(got["attributes"]["created"], orig["attributes"]["created"]);
    }
    let r = app.kv(Method::GET, vault, "/secrets/api-key/", None).await;
    assert_eq!(r.expect(200)["value"], "gamma");

    // Restore onto a live name.
    let r = app
        .kv(
            Method::POST,
            vault,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    r.expect_error(409, "Conflict");
    assert!(
        r.message()
            .starts_with("There was a conflict restoring the secret '"),
        "{}",
        r.message()
    );
    assert!(
        r.message().contains("This can happen if either: a second secret with the same name was created after the first secret was deleted;"),
        "{}",
        r.message()
    );

    // The blob restores into another vault too, with that vault's ids.
    let r = app
        .kv(
            Method::POST,
            DEFAULT,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    let other = r.expect(200);
    let v3 = version_of(originals[2]["id"].as_str().expect("id"));
    assert_eq!(
        other["id"],
        format!("https://localhost:{}/secrets/Api-Key/{v3}", app.port)
    );
    let r = app
        .kv(Method::GET, DEFAULT, "/secrets/api-key/", None)
        .await;
    assert_eq!(r.expect(200)["value"], "gamma");

    // Corrupt or missing blobs are 400, not 5xx.
    for body in [
        json!({"value": "bm90LWEtYmFja3Vw"}),
        json!({"value": "!!!"}),
        json!({"value": &blob[..blob.len() / 2]}),
        json!({}),
        json!({"value": 5}),
    ] {
        let r = app
            .kv(Method::POST, vault, "/secrets/restore", Some(body.clone()))
            .await;
        r.expect_error(400, "BadParameter");
    }
}

#[tokio::test]
async fn names_are_case_insensitive_and_keep_their_first_case() {
    let app = spawn_app().await;
    let origin = app.vault_origin(DEFAULT);
    let a = app.set_value(DEFAULT, "MySecret", "one").await;
    assert!(
        a["id"]
            .as_str()
            .expect("id")
            .starts_with(&format!("{origin}/secrets/MySecret/"))
    );
    let b = app.set_value(DEFAULT, "mysecret", "two").await;
    assert!(
        b["id"]
            .as_str()
            .expect("id")
            .starts_with(&format!("{origin}/secrets/MySecret/")),
        "first-created case wins: {}",
        b["id"]
    );
    let r = app
        .kv(Method::GET, DEFAULT, "/secrets/MYSECRET/", None)
        .await;
    let g = r.expect(200);
    assert_eq!(g["value"], "two");
    assert_eq!(g["id"], b["id"]);
    let listed = app.list_all(DEFAULT, "/secrets").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], format!("{origin}/secrets/MySecret"));
    let versions = app.list_all(DEFAULT, "/secrets/mYsEcReT/versions").await;
    assert_eq!(versions.len(), 2);
    let r = app
        .kv(Method::DELETE, DEFAULT, "/secrets/mysecret", None)
        .await;
    assert_eq!(
        r.expect(200)["recoveryId"],
        format!("{origin}/deletedsecrets/MySecret")
    );
    app.kv(Method::GET, DEFAULT, "/deletedsecrets/MYSECRET", None)
        .await
        .expect(200);
    app.kv(
        Method::POST,
        DEFAULT,
        "/deletedsecrets/mysecret/recover",
        None,
    )
    .await
    .expect(200);
    let r = app
        .kv(Method::GET, DEFAULT, "/secrets/mysecret", None)
        .await;
    assert_eq!(r.expect(200)["id"], b["id"]);
}

#[tokio::test]
async fn vaults_are_told_apart_by_host() {
    let app = spawn_app().await;
    app.create_vault(json!({"name": "payments"})).await;
    app.create_vault(json!({"name": "billing"})).await;
    let p = app
        .set_value("payments", "shared-name", "from-payments")
        .await;
    app.set_value("billing", "shared-name", "from-billing")
        .await;
    assert!(
        p["id"].as_str().expect("id").starts_with(&format!(
            "https://payments.vault.localhost:{}/secrets/shared-name/",
            app.port
        )),
        "{}",
        p["id"]
    );
    for (vault, want) in [("payments", "from-payments"), ("billing", "from-billing")] {
        let r = app
            .kv(Method::GET, vault, "/secrets/shared-name/", None)
            .await;
        assert_eq!(r.expect(200)["value"], want);
    }
    app.kv(Method::GET, DEFAULT, "/secrets/shared-name/", None)
        .await
        .expect_error(404, "SecretNotFound");

    // 127.0.0.1 is the default vault too.
    app.set_value(DEFAULT, "on-default", "d").await;
    let url = format!(
        "https://127.0.0.1:{}/secrets/on-default/?api-version={API}",
        app.port
    );
    let r = app.send(app.client.get(url).bearer_auth(&app.token)).await;
    let g = r.expect(200);
    assert_eq!(g["value"], "d");
    assert!(
        g["id"].as_str().expect("id").starts_with(&format!(
            "https://127.0.0.1:{}/secrets/on-default/",
            app.port
        )),
        "ids use the host the client addressed: {}",
        g["id"]
    );

    // Unknown vault hosts.
    for vault in ["nosuchvault", "zz-unknown"] {
        let r = app.kv(Method::GET, vault, "/secrets", None).await;
        r.expect_error(404, "VaultNotFound");
    }
}

#[tokio::test]
async fn management_api_creates_lists_shows_and_deletes_vaults() {
    let app = spawn_app().await;
    let v = app
        .create_vault(json!({"name": "Payments", "softDeleteRetentionInDays": 30}))
        .await;
    assert_eq!(v["name"], "payments", "vault names are lower-cased");
    assert_eq!(
        v["vaultUri"],
        format!("https://payments.vault.localhost:{}", app.port)
    );
    assert_eq!(v["softDeleteRetentionInDays"], 30);
    assert_eq!(v["enablePurgeProtection"], false);
    assert_eq!(v["recoveryLevel"], "CustomizedRecoverable+Purgeable");
    assert_eq!(v["systemTopic"], vault_topic("payments"));
    assert_eq!(v["nearExpiryWindowInSeconds"], 30 * DAY);
    assert!(v["id"].is_string() && v["createdAt"].is_string());

    let d = app.create_vault(json!({"name": "defaults"})).await;
    assert_eq!(d["softDeleteRetentionInDays"], 90);
    assert_eq!(d["recoveryLevel"], "Recoverable+Purgeable");
    let e = app
        .create_vault(json!({"name": "edge-seven", "softDeleteRetentionInDays": 7}))
        .await;
    assert_eq!(e["softDeleteRetentionInDays"], 7);

    let r = app.admin(Method::GET, "", None).await;
    let names: Vec<&str> = r.expect(200)["value"]
        .as_array()
        .expect("value array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for want in [DEFAULT, "payments", "defaults", "edge-seven"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let r = app.admin(Method::GET, "/payments", None).await;
    assert_eq!(r.expect(200)["vaultUri"], v["vaultUri"]);
    app.admin(Method::GET, "/nope", None)
        .await
        .expect_error(404, "VaultNotFound");

    // Duplicate (any case) → 409.
    for dup in ["payments", "PAYMENTS"] {
        app.admin(Method::POST, "", Some(json!({"name": dup})))
            .await
            .expect_error(409, "VaultAlreadyExists");
    }
    // Bad names and retention → 400.
    for bad in ["ab", "1abc", "a_bc", "abc-", "a--b", &"a".repeat(25), ""] {
        let r = app
            .admin(Method::POST, "", Some(json!({"name": bad})))
            .await;
        r.expect_error(400, "BadParameter");
    }
    app.admin(
        Method::POST,
        "",
        Some(json!({"name": "negative", "nearExpiryWindowInSeconds": -1})),
    )
    .await
    .expect_error(400, "BadParameter");
    for days in [0, 6, 91, -1] {
        let r = app
            .admin(
                Method::POST,
                "",
                Some(json!({"name": "retention", "softDeleteRetentionInDays": days})),
            )
            .await;
        r.expect_error(400, "BadParameter");
    }
    app.admin(Method::GET, "/retention", None)
        .await
        .expect_error(404, "VaultNotFound");
    app.admin(Method::POST, "", Some(json!({"nome": "typo"})))
        .await
        .expect_error(400, "BadParameter");

    // Delete: 204, then the host is unknown.
    app.set_value("payments", "s", "v").await;
    let r = app.admin(Method::DELETE, "/payments", None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    app.admin(Method::GET, "/payments", None)
        .await
        .expect_error(404, "VaultNotFound");
    app.kv(Method::GET, "payments", "/secrets/s/", None)
        .await
        .expect_error(404, "VaultNotFound");
    app.admin(Method::DELETE, "/payments", None)
        .await
        .expect_error(404, "VaultNotFound");
    app.admin(Method::DELETE, "/default", None)
        .await
        .expect_error(400, "BadParameter");

    // The management API wants the admin token.
    let r = app
        .send(
            app.client
                .get(format!("https://localhost:{}/api/v1/vaults", app.port)),
        )
        .await;
    r.expect_error(401, "Unauthorized");
    let r = app
        .send(
            app.client
                .get(format!("https://localhost:{}/api/v1/vaults", app.port))
                .bearer_auth("hrd_wrong-token-0000000000000000"),
        )
        .await;
    r.expect_error(401, "Unauthorized");
}

#[tokio::test]
async fn ca_pem_and_healthz_are_served() {
    let app = spawn_app().await;
    let r = app
        .send(
            app.client
                .get(format!("https://localhost:{}/herald/ca.pem", app.port)),
        )
        .await;
    assert_eq!(r.status, 200);
    let on_disk = std::fs::read_to_string(&app.ca_path).expect("ca.pem");
    assert_eq!(r.text, on_disk);
    let r = app
        .send(
            app.client
                .get(format!("https://localhost:{}/healthz", app.port)),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn http1_clients_reach_vaults_through_the_host_header() {
    let app = spawn_app().await;
    app.create_vault(json!({"name": "payments"})).await;
    let h1 = http1_client_for(&app.ca_path);
    let url = app.vault_url("payments", "/secrets/over-h1");
    let r = app
        .send(
            h1.put(&url)
                .bearer_auth(&app.token)
                .json(&json!({"value": "h1"})),
        )
        .await;
    let b = r.expect(200);
    assert!(
        b["id"].as_str().expect("id").starts_with(&format!(
            "https://payments.vault.localhost:{}/secrets/over-h1/",
            app.port
        )),
        "{}",
        b["id"]
    );
    let r = app.send(h1.get(&url).bearer_auth(&app.token)).await;
    assert_eq!(r.expect(200)["value"], "h1");
    // Same vault over HTTP/2.
    let r = app
        .kv(Method::GET, "payments", "/secrets/over-h1", None)
        .await;
    assert_eq!(r.expect(200)["value"], "h1");
    app.kv(Method::GET, DEFAULT, "/secrets/over-h1", None)
        .await
        .expect_error(404, "SecretNotFound");

    // nextLinks are built on the Host header too.
    for i in 0..3 {
        app.set_value("payments", &format!("page-{i}"), "x").await;
    }
    let r = app
        .send(
            h1.get(app.vault_url("payments", "/secrets?maxresults=2"))
                .bearer_auth(&app.token),
        )
        .await;
    let next = r.expect(200)["nextLink"].as_str().expect("next").to_owned();
    assert!(
        next.starts_with(&format!(
            "https://payments.vault.localhost:{}/secrets?",
            app.port
        )),
        "{next}"
    );

    // The challenge over HTTP/1.1.
    let r = app.send(h1.get(&url)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok()),
        Some(
            format!(
                "Bearer authorization=\"https://vault.localhost:{p}/{t}\", resource=\"https://vault.localhost:{p}\"",
                p = app.port,
                t = app.tenant
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn concurrent_sets_each_create_a_distinct_version() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = app.client.clone();
        let url = app.vault_url(DEFAULT, "/secrets/contended");
        let token = app.token.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .put(url)
                .bearer_auth(token)
                .json(&json!({"value": format!("v{i}")}))
                .send()
                .await
                .expect("request reaches the server");
            read(r).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.expect("task");
        ids.insert(r.expect(200)["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 20, "20 distinct versions");
    let versions = app.list_all(DEFAULT, "/secrets/contended/versions").await;
    let listed: std::collections::HashSet<String> = versions
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn a_backup_from_another_server_is_refused() {
    let a = spawn_app().await;
    let b = spawn_app().await;
    a.set_value(DEFAULT, "moving", "x").await;
    let r = a
        .kv(Method::POST, DEFAULT, "/secrets/moving/backup", None)
        .await;
    let blob = r.expect(200)["value"].as_str().expect("blob").to_owned();
    let r = b
        .kv(
            Method::POST,
            DEFAULT,
            "/secrets/restore",
            Some(json!({"value": blob})),
        )
        .await;
    r.expect_error(400, "BadParameter");
    b.kv(Method::GET, DEFAULT, "/secrets/moving/", None)
        .await
        .expect_error(404, "SecretNotFound");
}
