//! The Blob data plane over the wire, signed the way the SDK signs: Shared
//! Key, and the refusals (no credential, bearer tokens, a wrong key, a
//! stale date), and bad input (malformed block lists, bad block ids, names,
//! ranges, oversize headers), which get Azure's XML errors with a 4xx and
//! never a 5xx. The official SDK's own suite is tests/compat/test_blob.py.

use crate::helpers::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

struct Account {
    name: String,
    key: Vec<u8>,
}

async fn account(app: &TestApp, name: &str) -> Account {
    let url = format!("https://localhost:{}/api/v1/storage/accounts", app.port);
    let r = app
        .send(
            app.client
                .post(&url)
                .bearer_auth(&app.token)
                .json(&json!({"name": name})),
        )
        .await;
    r.expect(201);
    let k = app
        .send(
            app.client
                .post(format!("{url}/{name}/listKeys"))
                .bearer_auth(&app.token),
        )
        .await;
    let key = k.expect(200)["keys"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    Account {
        name: name.to_owned(),
        key: B64.decode(key).unwrap(),
    }
}

/// A Shared Key request to `path_and_query` on the account's host.
async fn signed(
    app: &TestApp,
    a: &Account,
    key: &[u8],
    method: Method,
    path_and_query: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let mut headers = HeaderMap::new();
    let date = httpdate_now();
    headers.insert("x-ms-date", HeaderValue::from_str(&date).unwrap());
    headers.insert("x-ms-version", HeaderValue::from_static("2025-01-05"));
    if !body.is_empty() || method == Method::PUT {
        headers.insert(
            "content-length",
            HeaderValue::from_str(&body.len().to_string()).unwrap(),
        );
    }
    for (k, v) in extra {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let sts = herald_blob::auth::string_to_sign(&a.name, method.as_str(), path, query, &headers);
    let sig = herald_blob::auth::sign(key, &sts);
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("SharedKey {}:{sig}", a.name)).unwrap(),
    );
    let url = format!(
        "https://{}.blob.localhost:{}{path_and_query}",
        a.name, app.port
    );
    app.send(app.client.request(method, url).headers(headers).body(body))
        .await
}

fn httpdate_now() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn error_code(r: &Resp) -> String {
    let start = r.text.find("<Code>").map(|i| i + 6).unwrap_or(0);
    let end = r.text.find("</Code>").unwrap_or(start);
    r.text[start..end].to_owned()
}

#[tokio::test]
async fn shared_key_round_trip_and_refusals() {
    let app = spawn_app().await;
    let a = account(&app, "plane").await;
    let key = a.key.clone();
    let r = signed(
        &app,
        &a,
        &key,
        Method::PUT,
        "/docs?restype=container",
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = signed(
        &app,
        &a,
        &key,
        Method::PUT,
        "/docs/dir%20one/r%C3%A9sum%C3%A9.txt",
        &[("x-ms-blob-type", "BlockBlob"), ("x-ms-meta-owner", "ci")],
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = signed(
        &app,
        &a,
        &key,
        Method::GET,
        "/docs/dir%20one/r%C3%A9sum%C3%A9.txt",
        &[],
        vec![],
    )
    .await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello"));
    let r = signed(
        &app,
        &a,
        &key,
        Method::GET,
        "/docs/dir%20one/r%C3%A9sum%C3%A9.txt",
        &[("x-ms-range", "bytes=1-3")],
        vec![],
    )
    .await;
    assert_eq!((r.status, r.text.as_str()), (206, "ell"));

    // No credential, bearer tokens of every kind, a wrong key: refused
    // before anything is looked up, with Azure's codes.
    let url = format!(
        "https://plane.blob.localhost:{}/docs?restype=container&comp=list",
        app.port
    );
    let r = app.send(app.client.get(&url)).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (401, "NoAuthenticationInformation"),
        "{}",
        r.text
    );
    let r = app.send(app.client.get(&url).bearer_auth(&app.token)).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (403, "AuthenticationFailed"),
        "{}",
        r.text
    );
    let r = signed(
        &app,
        &a,
        &[7u8; 64],
        Method::GET,
        "/docs?restype=container&comp=list",
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (403, "AuthenticationFailed"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(&B64.encode(&key)), "never the key");
    let ghost = Account {
        name: "ghost".into(),
        key: key.clone(),
    };
    let r = signed(&app, &ghost, &key, Method::GET, "/?comp=list", &[], vec![]).await;
    assert_eq!(
        r.status, 403,
        "an unknown account fails like a wrong key: {}",
        r.text
    );
    // A signature over a stale date is refused (replay window).
    let mut stale = HeaderMap::new();
    stale.insert(
        "x-ms-date",
        HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    let sts = herald_blob::auth::string_to_sign(
        "plane",
        "GET",
        "/docs",
        Some("restype=container"),
        &stale,
    );
    stale.insert(
        "authorization",
        HeaderValue::from_str(&format!(
            "SharedKey plane:{}",
            herald_blob::auth::sign(&key, &sts)
        ))
        .unwrap(),
    );
    let r = app
        .send(
            app.client
                .get(format!(
                    "https://plane.blob.localhost:{}/docs?restype=container",
                    app.port
                ))
                .headers(stale),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // Regenerating key1 retires it.
    let k = app
        .send(
            app.client
                .post(format!(
                    "https://localhost:{}/api/v1/storage/accounts/plane/regenerateKey",
                    app.port
                ))
                .bearer_auth(&app.token)
                .json(&json!({"keyName": "key1"})),
        )
        .await;
    k.expect(200);
    let r = signed(
        &app,
        &a,
        &key,
        Method::GET,
        "/docs?restype=container",
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        r.status, 403,
        "the old key1 is retired (after the key cache's 5 s at most): {}",
        r.text
    );
}

/// What, method, path, headers, body, expected status and error code.
type Case<'a> = (
    &'a str,
    Method,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_input_gets_azure_errors_never_a_5xx() {
    let app = spawn_app().await;
    let a = account(&app, "hostile").await;
    let key = a.key.clone();
    signed(
        &app,
        &a,
        &key,
        Method::PUT,
        "/box?restype=container",
        &[],
        vec![],
    )
    .await
    .expect(201);
    let bt = ("x-ms-blob-type", "BlockBlob");
    let long_name = format!("/box/{}", "n".repeat(1100));
    let huge_meta = "v".repeat(9000);
    let cases: Vec<Case> = vec![
        (
            "malformed block list",
            Method::PUT,
            "/box/b?comp=blocklist".into(),
            vec![],
            b"<BlockList><Latest>AAA=".to_vec(),
            400,
            "InvalidXmlDocument",
        ),
        (
            "not a block list",
            Method::PUT,
            "/box/b?comp=blocklist".into(),
            vec![],
            b"<Other/>".to_vec(),
            400,
            "InvalidXmlDocument",
        ),
        (
            "unknown block",
            Method::PUT,
            "/box/b?comp=blocklist".into(),
            vec![],
            b"<?xml version=\"1.0\"?><BlockList><Latest>AAA=</Latest></BlockList>".to_vec(),
            400,
            "InvalidBlockList",
        ),
        (
            "entity bomb",
            Method::PUT,
            "/box/b?comp=blocklist".into(),
            vec![],
            b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]><BlockList><Latest>&a;</Latest></BlockList>"
                .to_vec(),
            400,
            "InvalidXmlDocument",
        ),
        (
            "bad block id",
            Method::PUT,
            "/box/b?comp=block&blockid=%%%".into(),
            vec![],
            b"x".to_vec(),
            400,
            "InvalidQueryParameterValue",
        ),
        (
            "oversize block id",
            Method::PUT,
            format!("/box/b?comp=block&blockid={}", B64.encode([1u8; 65])),
            vec![],
            b"x".to_vec(),
            400,
            "InvalidQueryParameterValue",
        ),
        (
            "no blob type",
            Method::PUT,
            "/box/b".into(),
            vec![],
            b"x".to_vec(),
            400,
            "MissingRequiredHeader",
        ),
        (
            "page blob",
            Method::PUT,
            "/box/b".into(),
            vec![("x-ms-blob-type", "PageBlob")],
            b"x".to_vec(),
            400,
            "InvalidBlobType",
        ),
        (
            "name too long",
            Method::PUT,
            long_name,
            vec![bt],
            b"x".to_vec(),
            400,
            "InvalidResourceName",
        ),
        // (A `..` segment cannot be sent: URL libraries resolve it away, and
        // names.rs refuses it anyway.)
        (
            "control character",
            Method::PUT,
            "/box/a%01b".into(),
            vec![bt],
            b"x".to_vec(),
            400,
            "InvalidResourceName",
        ),
        (
            "bad container name",
            Method::PUT,
            "/Bad_Name?restype=container".into(),
            vec![],
            vec![],
            400,
            "InvalidResourceName",
        ),
        (
            "bad metadata name",
            Method::PUT,
            "/box/m".into(),
            vec![bt, ("x-ms-meta-1bad", "v")],
            b"x".to_vec(),
            400,
            "InvalidMetadata",
        ),
        (
            "metadata over 8 KiB",
            Method::PUT,
            "/box/m".into(),
            vec![bt, ("x-ms-meta-big", huge_meta.as_str())],
            b"x".to_vec(),
            400,
            "InvalidMetadata",
        ),
        (
            "wrong MD5",
            Method::PUT,
            "/box/m".into(),
            vec![bt, ("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")],
            b"x".to_vec(),
            400,
            "Md5Mismatch",
        ),
        (
            "bad range",
            Method::GET,
            "/box/nosuch".into(),
            vec![("x-ms-range", "bytes=9-1")],
            vec![],
            416,
            "InvalidRange",
        ),
        (
            "bad date condition",
            Method::PUT,
            "/box/m".into(),
            vec![bt, ("if-modified-since", "yesterday")],
            b"x".to_vec(),
            400,
            "InvalidHeaderValue",
        ),
        (
            "missing container",
            Method::PUT,
            "/nobox/b".into(),
            vec![bt],
            b"x".to_vec(),
            404,
            "ContainerNotFound",
        ),
        (
            "missing blob",
            Method::GET,
            "/box/nosuch".into(),
            vec![],
            vec![],
            404,
            "BlobNotFound",
        ),
        (
            "unknown operation",
            Method::POST,
            "/box/b?comp=nonsense".into(),
            vec![],
            vec![],
            400,
            "UnsupportedHttpVerb",
        ),
        (
            "bad maxresults",
            Method::GET,
            "/box?restype=container&comp=list&maxresults=0".into(),
            vec![],
            vec![],
            400,
            "OutOfRangeQueryParameterValue",
        ),
    ];
    for (what, method, path, extra, body, status, code) in cases {
        let r = signed(&app, &a, &key, method, &path, &extra, body).await;
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{what}: {}",
            r.text
        );
    }
    // A huge header is refused by the listener, not by a panic.
    let big = "x".repeat(200 * 1024);
    let r = app
        .client
        .get(format!(
            "https://hostile.blob.localhost:{}/box?restype=container",
            app.port
        ))
        .header("x-ms-meta-big", big)
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "huge header: {}", r.status());
    }
    // The server is still fine.
    signed(
        &app,
        &a,
        &key,
        Method::GET,
        "/box?restype=container",
        &[],
        vec![],
    )
    .await
    .expect(200);
}
