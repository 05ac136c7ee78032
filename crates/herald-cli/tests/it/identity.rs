//! Identity over the wire: principals and client secrets on the management
//! API, the OpenID discovery document, JWKS and token endpoint, tokens on
//! the vault data plane, and access policies with their change event.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

pub async fn api(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    let url = format!("https://localhost:{}/api/v1{path}", app.port);
    let mut req = app.client.request(method, url).bearer_auth(&app.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.send(req).await
}

/// A principal with one client secret: (appId, objectId, secret).
pub async fn principal(app: &TestApp, name: &str) -> (String, String, String) {
    let p = api(
        app,
        Method::POST,
        "/principals",
        Some(json!({"displayName": name})),
    )
    .await;
    let p = p.expect(201).clone();
    let app_id = p["appId"].as_str().unwrap().to_owned();
    let s = api(
        app,
        Method::POST,
        &format!("/principals/{app_id}/secrets"),
        None,
    )
    .await;
    let secret = s.expect(201)["secretText"].as_str().unwrap().to_owned();
    (app_id, p["id"].as_str().unwrap().to_owned(), secret)
}

pub async fn token_request(app: &TestApp, form: &[(&str, &str)]) -> Resp {
    let url = format!(
        "https://localhost:{}/{}/oauth2/v2.0/token",
        app.port, app.tenant
    );
    app.send(app.client.post(url).form(form)).await
}

pub async fn token_for(app: &TestApp, app_id: &str, secret: &str, scope: &str) -> String {
    let r = token_request(
        app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", app_id),
            ("client_secret", secret),
            ("scope", scope),
        ],
    )
    .await;
    let body = r.expect(200);
    assert_eq!(body["token_type"], "Bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

pub const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

async fn kv_as(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut req = app
        .client
        .request(method, app.vault_url(DEFAULT, path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.send(req).await
}

async fn set_policy(app: &TestApp, app_id: &str, perms: &[&str]) -> Resp {
    api(
        app,
        Method::PUT,
        &format!("/vaults/{DEFAULT}/accessPolicies/{app_id}"),
        Some(json!({"permissions": {"secrets": perms}})),
    )
    .await
}

#[tokio::test]
async fn discovery_document_and_keys() {
    let app = spawn_app().await;
    let base = format!("https://localhost:{}/{}", app.port, app.tenant);
    let doc = app
        .send(
            app.client
                .get(format!("{base}/v2.0/.well-known/openid-configuration")),
        )
        .await;
    let doc = doc.expect(200);
    assert_eq!(doc["token_endpoint"], format!("{base}/oauth2/v2.0/token"));
    assert_eq!(doc["issuer"], format!("{base}/v2.0"));
    let jwks = app
        .send(app.client.get(doc["jwks_uri"].as_str().unwrap()))
        .await;
    let key = &jwks.expect(200)["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["alg"].as_str()),
        (Some("EC"), Some("ES256"))
    );
    // Another tenant is not served.
    let other = app
        .send(app.client.get(format!(
            "https://localhost:{}/some-other-tenant/v2.0/.well-known/openid-configuration",
            app.port
        )))
        .await;
    assert_eq!(other.status, 400);
    assert_eq!(other.json["error_codes"][0], 90002);
}

#[tokio::test]
async fn principal_tokens_obey_access_policies() {
    let app = spawn_app().await;
    app.set_value(DEFAULT, "db-password", "s3cret").await;
    let (app_id, object_id, secret) = principal(&app, "rotator").await;
    let token = token_for(&app, &app_id, &secret, VAULT_SCOPE).await;

    // No policy: 403 on everything, naming the permission.
    let r = kv_as(&app, &token, Method::GET, "/secrets/db-password", None).await;
    r.expect_error(403, "Forbidden");
    assert_eq!(r.inner(), Some("AccessDenied"));
    assert!(
        r.message().contains("does not have secrets get permission"),
        "{}",
        r.message()
    );
    assert!(
        r.message().contains(&format!("oid={object_id}")),
        "{}",
        r.message()
    );
    kv_as(&app, &token, Method::GET, "/secrets", None)
        .await
        .expect_error(403, "Forbidden");

    // get only: reads work, writes are refused.
    let p = set_policy(&app, &app_id, &["Get"]).await;
    assert_eq!(p.expect(200)["permissions"]["secrets"], json!(["get"]));
    let r = kv_as(&app, &token, Method::GET, "/secrets/db-password", None).await;
    assert_eq!(r.expect(200)["value"], "s3cret");
    let r = kv_as(
        &app,
        &token,
        Method::PUT,
        "/secrets/db-password",
        Some(json!({"value": "x"})),
    )
    .await;
    r.expect_error(403, "Forbidden");
    assert!(
        r.message().contains("secrets set permission"),
        "{}",
        r.message()
    );
    kv_as(&app, &token, Method::GET, "/secrets", None)
        .await
        .expect_error(403, "Forbidden");

    // set-policy replaces: get list set.
    set_policy(&app, &app_id, &["get", "list", "set"])
        .await
        .expect(200);
    kv_as(&app, &token, Method::GET, "/secrets", None)
        .await
        .expect(200);
    kv_as(
        &app,
        &token,
        Method::PUT,
        "/secrets/db-password",
        Some(json!({"value": "new"})),
    )
    .await
    .expect(200);
    kv_as(&app, &token, Method::DELETE, "/secrets/db-password", None)
        .await
        .expect_error(403, "Forbidden");

    // Each policy change is an event on the vault's system topic.
    let changes = app
        .events(DEFAULT)
        .await
        .into_iter()
        .filter(|e| e["eventType"] == "Microsoft.KeyVault.VaultAccessPolicyChanged")
        .count();
    assert_eq!(changes, 2);
    let listed = api(
        &app,
        Method::GET,
        &format!("/vaults/{DEFAULT}/accessPolicies"),
        None,
    )
    .await;
    assert_eq!(
        listed.expect(200)["value"][0]["objectId"],
        object_id.as_str()
    );

    // delete-policy: back to nothing.
    api(
        &app,
        Method::DELETE,
        &format!("/vaults/{DEFAULT}/accessPolicies/{app_id}"),
        None,
    )
    .await
    .expect(204);
    kv_as(&app, &token, Method::GET, "/secrets/db-password", None)
        .await
        .expect_error(403, "Forbidden");
    let r = set_policy(&app, &app_id, &["read"]).await;
    r.expect_error(400, "BadParameter");
}

#[tokio::test]
async fn secrets_rotate_and_principals_go() {
    let app = spawn_app().await;
    let (app_id, _, first) = principal(&app, "rotating").await;
    let second = api(
        &app,
        Method::POST,
        &format!("/principals/{app_id}/secrets"),
        Some(json!({"displayName": "next", "lifetimeInDays": 30})),
    )
    .await;
    let second = second.expect(201).clone();
    let (key2, secret2) = (
        second["keyId"].as_str().unwrap(),
        second["secretText"].as_str().unwrap(),
    );
    assert_eq!(second["hint"], &secret2[..3]);
    // Both secrets issue tokens at once (rotation without downtime).
    let token = token_for(&app, &app_id, &first, VAULT_SCOPE).await;
    token_for(&app, &app_id, secret2, VAULT_SCOPE).await;
    // Listing never shows a secret's value.
    let listed = api(
        &app,
        Method::GET,
        &format!("/principals/{app_id}/secrets"),
        None,
    )
    .await;
    let listed = listed.expect(200).clone();
    assert_eq!(listed["value"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(secret2) && !listed.to_string().contains(&first));

    // A removed secret stops issuing tokens.
    api(
        &app,
        Method::DELETE,
        &format!("/principals/{app_id}/secrets/{key2}"),
        None,
    )
    .await
    .expect(204);
    let r = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &app_id),
            ("client_secret", secret2),
            ("scope", VAULT_SCOPE),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(r.json["error_codes"][0], 7000215);
    assert!(
        r.json["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: ")
    );

    // A deleted principal's tokens stop at once.
    set_policy(&app, &app_id, &["all"]).await.expect(200);
    app.set_value(DEFAULT, "n", "v").await;
    kv_as(&app, &token, Method::GET, "/secrets/n", None)
        .await
        .expect(200);
    api(&app, Method::DELETE, &format!("/principals/{app_id}"), None)
        .await
        .expect(204);
    let r = kv_as(&app, &token, Method::GET, "/secrets/n", None).await;
    r.expect_error(401, "Unauthorized");
    assert!(r.headers.get("www-authenticate").is_some());
    let r = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &app_id),
            ("client_secret", &first),
            ("scope", VAULT_SCOPE),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (400, Some("unauthorized_client"))
    );

    // The built-in change-tracking principal is there and cannot go.
    let builtin = "0bf30f3b-4a52-48df-9a82-234910c4a086";
    let b = api(&app, Method::GET, &format!("/principals/{builtin}"), None).await;
    assert_eq!(
        b.expect(200)["displayName"],
        "Microsoft Graph Change Tracking"
    );
    api(
        &app,
        Method::DELETE,
        &format!("/principals/{builtin}"),
        None,
    )
    .await
    .expect_error(400, "BadRequest");
}

#[tokio::test]
async fn bad_tokens_and_bad_requests_are_4xx() {
    let app = spawn_app_with(|c| c.token_lifetime_secs = 1).await;
    app.set_value(DEFAULT, "n", "v").await;
    let (app_id, _, secret) = principal(&app, "shortlived").await;
    set_policy(&app, &app_id, &["get"]).await.expect(200);
    let token = token_for(&app, &app_id, &secret, VAULT_SCOPE).await;

    // Tampered: flip one character of the payload.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut p = parts[1].clone().into_bytes();
    p[10] = if p[10] == b'A' { b'B' } else { b'A' };
    parts[1] = String::from_utf8(p).unwrap();
    for bad in [
        parts.join("."),
        "eyJhbGciOiJub25lIn0.e30.".to_owned(),
        "eyJ.garbage.x".to_owned(),
        format!("eyJ{}.a.b", "A".repeat(9000)),
    ] {
        let r = kv_as(&app, &bad, Method::GET, "/secrets/n", None).await;
        r.expect_error(401, "Unauthorized");
        assert!(r.headers.get("www-authenticate").is_some());
    }
    // Wrong audience: a management token on the vault plane, and the
    // other way round; a valid management token is forbidden there.
    let mgmt = token_for(
        &app,
        &app_id,
        &secret,
        "https://management.azure.com/.default",
    )
    .await;
    kv_as(&app, &mgmt, Method::GET, "/secrets/n", None)
        .await
        .expect_error(401, "Unauthorized");
    let url = format!("https://localhost:{}/api/v1/vaults", app.port);
    let r = app.send(app.client.get(&url).bearer_auth(&mgmt)).await;
    r.expect_error(403, "Forbidden");
    let r = app.send(app.client.get(&url).bearer_auth(&token)).await;
    r.expect_error(401, "Unauthorized");

    // Expired (lifetime 1 s).
    kv_as(&app, &token, Method::GET, "/secrets/n", None)
        .await
        .expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let fresh_cache_miss = kv_as(&app, &token, Method::GET, "/secrets/n", None).await;
    fresh_cache_miss.expect_error(401, "Unauthorized");
    assert!(
        fresh_cache_miss.message().contains("expired"),
        "{}",
        fresh_cache_miss.message()
    );

    // Token endpoint refusals: Entra's shapes, never a 5xx.
    let big = "a".repeat(20_000);
    for (form, status, error) in [
        (vec![("client_id", app_id.as_str())], 400, "invalid_request"),
        (
            vec![("grant_type", "password")],
            400,
            "unsupported_grant_type",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &app_id),
                ("scope", VAULT_SCOPE),
            ],
            401,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
                ("client_secret", "x"),
                ("scope", VAULT_SCOPE),
            ],
            400,
            "unauthorized_client",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &app_id),
                ("client_secret", &secret),
                ("scope", "https://vault.azure.net"),
            ],
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &app_id),
                ("client_secret", &secret),
                ("scope", "https://evil.example/.default"),
            ],
            400,
            "invalid_resource",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &app_id),
                ("client_secret", &secret),
                ("scope", VAULT_SCOPE),
                ("client_assertion", big.as_str()),
            ],
            400,
            "invalid_request",
        ),
    ] {
        let r = token_request(&app, &form).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (status, Some(error)),
            "{form:?}: {}",
            r.text
        );
        assert!(
            r.json["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS")
        );
    }
    let url = format!(
        "https://localhost:{}/{}/oauth2/v2.0/token",
        app.port, app.tenant
    );
    let r = app
        .send(app.client.post(&url).body(vec![0xffu8; 300]))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

/// Issue 23 item 8: the permission a vault call needs is read from the
/// matched route, not from a suffix, so `list` never reads a secret whose
/// name happens to be a route word. The rule is the one job tokens use too
/// (`authorize_secret`).
#[tokio::test]
async fn list_permission_reads_no_secret_named_like_a_route_word() {
    let app = spawn_app().await;
    for name in ["versions", "deletedsecrets", "backup", "recover", "restore"] {
        app.set_value(DEFAULT, name, &format!("value-of-{name}"))
            .await;
    }
    let (app_id, _, secret) = principal(&app, "lister").await;
    let token = token_for(&app, &app_id, &secret, VAULT_SCOPE).await;
    set_policy(&app, &app_id, &["list"]).await.expect(200);
    for name in ["versions", "deletedsecrets", "backup", "recover", "restore"] {
        for path in [format!("/secrets/{name}"), format!("/secrets/{name}/")] {
            let r = kv_as(&app, &token, Method::GET, &path, None).await;
            assert_eq!(r.status, 403, "GET {path} with list only: {:?}", r.json);
            assert!(!r.text.contains("value-of-"), "{path} leaked: {}", r.text);
        }
        // Listing that secret's versions is what `list` is for.
        kv_as(
            &app,
            &token,
            Method::GET,
            &format!("/secrets/{name}/versions"),
            None,
        )
        .await
        .expect(200);
    }
    kv_as(&app, &token, Method::GET, "/secrets", None)
        .await
        .expect(200);
    // With get, the same reads answer the value.
    set_policy(&app, &app_id, &["get"]).await.expect(200);
    let r = kv_as(&app, &token, Method::GET, "/secrets/versions/", None).await;
    assert_eq!(r.expect(200)["value"], "value-of-versions");
}
