//! Push delivery to webhooks (spec eventgrid.md §6–§9): both validation
//! handshakes, the SSRF guard, delivery headers and bodies, batching,
//! custom headers, retries on the compressed schedule, dead-lettering with
//! replay, the delivery log and probation. Deliveries go to an in-process
//! receiver whose answers each test programs.

use crate::helpers::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reqwest::RequestBuilder;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EG_API: &str = "api-version=2018-01-01";
const NS_API: &str = "api-version=2024-06-01";
const EG_JSON: &str = "application/json; charset=utf-8";
const CE_JSON: &str = "application/cloudevents+json; charset=utf-8";
const CE_BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";
/// The retry scale the delivery apps run with: 10 s becomes 10 ms.
const SCALE: f64 = 0.001;
/// Lower bound of the ±10% jitter.
const JITTER_LOW: f64 = 0.9;
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The programmable receiver

/// How the receiver answers one kind of request.
#[derive(Debug, Clone)]
enum Answer {
    /// 200 with `{"validationResponse": <the validationCode>}`.
    EchoCode,
    /// 200 with `{}`.
    Ok,
    Status(u16),
    /// The status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// 200 to OPTIONS with `WebHook-Allowed-Origin: *`.
    AllowAnyOrigin,
    /// 302 to another path of this receiver, which must never be followed.
    Redirect(&'static str),
}

struct Script {
    validation: Answer,
    options: Answer,
    /// One-shot answers to notifications, used before `notify`.
    queued: VecDeque<Answer>,
    notify: Answer,
    /// Until then, every notification is answered 503 (an outage).
    outage_until: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Received {
    method: Method,
    /// Path and query.
    uri: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn is_notification(&self) -> bool {
        self.method == Method::POST && self.header("aeg-event-type") == Some("Notification")
    }

    fn delivery_count(&self) -> i64 {
        self.header("aeg-delivery-count")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no aeg-delivery-count on {self:?}"))
    }

    /// The ids of the events in a notification (array or single object).
    fn event_ids(&self) -> Vec<String> {
        match self.json() {
            Value::Array(a) => a
                .iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                .collect(),
            Value::Object(o) => vec![o["id"].as_str().unwrap_or_default().to_owned()],
            other => panic!("notification body is not JSON: {other}"),
        }
    }
}

struct Inner {
    script: Mutex<Script>,
    log: Mutex<Vec<Received>>,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    async fn start() -> Self {
        let inner = Arc::new(Inner {
            script: Mutex::new(Script {
                validation: Answer::EchoCode,
                options: Answer::AllowAnyOrigin,
                queued: VecDeque::new(),
                notify: Answer::Ok,
                outage_until: None,
            }),
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Self { addr, inner }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.inner.script.lock().expect("script lock"));
    }

    fn requests(&self) -> Vec<Received> {
        self.inner.log.lock().expect("log lock").clone()
    }

    fn notifications(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(Received::is_notification)
            .collect()
    }

    /// Waits until `pred` holds for the notifications received so far.
    async fn wait_notifications(
        &self,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        eventually(what, WAIT, || {
            let n = self.notifications();
            std::future::ready(pred(&n).then_some(n))
        })
        .await
    }

    /// Waits for notifications carrying at least `count` event ids answered 2xx:
    /// the last attempt of each id counts.
    async fn wait_events(&self, count: usize) -> Vec<Received> {
        self.wait_notifications(&format!("{count} delivered events"), |n| {
            n.iter().map(|r| r.event_ids().len()).sum::<usize>() >= count
        })
        .await
    }
}

async fn answer(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let got = Received {
        method: method.clone(),
        uri: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
    };
    let plan = {
        let mut s = inner.script.lock().expect("script lock");
        if method == Method::OPTIONS {
            s.options.clone()
        } else if got.header("aeg-event-type") == Some("SubscriptionValidation") {
            s.validation.clone()
        } else if s.outage_until.is_some_and(|t| Instant::now() < t) {
            Answer::Status(503)
        } else {
            s.queued.pop_front().unwrap_or_else(|| s.notify.clone())
        }
    };
    inner.log.lock().expect("log lock").push(got);
    match plan {
        Answer::EchoCode => {
            let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let code = event[0]["data"]["validationCode"].clone();
            axum::Json(json!({ "validationResponse": code })).into_response()
        }
        Answer::Ok => axum::Json(json!({})).into_response(),
        Answer::Status(s) => status(s).into_response(),
        Answer::RetryAfter(s, secs) => {
            (status(s), [("retry-after", secs.to_string())]).into_response()
        }
        Answer::AllowAnyOrigin => {
            (StatusCode::OK, [("webhook-allowed-origin", "*")]).into_response()
        }
        Answer::Redirect(to) => (StatusCode::FOUND, [("location", to)]).into_response(),
    }
}

fn status(s: u16) -> StatusCode {
    StatusCode::from_u16(s).expect("a valid status")
}

// ---------------------------------------------------------------------------
// Helpers

/// A server whose deliveries may reach loopback, with a 1000x faster schedule.
async fn delivery_app() -> TestApp {
    spawn_app_with(|c| {
        c.delivery_allowed_cidrs = vec!["127.0.0.0/8".into()];
        c.delivery_retry_scale = SCALE;
    })
    .await
}

fn origin(app: &TestApp) -> String {
    format!("https://localhost:{}", app.port)
}

fn topic_arm(name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/herald/providers/Microsoft.EventGrid/topics/{name}"
    )
}

async fn call(app: &TestApp, req: RequestBuilder) -> Resp {
    let r = app.send(req).await;
    assert!(r.status < 500, "server error {}: {}", r.status, r.text);
    r
}

async fn mgmt(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Resp {
    let url = format!("{}/api/v1/topics{path}", origin(app));
    let mut req = app.client.request(method, url).bearer_auth(&app.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    call(app, req).await
}

/// Creates a topic and returns its key1.
async fn topic(app: &TestApp, name: &str, input_schema: &str) -> String {
    mgmt(
        app,
        reqwest::Method::POST,
        "",
        Some(json!({ "name": name, "inputSchema": input_schema })),
    )
    .await
    .expect(201);
    let keys = mgmt(app, reqwest::Method::GET, &format!("/{name}/keys"), None).await;
    keys.expect(200)["key1"].as_str().expect("key1").to_owned()
}

fn sub_path(topic: &str, name: &str) -> String {
    format!("/{topic}/eventSubscriptions/{name}")
}

/// PUTs a webhook subscription: `hook` is merged into the destination
/// properties and `extra` into the subscription properties.
async fn put_hook(
    app: &TestApp,
    topic: &str,
    name: &str,
    url: &str,
    hook: Value,
    extra: Value,
) -> Resp {
    let mut props = json!({ "endpointUrl": url });
    if let (Value::Object(p), Value::Object(h)) = (&mut props, hook) {
        p.extend(h);
    }
    let mut body = json!({ "destination": { "endpointType": "WebHook", "properties": props } });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    mgmt(
        app,
        reqwest::Method::PUT,
        &sub_path(topic, name),
        Some(body),
    )
    .await
}

/// PUTs a webhook subscription and asserts it ends `Succeeded`.
async fn hook_ok(app: &TestApp, topic: &str, name: &str, url: &str, hook: Value, extra: Value) {
    let r = put_hook(app, topic, name, url, hook, extra).await;
    let b = r.expect(201);
    assert_eq!(b["provisioningState"], "Succeeded", "subscription: {b}");
}

async fn get_sub(app: &TestApp, topic: &str, name: &str) -> Value {
    mgmt(app, reqwest::Method::GET, &sub_path(topic, name), None)
        .await
        .expect(200)
        .clone()
}

fn eg(id: &str, data: Value) -> Value {
    json!({
        "id": id, "eventType": "Herald.Test.Created", "subject": format!("/things/{id}"),
        "eventTime": "2024-05-01T10:00:00.1234567Z", "data": data, "dataVersion": "2.0",
    })
}

fn ce(id: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/herald/tests", "type": "com.example.created",
        "time": "2024-05-01T10:00:00Z", "datacontenttype": "application/json",
        "subject": format!("/things/{id}"), "data": { "n": id },
    })
}

/// Classic publish of Event Grid events with `aeg-sas-key`.
async fn publish(app: &TestApp, topic: &str, key: &str, events: &Value) {
    let url = format!("{}/topics/{topic}/api/events?{EG_API}", origin(app));
    let r = call(
        app,
        app.client.post(url).header("aeg-sas-key", key).json(events),
    )
    .await;
    r.expect(200);
}

/// Namespace-style publish of CloudEvents (one object or a batch array).
async fn publish_ce(app: &TestApp, topic: &str, key: &str, body: &Value) {
    let ct = if body.is_array() { CE_BATCH } else { CE_JSON };
    let url = format!("{}/topics/{topic}:publish?{NS_API}", origin(app));
    let r = call(
        app,
        app.client
            .post(url)
            .header(AUTHORIZATION, format!("SharedAccessKey {key}"))
            .header(CONTENT_TYPE, ct)
            .body(body.to_string()),
    )
    .await;
    r.expect(200);
}

async fn attempts(app: &TestApp, topic: &str, name: &str) -> Vec<Value> {
    attempts_at(app, &format!("{}/attempts", sub_path(topic, name))).await
}

/// The delivery log rows of one event (`?eventId=`).
async fn event_attempts(app: &TestApp, topic: &str, name: &str, event_id: &str) -> Vec<Value> {
    let path = format!("{}/attempts?eventId={event_id}", sub_path(topic, name));
    attempts_at(app, &path).await
}

async fn attempts_at(app: &TestApp, path: &str) -> Vec<Value> {
    let r = mgmt(app, reqwest::Method::GET, path, None).await;
    r.expect(200)["value"]
        .as_array()
        .expect("value array")
        .clone()
}

async fn dead_letters(app: &TestApp, topic: &str, name: &str) -> Vec<Value> {
    let r = mgmt(
        app,
        reqwest::Method::GET,
        &format!("{}/deadLetters", sub_path(topic, name)),
        None,
    )
    .await;
    r.expect(200)["value"]
        .as_array()
        .expect("value array")
        .clone()
}

async fn wait_dead_letters(app: &TestApp, topic: &str, name: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} dead letters"), WAIT, || async {
        let d = dead_letters(app, topic, name).await;
        (d.len() >= n).then_some(d)
    })
    .await
}

fn dead_letter_destination(container: &str) -> Value {
    json!({ "deadLetterDestination": { "endpointType": "StorageBlob", "properties": {
        "resourceId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z",
        "blobContainerName": container,
    }}})
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(x), Value::Object(y)) = (&mut a, b) {
        x.extend(y);
    }
    a
}

/// Groups notifications by event id, in arrival order.
fn by_event(notes: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut m: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for r in notes {
        for id in r.event_ids() {
            m.entry(id).or_default().push(r.clone());
        }
    }
    m
}

/// The scaled, jitter-reduced least wait after the n-th failed attempt
/// answered with `status` (schedule step vs. status minimum, spec §8).
fn least_wait(failed_attempt: usize, status: u16) -> Duration {
    const SCHEDULE: [u64; 9] = [10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600];
    let step = SCHEDULE.get(failed_attempt - 1).copied().unwrap_or(43_200);
    let minimum = match status {
        404 | 410 => 300,
        408 => 120,
        503 => 30,
        _ => 10,
    };
    Duration::from_secs(step.max(minimum)).mul_f64(SCALE * JITTER_LOW)
}

// ---------------------------------------------------------------------------
// Validation handshake, Event Grid schema (§7)

#[tokio::test]
async fn eg_handshake_with_the_code_succeeds_and_sends_the_validation_event() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    topic(&app, "orders", "EventGridSchema").await;
    let r = put_hook(
        &app,
        "orders",
        "my-Hook",
        &rx.url("/hook?code=abc"),
        json!({}),
        json!({}),
    )
    .await;
    let b = r.expect(201);
    assert_eq!(b["provisioningState"], "Succeeded", "{b}");
    assert!(b.get("stateReason").is_none(), "no reason on success: {b}");
    // The full URL (with its secret query) is never shown.
    assert_eq!(
        b["destination"]["properties"]["endpointBaseUrl"],
        rx.url("/hook")
    );
    assert_eq!(
        get_sub(&app, "orders", "my-Hook").await["provisioningState"],
        "Succeeded"
    );

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "exactly one handshake request: {reqs:?}");
    let v = &reqs[0];
    assert_eq!(v.method, Method::POST);
    assert_eq!(
        v.uri, "/hook?code=abc",
        "the endpoint URL is used as configured"
    );
    assert_eq!(v.header("aeg-event-type"), Some("SubscriptionValidation"));
    assert_eq!(v.header("aeg-subscription-name"), Some("MY-HOOK"));
    assert!(
        v.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        v.headers
    );
    let body = v.json();
    let events = body.as_array().expect("validation body is an array");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        e["eventType"],
        "Microsoft.EventGrid.SubscriptionValidationEvent"
    );
    assert_eq!(e["topic"], topic_arm("orders"));
    assert_eq!(e["metadataVersion"], "1");
    assert_eq!(e["dataVersion"], "1");
    let code = e["data"]["validationCode"]
        .as_str()
        .expect("validationCode");
    assert_eq!(code.len(), 36, "GUID-style code: {code}");
    let url = e["data"]["validationUrl"].as_str().expect("validationUrl");
    assert!(
        url.starts_with(&format!(
            "{}/eventsubscriptions/my-Hook/validate?",
            origin(&app)
        )),
        "{url}"
    );
    assert!(
        url.contains(&format!("id={code}")) && url.contains("token="),
        "{url}"
    );
}

#[tokio::test]
async fn eg_handshake_without_the_code_awaits_manual_validation_via_the_link() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.validation = Answer::Ok);
    let key = topic(&app, "orders", "EventGridSchema").await;
    let r = put_hook(
        &app,
        "orders",
        "manual",
        &rx.url("/hook"),
        json!({}),
        json!({}),
    )
    .await;
    let b = r.expect(201);
    assert_eq!(b["provisioningState"], "AwaitingManualAction", "{b}");
    assert!(b["stateReason"].is_string(), "{b}");

    // Nothing is delivered before validation completes.
    publish(&app, "orders", &key, &json!([eg("early", json!({}))])).await;

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let url = reqs[0].json()[0]["data"]["validationUrl"]
        .as_str()
        .expect("validationUrl")
        .to_owned();
    // A wrong token is refused and changes nothing.
    let wrong = url.replace("token=", "token=x");
    let r = app.send(app.client.get(&wrong)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(
        get_sub(&app, "orders", "manual").await["provisioningState"],
        "AwaitingManualAction"
    );
    assert!(rx.notifications().is_empty(), "delivered before validation");

    // No credential but the token in the link.
    let r = app.send(app.client.get(&url)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let s = get_sub(&app, "orders", "manual").await;
    assert_eq!(s["provisioningState"], "Succeeded", "{s}");
    let again = app.send(app.client.get(&url)).await;
    assert_eq!(again.status, 404, "a link works once: {}", again.text);

    // Once validated, the held event goes out.
    let got = rx.wait_events(1).await;
    assert_eq!(got[0].event_ids(), ["early"]);
}

#[tokio::test]
async fn eg_handshake_failures_leave_the_subscription_failed_with_a_reason() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    topic(&app, "orders", "EventGridSchema").await;
    for code in [404u16, 500, 202] {
        rx.script(|s| s.validation = Answer::Status(code));
        let name = format!("fails-{code}");
        let r = put_hook(
            &app,
            "orders",
            &name,
            &rx.url("/hook"),
            json!({}),
            json!({}),
        )
        .await;
        let b = r.expect(201);
        assert_eq!(b["provisioningState"], "Failed", "HTTP {code}: {b}");
        let reason = b["stateReason"].as_str().unwrap_or_else(|| panic!("{b}"));
        assert!(reason.contains(&code.to_string()), "{reason}");
        assert!(!reason.contains("?"), "no query in reasons: {reason}");
        let shown = get_sub(&app, "orders", &name).await;
        assert_eq!(shown["provisioningState"], "Failed");
        assert_eq!(shown["stateReason"], reason);
    }
    // A receiver that fixes itself passes on the next update.
    rx.script(|s| s.validation = Answer::EchoCode);
    let r = put_hook(
        &app,
        "orders",
        "fails-404",
        &rx.url("/hook"),
        json!({}),
        json!({}),
    )
    .await;
    let b = r.expect(200);
    assert_eq!(b["provisioningState"], "Succeeded", "{b}");
    assert!(b.get("stateReason").is_none(), "{b}");
}

// ---------------------------------------------------------------------------
// Validation handshake, CloudEvents (§3.5)

#[tokio::test]
async fn cloudevents_options_handshake() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    topic(&app, "telemetry", "CloudEventSchemaV1_0").await;
    let ce_schema = json!({ "eventDeliverySchema": "CloudEventSchemaV1_0" });
    let r = put_hook(
        &app,
        "telemetry",
        "ce-ok",
        &rx.url("/ce"),
        json!({}),
        ce_schema.clone(),
    )
    .await;
    let b = r.expect(201);
    assert_eq!(b["provisioningState"], "Succeeded", "{b}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, Method::OPTIONS);
    assert_eq!(reqs[0].uri, "/ce");
    let origin_hdr = reqs[0]
        .header("webhook-request-origin")
        .expect("WebHook-Request-Origin");
    assert!(!origin_hdr.is_empty());
    assert!(
        reqs.iter().all(|r| r.header("aeg-event-type").is_none()),
        "no validation event for CloudEvents"
    );

    rx.script(|s| s.options = Answer::Ok);
    let r = put_hook(
        &app,
        "telemetry",
        "ce-no",
        &rx.url("/ce"),
        json!({}),
        ce_schema.clone(),
    )
    .await;
    let b = r.expect(201);
    assert_eq!(b["provisioningState"], "Failed", "{b}");
    let reason = b["stateReason"].as_str().expect("stateReason");
    assert!(
        reason
            .to_ascii_lowercase()
            .contains("webhook-allowed-origin"),
        "{reason}"
    );

    rx.script(|s| s.options = Answer::Status(405));
    let r = put_hook(
        &app,
        "telemetry",
        "ce-405",
        &rx.url("/ce"),
        json!({}),
        ce_schema,
    )
    .await;
    assert_eq!(r.expect(201)["provisioningState"], "Failed", "{}", r.text);
}

// ---------------------------------------------------------------------------
// SSRF guard (issue §7)

#[tokio::test]
async fn ssrf_guard_refuses_loopback_and_metadata_without_the_allow_list() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    topic(&app, "orders", "EventGridSchema").await;
    for (name, url) in [
        ("loop", rx.url("/hook")),
        ("meta", "http://169.254.169.254/latest/meta-data".to_owned()),
        ("private", "http://10.1.2.3/hook".to_owned()),
    ] {
        let r = put_hook(&app, "orders", name, &url, json!({}), json!({})).await;
        let b = r.expect(201);
        assert_eq!(b["provisioningState"], "Failed", "{url}: {b}");
        let reason = b["stateReason"].as_str().unwrap_or_else(|| panic!("{b}"));
        assert!(reason.contains("not allowed"), "{reason}");
    }
    assert!(
        rx.requests().is_empty(),
        "the guard sent requests: {:?}",
        rx.requests()
    );
}

// ---------------------------------------------------------------------------
// Deliveries (§6)

#[tokio::test]
async fn event_grid_delivery_headers_and_body() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "my-Sub",
        &rx.url("/hook?code=abc"),
        json!({}),
        json!({}),
    )
    .await;
    let event = eg("e-1", json!({ "make": "Ducati", "n": 1 }));
    publish(&app, "orders", &key, &json!([event])).await;
    let got = rx.wait_events(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri, "/hook?code=abc");
    assert_eq!(r.header("aeg-event-type"), Some("Notification"));
    assert_eq!(r.header("aeg-subscription-name"), Some("MY-SUB"));
    assert_eq!(r.header("aeg-delivery-count"), Some("0"));
    assert_eq!(r.header("aeg-metadata-version"), Some("1"));
    assert_eq!(r.header("aeg-data-version"), Some("2.0"));
    assert_eq!(r.header("content-type"), Some(EG_JSON));
    let body = r.json();
    let arr = body.as_array().expect("Event Grid bodies are arrays");
    assert_eq!(arr.len(), 1);
    let d = &arr[0];
    for field in ["id", "eventType", "subject", "data", "dataVersion"] {
        assert_eq!(d[field], event[field], "{field}: {d}");
    }
    assert_eq!(d["topic"], topic_arm("orders"));
    assert_eq!(d["metadataVersion"], "1");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(d["eventTime"].as_str().expect("eventTime"))
            .expect("RFC 3339"),
        chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.1234567Z").expect("time")
    );
}

#[tokio::test]
async fn cloudevents_delivery_is_one_structured_object() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    let key = topic(&app, "telemetry", "CloudEventSchemaV1_0").await;
    hook_ok(
        &app,
        "telemetry",
        "ce-sub",
        &rx.url("/ce"),
        json!({}),
        json!({ "eventDeliverySchema": "CloudEventSchemaV1_0" }),
    )
    .await;
    publish_ce(&app, "telemetry", &key, &ce("c-1")).await;
    let got = rx.wait_events(1).await;
    let r = &got[0];
    assert_eq!(r.header("content-type"), Some(CE_JSON));
    assert_eq!(r.header("aeg-event-type"), Some("Notification"));
    assert_eq!(r.header("aeg-subscription-name"), Some("CE-SUB"));
    assert_eq!(r.header("aeg-delivery-count"), Some("0"));
    let body = r.json();
    assert!(body.is_object(), "a single object: {body}");
    let sent = ce("c-1");
    for field in ["specversion", "id", "source", "type", "subject", "data"] {
        assert_eq!(body[field], sent[field], "{field}: {body}");
    }
}

#[tokio::test]
async fn batches_never_exceed_max_events_per_batch() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "batched",
        &rx.url("/b"),
        json!({ "maxEventsPerBatch": 10 }),
        json!({}),
    )
    .await;
    let events: Vec<Value> = (0..25)
        .map(|i| eg(&format!("b-{i:02}"), json!({ "i": i })))
        .collect();
    publish(&app, "orders", &key, &Value::Array(events)).await;
    let got = rx.wait_events(25).await;
    let mut ids = Vec::new();
    for r in &got {
        let body = r.json();
        let arr = body.as_array().expect("array");
        assert!(!arr.is_empty() && arr.len() <= 10, "batch of {}", arr.len());
        assert_eq!(r.header("content-type"), Some(EG_JSON));
        ids.extend(r.event_ids());
    }
    assert!(
        got.len() >= 3,
        "25 events need at least 3 batches: {}",
        got.len()
    );
    ids.sort();
    let want: Vec<String> = (0..25).map(|i| format!("b-{i:02}")).collect();
    assert_eq!(ids, want, "each event exactly once");

    // CloudEvents batches are arrays with the batch content type.
    let ce_key = topic(&app, "telemetry", "CloudEventSchemaV1_0").await;
    let ce_rx = Receiver::start().await;
    hook_ok(
        &app,
        "telemetry",
        "ce-batched",
        &ce_rx.url("/ceb"),
        json!({ "maxEventsPerBatch": 10 }),
        json!({ "eventDeliverySchema": "CloudEventSchemaV1_0" }),
    )
    .await;
    let ces: Vec<Value> = (0..25).map(|i| ce(&format!("c-{i:02}"))).collect();
    publish_ce(&app, "telemetry", &ce_key, &Value::Array(ces)).await;
    let got = ce_rx.wait_events(25).await;
    let mut ids = Vec::new();
    for r in &got {
        assert_eq!(r.header("content-type"), Some(CE_BATCH));
        let body = r.json();
        let arr = body.as_array().expect("a CloudEvents batch is an array");
        assert!(!arr.is_empty() && arr.len() <= 10, "batch of {}", arr.len());
        assert!(arr.iter().all(|e| e["specversion"] == "1.0"));
        ids.extend(r.event_ids());
    }
    ids.sort();
    let want: Vec<String> = (0..25).map(|i| format!("c-{i:02}")).collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn delivery_attribute_mappings_add_static_and_dynamic_headers() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    let key = topic(&app, "orders", "EventGridSchema").await;
    app.set_value(DEFAULT, "api-key", "s3cr3t").await;
    // A secret value in plaintext is refused: it must be a vault reference.
    let plain = json!({ "deliveryAttributeMappings": [
        { "name": "X-Api-Key", "type": "Static", "properties": { "value": "s3cr3t", "isSecret": true } },
    ]});
    let r = put_hook(&app, "orders", "plain", &rx.url("/m"), plain, json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let hook = json!({ "deliveryAttributeMappings": [
        { "name": "X-Api-Key", "type": "Static",
          "properties": { "value": "vault://default/api-key", "isSecret": true } },
        { "name": "X-Tenant", "type": "Static", "properties": { "value": "contoso" } },
        { "name": "X-System", "type": "Dynamic", "properties": { "sourceField": "data.system" } },
        { "name": "X-Count", "type": "Dynamic", "properties": { "sourceField": "data.count" } },
    ]});
    hook_ok(&app, "orders", "mapped", &rx.url("/m"), hook, json!({})).await;
    let shown = get_sub(&app, "orders", "mapped").await;
    assert!(
        !shown.to_string().contains("s3cr3t"),
        "secret echoed: {shown}"
    );
    publish(
        &app,
        "orders",
        &key,
        &json!([eg("m-1", json!({ "system": "billing", "count": 7 }))]),
    )
    .await;
    let got = rx.wait_events(1).await;
    let r = &got[0];
    assert_eq!(
        r.header("x-api-key"),
        Some("s3cr3t"),
        "resolved at send time"
    );
    assert_eq!(r.header("x-tenant"), Some("contoso"));
    assert_eq!(r.header("x-system"), Some("billing"));
    assert_eq!(r.header("x-count"), Some("7"));
}

// ---------------------------------------------------------------------------
// Retries (§8)

#[tokio::test]
async fn failed_deliveries_are_retried_on_the_scaled_schedule() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.queued = VecDeque::from([Answer::Status(500), Answer::Status(500)]));
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "retried",
        &rx.url("/r"),
        json!({}),
        json!({}),
    )
    .await;
    publish(&app, "orders", &key, &json!([eg("r-1", json!({}))])).await;
    let got = rx.wait_notifications("3 attempts", |n| n.len() >= 3).await;
    let counts: Vec<i64> = got.iter().map(Received::delivery_count).collect();
    assert_eq!(counts, [0, 1, 2], "aeg-delivery-count per attempt");
    assert!(got.iter().all(|r| r.event_ids() == ["r-1"]));
    for (i, pair) in got.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let least = least_wait(i + 1, 500);
        assert!(
            gap >= least,
            "gap {} was {gap:?}, schedule allows {least:?}",
            i + 1
        );
    }
    // Delivered once: no further attempts after the 200.
    let log = eventually("3 logged attempts", WAIT, || async {
        let a = attempts(&app, "orders", "retried").await;
        (a.len() >= 3).then_some(a)
    })
    .await;
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(rx.notifications().len(), 3);
}

/// One subscription per status, each on its own receiver: only 200–204 are
/// success, 400/401/403/410/413 are dead-lettered at once, everything else
/// (other 2xx, redirects, 404, 408, 429, 5xx) is retried to the cap.
#[tokio::test]
async fn every_status_class_is_treated_as_event_grid_does() {
    struct Case {
        answer: Answer,
        attempts: usize,
        outcome: &'static str,
        reason: Option<&'static str>,
    }
    const MAX: &str = "MaxDeliveryAttemptsExceeded";
    const CLIENT: &str = "UndeliverableDueToClientError";
    let case = |answer, attempts, outcome, reason| Case {
        answer,
        attempts,
        outcome,
        reason,
    };
    let cases = [
        case(Answer::Status(200), 1, "Delivered", None),
        case(Answer::Status(201), 1, "Delivered", None),
        case(Answer::Status(202), 1, "Delivered", None),
        case(Answer::Status(204), 1, "Delivered", None),
        case(Answer::Status(206), 2, "Aborted", Some(MAX)),
        case(Answer::Redirect("/elsewhere"), 2, "Aborted", Some(MAX)),
        case(Answer::Status(400), 1, "BadRequest", Some(CLIENT)),
        case(Answer::Status(401), 1, "Unauthorized", Some(CLIENT)),
        case(Answer::Status(403), 1, "Forbidden", Some(CLIENT)),
        case(Answer::Status(404), 2, "NotFound", Some(MAX)),
        case(Answer::Status(408), 2, "Aborted", Some(MAX)),
        case(Answer::Status(410), 1, "NotFound", Some(CLIENT)),
        case(Answer::Status(413), 1, "PayloadTooLarge", Some(CLIENT)),
        case(Answer::RetryAfter(429, 1), 2, "Busy", Some(MAX)),
        case(Answer::Status(500), 2, "Aborted", Some(MAX)),
        case(Answer::Status(503), 2, "Busy", Some(MAX)),
    ];
    let app = delivery_app().await;
    let key = topic(&app, "statuses", "EventGridSchema").await;
    let policy =
        json!({ "retryPolicy": { "maxDeliveryAttempts": 2, "eventTimeToLiveInMinutes": 1440 } });
    let mut receivers = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let rx = Receiver::start().await;
        let answer = c.answer.clone();
        rx.script(|s| s.notify = answer);
        let extra = merge(policy.clone(), dead_letter_destination("dl"));
        hook_ok(
            &app,
            "statuses",
            &format!("status-{i}"),
            &rx.url("/hook"),
            json!({}),
            extra,
        )
        .await;
        receivers.push(rx);
    }
    publish(&app, "statuses", &key, &json!([eg("st-1", json!({}))])).await;

    for (i, (c, rx)) in cases.iter().zip(&receivers).enumerate() {
        let sub = format!("status-{i}");
        let what = format!("{:?}", c.answer);
        match c.reason {
            Some(reason) => {
                let dl = wait_dead_letters(&app, "statuses", &sub, 1).await;
                assert_eq!(dl[0]["deadLetterReason"], reason, "{what}: {dl:?}");
                assert_eq!(dl[0]["lastDeliveryOutcome"], c.outcome, "{what}: {dl:?}");
                assert_eq!(dl[0]["deliveryAttempts"], c.attempts, "{what}: {dl:?}");
            }
            None => {
                rx.wait_events(1).await;
            }
        }
        let notes = rx.notifications();
        assert_eq!(notes.len(), c.attempts, "{what}: attempts");
        let log = eventually(&format!("{what}: logged attempts"), WAIT, || async {
            let a = attempts(&app, "statuses", &sub).await;
            (a.len() >= c.attempts).then_some(a)
        })
        .await;
        assert!(
            log.iter().any(|a| a["outcome"] == c.outcome),
            "{what}: {log:?}"
        );
        assert!(
            rx.requests().iter().all(|r| r.uri != "/elsewhere"),
            "{what}: a redirect was followed"
        );
        if let Answer::RetryAfter(_, secs) = c.answer {
            let gap = notes[1].at - notes[0].at;
            assert!(
                gap >= Duration::from_secs(secs).mul_f64(JITTER_LOW),
                "429 Retry-After not honoured: {gap:?}"
            );
        }
    }
    // Nothing delivered was dead-lettered, and nothing came back later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, (c, rx)) in cases.iter().zip(&receivers).enumerate() {
        assert_eq!(
            rx.notifications().len(),
            c.attempts,
            "{:?}: late attempt",
            c.answer
        );
        if c.reason.is_none() {
            let dl = dead_letters(&app, "statuses", &format!("status-{i}")).await;
            assert!(dl.is_empty(), "{:?}: {dl:?}", c.answer);
        }
    }
}

#[tokio::test]
async fn retry_after_on_503_is_honoured_unscaled() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| {
        s.queued = VecDeque::from([Answer::RetryAfter(503, 1), Answer::RetryAfter(503, 1)]);
    });
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "busy",
        &rx.url("/busy"),
        json!({}),
        json!({}),
    )
    .await;
    publish(&app, "orders", &key, &json!([eg("ra-1", json!({}))])).await;
    let got = rx.wait_notifications("3 attempts", |n| n.len() >= 3).await;
    let counts: Vec<i64> = got.iter().map(Received::delivery_count).collect();
    assert_eq!(counts, [0, 1, 2]);
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(1),
            "Retry-After: 1 not honoured: {gap:?}"
        );
    }
    // The receiver sees the third request before Herald logs its outcome.
    let log = eventually("3 logged attempts", WAIT, || async {
        let a = attempts(&app, "orders", "busy").await;
        (a.len() >= 3).then_some(a)
    })
    .await;
    let outcomes: Vec<&str> = log.iter().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["Busy", "Busy", "Delivered"]);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_dead_letter_to_the_blob_layout() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.notify = Answer::Status(400));
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "dl-Sub",
        &rx.url("/dl"),
        json!({}),
        dead_letter_destination("dl"),
    )
    .await;
    let before = chrono::Utc::now();
    publish(&app, "orders", &key, &json!([eg("d-1", json!({ "x": 1 }))])).await;
    let dl = wait_dead_letters(&app, "orders", "dl-Sub", 1).await;
    let after = chrono::Utc::now();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["deadLetterReason"], "UndeliverableDueToClientError");
    assert_eq!(dl[0]["deliveryAttempts"], 1);
    assert_eq!(dl[0]["lastDeliveryOutcome"], "BadRequest");
    assert_eq!(dl[0]["event"]["id"], "d-1");
    assert_eq!(rx.notifications().len(), 1, "400 is never retried");

    // The blob: dl/DL-SUB/YYYY/M/D/H/<guid>.json, not zero-padded.
    let root = app
        .data_dir
        .path()
        .join("deadletters")
        .join("dl")
        .join("DL-SUB");
    let files = eventually("a dead-letter blob", WAIT, || {
        let f = if root.exists() {
            files_under(&root)
        } else {
            Vec::new()
        };
        std::future::ready((!f.is_empty()).then_some(f))
    })
    .await;
    assert_eq!(files.len(), 1, "{files:?}");
    let rel = files[0].strip_prefix(&root).expect("under root");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts.len(), 5, "{rel:?}");
    let nums: Vec<u32> = parts[..4]
        .iter()
        .map(|p| {
            let n: u32 = p.parse().unwrap_or_else(|_| panic!("{rel:?}"));
            assert_eq!(n.to_string(), *p, "not zero-padded: {rel:?}");
            n
        })
        .collect();
    use chrono::{Datelike, Timelike};
    let hour =
        |t: chrono::DateTime<chrono::Utc>| vec![t.year() as u32, t.month(), t.day(), t.hour()];
    assert!(nums == hour(before) || nums == hour(after), "{rel:?}");
    assert!(
        parts[4].ends_with(".json") && parts[4].len() == 36 + 5,
        "{rel:?}"
    );
    let blob: Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("read blob")).expect("JSON blob");
    let arr = blob.as_array().expect("a blob is a JSON array");
    assert_eq!(arr.len(), 1);
    let e = &arr[0];
    assert_eq!(e["id"], "d-1");
    assert_eq!(e["data"], json!({ "x": 1 }));
    assert_eq!(e["deadLetterReason"], "UndeliverableDueToClientError");
    assert_eq!(e["deliveryAttempts"], 1);
    assert_eq!(e["lastDeliveryOutcome"], "BadRequest");
    for field in ["publishTime", "lastDeliveryAttemptTime"] {
        let t = e[field].as_str().unwrap_or_else(|| panic!("{field}: {e}"));
        chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|_| panic!("{field}: {t}"));
    }
}

#[tokio::test]
async fn max_delivery_attempts_then_dead_letter_then_replay() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.notify = Answer::Status(500));
    let key = topic(&app, "orders", "EventGridSchema").await;
    let extra = merge(
        json!({ "retryPolicy": { "maxDeliveryAttempts": 2, "eventTimeToLiveInMinutes": 1440 } }),
        dead_letter_destination("dl"),
    );
    hook_ok(&app, "orders", "capped", &rx.url("/c"), json!({}), extra).await;
    publish(&app, "orders", &key, &json!([eg("x-1", json!({}))])).await;
    let dl = wait_dead_letters(&app, "orders", "capped", 1).await;
    assert_eq!(dl[0]["deadLetterReason"], "MaxDeliveryAttemptsExceeded");
    assert_eq!(dl[0]["deliveryAttempts"], 2);
    assert_eq!(dl[0]["lastDeliveryOutcome"], "Aborted");
    let notes = rx.notifications();
    let counts: Vec<i64> = notes.iter().map(Received::delivery_count).collect();
    assert_eq!(counts, [0, 1], "exactly 2 attempts");
    // Well past the next scheduled step (30 ms): still only two.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.notifications().len(), 2, "attempted after the cap");

    rx.script(|s| s.notify = Answer::Ok);
    let r = mgmt(
        &app,
        reqwest::Method::POST,
        &format!("{}/deadLetters/replay", sub_path("orders", "capped")),
        Some(json!({ "ids": [dl[0]["id"]] })),
    )
    .await;
    assert_eq!(r.expect(200)["replayed"], 1, "{}", r.text);
    let got = rx
        .wait_notifications("the replayed delivery", |n| n.len() >= 3)
        .await;
    assert_eq!(got[2].event_ids(), ["x-1"]);
    let log = eventually("the replay in the log", WAIT, || async {
        let a = attempts(&app, "orders", "capped").await;
        a.iter().any(|a| a["outcome"] == "Delivered").then_some(a)
    })
    .await;
    assert!(log.iter().all(|a| a["eventId"] == "x-1"), "{log:?}");
}

#[tokio::test]
async fn events_that_outlive_their_time_to_live_are_dead_lettered() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.notify = Answer::Status(503));
    let key = topic(&app, "orders", "EventGridSchema").await;
    // 60 minutes, compressed by SCALE to 3.6 s; the 30 attempts never run out.
    let extra = merge(
        json!({ "retryPolicy": { "maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 60 } }),
        dead_letter_destination("ttl"),
    );
    hook_ok(&app, "orders", "ttl-sub", &rx.url("/t"), json!({}), extra).await;
    let published = std::time::Instant::now();
    publish(&app, "orders", &key, &json!([eg("t-1", json!({}))])).await;
    let dl = wait_dead_letters(&app, "orders", "ttl-sub", 1).await;
    let took = published.elapsed();
    assert_eq!(dl[0]["deadLetterReason"], "TimeToLiveExceeded", "{dl:?}");
    assert_eq!(dl[0]["lastDeliveryOutcome"], "Busy");
    let attempts = dl[0]["deliveryAttempts"].as_i64().expect("attempts");
    // The scaled schedule fits 5-7 attempts into 3.6 s (publish times are
    // whole seconds), and none after the event expired.
    assert!((4..30).contains(&attempts), "{attempts} attempts");
    // At the last attempt that fits, not when the next wait would end (6.4 s).
    assert!(
        took < Duration::from_secs(6),
        "dead-lettered after {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.notifications().len() as i64, attempts);
    // The dead-letter destination gets it too.
    let root = app
        .data_dir
        .path()
        .join("deadletters")
        .join("ttl")
        .join("TTL-SUB");
    let files = eventually("a dead-letter blob", WAIT, || {
        let f = if root.exists() {
            files_under(&root)
        } else {
            Vec::new()
        };
        std::future::ready((!f.is_empty()).then_some(f))
    })
    .await;
    let blob: Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("read blob")).expect("JSON blob");
    assert_eq!(blob[0]["id"], "t-1");
    assert_eq!(blob[0]["deadLetterReason"], "TimeToLiveExceeded");

    // Events that waited past their time to live for the subscription to be
    // validated are dead-lettered without being sent.
    let rx2 = Receiver::start().await;
    rx2.script(|s| s.validation = Answer::Ok);
    let extra = merge(
        json!({ "retryPolicy": { "eventTimeToLiveInMinutes": 1 } }),
        dead_letter_destination("ttl2"),
    );
    let r = put_hook(&app, "orders", "held", &rx2.url("/h"), json!({}), extra).await;
    assert_eq!(r.expect(201)["provisioningState"], "AwaitingManualAction");
    let link = rx2.requests()[0].json()[0]["data"]["validationUrl"]
        .as_str()
        .expect("validationUrl")
        .to_owned();
    publish(&app, "orders", &key, &json!([eg("stale", json!({}))])).await;
    // 1 minute is 60 ms at SCALE; publish times are whole seconds.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = app.send(app.client.get(&link)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let dl = wait_dead_letters(&app, "orders", "held", 1).await;
    assert_eq!(dl[0]["deadLetterReason"], "TimeToLiveExceeded", "{dl:?}");
    assert_eq!(dl[0]["lastDeliveryOutcome"], "Canceled");
    assert_eq!(dl[0]["deliveryAttempts"], 0, "never sent: {dl:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx2.notifications().is_empty(), "an expired event was sent");
}

#[tokio::test]
async fn retries_that_expired_while_herald_was_down_are_dead_lettered_with_the_blob() {
    let mut app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.notify = Answer::Status(503));
    let key = topic(&app, "orders", "EventGridSchema").await;
    // 60 minutes at SCALE is 3.6 s.
    let extra = merge(
        json!({ "retryPolicy": { "eventTimeToLiveInMinutes": 60 } }),
        dead_letter_destination("down"),
    );
    hook_ok(&app, "orders", "down", &rx.url("/d"), json!({}), extra).await;
    publish(&app, "orders", &key, &json!([eg("d-1", json!({}))])).await;
    // Five attempts take ~0.4 s; the sixth is due ~0.6 s later, well inside
    // the time to live. Stop in between, and stay down past it.
    rx.wait_notifications("five attempts", |n| n.len() >= 5)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.stop().await;
    let sent = rx.notifications().len();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    app.restart().await;
    let dl = wait_dead_letters(&app, "orders", "down", 1).await;
    assert_eq!(dl[0]["deadLetterReason"], "TimeToLiveExceeded", "{dl:?}");
    assert_eq!(dl[0]["lastDeliveryOutcome"], "Busy");
    assert_eq!(dl[0]["deliveryAttempts"], sent as i64, "{dl:?}");
    assert_eq!(rx.notifications().len(), sent, "an expired event was sent");
    let root = app
        .data_dir
        .path()
        .join("deadletters")
        .join("down")
        .join("DOWN");
    let files = eventually("a dead-letter blob", WAIT, || {
        let f = if root.exists() {
            files_under(&root)
        } else {
            Vec::new()
        };
        std::future::ready((!f.is_empty()).then_some(f))
    })
    .await;
    let blob: Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("read blob")).expect("JSON blob");
    assert_eq!(blob[0]["id"], "d-1");
    assert_eq!(blob[0]["deadLetterReason"], "TimeToLiveExceeded");
    assert_eq!(blob[0]["lastDeliveryOutcome"], "Busy");
    assert_eq!(blob[0]["lastHttpStatusCode"], 503, "{blob}");
    assert_eq!(blob[0]["deliveryAttempts"], sent as i64, "{blob}");
}

#[tokio::test]
async fn replay_with_an_empty_body_replays_every_dead_letter() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.notify = Answer::Status(403));
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(&app, "orders", "all", &rx.url("/a"), json!({}), json!({})).await;
    let events: Vec<Value> = (0..3).map(|i| eg(&format!("a-{i}"), json!({}))).collect();
    publish(&app, "orders", &key, &Value::Array(events)).await;
    let dl = wait_dead_letters(&app, "orders", "all", 3).await;
    assert!(
        dl.iter().all(|d| d["lastDeliveryOutcome"] == "Forbidden"),
        "{dl:?}"
    );
    rx.script(|s| s.notify = Answer::Ok);
    let url = format!(
        "{}/api/v1/topics{}/deadLetters/replay",
        origin(&app),
        sub_path("orders", "all")
    );
    let r = call(&app, app.client.post(url).bearer_auth(&app.token)).await;
    assert_eq!(r.expect(200)["replayed"], 3, "{}", r.text);
    let got = rx
        .wait_notifications("3 replays", |n| {
            n.iter().filter(|r| r.delivery_count() == 0).count() >= 6
        })
        .await;
    let mut ids: Vec<String> = got[3..].iter().flat_map(Received::event_ids).collect();
    ids.sort();
    assert_eq!(ids, ["a-0", "a-1", "a-2"]);
}

// ---------------------------------------------------------------------------
// Delivery log and probation

#[tokio::test]
async fn the_delivery_log_lists_every_attempt() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.queued = VecDeque::from([Answer::Status(500), Answer::Status(404)]));
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "logged",
        &rx.url("/l"),
        json!({}),
        json!({}),
    )
    .await;
    publish(&app, "orders", &key, &json!([eg("l-1", json!({}))])).await;
    let log = eventually("3 logged attempts", WAIT, || async {
        let a = attempts(&app, "orders", "logged").await;
        (a.len() >= 3).then_some(a)
    })
    .await;
    assert_eq!(log.len(), 3, "{log:?}");
    let statuses: Vec<Value> = log.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(500), json!(404), json!(200)]);
    let outcomes: Vec<&str> = log.iter().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["Aborted", "NotFound", "Delivered"]);
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["eventId"], "l-1");
        assert_eq!(a["attempt"], i as i64 + 1, "{a}");
        assert!(a["latencyMs"].as_i64().is_some_and(|l| l >= 0), "{a}");
        let t = a["time"].as_str().unwrap_or_else(|| panic!("{a}"));
        chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339 time");
    }
    // 404 demands at least 5 min (scaled: 300 ms) before the next attempt.
    let notes = rx.notifications();
    assert_eq!(notes.len(), 3);
    assert!(notes[2].at - notes[1].at >= least_wait(2, 404));
}

#[tokio::test]
async fn a_batch_is_logged_once_and_found_by_any_of_its_events() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "batch-log",
        &rx.url("/bl"),
        json!({ "maxEventsPerBatch": 50 }),
        json!({}),
    )
    .await;
    let mut events: Vec<Value> = (0..5).map(|i| eg(&format!("bl-{i}"), json!({}))).collect();
    // Its JSON text, "x\"tail", holds "tail" as a quoted string.
    events.push(eg("x\"tail", json!({})));
    publish(&app, "orders", &key, &Value::Array(events)).await;
    let got = rx.wait_events(6).await;
    let requests = got.len();
    let log = eventually("the batch is logged", WAIT, || async {
        let a = attempts(&app, "orders", "batch-log").await;
        let logged: u64 = a.iter().filter_map(|a| a["eventCount"].as_u64()).sum();
        (logged >= 6).then_some(a)
    })
    .await;
    // One record per request, however many events it carried.
    assert_eq!(log.len(), requests, "{log:?}");
    let mut ids: Vec<String> = log
        .iter()
        .flat_map(|a| a["eventIds"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ids.sort();
    assert_eq!(ids, ["bl-0", "bl-1", "bl-2", "bl-3", "bl-4", "x\"tail"]);
    for a in &log {
        assert_eq!(a["eventId"], a["eventIds"][0], "{a}");
        assert_eq!(a["status"], 200);
        assert_eq!(a["outcome"], "Delivered");
    }
    // ?eventId= finds the request that carried an event, not its neighbours'.
    let one = event_attempts(&app, "orders", "batch-log", "bl-3").await;
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(
        one[0]["eventIds"]
            .as_array()
            .is_some_and(|ids| ids.contains(&json!("bl-3")))
    );
    let none = event_attempts(&app, "orders", "batch-log", "bl-").await;
    assert_eq!(none, Vec::<Value>::new());
    let tail = event_attempts(&app, "orders", "batch-log", "tail").await;
    assert_eq!(tail, Vec::<Value>::new(), "only exact ids match");
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_goes_on_probation() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    rx.script(|s| s.notify = Answer::Status(500));
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(&app, "orders", "flaky", &rx.url("/f"), json!({}), json!({})).await;
    let events: Vec<Value> = (0..12).map(|i| eg(&format!("p-{i}"), json!({}))).collect();
    publish(&app, "orders", &key, &Value::Array(events)).await;
    let health = eventually("probation", WAIT, || async {
        let s = get_sub(&app, "orders", "flaky").await;
        s["deliveryHealth"]["probationUntil"]
            .as_i64()
            .is_some()
            .then(|| s["deliveryHealth"].clone())
    })
    .await;
    assert!(
        health["consecutiveFailures"]
            .as_u64()
            .is_some_and(|n| n >= 10),
        "{health}"
    );
    assert_eq!(health["lastOutcome"], "Aborted");
    assert!(rx.notifications().len() >= 10);

    // Recovery ends probation.
    rx.script(|s| s.notify = Answer::Ok);
    let health = eventually("probation to end", WAIT, || async {
        let s = get_sub(&app, "orders", "flaky").await;
        s["deliveryHealth"]["probationUntil"]
            .is_null()
            .then(|| s["deliveryHealth"].clone())
    })
    .await;
    assert_eq!(health["consecutiveFailures"], 0, "{health}");
}

#[tokio::test]
async fn after_an_outage_everything_arrives_and_no_attempt_is_early() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    let key = topic(&app, "orders", "EventGridSchema").await;
    hook_ok(
        &app,
        "orders",
        "outage",
        &rx.url("/o"),
        json!({}),
        json!({}),
    )
    .await;
    rx.script(|s| s.outage_until = Some(Instant::now() + Duration::from_millis(1500)));
    let events: Vec<Value> = (0..5)
        .map(|i| eg(&format!("o-{i}"), json!({ "i": i })))
        .collect();
    publish(&app, "orders", &key, &Value::Array(events)).await;
    let outage_end = rx
        .inner
        .script
        .lock()
        .expect("lock")
        .outage_until
        .expect("set");
    let delivered = |n: &[Received]| {
        let ok: std::collections::BTreeSet<String> = n
            .iter()
            .filter(|r| r.at >= outage_end)
            .flat_map(Received::event_ids)
            .collect();
        ok.len() == 5
    };
    let notes = rx
        .wait_notifications("all 5 after the outage", delivered)
        .await;
    let per_event = by_event(&notes);
    assert_eq!(per_event.len(), 5);
    for (id, tries) in &per_event {
        assert!(tries.len() >= 2, "{id} was not retried: {}", tries.len());
        for (i, pair) in tries.windows(2).enumerate() {
            assert_eq!(
                pair[1].delivery_count(),
                pair[0].delivery_count() + 1,
                "{id}"
            );
            let gap = pair[1].at - pair[0].at;
            let least = least_wait(i + 1, 503);
            assert!(gap >= least, "{id} attempt {}: {gap:?} < {least:?}", i + 2);
        }
        assert!(tries.last().is_some_and(|r| r.at >= outage_end));
    }
}

// ---------------------------------------------------------------------------
// Subscription deletion event (§7, opt-in with sendDeletionEvent)

fn deletion_events(rx: &Receiver) -> Vec<Received> {
    rx.requests()
        .into_iter()
        .filter(|r| r.header("aeg-event-type") == Some("SubscriptionDeletion"))
        .collect()
}

async fn delete_sub(app: &TestApp, topic: &str, name: &str) -> Resp {
    mgmt(app, reqwest::Method::DELETE, &sub_path(topic, name), None).await
}

async fn wait_deletion_events(rx: &Receiver) -> Vec<Received> {
    eventually("a SubscriptionDeletion request", WAIT, || {
        let d = deletion_events(rx);
        std::future::ready((!d.is_empty()).then_some(d))
    })
    .await
}

/// Standard Webhooks: some `v1` signature is the HMAC-SHA256 of
/// `webhook-id.webhook-timestamp.body` under the secret's key.
fn signed_with(secret: &str, r: &Received) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64 key");
    let (Some(id), Some(ts), Some(signatures)) = (
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split_ascii_whitespace().any(|s| s == want)
}

#[tokio::test]
async fn deleting_a_subscription_that_asked_sends_one_signed_deletion_event() {
    use base64::Engine;
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    topic(&app, "orders", "EventGridSchema").await;
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    hook_ok(
        &app,
        "orders",
        "Gone-Hook",
        &rx.url("/hook?code=abc"),
        json!({}),
        json!({ "sendDeletionEvent": true, "signingSecret": secret }),
    )
    .await;
    let shown = get_sub(&app, "orders", "Gone-Hook").await;
    assert_eq!(shown["sendDeletionEvent"], true, "{shown}");
    let sub_id = shown["id"].as_str().expect("subscription id").to_owned();
    assert_eq!(
        sub_id,
        format!(
            "{}/providers/Microsoft.EventGrid/eventSubscriptions/Gone-Hook",
            topic_arm("orders")
        )
    );
    assert!(deletion_events(&rx).is_empty(), "nothing before the delete");

    let before = chrono::Utc::now();
    delete_sub(&app, "orders", "Gone-Hook").await.expect(204);
    let got = wait_deletion_events(&rx).await;
    // Once and never retried: anything else would arrive within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(deletion_events(&rx).len(), 1, "{:?}", deletion_events(&rx));
    let r = &got[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.uri, "/hook?code=abc", "the endpoint URL as configured");
    assert_eq!(r.header("aeg-subscription-name"), Some("GONE-HOOK"));
    assert_eq!(r.header("aeg-metadata-version"), Some("1"));
    assert_eq!(r.header("content-type"), Some(EG_JSON));
    let body = r.json();
    let events = body.as_array().expect("the body is an array");
    assert_eq!(events.len(), 1, "{body}");
    let e = &events[0];
    let id = e["id"].as_str().expect("id");
    assert_eq!(id.len(), 36, "a GUID: {id}");
    assert_eq!(e["topic"], topic_arm("orders"));
    assert_eq!(e["subject"], "");
    assert_eq!(
        e["eventType"],
        "Microsoft.EventGrid.SubscriptionDeletedEvent"
    );
    assert_eq!(e["data"], json!({ "eventSubscriptionId": sub_id }));
    assert_eq!(e["dataVersion"], "1");
    assert_eq!(e["metadataVersion"], "1");
    let at = chrono::DateTime::parse_from_rfc3339(e["eventTime"].as_str().expect("eventTime"))
        .expect("RFC 3339 eventTime");
    assert!(
        at >= before - chrono::Duration::seconds(1) && at <= chrono::Utc::now(),
        "{at}"
    );
    // Signed like deliveries, with the secret read before the delete.
    assert_eq!(r.header("webhook-id"), Some(id));
    assert!(signed_with(&secret, r), "{:?}", r.headers);

    mgmt(
        &app,
        reqwest::Method::GET,
        &sub_path("orders", "Gone-Hook"),
        None,
    )
    .await
    .expect_error(404, "NotFound");
}

#[tokio::test]
async fn deletion_events_are_opt_in_and_only_for_validated_webhooks() {
    let app = delivery_app().await;
    let rx = Receiver::start().await;
    topic(&app, "orders", "EventGridSchema").await;
    // Off by default, and not shown.
    hook_ok(&app, "orders", "quiet", &rx.url("/q"), json!({}), json!({})).await;
    let shown = get_sub(&app, "orders", "quiet").await;
    assert!(shown.get("sendDeletionEvent").is_none(), "{shown}");
    delete_sub(&app, "orders", "quiet").await.expect(204);
    // Asked for, but never validated.
    rx.script(|s| s.validation = Answer::Status(500));
    let r = put_hook(
        &app,
        "orders",
        "failed",
        &rx.url("/f"),
        json!({}),
        json!({ "sendDeletionEvent": true }),
    )
    .await;
    assert_eq!(r.expect(201)["provisioningState"], "Failed");
    rx.script(|s| s.validation = Answer::EchoCode);
    delete_sub(&app, "orders", "failed").await.expect(204);

    // Expiry deletes too (the sweep runs every 5 s), and does announce it.
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    hook_ok(
        &app,
        "orders",
        "expiring",
        &rx.url("/x"),
        json!({}),
        json!({ "sendDeletionEvent": true, "expirationTimeUtc": expires }),
    )
    .await;
    let got = wait_deletion_events(&rx).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = deletion_events(&rx);
    assert_eq!(all.len(), 1, "only the expired one: {all:?}");
    assert_eq!(got[0].uri, "/x");
    assert_eq!(got[0].header("aeg-subscription-name"), Some("EXPIRING"));
    assert_eq!(
        got[0].json()[0]["data"]["eventSubscriptionId"],
        format!(
            "{}/providers/Microsoft.EventGrid/eventSubscriptions/expiring",
            topic_arm("orders")
        )
    );
    assert!(
        got[0].header("webhook-signature").is_none(),
        "no secret, no signature"
    );
    mgmt(
        &app,
        reqwest::Method::GET,
        &sub_path("orders", "expiring"),
        None,
    )
    .await
    .expect_error(404, "NotFound");
}

#[tokio::test]
async fn queue_subscriptions_cannot_ask_for_deletion_events() {
    let app = delivery_app().await;
    topic(&app, "orders", "EventGridSchema").await;
    let r = mgmt(
        &app,
        reqwest::Method::PUT,
        &sub_path("orders", "pull"),
        Some(json!({
            "deliveryConfiguration": { "deliveryMode": "Queue" },
            "sendDeletionEvent": true,
        })),
    )
    .await;
    r.expect_error(400, "BadRequest");
    assert!(r.message().contains("sendDeletionEvent"), "{}", r.text);
    mgmt(
        &app,
        reqwest::Method::GET,
        &sub_path("orders", "pull"),
        None,
    )
    .await
    .expect_error(404, "NotFound");
    // Saying no is fine.
    mgmt(
        &app,
        reqwest::Method::PUT,
        &sub_path("orders", "pull"),
        Some(json!({
            "deliveryConfiguration": { "deliveryMode": "Queue" },
            "sendDeletionEvent": false,
        })),
    )
    .await
    .expect(201);
}
