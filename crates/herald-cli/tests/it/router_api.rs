//! The event router over real HTTPS: the topic and event subscription
//! management API, publishing in every schema and with every credential,
//! pull delivery with its settle operations, filters, and Key Vault events
//! reaching a Queue subscription (spec eventgrid.md §1-5, §10, §11).

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

const EG_API: &str = "api-version=2018-01-01";
const NS_API: &str = "api-version=2024-06-01";
const CE_JSON: &str = "application/cloudevents+json; charset=utf-8";
const CE_BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";
const MIB: usize = 1_048_576;
const NEW_SECRET: &str = "Microsoft.KeyVault.SecretNewVersionCreated";

// ---------------------------------------------------------------------------
// Helpers

fn origin(app: &TestApp) -> String {
    format!("https://localhost:{}", app.port)
}

fn topic_arm(name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/herald/providers/Microsoft.EventGrid/topics/{name}"
    )
}

/// Sends a request; no answer may ever be a 5xx, and every 4xx carries the
/// `{"error":{"code","message"}}` envelope.
async fn call(app: &TestApp, req: RequestBuilder) -> Resp {
    let r = app.send(req).await;
    assert!(r.status < 500, "server error {}: {}", r.status, r.text);
    if r.status >= 400 {
        assert!(
            r.json["error"]["code"].is_string() && r.json["error"]["message"].is_string(),
            "{} without the error envelope: {:?}",
            r.status,
            r.text
        );
    }
    r
}

/// A management request under `/api/v1/topics` with the admin token.
async fn mgmt(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    let url = format!("{}/api/v1/topics{path}", origin(app));
    let mut req = app.client.request(method, url).bearer_auth(&app.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    call(app, req).await
}

async fn create_topic(app: &TestApp, body: Value) -> Value {
    mgmt(app, Method::POST, "", Some(body))
        .await
        .expect(201)
        .clone()
}

async fn keys(app: &TestApp, topic: &str) -> [String; 2] {
    let r = mgmt(app, Method::GET, &format!("/{topic}/keys"), None).await;
    let b = r.expect(200);
    let k = |n: &str| {
        b[n].as_str()
            .unwrap_or_else(|| panic!("{n}: {b}"))
            .to_owned()
    };
    [k("key1"), k("key2")]
}

/// An Event Grid schema topic; returns its key1.
async fn eg_topic(app: &TestApp, name: &str) -> String {
    create_topic(app, json!({ "name": name })).await;
    keys(app, name).await[0].clone()
}

async fn put_sub(app: &TestApp, topic: &str, name: &str, body: Value) -> Resp {
    mgmt(
        app,
        Method::PUT,
        &format!("/{topic}/eventSubscriptions/{name}"),
        Some(body),
    )
    .await
}

/// A Queue (pull) subscription with `extra` merged into the properties.
async fn queue_sub(app: &TestApp, topic: &str, name: &str, extra: Value) -> Value {
    let mut body = json!({ "deliveryConfiguration": { "deliveryMode": "Queue" } });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    put_sub(app, topic, name, body).await.expect(201).clone()
}

async fn get_sub(app: &TestApp, topic: &str, name: &str) -> Value {
    mgmt(
        app,
        Method::GET,
        &format!("/{topic}/eventSubscriptions/{name}"),
        None,
    )
    .await
    .expect(200)
    .clone()
}

fn metric(metrics: &Value, name: &str) -> i64 {
    assert!(metrics.is_object(), "metrics must be an object: {metrics}");
    match metrics.get(name) {
        None => 0,
        Some(v) => v
            .as_i64()
            .unwrap_or_else(|| panic!("metric {name} not an integer: {metrics}")),
    }
}

async fn sub_metrics(app: &TestApp, topic: &str, name: &str) -> Value {
    get_sub(app, topic, name).await["metrics"].clone()
}

async fn published(app: &TestApp, topic: &str) -> i64 {
    let t = mgmt(app, Method::GET, &format!("/{topic}"), None).await;
    metric(&t.expect(200)["metrics"], "published")
}

fn events_url(app: &TestApp, topic: &str) -> String {
    format!("{}/topics/{topic}/api/events?{EG_API}", origin(app))
}

fn publish_url(app: &TestApp, topic: &str) -> String {
    format!("{}/topics/{topic}:publish?{NS_API}", origin(app))
}

fn eg(id: &str, event_type: &str, subject: &str, data: Value) -> Value {
    json!({
        "id": id, "eventType": event_type, "subject": subject,
        "eventTime": "2024-05-01T10:00:00.1234567Z", "data": data, "dataVersion": "1.0",
    })
}

/// Classic publish with `aeg-sas-key`.
async fn publish(app: &TestApp, topic: &str, key: &str, events: &Value) -> Resp {
    call(
        app,
        app.client
            .post(events_url(app, topic))
            .header("aeg-sas-key", key)
            .json(events),
    )
    .await
}

async fn publish_ok(app: &TestApp, topic: &str, key: &str, events: &Value) {
    let r = publish(app, topic, key, events).await;
    r.expect(200);
    assert_eq!(r.text, "", "classic publish answers an empty body");
}

/// Raw classic publish body with `aeg-sas-key`.
async fn publish_raw(app: &TestApp, topic: &str, key: &str, ct: &str, body: Vec<u8>) -> Resp {
    call(
        app,
        app.client
            .post(events_url(app, topic))
            .header("aeg-sas-key", key)
            .header(CONTENT_TYPE, ct)
            .body(body),
    )
    .await
}

/// Namespace publish with `Authorization: SharedAccessKey`.
async fn publish_ns(app: &TestApp, topic: &str, key: &str, ct: &str, body: String) -> Resp {
    call(
        app,
        app.client
            .post(publish_url(app, topic))
            .header(AUTHORIZATION, format!("SharedAccessKey {key}"))
            .header(CONTENT_TYPE, ct)
            .body(body),
    )
    .await
}

fn assert_ns_ok(r: &Resp) {
    r.expect(200);
    assert_eq!(
        r.json,
        json!({}),
        "namespace publish answers {{}}: {}",
        r.text
    );
    assert_eq!(r.text.trim(), "{}");
}

fn sub_url(app: &TestApp, topic: &str, sub: &str, op: &str, query: &str) -> String {
    format!(
        "{}/topics/{topic}/eventsubscriptions/{sub}:{op}?{NS_API}{query}",
        origin(app)
    )
}

/// Checks the receive response shape and returns its `value` items.
fn received_items(r: &Resp) -> Vec<Value> {
    let body = r.expect(200);
    let items = body["value"]
        .as_array()
        .unwrap_or_else(|| panic!("receive must answer {{\"value\":[...]}}: {}", r.text))
        .clone();
    for it in &items {
        let bp = &it["brokerProperties"];
        let token = bp["lockToken"].as_str().unwrap_or_default();
        assert!(!token.is_empty(), "lockToken missing: {it}");
        assert!(
            STANDARD.decode(token).is_ok(),
            "lockToken is base64: {token}"
        );
        let count = bp["deliveryCount"].as_i64().unwrap_or(0);
        assert!(count >= 1, "deliveryCount >= 1: {it}");
        assert_eq!(it["event"]["specversion"], "1.0", "a CloudEvent: {it}");
        assert!(it["event"]["id"].is_string(), "{it}");
    }
    items
}

async fn receive(
    app: &TestApp,
    topic: &str,
    sub: &str,
    key: &str,
    max: u32,
    wait: u32,
) -> Vec<Value> {
    let q = format!("&maxEvents={max}&maxWaitTime={wait}");
    let r = call(
        app,
        app.client
            .post(sub_url(app, topic, sub, "receive", &q))
            .header("aeg-sas-key", key)
            .header(CONTENT_TYPE, "application/json"),
    )
    .await;
    let items = received_items(&r);
    assert!(items.len() <= max as usize, "at most maxEvents: {}", r.text);
    items
}

async fn settle(
    app: &TestApp,
    topic: &str,
    sub: &str,
    key: &str,
    op: &str,
    query: &str,
    tokens: &[String],
) -> Resp {
    call(
        app,
        app.client
            .post(sub_url(app, topic, sub, op, query))
            .header("aeg-sas-key", key)
            .json(&json!({ "lockTokens": tokens })),
    )
    .await
}

/// Settles and asserts every token succeeded.
async fn settle_ok(app: &TestApp, topic: &str, sub: &str, key: &str, op: &str, tokens: &[String]) {
    let r = settle(app, topic, sub, key, op, "", tokens).await;
    let b = r.expect(200);
    assert_eq!(b["succeededLockTokens"], json!(tokens), "{op}: {}", r.text);
    assert_eq!(b["failedLockTokens"], json!([]), "{op}: {}", r.text);
}

fn tokens(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| {
            i["brokerProperties"]["lockToken"]
                .as_str()
                .expect("token")
                .to_owned()
        })
        .collect()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["event"]["id"].as_str().expect("id").to_owned())
        .collect()
}

fn id_set(items: &[Value]) -> BTreeSet<String> {
    ids(items).into_iter().collect()
}

fn set_of(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Receives and acknowledges until a receive comes back empty.
async fn drain(app: &TestApp, topic: &str, sub: &str, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let items = receive(app, topic, sub, key, 100, 0).await;
        if items.is_empty() {
            return all;
        }
        settle_ok(app, topic, sub, key, "acknowledge", &tokens(&items)).await;
        all.extend(items);
    }
    panic!("{topic}/{sub} never drained");
}

/// Receives until `n` events arrived (events of a fresh publish are
/// available at once; the deadline only guards against hangs).
async fn receive_n(app: &TestApp, topic: &str, sub: &str, key: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut all = Vec::new();
    while all.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events arrived on {topic}/{sub}",
            all.len()
        );
        all.extend(receive(app, topic, sub, key, 100, 1).await);
    }
    assert_eq!(all.len(), n, "exactly {n} events: {all:#?}");
    all
}

/// Python's `urllib.parse.quote(s, safe="~()*!.'")`, as azure-eventgrid's
/// `generate_sas` uses it.
fn py_quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~()*!'".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A SAS token built by hand: `r=<enc>&e=<enc>&s=<enc(base64(hmac))>`.
fn hand_sas(resource: &str, expiry: &str, key: &str) -> String {
    let signed = format!("r={}&e={}", py_quote(resource), py_quote(expiry));
    let raw = STANDARD.decode(key).expect("topic keys are base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&raw).expect("hmac key");
    mac.update(signed.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    format!("{signed}&s={}", py_quote(&sig))
}

/// The Python SDK's token: `r` = endpoint + `?apiVersion=2018-01-01`,
/// `e` = `str(datetime)`.
fn python_sdk_sas(app: &TestApp, topic: &str, key: &str, expiry: &str) -> String {
    let endpoint = format!("{}/topics/{topic}/api/events", origin(app));
    hand_sas(&format!("{endpoint}?apiVersion=2018-01-01"), expiry, key)
}

fn generated_sas(resource: &str, key: &str, valid_for: chrono::Duration) -> String {
    herald_router::auth::generate_sas(resource, key, chrono::Utc::now() + valid_for)
        .expect("generate a SAS token")
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A classic publish body of exactly `len` bytes, holding one event whose
/// `data` string is made of `fill` characters.
fn body_of_len(len: usize, fill: char) -> Vec<u8> {
    let head =
        r#"[{"id":"big","eventType":"t","subject":"s","eventTime":"2024-01-01T00:00:00Z","data":""#;
    let tail = r#""}]"#;
    let room = len - head.len() - tail.len();
    let unit = fill.len_utf8();
    let mut data: String = std::iter::repeat_n(fill, room / unit).collect();
    data.push_str(&"x".repeat(room % unit));
    let body = format!("{head}{data}{tail}");
    assert_eq!(body.len(), len);
    body.into_bytes()
}

// ---------------------------------------------------------------------------
// Topics

#[tokio::test]
async fn topics_are_created_listed_shown_and_deleted() {
    let app = spawn_app().await;
    let t = create_topic(&app, json!({"name": "orders"})).await;
    assert_eq!(t["name"], "orders");
    assert_eq!(t["id"], topic_arm("orders"));
    assert_eq!(t["kind"], "custom");
    assert_eq!(t["inputSchema"], "EventGridSchema", "the default schema");
    assert_eq!(
        t["endpoint"],
        format!("{}/topics/orders/api/events", origin(&app))
    );
    assert!(t.get("inputSchemaMapping").is_none(), "{t}");

    let ce = create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    assert_eq!(ce["inputSchema"], "CloudEventSchemaV1_0");
    assert_eq!(ce["id"], topic_arm("telemetry"));
    let explicit = create_topic(
        &app,
        json!({"name": "orders-eg", "inputSchema": "EventGridSchema"}),
    )
    .await;
    assert_eq!(explicit["inputSchema"], "EventGridSchema");
    let mapping = json!({
        "inputSchemaMappingType": "Json",
        "properties": {
            "id": {"sourceField": "myId"},
            "eventTime": {"sourceField": "myTime"},
            "eventType": {"sourceField": "myEventType", "defaultValue": "recordInserted"},
            "subject": {"sourceField": "mySubject", "defaultValue": "subjectDefault"},
            "dataVersion": {"sourceField": "myVersion", "defaultValue": "1.0"}
        }
    });
    let custom = create_topic(
        &app,
        json!({"name": "legacy", "inputSchema": "CustomEventSchema", "inputSchemaMapping": mapping}),
    )
    .await;
    assert_eq!(custom["inputSchema"], "CustomEventSchema");
    assert_eq!(custom["inputSchemaMapping"], mapping);

    // List: every topic, the default vault's system topic included.
    let r = mgmt(&app, Method::GET, "", None).await;
    let list = r.expect(200)["value"].as_array().expect("value").clone();
    let names: Vec<&str> = list.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        ["default", "legacy", "orders", "orders-eg", "telemetry"],
        "sorted by name"
    );
    let listed = |n: &str| {
        list.iter()
            .find(|t| t["name"] == n)
            .expect("listed")
            .clone()
    };
    assert_eq!(listed("orders")["id"], t["id"]);
    assert_eq!(listed("telemetry")["inputSchema"], "CloudEventSchemaV1_0");
    assert_eq!(listed("legacy")["inputSchemaMapping"], mapping);
    assert_eq!(listed("default")["kind"], "system");

    // Show: metrics.published counts accepted events.
    let shown = mgmt(&app, Method::GET, "/orders", None).await;
    let s = shown.expect(200);
    assert_eq!(s["name"], "orders");
    assert_eq!(s["eventSubscriptions"], 0);
    assert_eq!(metric(&s["metrics"], "published"), 0);
    let key = keys(&app, "orders").await[0].clone();
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("a", "t", "s", json!({})), eg("b", "t", "s", json!({}))]),
    )
    .await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let s = mgmt(&app, Method::GET, "/orders", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(s["metrics"]["published"], 2, "{s}");
    assert_eq!(s["eventSubscriptions"], 1);
    let legacy = mgmt(&app, Method::GET, "/legacy", None).await;
    assert_eq!(legacy.expect(200)["inputSchemaMapping"], mapping);

    // Delete: 204, then gone everywhere.
    let r = mgmt(&app, Method::DELETE, "/orders", None).await;
    r.expect(204);
    assert_eq!(r.text, "");
    mgmt(&app, Method::GET, "/orders", None)
        .await
        .expect_error(404, "NotFound");
    mgmt(&app, Method::DELETE, "/orders", None)
        .await
        .expect_error(404, "NotFound");
    mgmt(&app, Method::GET, "/orders/keys", None)
        .await
        .expect_error(404, "NotFound");
    publish(&app, "orders", &key, &json!([eg("c", "t", "s", json!({}))]))
        .await
        .expect_error(404, "NotFound");
    let r = mgmt(&app, Method::GET, "", None).await;
    assert!(
        !r.expect(200)["value"]
            .as_array()
            .expect("value")
            .iter()
            .any(|t| t["name"] == "orders"),
        "{}",
        r.text
    );

    // The name can be used again; the old topic's subscriptions, keys and
    // events do not come back.
    create_topic(&app, json!({"name": "orders"})).await;
    let s = mgmt(&app, Method::GET, "/orders", None)
        .await
        .expect(200)
        .clone();
    assert_eq!(metric(&s["metrics"], "published"), 0, "{s}");
    assert_eq!(s["eventSubscriptions"], 0, "{s}");
    mgmt(&app, Method::GET, "/orders/eventSubscriptions/pull", None)
        .await
        .expect_error(404, "NotFound");
    publish(&app, "orders", &key, &json!([eg("d", "t", "s", json!({}))]))
        .await
        .expect_error(401, "Unauthorized");
}

#[tokio::test]
async fn duplicate_topics_are_409_and_bad_topic_requests_400() {
    let app = spawn_app().await;
    create_topic(&app, json!({"name": "orders"})).await;
    let r = mgmt(&app, Method::POST, "", Some(json!({"name": "orders"}))).await;
    r.expect_error(409, "Conflict");
    let r = mgmt(
        &app,
        Method::POST,
        "",
        Some(json!({"name": "orders", "inputSchema": "CloudEventSchemaV1_0"})),
    )
    .await;
    r.expect_error(409, "Conflict");
    // Vault system topics share the namespace.
    let r = mgmt(&app, Method::POST, "", Some(json!({"name": "default"}))).await;
    r.expect_error(409, "Conflict");

    let long = "a".repeat(51);
    for name in [
        "ab",
        "a_b",
        "has space",
        "",
        "dots.no",
        "ünïcode",
        long.as_str(),
    ] {
        let r = mgmt(&app, Method::POST, "", Some(json!({ "name": name }))).await;
        assert_eq!(r.status, 400, "name {name:?}: {}", r.text);
    }
    for body in [
        // A two-character name with an otherwise valid body.
        json!({"name": "x1", "inputSchema": "EventGridSchema"}),
        json!({"name": "with-map", "inputSchema": "EventGridSchema",
               "inputSchemaMapping": {"properties": {"id": {"sourceField": "a"}}}}),
        json!({"name": "ce-map", "inputSchema": "CloudEventSchemaV1_0",
               "inputSchemaMapping": {"properties": {"id": {"sourceField": "a"}}}}),
        json!({"name": "avro", "inputSchema": "AvroSchema"}),
        json!({"name": "id-default", "inputSchema": "CustomEventSchema",
               "inputSchemaMapping": {"properties": {"id": {"defaultValue": "x"}}}}),
        json!({"name": "time-default", "inputSchema": "CustomEventSchema",
               "inputSchemaMapping": {"properties": {"eventTime": {"defaultValue": "x"}}}}),
        json!({"name": "empty-src", "inputSchema": "CustomEventSchema",
               "inputSchemaMapping": {"properties": {"subject": {"sourceField": ""}}}}),
        json!({"name": "xml-map", "inputSchema": "CustomEventSchema",
               "inputSchemaMapping": {"inputSchemaMappingType": "Xml", "properties": {}}}),
        json!({"name": "unknown-field", "colour": "red"}),
        json!({"inputSchema": "EventGridSchema"}),
        json!(["orders"]),
    ] {
        let r = mgmt(&app, Method::POST, "", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
    }
    // Malformed JSON.
    let r = call(
        &app,
        app.client
            .post(format!("{}/api/v1/topics", origin(&app)))
            .bearer_auth(&app.token)
            .header(CONTENT_TYPE, "application/json")
            .body("{\"name\": "),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // The boundaries are accepted.
    create_topic(&app, json!({"name": "abc"})).await;
    create_topic(&app, json!({"name": "a".repeat(50)})).await;
    // Management needs the admin token.
    for auth in [None, Some("Bearer hrd_not-the-admin-token-0000000")] {
        let mut req = app
            .client
            .post(format!("{}/api/v1/topics", origin(&app)))
            .json(&json!({"name": "sneaky"}));
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let r = call(&app, req).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text);
    }
    let r = mgmt(&app, Method::GET, "", None).await;
    let names: Vec<String> = r.expect(200)["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "a".repeat(50),
            "abc".into(),
            "default".into(),
            "orders".into()
        ]
    );
}

#[tokio::test]
async fn either_key_works_and_regenerating_one_revokes_only_it() {
    let app = spawn_app().await;
    create_topic(&app, json!({"name": "orders"})).await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let [k1, k2] = keys(&app, "orders").await;
    assert_ne!(k1, k2);
    for k in [&k1, &k2] {
        assert_eq!(STANDARD.decode(k).expect("base64 key").len(), 32);
    }
    assert_eq!(
        keys(&app, "orders").await,
        [k1.clone(), k2.clone()],
        "stable"
    );
    publish_ok(
        &app,
        "orders",
        &k1,
        &json!([eg("k1-a", "t", "s", json!({}))]),
    )
    .await;
    publish_ok(
        &app,
        "orders",
        &k2,
        &json!([eg("k2-a", "t", "s", json!({}))]),
    )
    .await;
    let old_token = generated_sas(
        &format!("{}/topics/orders/api/events", origin(&app)),
        &k1,
        chrono::Duration::hours(1),
    );

    let r = mgmt(
        &app,
        Method::POST,
        "/orders/regenerateKey",
        Some(json!({"keyName": "key1"})),
    )
    .await;
    let b = r.expect(200).clone();
    let new1 = b["key1"].as_str().expect("key1").to_owned();
    assert_ne!(new1, k1, "key1 changed");
    assert_eq!(b["key2"], k2.as_str(), "key2 untouched");
    assert_eq!(keys(&app, "orders").await, [new1.clone(), k2.clone()]);

    publish(
        &app,
        "orders",
        &k1,
        &json!([eg("k1-old", "t", "s", json!({}))]),
    )
    .await
    .expect_error(401, "Unauthorized");
    let r = call(
        &app,
        app.client
            .post(events_url(&app, "orders"))
            .header("aeg-sas-token", &old_token)
            .json(&json!([eg("tok-old", "t", "s", json!({}))])),
    )
    .await;
    r.expect_error(401, "Unauthorized");
    let r = call(
        &app,
        app.client
            .post(sub_url(&app, "orders", "pull", "receive", "&maxWaitTime=0"))
            .header("aeg-sas-key", &k1),
    )
    .await;
    r.expect_error(401, "Unauthorized");
    publish_ok(
        &app,
        "orders",
        &new1,
        &json!([eg("k1-b", "t", "s", json!({}))]),
    )
    .await;
    publish_ok(
        &app,
        "orders",
        &k2,
        &json!([eg("k2-b", "t", "s", json!({}))]),
    )
    .await;

    let r = mgmt(
        &app,
        Method::POST,
        "/orders/regenerateKey",
        Some(json!({"keyName": "key2"})),
    )
    .await;
    let b = r.expect(200).clone();
    let new2 = b["key2"].as_str().expect("key2").to_owned();
    assert_ne!(new2, k2);
    assert_eq!(b["key1"], new1.as_str());
    publish(
        &app,
        "orders",
        &k2,
        &json!([eg("k2-old", "t", "s", json!({}))]),
    )
    .await
    .expect_error(401, "Unauthorized");
    publish_ok(
        &app,
        "orders",
        &new2,
        &json!([eg("k2-c", "t", "s", json!({}))]),
    )
    .await;
    publish_ok(
        &app,
        "orders",
        &new1,
        &json!([eg("k1-c", "t", "s", json!({}))]),
    )
    .await;

    let got = drain(&app, "orders", "pull", &new2).await;
    assert_eq!(
        id_set(&got),
        set_of(&["k1-a", "k2-a", "k1-b", "k2-b", "k2-c", "k1-c"]),
        "exactly the accepted publishes were stored"
    );

    for body in [
        json!({"keyName": "key3"}),
        json!({"keyName": "KEY1 "}),
        json!({}),
    ] {
        let r = mgmt(
            &app,
            Method::POST,
            "/orders/regenerateKey",
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
    }
    mgmt(
        &app,
        Method::POST,
        "/nope/regenerateKey",
        Some(json!({"keyName": "key1"})),
    )
    .await
    .expect_error(404, "NotFound");
    mgmt(&app, Method::GET, "/nope/keys", None)
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn each_vault_has_a_system_topic_that_cannot_be_deleted_or_published_to() {
    let app = spawn_app().await;
    app.create_vault(json!({"name": "payments"})).await;
    let r = mgmt(&app, Method::GET, "", None).await;
    let list = r.expect(200)["value"].as_array().expect("value").clone();
    for vault in [DEFAULT, "payments"] {
        let t = list
            .iter()
            .find(|t| t["name"] == vault)
            .unwrap_or_else(|| panic!("system topic {vault} listed: {list:#?}"));
        assert_eq!(t["kind"], "system", "{t}");
        assert_eq!(t["id"], vault_topic(vault), "{t}");
        assert_eq!(t["inputSchema"], "EventGridSchema", "{t}");
        let shown = mgmt(&app, Method::GET, &format!("/{vault}"), None).await;
        assert_eq!(shown.expect(200)["kind"], "system");
    }
    for vault in [DEFAULT, "payments"] {
        let r = mgmt(&app, Method::DELETE, &format!("/{vault}"), None).await;
        r.expect_error(400, "BadRequest");
        mgmt(&app, Method::GET, &format!("/{vault}"), None)
            .await
            .expect(200);
        let [k1, k2] = keys(&app, vault).await;
        assert_ne!(k1, k2);
        for k in [&k1, &k2] {
            publish(&app, vault, k, &json!([eg("forged", "t", "s", json!({}))]))
                .await
                .expect_error(403, "Forbidden");
        }
        let body = json!({"specversion": "1.0", "id": "x", "source": "/x", "type": "t"});
        publish_ns(&app, vault, &k1, CE_JSON, body.to_string())
            .await
            .expect_error(403, "Forbidden");
        publish_ns(
            &app,
            vault,
            &k1,
            "application/json",
            json!([eg("forged", "t", "s", json!({}))]).to_string(),
        )
        .await
        .expect_error(403, "Forbidden");
        // An admin is not a vault either.
        let r = call(
            &app,
            app.client
                .post(events_url(&app, vault))
                .bearer_auth(&app.token)
                .json(&json!([eg("forged", "t", "s", json!({}))])),
        )
        .await;
        r.expect_error(403, "Forbidden");
    }
    let r = mgmt(&app, Method::POST, "", Some(json!({"name": "payments"}))).await;
    r.expect_error(409, "Conflict");
    // The keys are stable once generated.
    let first = keys(&app, DEFAULT).await;
    assert_eq!(keys(&app, DEFAULT).await, first);
}

// ---------------------------------------------------------------------------
// Publishing

#[tokio::test]
async fn classic_publish_takes_an_event_grid_array_and_answers_200_empty() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([
            eg("one", "recordInserted", "a/1", json!({"n": 1})),
            eg("two", "recordInserted", "a/2", json!({"n": 2}))
        ]),
    )
    .await;
    // Unknown query parameters (generated clients add overload=...) are
    // ignored, and so is a missing api-version.
    for (i, url) in [
        format!(
            "{}&overload=customEvent&foo=bar",
            events_url(&app, "orders")
        ),
        format!("{}/topics/orders/api/events", origin(&app)),
        format!(
            "{}/topics/orders/api/events?api-version=2099-01-01",
            origin(&app)
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = call(
            &app,
            app.client
                .post(url)
                .header("aeg-sas-key", &key)
                .header("aeg-channel-name", "ignored")
                .json(&json!([eg(&format!("q{i}"), "t", "s", json!({}))])),
        )
        .await;
        r.expect(200);
        assert_eq!(r.text, "");
    }
    // Media types compare case-insensitively, parameters ignored; and HTTP/1.1 works.
    let r = publish_raw(
        &app,
        "orders",
        &key,
        "Application/JSON; Charset=UTF-8",
        json!([eg("ct", "t", "s", json!({}))])
            .to_string()
            .into_bytes(),
    )
    .await;
    r.expect(200);
    let h1 = http1_client_for(&app.ca_path);
    let r = read(
        h1.post(events_url(&app, "orders"))
            .header("aeg-sas-key", &key)
            .json(&json!([eg("h1", "t", "s", json!({}))]))
            .send()
            .await
            .expect("HTTP/1.1 publish"),
    )
    .await;
    r.expect(200);
    assert_eq!(r.text, "");
    // An empty array is a valid, empty publish.
    publish_ok(&app, "orders", &key, &json!([])).await;

    let got = drain(&app, "orders", "pull", &key).await;
    assert_eq!(
        ids(&got),
        ["one", "two", "q0", "q1", "q2", "ct", "h1"],
        "all stored, in publish order"
    );
    assert_eq!(published(&app, "orders").await, 7);
}

#[tokio::test]
async fn event_grid_events_are_received_as_cloudevents_field_by_field() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let arm = topic_arm("orders");
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([
            {
                "id": "1807", "eventType": "recordInserted", "subject": "myapp/vehicles/motorcycles",
                "eventTime": "2017-08-10T21:03:07+00:00", "data": {"make": "Ducati", "model": "Monster"},
                "dataVersion": "1.0", "metadataVersion": "1", "topic": arm, "unknownMember": "dropped"
            },
            {
                "id": "1808", "eventType": "recordDeleted", "subject": "",
                "eventTime": "2020-08-13T18:11:29.4121391Z"
            },
            {
                "id": "1809", "eventType": "recordUpdated", "subject": "x",
                "eventTime": "2020-08-13T18:11:29Z", "data": [1, "two", null], "dataVersion": ""
            }
        ]),
    )
    .await;
    let got = receive(&app, "orders", "pull", &key, 10, 1).await;
    assert_eq!(ids(&got), ["1807", "1808", "1809"]);
    for item in &got {
        assert_eq!(item["brokerProperties"]["deliveryCount"], 1);
        let keys: Vec<&String> = item.as_object().expect("item").keys().collect();
        assert_eq!(keys, ["brokerProperties", "event"], "{item}");
    }
    assert_eq!(
        got[0]["event"],
        json!({
            "id": "1807",
            "source": arm,
            "specversion": "1.0",
            "type": "recordInserted",
            "subject": "myapp/vehicles/motorcycles",
            "time": "2017-08-10T21:03:07+00:00",
            "data": {"make": "Ducati", "model": "Monster"}
        }),
        "topic→source, eventType→type, eventTime→time kept verbatim; dataVersion, \
         metadataVersion and unknown members dropped"
    );
    let e = &got[1]["event"];
    assert_eq!(e["id"], "1808");
    assert_eq!(e["source"], arm.as_str());
    assert_eq!(e["type"], "recordDeleted");
    assert_eq!(
        e["time"], "2020-08-13T18:11:29.4121391Z",
        "seven digits kept"
    );
    assert!(
        e.get("subject")
            .is_none_or(|s| s.as_str().is_some_and(|s| !s.is_empty())),
        "a CloudEvents subject is never empty: {e}"
    );
    assert!(e.get("data_base64").is_none(), "{e}");
    assert!(
        e.get("data").is_none_or(Value::is_null),
        "no data published, none delivered: {e}"
    );
    assert_eq!(got[2]["event"]["data"], json!([1, "two", null]));
    assert_eq!(got[2]["event"]["subject"], "x");
    for item in &got {
        for gone in [
            "topic",
            "eventType",
            "eventTime",
            "metadataVersion",
            "dataVersion",
        ] {
            assert!(item["event"].get(gone).is_none(), "{gone} in {item}");
        }
    }
}

/// Spec §1: `data` passes through unchanged, key order and number text
/// included; a pull receiver (and a dead-letter reader) reads it from the
/// HTTP body.
#[tokio::test]
async fn received_data_keeps_key_order_and_number_text() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let data = r#"{"zeta":1,"alpha":2.50,"big":123456789012345678901234567890,"e":1E+2}"#;
    let body = format!(
        r#"[{{"id":"exact","eventType":"t","subject":"s","eventTime":"2024-01-01T00:00:00Z","data":{data}}}]"#
    );
    publish_raw(&app, "orders", &key, "application/json", body.into_bytes())
        .await
        .expect(200);
    let r = call(
        &app,
        app.client
            .post(sub_url(&app, "orders", "pull", "receive", "&maxWaitTime=1"))
            .header("aeg-sas-key", &key),
    )
    .await;
    let items = received_items(&r);
    assert_eq!(ids(&items), ["exact"]);
    settle_ok(&app, "orders", "pull", &key, "reject", &tokens(&items)).await;
    let dl = mgmt(
        &app,
        Method::GET,
        "/orders/eventSubscriptions/pull/deadLetters",
        None,
    )
    .await;
    dl.expect(200);
    let wanted = format!("\"data\":{data}");
    let mut wrong = Vec::new();
    for (what, text) in [(":receive", &r.text), ("deadLetters", &dl.text)] {
        if !text.contains(&wanted) {
            wrong.push(format!("{what}: {text}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "data must arrive byte-exact ({data}):\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn namespace_publish_takes_structured_and_batched_cloudevents() {
    let app = spawn_app().await;
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let key = keys(&app, "telemetry").await[0].clone();
    queue_sub(&app, "telemetry", "pull", json!({})).await;
    queue_sub(
        &app,
        "telemetry",
        "by-ext",
        json!({"filter": {"includedEventTypes": ["com.example.someevent"], "subjectBeginsWith": "s",
        "advancedFilters": [
            {"operatorType": "StringIn", "key": "myext", "values": ["X1"]},
            {"operatorType": "NumberIn", "key": "num", "values": [5]}
        ]}}),
    )
    .await;
    queue_sub(
        &app,
        "telemetry",
        "by-source",
        json!({"filter": {"advancedFilters": [
            {"operatorType": "StringIn", "key": "source", "values": ["/b", "URN:B"]}
        ]}}),
    )
    .await;
    let single = json!({
        "specversion": "1.0", "id": "A234-1234-1234", "source": "/mycontext",
        "type": "com.example.someevent", "time": "2018-04-05T17:31:00Z",
        "datacontenttype": "application/json", "subject": "s1", "data": {"k": "v"},
        "myext": "x1", "num": 5, "flag": true
    });
    assert_ns_ok(&publish_ns(&app, "telemetry", &key, CE_JSON, single.to_string()).await);
    // The older namespace api-version is accepted too.
    let r = call(
        &app,
        app.client
            .post(format!(
                "{}/topics/telemetry:publish?api-version=2023-11-01",
                origin(&app)
            ))
            .header(AUTHORIZATION, format!("SharedAccessKey {key}"))
            .header(CONTENT_TYPE, CE_JSON)
            .body(
                json!({"specversion": "1.0", "id": "old-api", "source": "/o", "type": "t"})
                    .to_string(),
            ),
    )
    .await;
    assert_ns_ok(&r);
    let batch = json!([
        {"specversion": "1.0", "id": "b-1", "source": "/b", "type": "com.example.bin",
         "datacontenttype": "application/octet-stream", "data_base64": "AAEC/w=="},
        {"specversion": "1.0", "id": "b-2", "source": "urn:b", "type": "com.example.x",
         "dataschema": "https://example.com/schema.json", "data": "text"}
    ]);
    assert_ns_ok(&publish_ns(&app, "telemetry", &key, CE_BATCH, batch.to_string()).await);
    let upper = json!([{"specversion": "1.0", "id": "u-1", "source": "/u", "type": "t"}]);
    assert_ns_ok(
        &publish_ns(
            &app,
            "telemetry",
            &key,
            "Application/CloudEvents-Batch+JSON; Charset=UTF-8",
            upper.to_string(),
        )
        .await,
    );
    // The classic endpoint of a CloudEvents topic takes the same bodies.
    let classic = json!([{"specversion": "1.0", "id": "c-1", "source": "/c", "type": "t"}]);
    let r = publish_raw(
        &app,
        "telemetry",
        &key,
        CE_BATCH,
        classic.to_string().into_bytes(),
    )
    .await;
    r.expect(200);
    assert_eq!(r.text, "");

    let got = receive(&app, "telemetry", "pull", &key, 100, 1).await;
    assert_eq!(
        ids(&got),
        ["A234-1234-1234", "old-api", "b-1", "b-2", "u-1", "c-1"]
    );
    // CloudEvents filter keys: extension attributes, type, source, subject.
    assert_eq!(
        ids(&drain(&app, "telemetry", "by-ext", &key).await),
        ["A234-1234-1234"]
    );
    assert_eq!(
        ids(&drain(&app, "telemetry", "by-source", &key).await),
        ["b-1", "b-2"]
    );
    // Extension attributes and everything else verbatim.
    assert_eq!(got[0]["event"], single);
    assert_eq!(got[2]["event"], batch[0]);
    assert_eq!(got[3]["event"], batch[1]);
    assert_eq!(got[4]["event"], upper[0]);
    assert_eq!(got[5]["event"], classic[0]);
    assert_eq!(published(&app, "telemetry").await, 6);
}

#[tokio::test]
async fn cloudevents_are_validated_per_event() {
    let app = spawn_app().await;
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let key = keys(&app, "telemetry").await[0].clone();
    let ok = json!({"specversion": "1.0", "id": "ok", "source": "/s", "type": "t"});
    let without = |field: &str| {
        let mut e = ok.clone();
        e.as_object_mut().expect("object").remove(field);
        e
    };
    let with = |field: &str, v: Value| {
        let mut e = ok.clone();
        e[field] = v;
        e
    };
    for field in ["id", "source", "type", "specversion"] {
        let r = publish_ns(
            &app,
            "telemetry",
            &key,
            CE_BATCH,
            json!([ok, without(field)]).to_string(),
        )
        .await;
        r.expect_error(400, "BadRequest");
        assert!(
            r.message().contains("index 1") && r.message().contains(field),
            "{field}: {}",
            r.message()
        );
    }
    for (what, bad) in [
        ("specversion 0.3", with("specversion", json!("0.3"))),
        ("empty id", with("id", json!(""))),
        ("empty source", with("source", json!(""))),
        ("bad time", with("time", json!("yesterday"))),
        ("data and data_base64", with("data_base64", json!("AAEC"))),
        ("upper-case extension", with("myExt", json!("x"))),
        ("object extension", with("ext", json!({"a": 1}))),
    ] {
        let r = publish_ns(&app, "telemetry", &key, CE_JSON, {
            let mut b = bad.clone();
            if what == "data and data_base64" {
                b["data"] = json!({"k": 1});
            }
            b.to_string()
        })
        .await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
    }
    for (ct, body) in [
        (CE_JSON, "{not json".to_owned()),
        (CE_BATCH, "[1]".to_owned()),
        (CE_BATCH, "\"text\"".to_owned()),
        (CE_JSON, String::new()),
    ] {
        let r = publish_ns(&app, "telemetry", &key, ct, body.clone()).await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.text);
    }
    // An Event Grid topic refuses CloudEvents content types.
    let eg_key = eg_topic(&app, "orders").await;
    let r = publish_ns(&app, "orders", &eg_key, CE_JSON, ok.to_string()).await;
    r.expect_error(400, "BadRequest");
    assert_eq!(r.inner(), Some("InputSchemaMismatch"), "{}", r.text);
    assert_eq!(published(&app, "telemetry").await, 0, "nothing was stored");
    assert_eq!(published(&app, "orders").await, 0);
}

#[tokio::test]
async fn cloudevents_binary_mode_is_accepted() {
    let app = spawn_app().await;
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let key = keys(&app, "telemetry").await[0].clone();
    queue_sub(&app, "telemetry", "pull", json!({})).await;
    let binary = |url: String, id: &str, ct: &str, body: Vec<u8>| {
        app.client
            .post(url)
            .header("aeg-sas-key", &key)
            .header(CONTENT_TYPE, ct)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/sensors/7")
            .header("ce-type", "com.example.reading")
            .body(body)
    };
    let r = call(
        &app,
        binary(
            publish_url(&app, "telemetry"),
            "bin-json",
            "application/json",
            br#"{"temp": 21.5, "unit": "C"}"#.to_vec(),
        )
        .header("ce-subject", "room%20101%20%c3%a9")
        .header("ce-time", "2024-01-01T00:00:00Z")
        .header("ce-myext", "\"quoted%20value\""),
    )
    .await;
    assert_ns_ok(&r);
    let r = call(
        &app,
        binary(
            publish_url(&app, "telemetry"),
            "bin-octets",
            "application/octet-stream",
            vec![0, 1, 2, 255],
        ),
    )
    .await;
    assert_ns_ok(&r);
    // Also on the classic endpoint of the CloudEvents topic.
    let r = call(
        &app,
        binary(
            events_url(&app, "telemetry"),
            "bin-text",
            "text/plain; charset=utf-8",
            b"hello".to_vec(),
        ),
    )
    .await;
    r.expect(200);

    // Malformed binary requests are 400.
    let r = call(
        &app,
        app.client
            .post(publish_url(&app, "telemetry"))
            .header("aeg-sas-key", &key)
            .header(CONTENT_TYPE, "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "no-source")
            .header("ce-type", "t")
            .body("{}"),
    )
    .await;
    r.expect_error(400, "BadRequest");
    assert!(r.message().contains("source"), "{}", r.message());
    for (header, value) in [
        ("ce-specversion", "0.3"),
        ("ce-subject", "%C0%A0"),
        ("ce-time", "not-a-time"),
        ("ce-id", ""),
        ("ce-bad_name", "x"),
    ] {
        let mut req = app
            .client
            .post(publish_url(&app, "telemetry"))
            .header("aeg-sas-key", &key)
            .header(CONTENT_TYPE, "application/json");
        for (h, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "bad"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ] {
            if h != header {
                req = req.header(h, v);
            }
        }
        let r = call(&app, req.header(header, value).body("{}")).await;
        assert_eq!(r.status, 400, "{header}: {value}: {}", r.text);
    }
    let r = call(
        &app,
        binary(
            publish_url(&app, "telemetry"),
            "bad-json",
            "application/json",
            b"{broken".to_vec(),
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);

    let got = receive(&app, "telemetry", "pull", &key, 10, 1).await;
    assert_eq!(ids(&got), ["bin-json", "bin-octets", "bin-text"]);
    assert_eq!(
        got[0]["event"],
        json!({
            "specversion": "1.0", "id": "bin-json", "source": "/sensors/7",
            "type": "com.example.reading", "datacontenttype": "application/json",
            "subject": "room 101 é", "time": "2024-01-01T00:00:00Z",
            "myext": "quoted value", "data": {"temp": 21.5, "unit": "C"}
        })
    );
    let e = &got[1]["event"];
    assert_eq!(e["datacontenttype"], "application/octet-stream");
    assert_eq!(e["data_base64"], "AAEC/w==");
    assert!(
        e.get("data").is_none(),
        "never both data and data_base64: {e}"
    );
    let e = &got[2]["event"];
    assert_eq!(
        STANDARD
            .decode(e["data_base64"].as_str().unwrap_or_default())
            .ok(),
        Some(b"hello".to_vec()),
        "{e}"
    );
    assert!(e.get("data").is_none(), "{e}");
}

#[tokio::test]
async fn custom_schema_events_are_mapped() {
    let app = spawn_app().await;
    let mapping = json!({
        "inputSchemaMappingType": "Json",
        "properties": {
            "id": {"sourceField": "myId"},
            "topic": {"sourceField": "myTopic"},
            "eventTime": {"sourceField": "myTime"},
            "eventType": {"sourceField": "myEventType", "defaultValue": "recordInserted"},
            "subject": {"sourceField": "mySubject", "defaultValue": "subjectDefault"},
            "dataVersion": {"sourceField": "myVersion", "defaultValue": "1.0"}
        }
    });
    create_topic(
        &app,
        json!({"name": "legacy", "inputSchema": "CustomEventSchema", "inputSchemaMapping": mapping}),
    )
    .await;
    let key = keys(&app, "legacy").await[0].clone();
    queue_sub(&app, "legacy", "pull", json!({})).await;
    let full = json!({
        "myId": "c-1", "myTime": "2020-08-13T18:11:29.4121391Z", "myEventType": "fooEventType",
        "mySubject": "orders/1", "myTopic": "ignored", "prop1": "my property", "prop2": 5
    });
    let spec_example = json!({"prop1": "my property", "prop2": 5, "myEventType": "fooEventType"});
    let bare = json!({"myId": "c-3", "other": true});
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    publish_ok(&app, "legacy", &key, &json!([full, spec_example, bare])).await;
    for (what, body) in [
        ("not json", "{oops".to_owned()),
        ("array of numbers", "[1, 2]".to_owned()),
        (
            "bad time",
            json!([{"myId": "x", "myTime": "yesterday"}]).to_string(),
        ),
        (
            "object event type",
            json!([{"myEventType": {"a": 1}}]).to_string(),
        ),
    ] {
        let r = publish_raw(&app, "legacy", &key, "application/json", body.into_bytes()).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
    }
    let r = publish_raw(&app, "legacy", &key, CE_BATCH, b"[{}]".to_vec()).await;
    r.expect_error(400, "BadRequest");
    assert_eq!(r.inner(), Some("InputSchemaMismatch"), "{}", r.text);
    let arm = topic_arm("legacy");
    let got = receive(&app, "legacy", "pull", &key, 10, 1).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        got[0]["event"],
        json!({
            "id": "c-1", "source": arm, "specversion": "1.0", "type": "fooEventType",
            "subject": "orders/1", "time": "2020-08-13T18:11:29.4121391Z", "data": full
        })
    );
    let e = &got[1]["event"];
    let generated = e["id"].as_str().unwrap_or_default();
    assert!(is_guid(generated), "generated id: {e}");
    assert_eq!(&generated[14..15], "4", "a UUID v4: {generated}");
    assert_eq!(e["type"], "fooEventType");
    assert_eq!(e["subject"], "subjectDefault");
    assert_eq!(e["source"], arm.as_str());
    assert_eq!(e["data"], spec_example, "data is the whole original object");
    let time = e["time"].as_str().expect("a generated time");
    let t = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
    let frac = time.split('.').nth(1).and_then(|f| f.strip_suffix('Z'));
    assert_eq!(frac.map(str::len), Some(7), "7 fractional digits: {time}");
    assert!(t >= before && t <= chrono::Utc::now() + chrono::Duration::seconds(5));
    let e = &got[2]["event"];
    assert_eq!(e["id"], "c-3");
    assert_eq!(e["type"], "recordInserted", "eventType default");
    assert_eq!(e["data"], bare);
    assert_ne!(got[1]["event"]["id"], got[0]["event"]["id"]);

    // Delivery schema: custom topics feed every schema.
    for schema in [
        "EventGridSchema",
        "CloudEventSchemaV1_0",
        "CustomInputSchema",
    ] {
        let s = queue_sub(
            &app,
            "legacy",
            &format!("as-{}", schema.to_lowercase().replace('_', "-")),
            json!({ "eventDeliverySchema": schema }),
        )
        .await;
        assert_eq!(s["eventDeliverySchema"], schema);
    }
}

#[tokio::test]
async fn every_credential_form_is_accepted() {
    let app = spawn_app().await;
    let [k1, k2] = {
        eg_topic(&app, "orders").await;
        keys(&app, "orders").await
    };
    queue_sub(&app, "orders", "pull", json!({})).await;
    let o = origin(&app);
    let classic = format!("{o}/topics/orders/api/events");
    let hour = chrono::Duration::hours(1);
    let java = generated_sas(&format!("{classic}?api-version=2018-01-01"), &k1, hour);
    let java2 = generated_sas(&classic, &k2, hour);
    let python = python_sdk_sas(&app, "orders", &k1, "2999-01-05 15:04:05+00:00");
    let python_frac = python_sdk_sas(&app, "orders", &k2, "2999-01-05 15:04:05.123456+00:00");
    let iso = hand_sas(&classic, "2999-01-05T15:04:05Z", &k2);
    let en_us = hand_sas(&classic, "6/5/2999 3:04:05 PM", &k1);
    let namespace = generated_sas(&format!("{o}/topics/orders:publish"), &k1, hour);
    // Java SDK: `M/d/yyyy h:m:s a`, no zero padding at all.
    let java_unpadded = hand_sas(
        &format!("{classic}?api-version=2018-01-01"),
        "1/5/2999 3:4:5 PM",
        &k2,
    );
    // Python without an offset means UTC.
    let naive = python_sdk_sas(&app, "orders", &k1, "2999-01-05 15:04:05");
    // Docs C# sample: the host-style endpoint; the host is not compared.
    let host_style = hand_sas(
        "https://orders.westus2-1.eventgrid.azure.net/api/events",
        "6/15/2999 6:20:15 PM",
        &k1,
    );
    let query_key: String = form_urlencode(&k1);

    let url = events_url(&app, "orders");
    let ns = publish_url(&app, "orders");
    let c = &app.client;
    let variants: Vec<(&str, RequestBuilder)> = vec![
        ("aeg-sas-key key1", c.post(&url).header("aeg-sas-key", &k1)),
        ("aeg-sas-key key2", c.post(&url).header("aeg-sas-key", &k2)),
        (
            "query aeg-sas-key",
            c.post(format!("{url}&aeg-sas-key={query_key}")),
        ),
        (
            "aeg-sas-token java",
            c.post(&url).header("aeg-sas-token", &java),
        ),
        (
            "aeg-sas-token key2",
            c.post(&url).header("aeg-sas-token", &java2),
        ),
        (
            "SharedAccessSignature java",
            c.post(&url)
                .header(AUTHORIZATION, format!("SharedAccessSignature {java}")),
        ),
        (
            "aeg-sas-token python",
            c.post(&url).header("aeg-sas-token", &python),
        ),
        (
            "SharedAccessSignature python",
            c.post(&url)
                .header(AUTHORIZATION, format!("SharedAccessSignature {python}")),
        ),
        (
            "python with microseconds",
            c.post(&url).header("aeg-sas-token", &python_frac),
        ),
        ("iso expiry", c.post(&url).header("aeg-sas-token", &iso)),
        (
            "java unpadded expiry",
            c.post(&url).header("aeg-sas-token", &java_unpadded),
        ),
        (
            "python naive expiry",
            c.post(&url).header("aeg-sas-token", &naive),
        ),
        (
            "host-style resource",
            c.post(&url).header("aeg-sas-token", &host_style),
        ),
        ("en-US expiry", c.post(&url).header("aeg-sas-token", &en_us)),
        (
            "SharedAccessKey",
            c.post(&url)
                .header(AUTHORIZATION, format!("SharedAccessKey {k2}")),
        ),
        (
            "namespace SharedAccessKey",
            c.post(&ns)
                .header(AUTHORIZATION, format!("SharedAccessKey {k1}")),
        ),
        (
            "namespace aeg-sas-key",
            c.post(&ns).header("aeg-sas-key", &k2),
        ),
        (
            "namespace token",
            c.post(&ns)
                .header(AUTHORIZATION, format!("SharedAccessSignature {namespace}")),
        ),
    ];
    let mut expected = BTreeSet::new();
    for (i, (what, req)) in variants.into_iter().enumerate() {
        let id = format!("auth-{i}");
        let r = call(&app, req.json(&json!([eg(&id, "t", "s", json!({}))]))).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        expected.insert(id);
    }

    // Pull operations accept the same credentials.
    let r = call(
        &app,
        app.client
            .post(sub_url(
                &app,
                "orders",
                "pull",
                "receive",
                "&maxEvents=5&maxWaitTime=0",
            ))
            .header(AUTHORIZATION, format!("SharedAccessSignature {namespace}")),
    )
    .await;
    let first = received_items(&r);
    assert_eq!(first.len(), 5);
    let r = call(
        &app,
        app.client
            .post(sub_url(&app, "orders", "pull", "acknowledge", ""))
            .header(AUTHORIZATION, format!("SharedAccessKey {k2}"))
            .json(&json!({ "lockTokens": tokens(&first) })),
    )
    .await;
    assert_eq!(r.expect(200)["succeededLockTokens"], json!(tokens(&first)));
    // The admin bearer token may use the data plane too.
    let r = call(
        &app,
        app.client
            .post(sub_url(
                &app,
                "orders",
                "pull",
                "receive",
                "&maxEvents=100&maxWaitTime=0",
            ))
            .bearer_auth(&app.token),
    )
    .await;
    let rest = received_items(&r);
    let mut all = id_set(&first);
    all.extend(id_set(&rest));
    assert_eq!(all, expected, "every accepted publish was stored once");
    assert_eq!(first.len() + rest.len(), expected.len());
}

fn form_urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn bad_expired_or_foreign_credentials_are_401_and_unknown_topics_404() {
    let app = spawn_app().await;
    let [k1, _] = {
        eg_topic(&app, "orders").await;
        keys(&app, "orders").await
    };
    let other_key = eg_topic(&app, "other").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let o = origin(&app);
    let classic = format!("{o}/topics/orders/api/events");
    let hour = chrono::Duration::hours(1);
    let expired = generated_sas(&classic, &k1, -chrono::Duration::minutes(5));
    let expired_py = python_sdk_sas(&app, "orders", &k1, "2001-01-05 15:04:05+00:00");
    let foreign_key = generated_sas(&classic, &other_key, hour);
    let wrong_resource = generated_sas(&format!("{o}/topics/other:publish"), &k1, hour);
    let good = generated_sas(&classic, &k1, hour);
    let tampered = {
        let at = good.rfind("&s=").expect("signature");
        let (signed, sig) = good.split_at(at);
        let sig = &sig[3..];
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{signed}&s={flipped}{}", &sig[1..])
    };
    let longer_expiry = good.replacen("&e=", "&e=1", 1);
    let wrong_key = STANDARD.encode([7u8; 32]);

    let url = events_url(&app, "orders");
    let c = &app.client;
    let cases: Vec<(&str, RequestBuilder)> = vec![
        ("no credential", c.post(&url)),
        ("wrong key", c.post(&url).header("aeg-sas-key", &wrong_key)),
        ("empty key", c.post(&url).header("aeg-sas-key", "")),
        (
            "other topic's key",
            c.post(&url).header("aeg-sas-key", &other_key),
        ),
        (
            "wrong query key",
            c.post(format!("{url}&aeg-sas-key={}", form_urlencode(&wrong_key))),
        ),
        (
            "expired token",
            c.post(&url).header("aeg-sas-token", &expired),
        ),
        (
            "expired token (Authorization)",
            c.post(&url)
                .header(AUTHORIZATION, format!("SharedAccessSignature {expired}")),
        ),
        (
            "expired python token",
            c.post(&url).header("aeg-sas-token", &expired_py),
        ),
        (
            "token of other key",
            c.post(&url).header("aeg-sas-token", &foreign_key),
        ),
        (
            "token for other resource",
            c.post(&url).header("aeg-sas-token", &wrong_resource),
        ),
        (
            "tampered signature",
            c.post(&url).header("aeg-sas-token", &tampered),
        ),
        (
            "tampered expiry",
            c.post(&url).header("aeg-sas-token", &longer_expiry),
        ),
        (
            "garbage token",
            c.post(&url).header("aeg-sas-token", "garbage"),
        ),
        ("empty token", c.post(&url).header("aeg-sas-token", "")),
        (
            "half token",
            c.post(&url).header("aeg-sas-token", "r=x&e=y&s=zz"),
        ),
        (
            "SharedAccessSignature garbage",
            c.post(&url)
                .header(AUTHORIZATION, "SharedAccessSignature nope"),
        ),
        (
            "SharedAccessKey wrong",
            c.post(&url)
                .header(AUTHORIZATION, format!("SharedAccessKey {wrong_key}")),
        ),
        (
            "not the admin token",
            c.post(&url).bearer_auth("hrd_not-the-admin-token-00000000"),
        ),
        (
            "namespace wrong key",
            c.post(publish_url(&app, "orders"))
                .header(AUTHORIZATION, format!("SharedAccessKey {wrong_key}")),
        ),
    ];
    for (what, req) in cases {
        let r = call(&app, req.json(&json!([eg("nope", "t", "s", json!({}))]))).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.code(), "Unauthorized", "{what}");
    }
    // Authentication comes before the body is looked at.
    let r = call(
        &app,
        app.client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body("{broken"),
    )
    .await;
    r.expect_error(401, "Unauthorized");
    // Pull needs a credential too.
    for req in [
        c.post(sub_url(&app, "orders", "pull", "receive", "&maxWaitTime=0")),
        c.post(sub_url(&app, "orders", "pull", "receive", "&maxWaitTime=0"))
            .header("aeg-sas-key", &other_key),
        c.post(sub_url(&app, "orders", "pull", "acknowledge", ""))
            .header("aeg-sas-token", &expired)
            .json(&json!({"lockTokens": ["x"]})),
    ] {
        call(&app, req).await.expect_error(401, "Unauthorized");
    }
    // An unknown topic is 404, whatever the credential.
    for req in [
        c.post(events_url(&app, "missing"))
            .header("aeg-sas-key", &k1),
        c.post(events_url(&app, "missing")),
        c.post(publish_url(&app, "missing"))
            .header("aeg-sas-key", &k1),
        c.post(sub_url(
            &app,
            "missing",
            "pull",
            "receive",
            "&maxWaitTime=0",
        ))
        .header("aeg-sas-key", &k1),
    ] {
        let r = call(&app, req.json(&json!([eg("nope", "t", "s", json!({}))]))).await;
        r.expect_error(404, "NotFound");
    }
    assert_eq!(published(&app, "orders").await, 0, "nothing got in");
}

#[tokio::test]
async fn invalid_event_grid_publishes_are_400_and_store_nothing() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    let ok = eg("ok", "t", "s", json!({"k": 1}));
    for field in ["id", "subject", "eventType", "eventTime"] {
        let mut bad = ok.clone();
        bad.as_object_mut().expect("object").remove(field);
        let r = publish(&app, "orders", &key, &json!([ok, ok, bad])).await;
        r.expect_error(400, "BadRequest");
        assert!(
            r.message().contains("index 2") && r.message().contains(field),
            "{field}: {}",
            r.message()
        );
        assert_eq!(r.inner(), Some("MissingRequiredProperty"), "{}", r.text);
    }
    let with = |field: &str, v: Value| {
        let mut e = ok.clone();
        e[field] = v;
        e
    };
    let r = publish(
        &app,
        "orders",
        &key,
        &json!([ok, with("topic", json!(topic_arm("other")))]),
    )
    .await;
    r.expect_error(400, "BadRequest");
    assert_eq!(r.inner(), Some("TopicMismatch"), "{}", r.text);
    assert!(r.message().contains("index 1"), "{}", r.message());
    for (what, bad) in [
        ("metadataVersion 2", with("metadataVersion", json!("2"))),
        ("metadataVersion number", with("metadataVersion", json!(1))),
        (
            "eventTime not a time",
            with("eventTime", json!("yesterday")),
        ),
        ("empty id", with("id", json!(""))),
        ("numeric id", with("id", json!(5))),
        ("empty eventType", with("eventType", json!(""))),
        ("topic not a string", with("topic", json!(5))),
    ] {
        let r = publish(&app, "orders", &key, &json!([bad])).await;
        r.expect_error(400, "BadRequest");
        if what.starts_with("metadataVersion") {
            assert!(r.message().contains("metadataVersion"), "{}", r.message());
        }
    }
    // The stamped metadataVersion and topic are fine to send.
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([with("metadataVersion", json!("1"))]),
    )
    .await;
    for (what, body) in [
        ("malformed JSON", b"[{\"id\": ".to_vec()),
        ("object, not array", ok.to_string().into_bytes()),
        ("array of numbers", b"[1]".to_vec()),
        ("array of arrays", b"[[]]".to_vec()),
        ("null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("not UTF-8", vec![b'[', 0xff, 0xfe, b']']),
        ("trailing garbage", b"[] []".to_vec()),
    ] {
        let r = publish_raw(&app, "orders", &key, "application/json", body).await;
        r.expect_error(400, "BadRequest");
        assert!(!r.text.is_empty(), "{what}");
    }
    assert_eq!(
        published(&app, "orders").await,
        1,
        "a rejected batch stores none of its events"
    );
}

#[tokio::test]
async fn publishes_over_one_mib_are_413_with_an_error_body() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    // Exactly 1 MiB is allowed.
    let r = publish_raw(
        &app,
        "orders",
        &key,
        "application/json",
        body_of_len(MIB, 'x'),
    )
    .await;
    r.expect(200);
    // One byte more is not.
    let r = publish_raw(
        &app,
        "orders",
        &key,
        "application/json",
        body_of_len(MIB + 1, 'x'),
    )
    .await;
    r.expect_error(413, "PayloadTooLarge");
    // Bytes count, not characters: fewer than 1 Mi characters of 'é'.
    let utf8 = body_of_len(MIB + 2, 'é');
    assert!(
        String::from_utf8(utf8.clone())
            .expect("utf8")
            .chars()
            .count()
            < MIB
    );
    let r = publish_raw(&app, "orders", &key, "application/json", utf8).await;
    assert_eq!(r.status, 413, "{}", r.text);
    // Far over the limit.
    let r = publish_raw(
        &app,
        "orders",
        &key,
        "application/json",
        body_of_len(2 * MIB, 'x'),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text);
    // Namespace endpoint, structured and binary CloudEvents.
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let ce_key = keys(&app, "telemetry").await[0].clone();
    let big = json!({"specversion": "1.0", "id": "big", "source": "/s", "type": "t",
                     "data": "x".repeat(MIB)});
    let r = publish_ns(&app, "telemetry", &ce_key, CE_JSON, big.to_string()).await;
    assert_eq!(r.status, 413, "{}", r.text);
    let r = call(
        &app,
        app.client
            .post(publish_url(&app, "telemetry"))
            .header("aeg-sas-key", &ce_key)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("ce-specversion", "1.0")
            .header("ce-id", "bin")
            .header("ce-source", "/s")
            .header("ce-type", "t")
            .body(vec![0u8; MIB + 1]),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text);
    // The server is fine afterwards, and only the 1 MiB event got in.
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("after", "t", "s", json!({}))]),
    )
    .await;
    let got = drain(&app, "orders", "pull", &key).await;
    assert_eq!(ids(&got), ["big", "after"]);
    assert_eq!(published(&app, "telemetry").await, 0);
}

#[tokio::test]
async fn namespace_errors_carry_x_ms_error_code() {
    let app = spawn_app().await;
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let key = keys(&app, "telemetry").await[0].clone();
    let r = publish_ns(&app, "telemetry", "d3Jvbmc=", CE_JSON, "{}".into()).await;
    assert_eq!(r.status, 401);
    let r2 = publish_ns(&app, "telemetry", &key, CE_JSON, "{}".into()).await;
    assert_eq!(r2.status, 400);
    let r3 = call(
        &app,
        app.client
            .post(sub_url(
                &app,
                "telemetry",
                "nope",
                "receive",
                "&maxWaitTime=0",
            ))
            .header("aeg-sas-key", &key),
    )
    .await;
    assert_eq!(r3.status, 404);
    for resp in [&r, &r2, &r3] {
        let h = resp
            .headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok());
        assert_eq!(h, Some(resp.code()), "{:?}", resp.headers);
    }
}

#[tokio::test]
async fn odd_event_requests_never_cause_5xx() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    put_sub(
        &app,
        "orders",
        "hook",
        json!({"destination": {"endpointType": "WebHook",
               "properties": {"endpointUrl": "https://127.0.0.1:9/hook"}}}),
    )
    .await
    .expect(201);
    let deep = "[".repeat(10_000);
    let o = origin(&app);
    let too_many: Vec<String> = (0..1001).map(|i| format!("t{i}")).collect();
    let cases: Vec<(Method, String, Option<String>)> = vec![
        (Method::POST, format!("{o}/topics/orders:frobnicate"), Some("[]".into())),
        (Method::POST, format!("{o}/topics/orders"), Some("[]".into())),
        (Method::POST, format!("{o}/topics/:publish"), Some("[]".into())),
        (Method::POST, format!("{o}/topics/orders/api/events"), Some(deep.clone())),
        (Method::POST, format!("{o}/topics/orders/api/events"), Some("[{\"data\":".to_owned() + &deep)),
        (Method::POST, format!("{o}/topics/orders/api/events"), Some("\u{0}".into())),
        (Method::POST, format!("{o}/topics/orders/api/events"), Some("[{\"id\":\"\\ud800\",\"eventType\":\"t\",\"subject\":\"s\",\"eventTime\":\"2024-01-01T00:00:00Z\"}]".into())),
        (Method::GET, format!("{o}/topics/orders/api/events"), None),
        (Method::PUT, format!("{o}/topics/orders:publish"), Some("[]".into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:frob"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/:receive"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/nope:receive"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/hook:receive?maxWaitTime=0"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/hook:acknowledge"), Some(r#"{"lockTokens":["x"]}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxEvents=0"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxEvents=101"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxEvents=-1"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxEvents=abc"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxEvents=1e309"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxWaitTime=121"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:receive?maxWaitTime=-5"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:acknowledge"), None),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:acknowledge"), Some("{}".into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:acknowledge"), Some("[]".into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:acknowledge"), Some(r#"{"lockTokens":[]}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:acknowledge"), Some(r#"{"lockTokens":"x"}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:acknowledge"), Some(r#"{"lockTokens":[1]}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:reject"), Some(json!({"lockTokens": too_many}).to_string())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:release?releaseDelayInSeconds=5"), Some(r#"{"lockTokens":["x"]}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:release?releaseDelayInSeconds=abc"), Some(r#"{"lockTokens":["x"]}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:release?releaseDelayInSeconds=-10"), Some(r#"{"lockTokens":["x"]}"#.into())),
        (Method::POST, format!("{o}/topics/orders/eventsubscriptions/pull:release?releaseDelayInSeconds=7200"), Some(r#"{"lockTokens":["x"]}"#.into())),
        (Method::GET, format!("{o}/topics/orders/eventsubscriptions/pull:receive"), None),
    ];
    for (method, url, body) in cases {
        let mut req = app
            .client
            .request(method.clone(), &url)
            .header("aeg-sas-key", &key)
            .header(CONTENT_TYPE, "application/json");
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = call(&app, req).await;
        let shown = &url[..url.len().min(120)];
        assert!(r.status >= 400, "{method} {shown} should fail: {}", r.text);
    }
    // Settling unknown or malformed tokens is a per-token failure, not an error.
    let long = "A".repeat(10_000);
    let odd: Vec<String> = vec![
        String::new(),
        "%%%".into(),
        long,
        STANDARD.encode("abc"),
        STANDARD.encode("99999999999999999999999.x"),
        STANDARD.encode("-1.0000000000000000"),
        STANDARD.encode("1.0000000000000000"),
    ];
    for op in ["acknowledge", "release", "reject", "renewLock"] {
        let r = settle(&app, "orders", "pull", &key, op, "", &odd).await;
        let b = r.expect(200);
        assert_eq!(b["succeededLockTokens"], json!([]), "{op}: {}", r.text);
        let failed = b["failedLockTokens"].as_array().expect("failed");
        assert_eq!(failed.len(), odd.len(), "{op}: {}", r.text);
        for (f, t) in failed.iter().zip(&odd) {
            assert_eq!(f["lockToken"], t.as_str());
            assert_eq!(f["error"]["code"], "TokenLost", "{f}");
            assert!(f["error"]["message"].is_string(), "{f}");
        }
    }
    // Odd management requests.
    let sub = "/orders/eventSubscriptions/odd";
    for (method, path, body) in [
        (Method::PUT, sub, Some(json!([]))),
        (Method::PUT, sub, Some(json!(null))),
        (Method::PUT, sub, Some(json!({"properties": 5}))),
        (
            Method::PATCH,
            "/orders/eventSubscriptions/pull",
            Some(json!([])),
        ),
        (
            Method::PATCH,
            "/orders/eventSubscriptions/pull",
            Some(json!({"destination": 5})),
        ),
        (
            Method::GET,
            "/orders/eventSubscriptions/pull/deadLetters?after=abc",
            None,
        ),
        (Method::POST, "/orders/keys", None),
        (Method::DELETE, "/orders/keys", None),
    ] {
        let r = mgmt(&app, method.clone(), path, body).await;
        assert!(r.status >= 400, "{method} {path}: {}", r.text);
    }
    let r = mgmt(
        &app,
        Method::GET,
        "/orders/eventSubscriptions/pull/deadLetters?limit=0",
        None,
    )
    .await;
    assert_eq!(r.expect(200)["value"], json!([]));
    // Nothing was stored and the server still works.
    assert_eq!(published(&app, "orders").await, 0);
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("fine", "t", "s", json!({}))]),
    )
    .await;
    assert_eq!(ids(&drain(&app, "orders", "pull", &key).await), ["fine"]);
}

// ---------------------------------------------------------------------------
// Event subscriptions

#[tokio::test]
async fn subscriptions_are_created_updated_patched_listed_and_deleted() {
    let app = spawn_app().await;
    eg_topic(&app, "orders").await;
    let arm = topic_arm("orders");
    let r = put_sub(
        &app,
        "orders",
        "pull-1",
        json!({
            "deliveryConfiguration": {"deliveryMode": "Queue", "queue": {
                "receiveLockDurationInSeconds": 45, "maxDeliveryCount": 3, "eventTimeToLive": "PT10M"}},
            "labels": ["a"]
        }),
    )
    .await;
    let s = r.expect(201).clone();
    assert_eq!(s["name"], "pull-1");
    assert_eq!(
        s["id"],
        format!("{arm}/providers/Microsoft.EventGrid/eventSubscriptions/pull-1")
    );
    assert_eq!(s["topic"], arm.as_str());
    assert_eq!(s["provisioningState"], "Succeeded");
    assert_eq!(s["eventDeliverySchema"], "EventGridSchema");
    assert_eq!(
        s["deliveryConfiguration"],
        json!({"deliveryMode": "Queue", "queue": {
            "receiveLockDurationInSeconds": 45, "maxDeliveryCount": 3, "eventTimeToLive": "PT10M"}})
    );
    assert_eq!(s["labels"], json!(["a"]));
    assert!(s.get("destination").is_none(), "{s}");
    let created_at = s["createdAt"].clone();
    assert!(created_at.is_string());

    // PUT again: an update, 200.
    let r = put_sub(
        &app,
        "orders",
        "pull-1",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue", "queue": {"maxDeliveryCount": 5}}}),
    )
    .await;
    let s = r.expect(200).clone();
    assert_eq!(s["deliveryConfiguration"]["queue"]["maxDeliveryCount"], 5);
    assert_eq!(
        s["deliveryConfiguration"]["queue"]["receiveLockDurationInSeconds"], 60,
        "PUT replaces: defaults again"
    );
    assert_eq!(s["labels"], json!([]));
    assert_eq!(s["createdAt"], created_at);
    assert_eq!(
        s["id"],
        format!("{arm}/providers/Microsoft.EventGrid/eventSubscriptions/pull-1")
    );

    // GET shows the same properties plus metrics.
    let g = get_sub(&app, "orders", "pull-1").await;
    for k in [
        "name",
        "id",
        "topic",
        "deliveryConfiguration",
        "filter",
        "eventDeliverySchema",
    ] {
        assert_eq!(g[k], s[k], "{k}");
    }
    assert_eq!(metric(&g["metrics"], "backlog"), 0);
    assert!(g["metrics"]["backlog"].is_i64(), "{g}");

    // ARM-style body.
    let r = put_sub(
        &app,
        "orders",
        "pull-2",
        json!({"properties": {
            "deliveryConfiguration": {"deliveryMode": "Queue"},
            "filter": {"includedEventTypes": ["a.b"]}
        }}),
    )
    .await;
    let s2 = r.expect(201).clone();
    assert_eq!(s2["filter"]["includedEventTypes"], json!(["a.b"]));
    assert_eq!(s2["deliveryConfiguration"]["queue"]["maxDeliveryCount"], 10);

    // PATCH merges top-level properties.
    let r = mgmt(
        &app,
        Method::PATCH,
        "/orders/eventSubscriptions/pull-1",
        Some(json!({"filter": {"subjectBeginsWith": "orders/"}})),
    )
    .await;
    let p = r.expect(200).clone();
    assert_eq!(p["filter"]["subjectBeginsWith"], "orders/");
    assert_eq!(
        p["deliveryConfiguration"]["queue"]["maxDeliveryCount"], 5,
        "kept"
    );
    let r = mgmt(
        &app,
        Method::PATCH,
        "/orders/eventSubscriptions/pull-1",
        Some(json!({"properties": {"labels": ["b", "c"]}})),
    )
    .await;
    let p = r.expect(200).clone();
    assert_eq!(p["labels"], json!(["b", "c"]));
    assert_eq!(p["filter"]["subjectBeginsWith"], "orders/", "kept");
    // An invalid PATCH changes nothing.
    let r = mgmt(
        &app,
        Method::PATCH,
        "/orders/eventSubscriptions/pull-1",
        Some(json!({"deliveryConfiguration": {"deliveryMode": "Queue", "queue": {"maxDeliveryCount": 11}}})),
    )
    .await;
    r.expect_error(400, "BadRequest");
    let g = get_sub(&app, "orders", "pull-1").await;
    assert_eq!(g["deliveryConfiguration"]["queue"]["maxDeliveryCount"], 5);
    assert_eq!(g["labels"], json!(["b", "c"]));
    mgmt(
        &app,
        Method::PATCH,
        "/orders/eventSubscriptions/nope",
        Some(json!({"labels": []})),
    )
    .await
    .expect_error(404, "NotFound");

    // List.
    let r = mgmt(&app, Method::GET, "/orders/eventSubscriptions", None).await;
    let list = r.expect(200)["value"].as_array().expect("value").clone();
    let names: Vec<&str> = list.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["pull-1", "pull-2"]);
    assert_eq!(list[0]["labels"], json!(["b", "c"]));

    // A CloudEvents topic delivers CloudEvents by default.
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let s = queue_sub(&app, "telemetry", "pull", json!({})).await;
    assert_eq!(s["eventDeliverySchema"], "CloudEventSchemaV1_0");
    let s = queue_sub(
        &app,
        "orders",
        "as-ce",
        json!({"eventDeliverySchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    assert_eq!(s["eventDeliverySchema"], "CloudEventSchemaV1_0");

    // Delete.
    let r = mgmt(
        &app,
        Method::DELETE,
        "/orders/eventSubscriptions/pull-1",
        None,
    )
    .await;
    r.expect(204);
    mgmt(&app, Method::GET, "/orders/eventSubscriptions/pull-1", None)
        .await
        .expect_error(404, "NotFound");
    mgmt(
        &app,
        Method::DELETE,
        "/orders/eventSubscriptions/pull-1",
        None,
    )
    .await
    .expect_error(404, "NotFound");
    let key = keys(&app, "orders").await[0].clone();
    let r = call(
        &app,
        app.client
            .post(sub_url(
                &app,
                "orders",
                "pull-1",
                "receive",
                "&maxWaitTime=0",
            ))
            .header("aeg-sas-key", &key),
    )
    .await;
    r.expect_error(404, "NotFound");
    let r = mgmt(&app, Method::GET, "/orders/eventSubscriptions", None).await;
    let names: Vec<String> = r.expect(200)["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["as-ce", "pull-2"]);
    // Recreating the name is a create again.
    put_sub(
        &app,
        "orders",
        "pull-1",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue"}}),
    )
    .await
    .expect(201);

    // Unknown topic.
    put_sub(
        &app,
        "missing",
        "s1x",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue"}}),
    )
    .await
    .expect_error(404, "NotFound");
    for path in [
        "/missing/eventSubscriptions",
        "/missing/eventSubscriptions/s1x",
        "/missing/eventSubscriptions/s1x/deadLetters",
    ] {
        mgmt(&app, Method::GET, path, None)
            .await
            .expect_error(404, "NotFound");
    }
    mgmt(
        &app,
        Method::GET,
        "/orders/eventSubscriptions/nope/deadLetters",
        None,
    )
    .await
    .expect_error(404, "NotFound");
}

#[tokio::test]
async fn invalid_subscriptions_are_400_and_not_created() {
    let app = spawn_app().await;
    eg_topic(&app, "orders").await;
    create_topic(
        &app,
        json!({"name": "telemetry", "inputSchema": "CloudEventSchemaV1_0"}),
    )
    .await;
    let queue = json!({"deliveryMode": "Queue"});
    let hook = json!({"endpointType": "WebHook", "properties": {"endpointUrl": "https://example.com/hook"}});
    let with_filters = |filters: Vec<Value>| json!({"deliveryConfiguration": queue, "filter": {"advancedFilters": filters}});
    let not_null = |i: usize| json!({"operatorType": "IsNotNull", "key": format!("data.k{i}")});
    let string_in = |n: usize, len: usize| {
        json!({"operatorType": "StringIn", "key": "data.s",
               "values": (0..n).map(|i| format!("{i:0>len$}")).collect::<Vec<_>>()})
    };
    let with_queue =
        |q: Value| json!({"deliveryConfiguration": {"deliveryMode": "Queue", "queue": q}});

    let bad: Vec<(&str, &str, &str, Value)> = vec![
        (
            "26 advanced filters",
            "orders",
            "f26",
            with_filters((0..26).map(not_null).collect()),
        ),
        (
            "26 values in one filter",
            "orders",
            "v26",
            with_filters(vec![string_in(26, 3)]),
        ),
        (
            "26 values across filters",
            "orders",
            "v13x2",
            with_filters(vec![string_in(13, 3), string_in(13, 3)]),
        ),
        (
            "513-char value",
            "orders",
            "long",
            with_filters(vec![string_in(1, 513)]),
        ),
        (
            "513 two-byte characters",
            "orders",
            "long2",
            with_filters(vec![
                json!({"operatorType": "StringContains", "key": "data.s",
                                     "values": ["é".repeat(513)]}),
            ]),
        ),
        (
            "range lo > hi",
            "orders",
            "range",
            with_filters(vec![
                json!({"operatorType": "NumberInRange", "key": "data.n", "values": [[5, 1]]}),
            ]),
        ),
        (
            "unknown operator",
            "orders",
            "op",
            with_filters(vec![
                json!({"operatorType": "StringLike", "key": "data.n", "values": ["a"]}),
            ]),
        ),
        (
            "maxDeliveryCount 11",
            "orders",
            "mdc11",
            with_queue(json!({"maxDeliveryCount": 11})),
        ),
        (
            "maxDeliveryCount 0",
            "orders",
            "mdc0",
            with_queue(json!({"maxDeliveryCount": 0})),
        ),
        (
            "eventTimeToLive 1D",
            "orders",
            "ttl1",
            with_queue(json!({"eventTimeToLive": "1D"})),
        ),
        (
            "eventTimeToLive P",
            "orders",
            "ttl2",
            with_queue(json!({"eventTimeToLive": "P"})),
        ),
        (
            "eventTimeToLive words",
            "orders",
            "ttl3",
            with_queue(json!({"eventTimeToLive": "one day"})),
        ),
        (
            "eventTimeToLive number",
            "orders",
            "ttl4",
            with_queue(json!({"eventTimeToLive": 86400})),
        ),
        (
            "lock 301 s",
            "orders",
            "lock1",
            with_queue(json!({"receiveLockDurationInSeconds": 301})),
        ),
        (
            "lock 29 s",
            "orders",
            "lock2",
            with_queue(json!({"receiveLockDurationInSeconds": 29})),
        ),
        (
            "deliveryMode Push",
            "orders",
            "push",
            json!({"deliveryConfiguration": {"deliveryMode": "Push"}}),
        ),
        (
            "destination and deliveryConfiguration",
            "orders",
            "both",
            json!({"destination": hook, "deliveryConfiguration": queue}),
        ),
        ("neither", "orders", "neither", json!({})),
        (
            "only a filter",
            "orders",
            "filter-only",
            json!({"filter": {"subjectBeginsWith": "a"}}),
        ),
        (
            "CloudEvents topic, EventGridSchema delivery",
            "telemetry",
            "eg-out",
            json!({"deliveryConfiguration": queue, "eventDeliverySchema": "EventGridSchema"}),
        ),
        (
            "CloudEvents topic, custom delivery",
            "telemetry",
            "custom-out",
            json!({"deliveryConfiguration": queue, "eventDeliverySchema": "CustomInputSchema"}),
        ),
        (
            "EventGrid topic, custom delivery",
            "orders",
            "custom-out",
            json!({"deliveryConfiguration": queue, "eventDeliverySchema": "CustomInputSchema"}),
        ),
        (
            "unknown delivery schema",
            "orders",
            "schema",
            json!({"deliveryConfiguration": queue, "eventDeliverySchema": "Avro"}),
        ),
        (
            "name too short",
            "orders",
            "ab",
            json!({"deliveryConfiguration": queue}),
        ),
        (
            "name with underscore",
            "orders",
            "a_b",
            json!({"deliveryConfiguration": queue}),
        ),
        (
            "name with dot",
            "orders",
            "a.bc",
            json!({"deliveryConfiguration": queue}),
        ),
        (
            "webhook ftp URL",
            "orders",
            "ftp",
            json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "ftp://example.com/x"}}}),
        ),
        (
            "maxEventsPerBatch 5001",
            "orders",
            "batch",
            json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "https://example.com/x", "maxEventsPerBatch": 5001}}}),
        ),
        (
            "maxDeliveryAttempts 31",
            "orders",
            "retry",
            json!({"deliveryConfiguration": queue, "retryPolicy": {"maxDeliveryAttempts": 31}}),
        ),
        (
            "unknown property",
            "orders",
            "unknown",
            json!({"deliveryConfiguration": queue, "colour": "red"}),
        ),
        (
            "bad expiration",
            "orders",
            "expiry",
            json!({"deliveryConfiguration": queue, "expirationTimeUtc": "soon"}),
        ),
    ];
    let long_name = "a".repeat(65);
    let mut cases = bad;
    cases.push((
        "name of 65 characters",
        "orders",
        long_name.as_str(),
        json!({"deliveryConfiguration": queue}),
    ));
    for (what, topic, name, body) in cases {
        let r = put_sub(&app, topic, name, body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
    }

    // The limits themselves are accepted.
    let longest = "b".repeat(64);
    let good: Vec<(&str, Value)> = vec![
        ("f25", with_filters((0..25).map(not_null).collect())),
        ("v25", with_filters(vec![string_in(25, 3)])),
        ("len512", with_filters(vec![string_in(1, 512)])),
        (
            "utf8-512",
            with_filters(vec![
                json!({"operatorType": "StringContains", "key": "data.s",
                                     "values": ["é".repeat(512)]}),
            ]),
        ),
        (
            "mdc10",
            with_queue(
                json!({"maxDeliveryCount": 10, "eventTimeToLive": "PT10M", "receiveLockDurationInSeconds": 300}),
            ),
        ),
        (
            "mdc1",
            with_queue(
                json!({"maxDeliveryCount": 1, "eventTimeToLive": "P7D", "receiveLockDurationInSeconds": 30}),
            ),
        ),
        (
            "ce-out",
            json!({"deliveryConfiguration": queue, "eventDeliverySchema": "CloudEventSchemaV1_0"}),
        ),
        (longest.as_str(), json!({"deliveryConfiguration": queue})),
        ("abc", json!({"deliveryConfiguration": queue})),
    ];
    let mut expected: Vec<String> = Vec::new();
    for (name, body) in good {
        put_sub(&app, "orders", name, body).await.expect(201);
        expected.push(name.to_owned());
    }
    expected.sort();
    let r = mgmt(&app, Method::GET, "/orders/eventSubscriptions", None).await;
    let names: Vec<String> = r.expect(200)["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, expected, "no rejected subscription was created");
    let r = mgmt(&app, Method::GET, "/telemetry/eventSubscriptions", None).await;
    assert_eq!(r.expect(200)["value"], json!([]));
}

#[tokio::test]
async fn a_topic_holds_at_most_500_subscriptions() {
    let app = spawn_app().await;
    eg_topic(&app, "orders").await;
    let mut set = tokio::task::JoinSet::new();
    let app = std::sync::Arc::new(app);
    for worker in 0..8 {
        let app = app.clone();
        set.spawn(async move {
            for i in (worker..500).step_by(8) {
                put_sub(
                    &app,
                    "orders",
                    &format!("sub-{i:03}"),
                    json!({"deliveryConfiguration": {"deliveryMode": "Queue"}}),
                )
                .await
                .expect(201);
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("worker finished");
    }
    let q = json!({"deliveryConfiguration": {"deliveryMode": "Queue"}});
    let r = put_sub(&app, "orders", "sub-500", q.clone()).await;
    r.expect_error(400, "BadRequest");
    // Updating an existing one is still fine, and deleting makes room.
    put_sub(&app, "orders", "sub-000", q.clone())
        .await
        .expect(200);
    mgmt(
        &app,
        Method::DELETE,
        "/orders/eventSubscriptions/sub-001",
        None,
    )
    .await
    .expect(204);
    put_sub(&app, "orders", "sub-500", q).await.expect(201);
    let r = mgmt(&app, Method::GET, "/orders/eventSubscriptions", None).await;
    assert_eq!(r.expect(200)["value"].as_array().expect("value").len(), 500);
}

// ---------------------------------------------------------------------------
// Pull delivery

#[tokio::test]
async fn receive_locks_events_and_acknowledge_removes_them() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    // Nothing yet: an empty list, not an error.
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([
            eg("e1", "t", "s/1", json!({"i": 1})),
            eg("e2", "t", "s/2", json!({"i": 2})),
            eg("e3", "t", "s/3", json!({"i": 3}))
        ]),
    )
    .await;
    let m = sub_metrics(&app, "orders", "pull").await;
    assert_eq!(metric(&m, "backlog"), 3, "{m}");

    // Without maxEvents, one event.
    let r = call(
        &app,
        app.client
            .post(sub_url(&app, "orders", "pull", "receive", "&maxWaitTime=0"))
            .header("aeg-sas-key", &key),
    )
    .await;
    let first = received_items(&r);
    assert_eq!(ids(&first), ["e1"]);
    assert_eq!(first[0]["brokerProperties"]["deliveryCount"], 1);
    let second = receive(&app, "orders", "pull", &key, 2, 0).await;
    assert_eq!(ids(&second), ["e2", "e3"]);
    // Locked events are not handed out again.
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
    let mut all_tokens = tokens(&first);
    all_tokens.extend(tokens(&second));
    let unique: BTreeSet<&String> = all_tokens.iter().collect();
    assert_eq!(unique.len(), 3, "lock tokens are unique");

    // Tokens belong to their subscription: another one cannot settle them.
    queue_sub(&app, "orders", "other", json!({})).await;
    for op in ["acknowledge", "reject", "release", "renewLock"] {
        let r = settle(&app, "orders", "other", &key, op, "", &all_tokens).await;
        let b = r.expect(200);
        assert_eq!(b["succeededLockTokens"], json!([]), "{op}: {}", r.text);
        assert_eq!(
            b["failedLockTokens"].as_array().map(Vec::len),
            Some(3),
            "{op}"
        );
    }
    settle_ok(&app, "orders", "pull", &key, "acknowledge", &all_tokens).await;
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
    // A second acknowledge of the same tokens fails per token.
    let r = settle(&app, "orders", "pull", &key, "acknowledge", "", &all_tokens).await;
    let b = r.expect(200);
    assert_eq!(b["succeededLockTokens"], json!([]));
    assert_eq!(b["failedLockTokens"].as_array().expect("failed").len(), 3);

    let m = sub_metrics(&app, "orders", "pull").await;
    assert_eq!(metric(&m, "delivered"), 3, "{m}");
    assert_eq!(metric(&m, "matched"), 3, "{m}");
    assert_eq!(metric(&m, "backlog"), 0, "{m}");
    assert_eq!(metric(&m, "deadLettered"), 0, "{m}");
}

#[tokio::test]
async fn a_waiting_receive_returns_as_soon_as_an_event_is_published() {
    let app = std::sync::Arc::new(spawn_app().await);
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let started = Instant::now();
    let waiting = {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move {
            let items = receive(&app, "orders", "pull", &key, 10, 10).await;
            (items, started.elapsed())
        })
    };
    // Give the receive time to start waiting, then publish from here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "receive returned before any event");
    // Taken before the publish: the waiting receive may see the committed
    // event before the publisher has read its 200.
    let published_at = started.elapsed();
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("late", "t", "s", json!({}))]),
    )
    .await;
    let (items, took) = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("receive finishes")
        .expect("receive task");
    assert_eq!(ids(&items), ["late"]);
    assert!(took >= published_at, "{took:?} vs {published_at:?}");
    assert!(
        took < Duration::from_secs(5),
        "long poll must return well before maxWaitTime (10 s); took {took:?}"
    );
    // With nothing to deliver, maxWaitTime=1 waits about a second.
    let t = Instant::now();
    assert!(receive(&app, "orders", "pull", &key, 1, 1).await.is_empty());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn release_makes_events_available_again_after_the_delay() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("r1", "t", "s", json!({})), eg("r2", "t", "s", json!({}))]),
    )
    .await;
    let got = receive(&app, "orders", "pull", &key, 2, 0).await;
    assert_eq!(ids(&got), ["r1", "r2"]);
    let (t1, t2) = (tokens(&got[..1]), tokens(&got[1..]));

    // Invalid delays are 400 and leave the lock alone.
    for bad in ["5", "1", "-10", "abc", "61"] {
        let r = settle(
            &app,
            "orders",
            "pull",
            &key,
            "release",
            &format!("&releaseDelayInSeconds={bad}"),
            &t1,
        )
        .await;
        r.expect_error(400, "BadRequest");
    }
    settle_ok(&app, "orders", "pull", &key, "release", &t1).await;
    let again = receive(&app, "orders", "pull", &key, 10, 0).await;
    assert_eq!(ids(&again), ["r1"]);
    assert_eq!(again[0]["brokerProperties"]["deliveryCount"], 2);
    assert_ne!(tokens(&again), t1, "a new lock token per receive");
    assert_eq!(again[0]["event"], got[0]["event"], "the same event");
    // The old token is spent.
    let r = settle(&app, "orders", "pull", &key, "acknowledge", "", &t1).await;
    assert_eq!(
        r.expect(200)["failedLockTokens"][0]["error"]["code"],
        "TokenLost"
    );
    settle_ok(&app, "orders", "pull", &key, "acknowledge", &tokens(&again)).await;

    // A delayed release: not available at once, back after about 10 s.
    let r = settle(
        &app,
        "orders",
        "pull",
        &key,
        "release",
        "&releaseDelayInSeconds=10",
        &t2,
    )
    .await;
    assert_eq!(r.expect(200)["succeededLockTokens"], json!(t2));
    let released = Instant::now();
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
    assert!(
        receive(&app, "orders", "pull", &key, 10, 1)
            .await
            .is_empty()
    );
    let back = receive(&app, "orders", "pull", &key, 10, 30).await;
    let after = released.elapsed();
    assert_eq!(ids(&back), ["r2"]);
    assert_eq!(back[0]["brokerProperties"]["deliveryCount"], 2);
    assert!(
        after >= Duration::from_secs(9) && after < Duration::from_secs(20),
        "released for 10 s, back after {after:?}"
    );
    settle_ok(&app, "orders", "pull", &key, "acknowledge", &tokens(&back)).await;
    let m = sub_metrics(&app, "orders", "pull").await;
    assert_eq!(metric(&m, "delivered"), 2, "{m}");
    assert_eq!(metric(&m, "backlog"), 0, "{m}");
}

#[tokio::test]
async fn reject_dead_letters_and_renew_lock_extends() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([
            eg("bad", "orders.created", "o/1", json!({"poison": true})),
            eg("good", "orders.created", "o/2", json!({}))
        ]),
    )
    .await;
    let got = receive(&app, "orders", "pull", &key, 2, 0).await;
    assert_eq!(ids(&got), ["bad", "good"]);
    let bad = tokens(&got[..1]);
    let good = tokens(&got[1..]);

    settle_ok(&app, "orders", "pull", &key, "reject", &bad).await;
    let r = mgmt(
        &app,
        Method::GET,
        "/orders/eventSubscriptions/pull/deadLetters",
        None,
    )
    .await;
    let dl = r.expect(200).clone();
    let items = dl["value"].as_array().expect("value");
    assert_eq!(items.len(), 1, "{dl}");
    let d = &items[0];
    assert_eq!(d["event"]["id"], "bad");
    assert_eq!(d["event"]["type"], "orders.created");
    assert_eq!(d["event"]["data"], json!({"poison": true}));
    let reason = d["deadLetterReason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "deadLetterReason: {d}");
    assert_eq!(d["deliveryAttempts"], 1, "{d}");
    assert!(d["publishTime"].is_string(), "{d}");

    // renewLock succeeds on a live token; the token stays usable.
    let r = settle(&app, "orders", "pull", &key, "renewLock", "", &good).await;
    assert_eq!(r.expect(200)["succeededLockTokens"], json!(good));
    // Mixed results in one request: 200 with both lists.
    let mut mixed = good.clone();
    mixed.extend(bad.clone());
    let r = settle(&app, "orders", "pull", &key, "acknowledge", "", &mixed).await;
    let b = r.expect(200);
    assert_eq!(b["succeededLockTokens"], json!(good));
    assert_eq!(
        b["failedLockTokens"],
        json!([{"lockToken": bad[0], "error": {"code": "TokenLost",
               "message": b["failedLockTokens"][0]["error"]["message"]}}])
    );
    assert!(b["failedLockTokens"][0]["error"]["message"].is_string());
    // Settled tokens are lost for every operation.
    for op in ["renewLock", "release", "reject", "acknowledge"] {
        let r = settle(&app, "orders", "pull", &key, op, "", &good).await;
        let b = r.expect(200);
        assert_eq!(b["succeededLockTokens"], json!([]), "{op}");
        assert_eq!(
            b["failedLockTokens"][0]["lockToken"],
            good[0].as_str(),
            "{op}"
        );
        assert_eq!(
            b["failedLockTokens"][0]["error"]["code"], "TokenLost",
            "{op}"
        );
    }
    // Neither event comes back.
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
    let m = sub_metrics(&app, "orders", "pull").await;
    assert_eq!(metric(&m, "deadLettered"), 1, "{m}");
    assert_eq!(metric(&m, "delivered"), 1, "{m}");
    assert_eq!(metric(&m, "backlog"), 0, "{m}");
}

#[tokio::test]
async fn events_past_max_delivery_count_are_dead_lettered() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(
        &app,
        "orders",
        "once",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue", "queue": {"maxDeliveryCount": 1}}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "twice",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue", "queue": {"maxDeliveryCount": 2}}}),
    )
    .await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("m1", "t", "s", json!({}))]),
    )
    .await;

    let got = receive(&app, "orders", "once", &key, 1, 0).await;
    assert_eq!(ids(&got), ["m1"]);
    settle_ok(&app, "orders", "once", &key, "release", &tokens(&got)).await;
    assert!(
        receive(&app, "orders", "once", &key, 10, 0)
            .await
            .is_empty(),
        "delivered once already: dead-lettered instead"
    );
    let r = mgmt(
        &app,
        Method::GET,
        "/orders/eventSubscriptions/once/deadLetters",
        None,
    )
    .await;
    let dl = r.expect(200).clone();
    assert_eq!(dl["value"].as_array().map(Vec::len), Some(1), "{dl}");
    assert_eq!(dl["value"][0]["event"]["id"], "m1");
    assert_eq!(
        dl["value"][0]["deadLetterReason"],
        "MaxDeliveryAttemptsExceeded"
    );
    assert_eq!(dl["value"][0]["deliveryAttempts"], 1);
    assert_eq!(
        metric(&sub_metrics(&app, "orders", "once").await, "deadLettered"),
        1
    );

    // With maxDeliveryCount 2, a second delivery happens first.
    for round in 1..=2 {
        let got = receive(&app, "orders", "twice", &key, 1, 0).await;
        assert_eq!(ids(&got), ["m1"], "round {round}");
        assert_eq!(got[0]["brokerProperties"]["deliveryCount"], round);
        settle_ok(&app, "orders", "twice", &key, "release", &tokens(&got)).await;
    }
    assert!(
        receive(&app, "orders", "twice", &key, 10, 0)
            .await
            .is_empty()
    );
    let r = mgmt(
        &app,
        Method::GET,
        "/orders/eventSubscriptions/twice/deadLetters",
        None,
    )
    .await;
    let dl = r.expect(200).clone();
    assert_eq!(
        dl["value"][0]["deadLetterReason"],
        "MaxDeliveryAttemptsExceeded"
    );
    assert_eq!(dl["value"][0]["deliveryAttempts"], 2);
}

#[tokio::test]
async fn a_subscription_sees_only_events_published_after_it_was_created() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    let other_key = eg_topic(&app, "other").await;
    queue_sub(&app, "orders", "early", json!({})).await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("before", "t", "s", json!({}))]),
    )
    .await;
    queue_sub(&app, "orders", "late", json!({})).await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("after", "t", "s", json!({}))]),
    )
    .await;
    // Events of another topic never show up.
    publish_ok(
        &app,
        "other",
        &other_key,
        &json!([eg("elsewhere", "t", "s", json!({}))]),
    )
    .await;
    assert_eq!(
        ids(&drain(&app, "orders", "early", &key).await),
        ["before", "after"]
    );
    assert_eq!(ids(&drain(&app, "orders", "late", &key).await), ["after"]);
    // Updating a subscription does not rewind or skip anything.
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([eg("third", "t", "s", json!({}))]),
    )
    .await;
    put_sub(
        &app,
        "orders",
        "late",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue"}, "labels": ["x"]}),
    )
    .await
    .expect(200);
    assert_eq!(ids(&drain(&app, "orders", "late", &key).await), ["third"]);
}

#[tokio::test]
async fn filters_decide_which_events_a_subscription_receives() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(
        &app,
        "orders",
        "by-type",
        json!({"filter": {"includedEventTypes": ["Orders.Created"]}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "by-subject",
        json!({"filter": {"subjectBeginsWith": "shop/eu/", "subjectEndsWith": ".json"}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "case-sensitive",
        json!({"filter": {"subjectBeginsWith": "shop/eu/", "isSubjectCaseSensitive": true}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "by-data",
        json!({"filter": {"advancedFilters": [
            {"operatorType": "NumberGreaterThanOrEquals", "key": "data.qty", "value": 5},
            {"operatorType": "StringIn", "key": "Data.Color", "values": ["red", "Blue"]}
        ]}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "missing-key",
        json!({"filter": {"advancedFilters": [
            {"operatorType": "StringNotIn", "key": "data.region", "values": ["eu"]}
        ]}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "ns-style",
        json!({"filtersConfiguration": {"includedEventTypes": ["orders.shipped"], "filters": [
            {"operatorType": "BoolEquals", "key": "data.express", "value": true}
        ]}}),
    )
    .await;
    queue_sub(&app, "orders", "all", json!({})).await;
    queue_sub(
        &app,
        "orders",
        "envelope-keys",
        json!({"filter": {"advancedFilters": [
            {"operatorType": "StringEndsWith", "key": "SUBJECT", "values": [".XML"]},
            {"operatorType": "StringIn", "key": "EventType", "values": ["orders.shipped"]},
            {"operatorType": "StringBeginsWith", "key": "Topic", "values": ["/subscriptions/"]}
        ]}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "legacy-all",
        json!({"filter": {"includedEventTypes": ["All"], "subjectBeginsWith": "", "subjectEndsWith": ""}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "arrays-on",
        json!({"filter": {"enableAdvancedFilteringOnArrays": true, "advancedFilters": [
            {"operatorType": "StringIn", "key": "data.tags", "values": ["B"]}
        ]}}),
    )
    .await;
    queue_sub(
        &app,
        "orders",
        "arrays-off",
        json!({"filter": {"advancedFilters": [
            {"operatorType": "StringIn", "key": "data.tags", "values": ["b"]}
        ]}}),
    )
    .await;

    publish_ok(
        &app,
        "orders",
        &key,
        &json!([
            eg(
                "e1",
                "orders.created",
                "shop/eu/1.json",
                json!({"qty": 10, "color": "RED", "express": false, "region": "eu", "tags": ["a", "b"]})
            ),
            eg(
                "e2",
                "orders.shipped",
                "SHOP/EU/2.JSON",
                json!({"qty": 1, "color": "blue", "express": true})
            ),
            eg(
                "e3",
                "orders.updated",
                "shop/us/3.json",
                json!({"qty": 5, "color": "blue"})
            ),
            eg(
                "e4",
                "orders.shipped",
                "shop/eu/4.xml",
                json!({"qty": 7, "color": "green", "express": false})
            ),
            eg(
                "e5",
                "orders.created",
                "shop/eu/5.json",
                json!({"qty": "10", "color": "red"})
            )
        ]),
    )
    .await;
    let expect: [(&str, &[&str]); 11] = [
        ("envelope-keys", &["e4"]),
        ("legacy-all", &["e1", "e2", "e3", "e4", "e5"]),
        ("arrays-on", &["e1"]),
        ("arrays-off", &[]),
        ("by-type", &["e1", "e5"]),
        ("by-subject", &["e1", "e2", "e5"]),
        ("case-sensitive", &["e1", "e4", "e5"]),
        ("by-data", &["e1", "e3"]),
        ("missing-key", &["e2", "e3", "e4", "e5"]),
        ("ns-style", &["e2"]),
        ("all", &["e1", "e2", "e3", "e4", "e5"]),
    ];
    for (sub, want) in expect {
        let got = drain(&app, "orders", sub, &key).await;
        assert_eq!(ids(&got), want.to_vec(), "subscription {sub}");
        let m = sub_metrics(&app, "orders", sub).await;
        assert_eq!(metric(&m, "matched"), want.len() as i64, "{sub}: {m}");
        assert_eq!(metric(&m, "unmatched"), 5 - want.len() as i64, "{sub}: {m}");
        assert_eq!(metric(&m, "delivered"), want.len() as i64, "{sub}: {m}");
        assert_eq!(metric(&m, "backlog"), 0, "{sub}: {m}");
    }
}

#[tokio::test]
async fn pull_errors_are_4xx_with_the_error_body() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    put_sub(
        &app,
        "orders",
        "hook",
        json!({"destination": {"endpointType": "WebHook",
               "properties": {"endpointUrl": "https://127.0.0.1:9/hook"}}}),
    )
    .await
    .expect(201);
    let post = |sub: &str, op: &str, q: &str| {
        app.client
            .post(sub_url(&app, "orders", sub, op, q))
            .header("aeg-sas-key", &key)
            .json(&json!({"lockTokens": ["x"]}))
    };
    call(&app, post("nope", "receive", "&maxWaitTime=0"))
        .await
        .expect_error(404, "NotFound");
    call(&app, post("nope", "acknowledge", ""))
        .await
        .expect_error(404, "NotFound");
    call(&app, post("pull", "frobnicate", ""))
        .await
        .expect_error(404, "NotFound");
    call(&app, post("hook", "receive", "&maxWaitTime=0"))
        .await
        .expect_error(400, "BadRequest");
    call(&app, post("hook", "reject", ""))
        .await
        .expect_error(400, "BadRequest");
    for q in [
        "&maxEvents=0",
        "&maxEvents=101",
        "&maxWaitTime=121",
        "&maxEvents=x",
    ] {
        call(&app, post("pull", "receive", q))
            .await
            .expect_error(400, "BadRequest");
    }
    // The 2023-11-01 api-version and the eventSubscriptions spelling work too.
    let r = call(
        &app,
        app.client
            .post(format!(
                "{}/topics/orders/eventSubscriptions/pull:receive?api-version=2023-11-01&maxEvents=100&maxWaitTime=0",
                origin(&app)
            ))
            .header("aeg-sas-key", &key),
    )
    .await;
    assert_eq!(received_items(&r).len(), 0);
}

/// A lock that runs out makes the event receivable again with a higher
/// deliveryCount; renewLock pushes the expiry out. Needs the 30 s minimum lock.
#[tokio::test]
async fn expired_locks_redeliver_and_renew_lock_extends_them() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    queue_sub(
        &app,
        "orders",
        "pull",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue",
               "queue": {"receiveLockDurationInSeconds": 30}}}),
    )
    .await;
    publish_ok(
        &app,
        "orders",
        &key,
        &json!([
            eg("kept", "t", "s", json!({})),
            eg("lapsed", "t", "s", json!({}))
        ]),
    )
    .await;
    let locked_at = Instant::now();
    let got = receive(&app, "orders", "pull", &key, 2, 0).await;
    assert_eq!(ids(&got), ["kept", "lapsed"]);
    let (kept, lapsed) = (tokens(&got[..1]), tokens(&got[1..]));
    // Half-way through the lock, renew one of them.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let r = settle(&app, "orders", "pull", &key, "renewLock", "", &kept).await;
    assert_eq!(r.expect(200)["succeededLockTokens"], json!(kept));
    // Nothing is receivable while both locks hold.
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
    // The other lock lapses at 30 s; a waiting receive picks the event up.
    let back = receive(&app, "orders", "pull", &key, 10, 40).await;
    let after = locked_at.elapsed();
    assert_eq!(ids(&back), ["lapsed"], "the renewed event stays locked");
    assert_eq!(back[0]["brokerProperties"]["deliveryCount"], 2);
    assert!(
        after >= Duration::from_secs(29) && after < Duration::from_secs(44),
        "lock of 30 s lapsed after {after:?}"
    );
    // The lapsed token is lost; the renewed one still settles.
    let r = settle(&app, "orders", "pull", &key, "acknowledge", "", &lapsed).await;
    assert_eq!(
        r.expect(200)["failedLockTokens"][0]["error"]["code"],
        "TokenLost"
    );
    settle_ok(&app, "orders", "pull", &key, "acknowledge", &kept).await;
    settle_ok(&app, "orders", "pull", &key, "acknowledge", &tokens(&back)).await;
    assert!(
        receive(&app, "orders", "pull", &key, 10, 0)
            .await
            .is_empty()
    );
}

/// Several receivers on one subscription at once: each event goes to
/// exactly one of them, and none is lost.
#[tokio::test]
async fn competing_receivers_never_share_an_event() {
    let app = std::sync::Arc::new(spawn_app().await);
    let key = eg_topic(&app, "orders").await;
    queue_sub(&app, "orders", "pull", json!({})).await;
    let events: Vec<Value> = (0..150)
        .map(|i| eg(&format!("c-{i:03}"), "t", "s", json!({ "i": i })))
        .collect();
    for chunk in events.chunks(50) {
        publish_ok(&app, "orders", &key, &json!(chunk)).await;
    }
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (app, key) = (app.clone(), key.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let items = receive(&app, "orders", "pull", &key, 7, 0).await;
                if items.is_empty() {
                    return mine;
                }
                settle_ok(&app, "orders", "pull", &key, "acknowledge", &tokens(&items)).await;
                mine.extend(ids(&items));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = set.join_next().await {
        all.extend(done.expect("receiver"));
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an event went to two receivers");
    assert_eq!(all.len(), 150, "every event was received once");
    let m = sub_metrics(&app, "orders", "pull").await;
    assert_eq!(metric(&m, "delivered"), 150, "{m}");
    assert_eq!(metric(&m, "backlog"), 0, "{m}");
}

/// Spec §8/§10: a namespace subscription's eventTimeToLive is at least
/// PT1M and at most 7 days.
#[tokio::test]
async fn event_time_to_live_is_between_one_minute_and_seven_days() {
    let app = spawn_app().await;
    eg_topic(&app, "orders").await;
    for (name, ttl, ok) in [
        ("ttl-1m", "PT1M", true),
        ("ttl-7d", "P7D", true),
        ("ttl-30s", "PT30S", false),
        ("ttl-8d", "P8D", false),
        ("ttl-2w", "P2W", false),
    ] {
        let r = put_sub(
            &app,
            "orders",
            name,
            json!({"deliveryConfiguration": {"deliveryMode": "Queue",
                   "queue": {"eventTimeToLive": ttl}}}),
        )
        .await;
        assert_eq!(r.status, if ok { 201 } else { 400 }, "{ttl}: {}", r.text);
    }
}

/// Spec §2.4 (open choice, the shipped default): a data-plane 413 has
/// `error.code` `PayloadTooLarge`, however far over the limit the body is.
#[tokio::test]
async fn every_publish_413_says_payload_too_large() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    for len in [MIB + 1, MIB + 100_000, 2 * MIB] {
        let r = publish_raw(
            &app,
            "orders",
            &key,
            "application/json",
            body_of_len(len, 'x'),
        )
        .await;
        r.expect_error(413, "PayloadTooLarge");
    }
}

/// Event Grid deletes a subscription once its expirationTimeUtc passes.
#[tokio::test]
async fn expired_subscriptions_are_removed() {
    let app = spawn_app().await;
    let key = eg_topic(&app, "orders").await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let s = queue_sub(
        &app,
        "orders",
        "brief",
        json!({ "expirationTimeUtc": soon }),
    )
    .await;
    assert_eq!(s["expirationTimeUtc"], soon.as_str());
    queue_sub(&app, "orders", "lasting", json!({})).await;
    eventually(
        "the expired subscription to be removed",
        Duration::from_secs(30),
        || async {
            let r = mgmt(&app, Method::GET, "/orders/eventSubscriptions/brief", None).await;
            (r.status == 404).then_some(())
        },
    )
    .await;
    get_sub(&app, "orders", "lasting").await;
    publish_ok(&app, "orders", &key, &json!([eg("x", "t", "s", json!({}))])).await;
    assert_eq!(ids(&drain(&app, "orders", "lasting", &key).await), ["x"]);
}

// ---------------------------------------------------------------------------
// Key Vault → router

fn assert_secret_event(
    app: &TestApp,
    e: &Value,
    vault: &str,
    bundle: &Value,
    nbf: Value,
    exp: Value,
) {
    let id = bundle["id"].as_str().expect("bundle id");
    let version = version_of(id);
    let name = id.rsplit('/').nth(1).expect("name");
    assert!(
        is_guid(e["id"].as_str().unwrap_or_default()),
        "id is a GUID: {e}"
    );
    assert_eq!(e["type"], NEW_SECRET);
    assert_eq!(e["subject"], name);
    assert_eq!(e["source"], vault_topic(vault));
    assert_eq!(e["specversion"], "1.0");
    let time = e["time"].as_str().expect("time");
    let frac = time
        .split('.')
        .nth(1)
        .and_then(|f| f.strip_suffix('Z'))
        .unwrap_or_default();
    assert!(
        frac.len() == 7 && frac.bytes().all(|b| b.is_ascii_digit()),
        "{time}"
    );
    let t = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
    assert!(
        (chrono::Utc::now().timestamp() - t.timestamp()).abs() < 60,
        "{time}"
    );
    assert!(
        id.starts_with(&format!("{}/secrets/{name}/", app.vault_origin(vault))),
        "{id}"
    );
    assert_eq!(
        e["data"],
        json!({
            "Id": id,
            "VaultName": vault, "ObjectType": "Secret", "ObjectName": name,
            "Version": version, "NBF": nbf, "EXP": exp
        })
    );
    for gone in ["topic", "eventType", "dataVersion", "metadataVersion"] {
        assert!(e.get(gone).is_none(), "{gone}: {e}");
    }
}

#[tokio::test]
async fn secret_changes_reach_a_queue_subscription_on_the_vault_topic() {
    let app = spawn_app().await;
    // Created with the admin token on the default vault's system topic.
    let s = put_sub(
        &app,
        DEFAULT,
        "kv-pull",
        json!({"deliveryConfiguration": {"deliveryMode": "Queue"},
               "filter": {"includedEventTypes": [NEW_SECRET]}}),
    )
    .await;
    let s = s.expect(201).clone();
    assert_eq!(s["topic"], vault_topic(DEFAULT));
    let key = keys(&app, DEFAULT).await[0].clone();
    assert!(
        receive(&app, DEFAULT, "kv-pull", &key, 10, 0)
            .await
            .is_empty()
    );

    let bundle = app
        .set(
            DEFAULT,
            "db-password",
            json!({"value": "s3cr3t", "attributes": {"nbf": 1_700_000_000, "exp": 1_900_000_000}}),
        )
        .await;
    let got = receive(&app, DEFAULT, "kv-pull", &key, 10, 10).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["brokerProperties"]["deliveryCount"], 1);
    assert_secret_event(
        &app,
        &got[0]["event"],
        DEFAULT,
        &bundle,
        json!(1_700_000_000),
        json!(1_900_000_000),
    );
    settle_ok(&app, DEFAULT, "kv-pull", &key, "acknowledge", &tokens(&got)).await;

    // A second version without nbf/exp: nulls.
    let bundle2 = app.set_value(DEFAULT, "db-password", "s3cr3t-2").await;
    let got = receive_n(&app, DEFAULT, "kv-pull", &key, 1).await;
    assert_secret_event(
        &app,
        &got[0]["event"],
        DEFAULT,
        &bundle2,
        Value::Null,
        Value::Null,
    );
    assert_ne!(
        got[0]["event"]["data"]["Version"],
        version_of(bundle["id"].as_str().expect("id"))
    );
    settle_ok(&app, DEFAULT, "kv-pull", &key, "acknowledge", &tokens(&got)).await;
    // The secret value never travels in the event.
    assert!(!got[0].to_string().contains("s3cr3t"), "{}", got[0]);

    // Another vault has its own topic and its own events.
    app.create_vault(json!({"name": "payments"})).await;
    queue_sub(&app, "payments", "kv-sub", json!({})).await;
    let pkey = keys(&app, "payments").await[1].clone();
    let b = app.set_value("payments", "api-key", "v").await;
    let got = receive_n(&app, "payments", "kv-sub", &pkey, 1).await;
    assert_secret_event(
        &app,
        &got[0]["event"],
        "payments",
        &b,
        Value::Null,
        Value::Null,
    );
    // ...which the default vault's subscription does not see.
    assert!(
        receive(&app, DEFAULT, "kv-pull", &key, 10, 0)
            .await
            .is_empty()
    );
    let m = sub_metrics(&app, DEFAULT, "kv-pull").await;
    assert_eq!(metric(&m, "delivered"), 2, "{m}");
    assert_eq!(metric(&m, "matched"), 2, "{m}");
}

/// The topic's `metrics.published` counts what reached its log, and for a
/// vault's system topic that is what the vault published.
#[tokio::test]
async fn vault_events_count_as_published_on_the_system_topic() {
    let app = spawn_app().await;
    assert_eq!(published(&app, DEFAULT).await, 0);
    app.set_value(DEFAULT, "one", "v").await;
    app.set_value(DEFAULT, "two", "v").await;
    assert_eq!(published(&app, DEFAULT).await, 2);
}

/// NearExpiry and Expired reach a pull subscriber too: a secret created
/// with `exp` two seconds away is near expiry at once and expired soon.
#[tokio::test]
async fn secret_expiry_events_reach_a_queue_subscription() {
    let app = spawn_app().await;
    queue_sub(&app, DEFAULT, "kv-all", json!({})).await;
    let key = keys(&app, DEFAULT).await[0].clone();
    let exp = now() + 2;
    let bundle = app
        .set(
            DEFAULT,
            "short-lived",
            json!({"value": "v", "attributes": {"exp": exp}}),
        )
        .await;
    let version = version_of(bundle["id"].as_str().expect("id"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: Vec<Value> = Vec::new();
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "events so far: {got:#?}");
        let items = receive(&app, DEFAULT, "kv-all", &key, 10, 1).await;
        if !items.is_empty() {
            settle_ok(
                &app,
                DEFAULT,
                "kv-all",
                &key,
                "acknowledge",
                &tokens(&items),
            )
            .await;
        }
        got.extend(items);
    }
    let types: Vec<&str> = got
        .iter()
        .map(|i| i["event"]["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            NEW_SECRET,
            "Microsoft.KeyVault.SecretNearExpiry",
            "Microsoft.KeyVault.SecretExpired"
        ]
    );
    for item in &got {
        let e = &item["event"];
        assert_eq!(e["subject"], "short-lived");
        assert_eq!(e["source"], vault_topic(DEFAULT));
        assert_eq!(e["data"]["Version"], version.as_str());
        assert_eq!(e["data"]["EXP"], exp, "EXP is a number: {e}");
        assert_eq!(e["data"]["NBF"], Value::Null);
        assert_eq!(e["data"]["ObjectType"], "Secret");
    }
    // Exactly once each.
    assert!(
        receive(&app, DEFAULT, "kv-all", &key, 10, 1)
            .await
            .is_empty()
    );
}
