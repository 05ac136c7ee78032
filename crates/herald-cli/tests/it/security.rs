//! Hostile and malformed input: always a 4xx with the Azure error envelope,
//! never a 5xx; authentication before anything else; no plaintext secret
//! or token on disk or in logs.

use crate::helpers::*;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn challenge(app: &TestApp) -> String {
    format!(
        "Bearer authorization=\"https://vault.localhost:{port}/{tenant}\", resource=\"https://vault.localhost:{port}\"",
        port = app.port,
        tenant = app.tenant
    )
}

fn assert_challenge(app: &TestApp, r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    assert_eq!(r.code(), "Unauthorized", "{what}: {}", r.text);
    let got = r
        .headers
        .get(WWW_AUTHENTICATE)
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"))
        .to_str()
        .expect("ASCII header");
    assert_eq!(got, challenge(app), "{what}");
    assert!(!got.contains("claims"), "never a claims challenge");
}

#[tokio::test]
async fn missing_token_is_401_with_the_challenge_before_any_validation() {
    let app = spawn_app().await;
    app.create_vault(json!({"name": "payments"})).await;
    let tenant_is_guid = app.tenant.len() == 36
        && app
            .tenant
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-');
    assert!(tenant_is_guid, "tenant {}", app.tenant);

    for vault in [DEFAULT, "payments", "unknownvault"] {
        let origin = app.vault_origin(vault);
        // What the SDK sends first: the real method and path, no token, no body.
        let bare = app
            .client
            .put(format!(
                "{origin}/secrets/db-password?api-version=2026-04-01"
            ))
            .header(CONTENT_TYPE, "application/json")
            .header("content-length", "0");
        let r = app.send(bare).await;
        assert_challenge(&app, &r, &format!("bare PUT on {vault}"));
        assert!(
            r.message()
                .ends_with("Request is missing a Bearer or PoP token."),
            "{}",
            r.message()
        );

        for (method, path) in [
            (Method::GET, "/secrets/db-password/"), // no api-version
            (Method::GET, "/secrets/a_b?api-version=bogus"), // bad name, bad version
            (Method::GET, "/no/such/route"),        // unknown path
            (Method::POST, "/secrets/restore"),     // missing body
            (Method::DELETE, "/deletedsecrets/x"),
            (Method::GET, "/secrets?maxresults=999"),
        ] {
            let r = app
                .send(
                    app.client
                        .request(method.clone(), format!("{origin}{path}")),
                )
                .await;
            assert_challenge(&app, &r, &format!("{method} {path} on {vault}"));
        }
        // Malformed JSON and an oversized value: still 401 first.
        let r = app
            .send(
                app.client
                    .put(format!("{origin}/secrets/n?api-version=7.6"))
                    .body("{not json"),
            )
            .await;
        assert_challenge(&app, &r, "malformed body without token");
    }

    // 127.0.0.1 gets the same challenge (resource is the vault base).
    let r = app
        .send(app.client.get(format!(
            "https://127.0.0.1:{}/secrets?api-version=7.6",
            app.port
        )))
        .await;
    assert_challenge(&app, &r, "IP host");
}

#[tokio::test]
async fn wrong_or_malformed_credentials_are_401() {
    let app = spawn_app().await;
    let url = app.vault_url(DEFAULT, "/secrets");
    for auth in [
        "Bearer hrd_wrong-token-000000000000000000",
        "Bearer ",
        "Bearer",
        "bearer  ",
        "Basic dXNlcjpwYXNz",
        &format!("Basic {TOKEN}"),
        TOKEN,
        &format!("Bearer {TOKEN}x"),
        &TOKEN.to_uppercase(),
    ] {
        let r = app
            .send(app.client.get(&url).header(AUTHORIZATION, auth))
            .await;
        assert_challenge(&app, &r, &format!("Authorization: {auth}"));
    }
    // The right token, with the scheme in any case, works.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = app
            .send(
                app.client
                    .get(&url)
                    .header(AUTHORIZATION, format!("{scheme} {TOKEN}")),
            )
            .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.text);
    }
}

#[tokio::test]
async fn api_version_is_required_after_authentication() {
    let app = spawn_app().await;
    app.set_value(DEFAULT, "n", "v").await;
    let origin = app.vault_origin(DEFAULT);
    for (method, path, body) in [
        (Method::GET, "/secrets/n/", None),
        (Method::GET, "/secrets", None),
        (Method::PUT, "/secrets/n", Some(json!({"value": "x"}))),
        (Method::GET, "/secrets/n/?api-version=", None),
        (Method::GET, "/secrets/n/?api-version=latest", None),
        (Method::GET, "/secrets/n/?api-version=7", None),
        (Method::GET, "/secrets/n/?api-version=2025-7-01", None),
        (Method::GET, "/secrets/n/?api-version=7.6;drop", None),
    ] {
        let mut req = app
            .client
            .request(method.clone(), format!("{origin}{path}"))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = app.send(req).await;
        r.expect_error(400, "BadParameter");
        assert!(
            r.message().contains("api-version"),
            "{method} {path}: {}",
            r.message()
        );
    }
    // The write above was refused: still one version.
    assert_eq!(app.list_all(DEFAULT, "/secrets/n/versions").await.len(), 1);
}

#[tokio::test]
async fn invalid_secret_names_are_400_bad_parameter() {
    let app = spawn_app().await;
    let long = "a".repeat(128);
    for name in ["a_b", long.as_str(), "a.b", "a+b", "a~b"] {
        for (method, path) in [
            (Method::PUT, format!("/secrets/{name}")),
            (Method::GET, format!("/secrets/{name}/")),
            (Method::GET, format!("/secrets/{name}")),
            (Method::GET, format!("/secrets/{name}/versions")),
            (Method::PATCH, format!("/secrets/{name}/")),
            (Method::DELETE, format!("/secrets/{name}")),
            (Method::POST, format!("/secrets/{name}/backup")),
            (Method::GET, format!("/deletedsecrets/{name}")),
            (Method::DELETE, format!("/deletedsecrets/{name}")),
            (Method::POST, format!("/deletedsecrets/{name}/recover")),
        ] {
            let r = app
                .kv(method.clone(), DEFAULT, &path, Some(json!({"value": "x"})))
                .await;
            r.expect_error(400, "BadParameter");
            assert_eq!(
                r.message(),
                format!("The request URI contains an invalid name: {name}"),
                "{method} {path}"
            );
        }
    }
    // Percent-encoded oddities are decoded and refused, not crashed on.
    for raw in ["a%20b", "%C3%A4", "a%2Fb", "%00", "a%25b"] {
        let r = app
            .kv(
                Method::PUT,
                DEFAULT,
                &format!("/secrets/{raw}"),
                Some(json!({"value": "x"})),
            )
            .await;
        r.expect_error(400, "BadParameter");
    }
    // The longest legal name works.
    let longest = "b".repeat(127);
    app.set_value(DEFAULT, &longest, "ok").await;
    assert!(
        app.list_all(DEFAULT, "/secrets")
            .await
            .iter()
            .all(|i| i["id"].as_str().is_some_and(|id| id.ends_with(&longest)))
    );
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_400() {
    let app = spawn_app().await;
    // 25 KB exactly is fine; one byte more is refused.
    let max = "v".repeat(25 * 1024);
    let b = app.set_value(DEFAULT, "big", &max).await;
    assert_eq!(b["value"].as_str().map(str::len), Some(25 * 1024));
    let r = app
        .kv(
            Method::PUT,
            DEFAULT,
            "/secrets/big",
            Some(json!({"value": format!("{max}v")})),
        )
        .await;
    r.expect_error(400, "BadParameter");
    assert_eq!(
        app.list_all(DEFAULT, "/secrets/big/versions").await.len(),
        1
    );

    let many_tags: serde_json::Map<String, Value> =
        (0..16).map(|i| (format!("t{i}"), json!("v"))).collect();
    let bad_bodies = [
        json!({"value": "x", "tags": many_tags}),
        json!({"value": "x", "tags": {"k": "v".repeat(513)}}),
        json!({"value": "x", "tags": {"k".repeat(513): "v"}}),
        json!({"value": "x", "contentType": "c".repeat(256)}),
        json!({"value": "x", "attributes": {"exp": 1e30}}),
        json!({"value": "x", "attributes": {"enabled": "yes"}}),
        json!({"value": "x", "tags": {"k": 1}}),
        json!({"value": null}),
        json!({"value": 42}),
        json!({"tags": {"only": "tags"}}),
        json!({}),
        json!([]),
        json!("value"),
    ];
    for body in bad_bodies {
        let r = app
            .kv(Method::PUT, DEFAULT, "/secrets/shape", Some(body.clone()))
            .await;
        r.expect_error(400, "BadParameter");
        assert!(!r.message().is_empty(), "{body}");
    }
    // 15 tags of 512 characters are fine.
    let ok_tags: serde_json::Map<String, Value> = (0..15)
        .map(|i| (format!("{i:0>512}"), json!("v".repeat(512))))
        .collect();
    app.set(DEFAULT, "tagged", json!({"value": "x", "tags": ok_tags}))
        .await;

    let url = app.vault_url(DEFAULT, "/secrets/raw");
    for raw in [
        "",
        "{",
        "{\"value\": ",
        "not json",
        "{\"value\":\"x\"",
        "\u{0}",
    ] {
        let r = app
            .send(
                app.client
                    .put(&url)
                    .bearer_auth(TOKEN)
                    .header(CONTENT_TYPE, "application/json")
                    .body(raw),
            )
            .await;
        r.expect_error(400, "BadParameter");
        assert!(
            r.json["error"]["code"].is_string() && r.json["error"]["message"].is_string(),
            "{raw:?}: {}",
            r.text
        );
    }
    app.kv(Method::GET, DEFAULT, "/secrets/raw", None)
        .await
        .expect_error(404, "SecretNotFound");

    // Error messages never echo what the body carried.
    for raw in [
        r#"{"value":"leak-me-1","tags":{"a":"leak-me-2"},"attributes":{"exp":"leak-me-3"}}"#,
        r#"{"value":"leak-me-4","contentType":["leak-me-5"]}"#,
        r#"{"value":"leak-me-6","attributes":{"enabled":"leak-me-7"}}"#,
        r#"{"value":"leak-me-8" "#,
    ] {
        let r = app
            .send(app.client.put(&url).bearer_auth(TOKEN).body(raw))
            .await;
        r.expect_error(400, "BadParameter");
        assert!(
            !r.text.contains("leak-me"),
            "echoed body content: {}",
            r.text
        );
    }
    // Same for PATCH.
    app.set_value(DEFAULT, "p", "x").await;
    let r = app
        .send(
            app.client
                .patch(app.vault_url(DEFAULT, "/secrets/p/"))
                .bearer_auth(TOKEN)
                .body(r#"{"tags":{"a":"leak-me-9"},"attributes":{"nbf":"leak-me-10"}}"#),
        )
        .await;
    r.expect_error(400, "BadParameter");
    assert!(!r.text.contains("leak-me"), "{}", r.text);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_an_error_body() {
    let app = spawn_app().await;
    let huge = json!({ "value": "x".repeat(2 * 1024 * 1024) });
    let r = app
        .kv(Method::PUT, DEFAULT, "/secrets/huge", Some(huge.clone()))
        .await;
    r.expect_error(413, "RequestEntityTooLarge");
    let r = app
        .kv(Method::PATCH, DEFAULT, "/secrets/huge/", Some(huge))
        .await;
    r.expect_error(413, "RequestEntityTooLarge");
    // The server is fine afterwards.
    app.set_value(DEFAULT, "after", "ok").await;
}

#[tokio::test]
async fn restore_body_over_the_limit_is_413_with_an_error_body() {
    let app = spawn_app().await;
    let huge = json!({ "value": "A".repeat(2 * 1024 * 1024) });
    let r = app
        .kv(Method::POST, DEFAULT, "/secrets/restore", Some(huge))
        .await;
    r.expect_error(413, "RequestEntityTooLarge");
}

#[tokio::test]
async fn maxresults_and_skiptoken_are_validated() {
    let app = spawn_app().await;
    app.set_value(DEFAULT, "n", "v").await;
    for list in ["/secrets", "/deletedsecrets", "/secrets/n/versions"] {
        for bad in ["0", "26", "abc", "-1", "1.5", "", "99999999999999999999"] {
            let r = app
                .kv(
                    Method::GET,
                    DEFAULT,
                    &format!("{list}?maxresults={bad}"),
                    None,
                )
                .await;
            r.expect_error(400, "BadParameter");
        }
        for ok in ["1", "25"] {
            app.kv(
                Method::GET,
                DEFAULT,
                &format!("{list}?maxresults={ok}"),
                None,
            )
            .await
            .expect(200);
        }
        // Not base64url, or not UTF-8 once decoded.
        for bad in ["!!!", "%FF%FE", "_w", "a b"] {
            let r = app
                .kv(
                    Method::GET,
                    DEFAULT,
                    &format!("{list}?$skiptoken={bad}"),
                    None,
                )
                .await;
            r.expect_error(400, "BadParameter");
        }
    }
    // A versions cursor must be a position.
    let r = app
        .kv(
            Method::GET,
            DEFAULT,
            "/secrets/n/versions?$skiptoken=YWJj",
            None,
        )
        .await;
    r.expect_error(400, "BadParameter");
}

/// Odd requests of every kind: each answered below 500, 4xx with the envelope.
#[tokio::test]
async fn odd_requests_never_cause_5xx() {
    let app = spawn_app().await;
    app.set_value(DEFAULT, "n", "v").await;
    let long = "x".repeat(4000);
    let deep = "[".repeat(10_000);
    let cases: Vec<(Method, String, Option<&str>)> = vec![
        (Method::GET, "/secrets/n/versions/extra".into(), None),
        (Method::GET, "/secrets/n/a/b/c".into(), None),
        (Method::POST, "/secrets/n/notbackup".into(), None),
        (Method::POST, "/secrets/notrestore".into(), Some("{}")),
        (Method::POST, "/secrets/restore".into(), None),
        (Method::POST, "/secrets/restore".into(), Some("null")),
        (Method::PATCH, "/secrets/n/".into(), None),
        (Method::PATCH, "/secrets/n/".into(), Some("[]")),
        (Method::PATCH, "/secrets/n/versions".into(), Some("{}")),
        (
            Method::PATCH,
            format!("/secrets/n/{}", "f".repeat(32)),
            Some("{}"),
        ),
        (Method::GET, format!("/secrets/{long}"), None),
        (Method::GET, format!("/secrets/n/{long}"), None),
        (Method::GET, "/secrets/n/%FF".into(), None),
        (Method::GET, "/deletedsecrets/%00".into(), None),
        (Method::GET, "/secrets?maxresults=%%%".into(), None),
        (Method::GET, "/secrets?$skiptoken=%%%".into(), None),
        (
            Method::PUT,
            "/secrets/n".into(),
            Some("{\"value\":\"\\ud800\"}"),
        ),
        (Method::PUT, "/secrets/n".into(), Some(deep.as_str())),
    ];
    let url_for = |path: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}api-version=7.6", app.vault_origin(DEFAULT))
    };
    for (method, path, body) in cases {
        let mut req = app
            .client
            .request(method.clone(), url_for(&path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.body(b.to_owned());
        }
        let r = app.send(req).await;
        let shown = &path[..path.len().min(60)];
        assert!(r.status < 500, "{method} {shown}: {} {}", r.status, r.text);
        assert!(r.status >= 400, "{method} {shown} should fail: {}", r.text);
        assert!(
            r.json["error"]["code"].is_string() && r.json["error"]["message"].is_string(),
            "{method} {shown}: {} without the error envelope: {:?}",
            r.status,
            r.text
        );
    }
    // Still healthy, nothing was written.
    let r = app.kv(Method::GET, DEFAULT, "/secrets/n/", None).await;
    assert_eq!(r.expect(200)["value"], "v");
    assert_eq!(app.list_all(DEFAULT, "/secrets/n/versions").await.len(), 1);
}

/// A method a route does not have is still answered with the error envelope.
#[tokio::test]
async fn wrong_method_has_the_error_envelope() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::DELETE, "/secrets"),
        (Method::PUT, "/deletedsecrets/n"),
        (Method::POST, "/deletedsecrets"),
    ] {
        let r = app.kv(method.clone(), DEFAULT, path, None).await;
        assert!(
            (400..500).contains(&r.status),
            "{method} {path}: {}",
            r.status
        );
        assert!(
            r.json["error"]["code"].is_string() && r.json["error"]["message"].is_string(),
            "{method} {path}: {} without the error envelope: {:?}",
            r.status,
            r.text
        );
    }
}

const CANARY: &str = "PLAINTEXT-CANARY-7f3a9c1e-never-stored-or-logged";

/// Exercises every path a value travels: set, get, versions, backup,
/// restore, delete, recover, and malformed writes that carry it.
async fn exercise_with_canary(app_client: &reqwest::Client, origin: &str, token: &str) {
    let url = |p: &str| {
        let sep = if p.contains('?') { '&' } else { '?' };
        format!("{origin}{p}{sep}api-version=7.6")
    };
    let send = |req: reqwest::RequestBuilder| async move {
        read(req.send().await.expect("request reaches the server")).await
    };
    let r = send(
        app_client
            .put(url("/secrets/canary"))
            .bearer_auth(token)
            .json(&json!({"value": CANARY, "tags": {"k": "v"}})),
    )
    .await;
    assert_eq!(r.expect(200)["value"], CANARY);
    send(
        app_client
            .put(url("/secrets/canary"))
            .bearer_auth(token)
            .json(&json!({"value": format!("{CANARY}-v2")})),
    )
    .await
    .expect(200);
    let r = send(app_client.get(url("/secrets/canary/")).bearer_auth(token)).await;
    assert_eq!(r.expect(200)["value"], format!("{CANARY}-v2"));
    let r = send(
        app_client
            .post(url("/secrets/canary/backup"))
            .bearer_auth(token),
    )
    .await;
    let blob = r.expect(200)["value"].as_str().expect("blob").to_owned();
    send(app_client.delete(url("/secrets/canary")).bearer_auth(token))
        .await
        .expect(200);
    send(
        app_client
            .delete(url("/deletedsecrets/canary"))
            .bearer_auth(token),
    )
    .await
    .expect(204);
    send(
        app_client
            .post(url("/secrets/restore"))
            .bearer_auth(token)
            .json(&json!({"value": blob})),
    )
    .await
    .expect(200);
    // Failures that carry the value in their bodies.
    for raw in [
        format!(r#"{{"value":"{CANARY}","attributes":{{"exp":"x"}}}}"#),
        format!(r#"{{"value":"{CANARY}""#),
        format!(r#"{{"value":"{CANARY}","tags":{{"a":1}}}}"#),
    ] {
        let r = send(
            app_client
                .put(url("/secrets/canary-bad"))
                .bearer_auth(token)
                .body(raw),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(!r.text.contains(CANARY));
    }
    // A wrong token must not be logged either.
    let r = send(
        app_client
            .get(url("/secrets/canary/"))
            .bearer_auth("hrd_wrong-canary-token-31337-31337"),
    )
    .await;
    assert_eq!(r.status, 401);
}

fn assert_no_plaintext(dir: &Path, needles: &[&str]) -> usize {
    let files = files_under(dir);
    assert!(
        files.iter().any(|f| f.ends_with("herald.db")),
        "scanned the database: {files:?}"
    );
    assert_no_plaintext_files(dir, needles)
}

/// Every file under `dir` (TLS material, keys, dead letters) is free of `needles`.
fn assert_no_plaintext_files(dir: &Path, needles: &[&str]) -> usize {
    let files = files_under(dir);
    for f in &files {
        let bytes = std::fs::read(f).expect("read data file");
        for n in needles {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "{n:?} found in plaintext in {}",
                f.display()
            );
        }
    }
    files.len()
}

#[tokio::test]
async fn no_plaintext_value_or_token_in_the_data_dir() {
    let mut app = spawn_app().await;
    let origin = app.vault_origin(DEFAULT);
    exercise_with_canary(&app.client, &origin, TOKEN).await;
    let needles = [CANARY, TOKEN, "hrd_wrong-canary-token-31337-31337"];
    if let Some(url) = app.database.clone() {
        // On PostgreSQL: every row of every table, as text.
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("list tables");
        assert!(tables.len() > 5, "scanned the database: {tables:?}");
        for t in tables {
            let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM \"{t}\" t"))
                .fetch_all(&mut conn)
                .await
                .expect("read table");
            for row in rows {
                for n in &needles {
                    assert!(!row.contains(n), "{n:?} found in plaintext in table {t}");
                }
            }
        }
        assert_no_plaintext_files(app.data_dir.path(), &needles);
        app.stop().await;
        return;
    }
    // While running: the WAL and shared-memory files hold the latest writes.
    let files = files_under(app.data_dir.path());
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().ends_with("herald.db-wal")),
        "WAL present while running: {files:?}"
    );
    assert_no_plaintext(app.data_dir.path(), &needles);
    app.stop().await;
    assert_no_plaintext(app.data_dir.path(), &needles);
}

/// The real binary, its real logging at debug level: neither the value nor
/// the tokens show up in stdout/stderr, and not on disk either.
#[tokio::test]
async fn real_binary_never_logs_or_stores_plaintext() {
    let data = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("log dir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("probe a free port");
        l.local_addr().expect("addr").port()
    };
    let stdout_path = logs.path().join("stdout.log");
    let stderr_path = logs.path().join("stderr.log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--amqp-listen", "127.0.0.1:0"])
        .current_dir(logs.path())
        .env("HERALD_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .env_remove("HERALD_CONFIG")
        .env_remove("HERALD_MASTER_KEY")
        .env_remove("HERALD_DATABASE")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start herald serve");
    let ca = data.path().join("tls").join("ca.pem");
    let origin = format!("https://localhost:{port}");
    let client = eventually("herald serve to answer", Duration::from_secs(60), || {
        let ca = ca.clone();
        let origin = origin.clone();
        async move {
            let pem = std::fs::read(&ca).ok()?;
            reqwest::Certificate::from_pem(&pem).ok()?;
            let client = client_for(&ca);
            let r = client.get(format!("{origin}/healthz")).send().await.ok()?;
            r.status().is_success().then_some(client)
        }
    })
    .await;

    exercise_with_canary(&client, &origin, TOKEN).await;
    drop(client);

    let needles = [CANARY, TOKEN, "hrd_wrong-canary-token-31337-31337"];
    assert_no_plaintext(data.path(), &needles);

    // Graceful stop (SIGTERM) of the process we started, by its pid.
    let pid = child.id().expect("child pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("herald stops on SIGTERM")
        .expect("wait for herald");
    assert!(exit.success(), "herald exited with {exit}");

    assert_no_plaintext(data.path(), &needles);
    let out = std::fs::read(&stdout_path).expect("stdout");
    let err = std::fs::read(&stderr_path).expect("stderr");
    // The capture works: start-up and operations were logged.
    assert!(
        contains(&out, b"Herald is running at"),
        "stdout: {}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        contains(&err, b"secret version created"),
        "stderr: {}",
        String::from_utf8_lossy(&err)
    );
    for n in needles {
        assert!(!contains(&out, n.as_bytes()), "{n} in stdout");
        assert!(!contains(&err, n.as_bytes()), "{n} in stderr");
    }
}

#[tokio::test]
async fn garbage_on_the_tls_port_does_not_hurt_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // Plain HTTP, random bytes, and a connection that never finishes its handshake.
    let idle = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    for payload in [
        b"GET /secrets?api-version=7.6 HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        (0u8..=255).cycle().take(10_000).collect(),
        b"\x16\x03\x01\x00\x05hello".to_vec(),
    ] {
        let mut s = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        let _ = s.write_all(&payload).await;
        let mut buf = vec![0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    }
    let r = app.kv(Method::GET, DEFAULT, "/secrets", None).await;
    r.expect(200);
    drop(idle);
}
