//! Automation end to end: Key Vault events → Event Grid subscription →
//! Herald webhook → runbook job that rotates the secret with the `herald`
//! CLI and its job-scoped token; job durability across a kill -9 of the
//! server; remote workers (`herald worker`) and lost leases.

use crate::binary::{Herald, free_port, start};
use crate::helpers::*;
use axum::body::Bytes;
use axum::extract::State;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const NEAR: &str = "Microsoft.KeyVault.SecretNearExpiry";
const NEW: &str = "Microsoft.KeyVault.SecretNewVersionCreated";
const DAY: i64 = 86_400;
const FINAL: [&str; 4] = ["Completed", "Failed", "Stopped", "Suspended"];

// ---------------------------------------------------------------------------
// Small API client shared by in-process servers and the real binary

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    origin: String,
}

impl Api {
    fn of(app: &TestApp) -> Self {
        Self {
            client: app.client.clone(),
            origin: format!("https://localhost:{}", app.port),
        }
    }

    fn of_bin(h: &Herald) -> Self {
        Self {
            client: h.client.clone(),
            origin: h.origin.clone(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.origin))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = read(req.send().await.expect("request reaches the server")).await;
        assert!(r.status < 500, "server error {}: {}", r.status, r.text);
        r
    }

    /// A request under `/api/v1/automation`.
    async fn auto(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.call(method, &format!("/api/v1/automation{path}"), body)
            .await
    }

    /// Creates and publishes a runbook.
    async fn runbook(&self, name: &str, kind: &str, content: &str, extra: Value) {
        let mut body = json!({"runbookType": kind, "content": content, "publish": true});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let r = self
            .auto(Method::PUT, &format!("/runbooks/{name}"), Some(body))
            .await;
        assert_eq!(
            r.expect(201)["properties"]["state"],
            "Published",
            "{}",
            r.text
        );
    }

    /// Creates a webhook on `runbook` and returns its URL (shown only now).
    async fn webhook(&self, name: &str, runbook: &str, props: Value) -> String {
        let mut p = json!({"runbook": {"name": runbook}, "parameters": {}});
        if let (Value::Object(b), Value::Object(e)) = (&mut p, props) {
            b.extend(e);
        }
        let r = self
            .auto(
                Method::PUT,
                &format!("/webhooks/{name}"),
                Some(json!({ "properties": p })),
            )
            .await;
        let uri = r.expect(201)["properties"]["uri"]
            .as_str()
            .expect("uri")
            .to_owned();
        assert!(
            uri.starts_with(&format!("{}/webhooks?token=", self.origin)),
            "webhook uri {uri}"
        );
        uri
    }

    /// Calls a webhook URL as any client would (no bearer token); 202 expected.
    async fn invoke(&self, uri: &str, body: &str) -> String {
        let r = read(
            self.client
                .post(uri)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .expect("webhook call reaches the server"),
        )
        .await;
        let ids = r.expect(202)["JobIds"].as_array().expect("JobIds").clone();
        assert_eq!(ids.len(), 1, "{}", r.text);
        ids[0].as_str().expect("job id").to_owned()
    }

    /// The job's `properties` (with `history`).
    async fn job(&self, id: &str) -> Value {
        self.auto(Method::GET, &format!("/jobs/{id}"), None)
            .await
            .expect(200)["properties"]
            .clone()
    }

    async fn output(&self, id: &str) -> String {
        let r = self
            .auto(Method::GET, &format!("/jobs/{id}/output"), None)
            .await;
        r.expect(200);
        r.text
    }

    /// The texts of one stream of a job.
    async fn stream(&self, id: &str, stream: &str) -> Vec<String> {
        let r = self
            .auto(
                Method::GET,
                &format!("/jobs/{id}/streams?streamType={stream}"),
                None,
            )
            .await;
        r.expect(200)["value"]
            .as_array()
            .expect("value")
            .iter()
            .map(|v| v["streamText"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn jobs_of(&self, runbook: &str) -> Vec<Value> {
        let r = self
            .auto(Method::GET, &format!("/jobs?runbook={runbook}"), None)
            .await;
        r.expect(200)["value"]
            .as_array()
            .expect("value")
            .iter()
            .map(|j| j["properties"].clone())
            .collect()
    }

    /// Polls the job until `ready` holds; returns its properties.
    async fn job_until(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.job(id).await;
            if ready(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: timed out waiting for {what}; last seen: {j:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn job_final(&self, id: &str, timeout: Duration) -> Value {
        self.job_until(id, "a final status", timeout, |j| {
            FINAL.contains(&status(j))
        })
        .await
    }
}

fn status(job: &Value) -> &str {
    job["status"].as_str().unwrap_or_default()
}

fn history(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|t| t["status"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The test build of `herald`, put on the PATH of runbook jobs.
fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

// ---------------------------------------------------------------------------
// 1. Rotation end to end (the issue's acceptance test)

/// Bash lines defining `kv OUT METHOD PATH [BODY]`: a Key Vault call on
/// vault `payments` with the job token, printing the HTTP status and
/// writing the response body to OUT. Plain curl, for runbooks that must not
/// depend on the `herald` CLI. HTTP/1.1 because over HTTP/2 curl 7.88
/// fails about half the time with "(92) Stream error in the HTTP/2 framing
/// layer" when the server answers a request with a body before reading it
/// (a 401 or 403) and then resets the stream (RFC 9113 §8.1 allows that).
const KV_CURL: &str = r#"port="${HERALD_ADDR##*:}"
host="payments.$HERALD_VAULT_BASE"
kv() {
  local out="$1" method="$2" path="$3"
  shift 3
  curl --http1.1 -sS --cacert "$HERALD_CACERT" --resolve "$host:$port:127.0.0.1" \
    -H "Authorization: Bearer $HERALD_TOKEN" -H 'Content-Type: application/json' \
    -o "$out" -w '%{http_code}' -X "$method" ${1:+--data-binary "$1"} \
    "https://$host:$port$path?api-version=7.6"
}
"#;

/// How the rotation runbook writes the new version of `$name` to `$value`.
const SET_WITH_CLI: &str = r#"herald secret set "$name" "$value" --vault payments >/dev/null"#;
const SET_WITH_CURL: &str = r#"code="$(kv /dev/null PUT "/secrets/$name" "$(jq -n --arg v "$value" '{value: $v}')")"
  [ "$code" = 200 ] || { echo "setting $name answered HTTP $code" >&2; exit 1; }"#;

/// Prints the Event Grid request body it was called with (WebhookData's
/// RequestBody); on SecretNearExpiry it writes a new version of the secret
/// the event names.
fn rotate_script(set: &str) -> String {
    format!(
        r#"set -euo pipefail
{KV_CURL}
body="$(jq -r '.WebhookData.RequestBody' "$HERALD_JOB_INPUT")"
echo "$body"
if grep -q '{NEAR}' <<<"$body"; then
  name="$(jq -r 'if type == "array" then . else [.] end
    | map(select(.eventType == "{NEAR}"))
    | .[0] | (.data.ObjectName // .subject)' <<<"$body")"
  value="rotated-$(date +%s%N)"
  {set}
  echo "rotated $name"
fi
"#
    )
}

/// A vault `payments` whose near-expiry window (2 days) makes a secret
/// expiring tomorrow near expiry at once, and the rotation runbook with a
/// webhook; returns the webhook URL.
async fn rotation_setup(app: &TestApp, api: &Api, set: &str) -> String {
    let v = app
        .create_vault(json!({"name": "payments", "nearExpiryWindowInSeconds": 2 * DAY}))
        .await;
    assert_eq!(v["nearExpiryWindowInSeconds"], 2 * DAY);
    api.runbook(
        "Rotate-DbPassword",
        "bash",
        &rotate_script(set),
        json!({"permissions": [{"vault": "payments", "actions": ["get", "set"]}]}),
    )
    .await;
    api.webhook("rotate-db", "Rotate-DbPassword", json!({}))
        .await
}

/// Sets `db-password` expiring tomorrow; returns its version.
async fn set_expiring_secret(app: &TestApp) -> String {
    let first = app
        .set(
            "payments",
            "db-password",
            json!({"value": "initial-pw", "attributes": {"exp": now() + DAY}}),
        )
        .await;
    version_of(first["id"].as_str().expect("id"))
}

/// Waits for the final job whose output shows the SecretNearExpiry event;
/// `diagnose` explains a timeout.
async fn near_expiry_job(api: &Api, diagnose: &str) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for j in api.jobs_of("Rotate-DbPassword").await {
            let id = j["jobId"].as_str().expect("jobId").to_owned();
            // The body is printed first thing, so a final job shows it.
            let j = api.job_final(&id, Duration::from_secs(30)).await;
            let out = api.output(&id).await;
            if out.contains(NEAR) {
                return (j, out);
            }
        }
        if Instant::now() > deadline {
            let mut why = String::new();
            if !diagnose.is_empty() {
                why = api.call(Method::GET, diagnose, None).await.text;
            }
            panic!(
                "no job for the SecretNearExpiry delivery; jobs: {:#?}\n{diagnose}: {why}",
                api.jobs_of("Rotate-DbPassword").await,
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The SecretNearExpiry job completed, rotated, and got Event Grid's
/// request as WebhookData.
async fn assert_near_expiry_job(api: &Api, job: &Value, output: &str, first_version: &str) {
    let id = job["jobId"].as_str().expect("jobId");
    assert_eq!(
        status(job),
        "Completed",
        "job {job:#}\nerrors: {:?}",
        api.stream(id, "Error").await
    );
    assert_eq!(job["startedBy"], "webhook:rotate-db");
    assert!(output.contains("rotated db-password"), "output: {output}");
    let wd = &job["parameters"]["WebhookData"];
    assert_eq!(wd["WebhookName"], "rotate-db", "{job:#}");
    assert_eq!(
        wd["RequestHeader"]["aeg-event-type"], "Notification",
        "{job:#}"
    );
    let events: Value = serde_json::from_str(wd["RequestBody"].as_str().expect("RequestBody"))
        .expect("RequestBody is the JSON Event Grid sent");
    let near = events
        .as_array()
        .expect("an Event Grid batch is an array")
        .iter()
        .find(|e| e["eventType"] == NEAR)
        .expect("the NearExpiry event");
    assert_eq!(near["subject"], "db-password");
    assert_eq!(near["topic"], vault_topic("payments"));
    assert_eq!(near["data"]["Version"], first_version);
}

/// `db-password` has exactly one more version, written by the runbook;
/// returns that version.
async fn assert_rotated(app: &TestApp, first_version: &str) -> String {
    let versions = app
        .list_all("payments", "/secrets/db-password/versions")
        .await;
    assert_eq!(versions.len(), 2, "one rotation: {versions:#?}");
    let latest = app
        .kv(Method::GET, "payments", "/secrets/db-password", None)
        .await;
    let latest = latest.expect(200);
    let value = latest["value"].as_str().expect("value");
    assert!(value.starts_with("rotated-"), "latest value {value}");
    let version = version_of(latest["id"].as_str().expect("id"));
    assert_ne!(version, first_version);
    version
}

/// The issue's acceptance test, exactly as a user sets it up: subscription
/// on the vault's system topic → Herald webhook → runbook rotating the
/// secret with `herald secret set`, default configuration.
#[tokio::test]
async fn near_expiry_event_rotates_the_secret_through_a_webhook_runbook() {
    let app = spawn_app_with(|cfg| cfg.herald_bin = Some(herald_bin())).await;
    let api = Api::of(&app);
    let uri = rotation_setup(&app, &api, SET_WITH_CLI).await;

    // The vault's system topic routes to the webhook; Herald validates its
    // own webhook URL without any manual handshake.
    let sub_path = "/api/v1/topics/payments/eventSubscriptions/rotate-db";
    let r = api
        .call(
            Method::PUT,
            sub_path,
            Some(json!({
                "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": uri}},
                "filter": {"includedEventTypes": [NEW, NEAR]},
                "eventDeliverySchema": "EventGridSchema",
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(10);
    let sub = loop {
        let s = api.call(Method::GET, sub_path, None).await;
        let s = s.expect(200).clone();
        if s["provisioningState"] == "Succeeded" {
            break s;
        }
        assert!(
            Instant::now() < deadline && s["provisioningState"] != "Failed",
            "the subscription to the Herald webhook is not Succeeded: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sub["filter"]["includedEventTypes"], json!([NEW, NEAR]));
    // The validation handshake started no job.
    assert!(api.jobs_of("Rotate-DbPassword").await.is_empty());

    let first_version = set_expiring_secret(&app).await;
    let (job, output) = near_expiry_job(&api, &format!("{sub_path}/attempts")).await;
    assert_near_expiry_job(&api, &job, &output, &first_version).await;
    let latest = assert_rotated(&app, &first_version).await;

    // The rotation's own NewVersionCreated event reaches the runbook too,
    // which only prints it: no rotation loop.
    eventually(
        "a job for the rotated version's NewVersionCreated event",
        Duration::from_secs(30),
        || {
            let (api, latest) = (api.clone(), latest.clone());
            async move {
                for j in api.jobs_of("Rotate-DbPassword").await {
                    let id = j["jobId"].as_str().expect("jobId");
                    if status(&j) == "Completed" && api.output(id).await.contains(&latest) {
                        return Some(());
                    }
                }
                None
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_rotated(&app, &first_version).await;
}

/// The same pipeline with the delivery made by the test exactly as Event
/// Grid makes it (validation handshake, then one POST per event from the
/// vault's log) and the runbook writing with curl and its job token, so
/// the automation half is covered whatever the router and CLI do.
#[tokio::test]
async fn event_grid_deliveries_to_the_webhook_rotate_the_secret() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    let uri = rotation_setup(&app, &api, SET_WITH_CURL).await;

    // Event Grid's validation handshake is answered inline and starts nothing.
    let code = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6";
    let r = app
        .send(
            app.client
                .post(&uri)
                .header("content-type", "application/json")
                .header("aeg-event-type", "SubscriptionValidation")
                .body(
                    json!([{
                        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
                        "topic": vault_topic("payments"),
                        "subject": "",
                        "data": {"validationCode": code, "validationUrl": "https://localhost/validate"},
                        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                        "eventTime": "2026-01-01T00:00:00.0000000Z",
                        "metadataVersion": "1",
                        "dataVersion": "1"
                    }])
                    .to_string(),
                ),
        )
        .await;
    assert_eq!(r.expect(200)["validationResponse"], code, "{}", r.text);
    assert!(api.jobs_of("Rotate-DbPassword").await.is_empty());

    let first_version = set_expiring_secret(&app).await;
    let events = eventually(
        "NewVersionCreated and NearExpiry in the vault's log",
        Duration::from_secs(20),
        || async {
            let events = app.events("payments").await;
            (events.iter().any(|e| e["eventType"] == NEW)
                && events.iter().any(|e| e["eventType"] == NEAR))
            .then_some(events)
        },
    )
    .await;
    for e in events
        .iter()
        .filter(|e| e["eventType"] == NEW || e["eventType"] == NEAR)
    {
        let r = app
            .send(
                app.client
                    .post(&uri)
                    .header("content-type", "application/json")
                    .header("aeg-event-type", "Notification")
                    .header("aeg-subscription-name", "ROTATE-DB")
                    .header("aeg-delivery-count", "0")
                    .body(json!([e]).to_string()),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let (job, output) = near_expiry_job(&api, "").await;
    assert_near_expiry_job(&api, &job, &output, &first_version).await;
    assert_rotated(&app, &first_version).await;
    // The NewVersionCreated job only printed its event.
    for j in api.jobs_of("Rotate-DbPassword").await {
        let id = j["jobId"].as_str().expect("jobId");
        let j = api.job_final(id, Duration::from_secs(30)).await;
        assert_eq!(status(&j), "Completed", "{j:#}");
    }
}

// ---------------------------------------------------------------------------
// 1b. Job tokens: scoped to the runbook's permissions, dead once the job ends

/// Receives one POSTed body (a job token a runbook hands to the test).
async fn start_sink(got: Arc<Mutex<Option<String>>>) -> String {
    async fn take(State(got): State<Arc<Mutex<Option<String>>>>, body: Bytes) -> &'static str {
        *got.lock().expect("sink") = Some(String::from_utf8_lossy(&body).into_owned());
        "ok"
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let addr = listener.local_addr().expect("sink addr");
    let app = axum::Router::new()
        .route("/token", axum::routing::post(take))
        .with_state(got);
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("sink serves");
    });
    format!("http://{addr}/token")
}

async fn secret_value(app: &TestApp) -> Value {
    app.kv(Method::GET, "payments", "/secrets/db-password", None)
        .await
        .expect(200)["value"]
        .clone()
}

#[tokio::test]
async fn job_tokens_allow_only_the_runbooks_permissions_and_die_with_the_job() {
    let app = spawn_app().await;
    let api = Api::of(&app);
    app.create_vault(json!({"name": "payments"})).await;
    app.set_value("payments", "db-password", "initial-pw").await;

    // A runbook allowed only to read: its write is refused with 403.
    api.runbook(
        "Reader",
        "bash",
        &format!(
            r#"set -uo pipefail
{KV_CURL}
echo "get $(kv /dev/null GET /secrets/db-password)"
code="$(kv /dev/stderr PUT /secrets/db-password '{{"value":"hacked"}}')"
echo "set $code"
[ "$code" = 200 ] || {{ echo >&2; echo "setting db-password answered HTTP $code" >&2; exit 1; }}
echo wrote
"#
        ),
        json!({"permissions": [{"vault": "payments", "actions": ["get"]}]}),
    )
    .await;
    let uri = api.webhook("reader", "Reader", json!({})).await;
    let id = api.invoke(&uri, "{}").await;
    let job = api.job_final(&id, Duration::from_secs(30)).await;
    let errors = api.stream(&id, "Error").await.join("\n");
    let output = api.output(&id).await;
    let all = format!("{job:#}\noutput: {output}\nerrors: {errors}");
    assert_eq!(status(&job), "Failed", "{all}");
    assert!(output.contains("get 200"), "{all}");
    assert!(output.contains("set 403"), "{all}");
    assert!(!output.contains("wrote"), "{all}");
    assert!(
        errors.contains("Runbook 'Reader' may not set secrets in vault 'payments'"),
        "{all}"
    );
    assert_eq!(
        job["exception"], "setting db-password answered HTTP 403",
        "exception is the last Error record: {all}"
    );
    assert_eq!(secret_value(&app).await, "initial-pw");

    // A runbook that hands its token to the test (a stand-in for a token
    // that leaked): it works while the job runs, and is dead after.
    let got = Arc::new(Mutex::new(None));
    let sink = start_sink(got.clone()).await;
    api.runbook(
        "Leaker",
        "bash",
        &format!(
            r#"set -euo pipefail
{KV_CURL}
[ "$(kv /dev/null GET /secrets/db-password)" = 200 ]
curl -sSf -X POST --data-binary "$HERALD_TOKEN" {sink} >/dev/null
echo sent
"#
        ),
        json!({"permissions": [{"vault": "payments", "actions": ["get", "set"]}]}),
    )
    .await;
    let uri = api.webhook("leaker", "Leaker", json!({})).await;
    let id = api.invoke(&uri, "{}").await;
    let job = api.job_final(&id, Duration::from_secs(30)).await;
    assert_eq!(
        status(&job),
        "Completed",
        "{job:#}\nerrors: {:?}",
        api.stream(&id, "Error").await
    );
    let token = got
        .lock()
        .expect("sink")
        .clone()
        .expect("the job sent its token");
    assert!(token.starts_with("hjt_"), "job token shape: {token}");
    assert!(
        !api.output(&id).await.contains(&token),
        "the token is not in the job's output"
    );
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"value": "after-the-job"}))),
    ] {
        let mut req = app
            .client
            .request(method, app.vault_url("payments", "/secrets/db-password"))
            .bearer_auth(&token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = app.send(req).await;
        assert_eq!(r.status, 401, "a finished job's token: {}", r.text);
    }
    // Nor was it ever a management token.
    let r = app
        .send(
            app.client
                .get(format!(
                    "https://localhost:{}/api/v1/automation/jobs",
                    app.port
                ))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(secret_value(&app).await, "initial-pw");
}

/// The `herald` CLI on a job's PATH uses the job token from the
/// environment: reads are allowed, a write the runbook lacks is a 403 in
/// the Error stream and fails the job.
#[tokio::test]
async fn herald_cli_inside_a_job_acts_with_the_job_token() {
    let app = spawn_app_with(|cfg| cfg.herald_bin = Some(herald_bin())).await;
    let api = Api::of(&app);
    app.create_vault(json!({"name": "payments"})).await;
    app.set_value("payments", "db-password", "initial-pw").await;
    api.runbook(
        "Reader",
        "bash",
        "set -euo pipefail\n\
         herald secret get db-password --vault payments >/dev/null\n\
         echo read-ok\n\
         herald secret set db-password hacked --vault payments\n\
         echo wrote\n",
        json!({"permissions": [{"vault": "payments", "actions": ["get"]}]}),
    )
    .await;
    let uri = api.webhook("reader", "Reader", json!({})).await;
    let id = api.invoke(&uri, "{}").await;
    let job = api.job_final(&id, Duration::from_secs(30)).await;
    let errors = api.stream(&id, "Error").await.join("\n");
    let output = api.output(&id).await;
    let all = format!("{job:#}\noutput: {output}\nerrors: {errors}");
    assert_eq!(status(&job), "Failed", "{all}");
    assert!(output.contains("read-ok"), "{all}");
    assert!(!output.contains("wrote"), "{all}");
    assert!(
        errors.contains("403") && errors.contains("may not set"),
        "{all}"
    );
    assert!(
        job["exception"].as_str().is_some_and(|e| e.contains("403")),
        "exception is the last Error record: {all}"
    );
    assert_eq!(secret_value(&app).await, "initial-pw");
}

// ---------------------------------------------------------------------------
// 2. kill -9 of the server: running jobs are re-queued, 202s are never lost

const SLOW: &str = "echo started\nsleep 6\necho done\n";
const QUICK: &str =
    "set -eu\necho \"quick-$(jq -r '.WebhookData.RequestBody' \"$HERALD_JOB_INPUT\")\"\n";

#[tokio::test]
async fn jobs_survive_a_kill_9_of_the_server() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let logs = tempfile::tempdir().expect("log dir");
    let data = data_dir.path().to_path_buf();
    let config = logs.path().join("herald.toml");
    std::fs::write(&config, "automation_lease_secs = 3\n").expect("write the config");
    let config = config.display().to_string();
    let args = ["--config", config.as_str()];
    let port = free_port();
    let herald = start(&data, port, logs.path(), 1, &args).await;
    let api = Api::of_bin(&herald);

    api.runbook("Slow", "bash", SLOW, json!({})).await;
    api.runbook("Quick", "bash", QUICK, json!({})).await;
    let slow_uri = api.webhook("slow", "Slow", json!({})).await;
    let quick_uri = api.webhook("quick", "Quick", json!({})).await;

    let slow = api.invoke(&slow_uri, "{}").await;
    api.job_until(&slow, "Running", Duration::from_secs(20), |j| {
        status(j) == "Running"
    })
    .await;

    // A burst of webhook calls, all answered 202, then SIGKILL at once.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (api, uri) = (api.clone(), quick_uri.clone());
        calls.spawn(async move { (n, api.invoke(&uri, &n.to_string()).await) });
    }
    let mut burst = Vec::new();
    while let Some(r) = calls.join_next().await {
        burst.push(r.expect("webhook call task"));
    }
    let Herald { mut child, .. } = herald;
    child.start_kill().expect("SIGKILL herald");
    let exit = child.wait().await.expect("reap herald");
    assert!(!exit.success(), "herald was killed, not stopped: {exit}");
    let ids: BTreeSet<&str> = burst.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 20, "20 distinct job ids");

    let herald = start(&data, port, logs.path(), 2, &args).await;
    let api = Api::of_bin(&herald);

    // The interrupted job: Disconnected, re-queued, run again from the start.
    let job = api
        .job_until(
            &slow,
            "the re-run to complete",
            Duration::from_secs(40),
            |j| FINAL.contains(&status(j)),
        )
        .await;
    assert_eq!(status(&job), "Completed", "{job:#}");
    assert_eq!(job["restarts"], 1, "{job:#}");
    let h = history(&job);
    let lost = h
        .iter()
        .position(|s| s == "Disconnected")
        .unwrap_or_else(|| panic!("history has Disconnected: {h:?}"));
    assert_eq!(h.get(lost + 1).map(String::as_str), Some("New"), "{h:?}");
    assert!(
        h[..lost].iter().any(|s| s == "Running") && h[lost..].iter().any(|s| s == "Running"),
        "ran before and after the crash: {h:?}"
    );
    assert_eq!(h.last().map(String::as_str), Some("Completed"), "{h:?}");
    let out = api.output(&slow).await;
    assert!(out.contains("done"), "output: {out}");

    // Every accepted call is a job that runs to completion.
    for (n, id) in &burst {
        let job = api.job_final(id, Duration::from_secs(40)).await;
        assert_eq!(status(&job), "Completed", "burst call {n}: {job:#}");
        let out = api.output(id).await;
        assert!(
            out.contains(&format!("quick-{n}")),
            "burst call {n} output: {out}"
        );
    }
    drop(herald);
}

// ---------------------------------------------------------------------------
// 3. Remote workers (`herald worker`), lost workers and Suspended jobs

const GROUP: &str = "grp1";
const REMOTE_SLOW: &str = "echo started\nsleep 4\necho done\n";

/// Starts `herald worker` for [`GROUP`] against `app`, with one slot: a
/// worker busy with a job holds no lease request open, so killing it loses
/// exactly that job.
fn start_worker(app: &TestApp, id: &str, logs: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(herald_bin())
        .args(["worker", "--group", GROUP, "--slots", "1", "--id", id])
        .arg("--addr")
        .arg(format!("https://127.0.0.1:{}", app.port))
        .arg("--ca-cert")
        .arg(&app.ca_path)
        .current_dir(logs)
        .env("HERALD_TOKEN", TOKEN)
        .env_remove("HERALD_ADMIN_TOKEN")
        .env_remove("HERALD_ADDR")
        .env_remove("HERALD_CACERT")
        .env_remove("HERALD_WORKER_GROUP")
        .env_remove("HERALD_VAULT_BASE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(logs.join(format!("{id}.log"))).expect("worker log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start herald worker")
}

async fn kill_9(child: &mut tokio::process::Child) {
    child.start_kill().expect("SIGKILL the worker");
    let status = child.wait().await.expect("reap the worker");
    assert!(!status.success(), "the worker was killed: {status}");
}

fn restarts(job: &Value) -> i64 {
    job["restarts"].as_i64().unwrap_or(-1)
}

fn count(history: &[String], status: &str) -> usize {
    history.iter().filter(|s| *s == status).count()
}

#[tokio::test]
async fn remote_workers_run_jobs_and_lost_workers_get_them_requeued() {
    let app = spawn_app_with(|cfg| cfg.automation_lease_secs = 2).await;
    let api = Api::of(&app);
    let logs = tempfile::tempdir().expect("log dir");
    let log = |id: &str| crate::binary::tail(&logs.path().join(format!("{id}.log")));
    api.runbook("Remote-Quick", "bash", "echo remote-ok\n", json!({}))
        .await;
    api.runbook("Remote-Slow", "bash", REMOTE_SLOW, json!({}))
        .await;
    let quick = api
        .webhook("remote-quick", "Remote-Quick", json!({"runOn": GROUP}))
        .await;
    let slow = api
        .webhook("remote-slow", "Remote-Slow", json!({"runOn": GROUP}))
        .await;

    // A remote worker runs the group's job; the built-in pool does not.
    let mut w1 = start_worker(&app, "w1", logs.path());
    let id = api.invoke(&quick, "{}").await;
    let job = api.job_final(&id, Duration::from_secs(20)).await;
    assert_eq!(status(&job), "Completed", "{job:#}\nworker: {}", log("w1"));
    assert_eq!(job["runOn"], GROUP);
    assert_eq!(restarts(&job), 0, "{job:#}");
    assert!(api.output(&id).await.contains("remote-ok"));
    let workers = api.auto(Method::GET, "/workers", None).await;
    let listed = workers.expect(200)["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|w| w["id"] == "w1")
        .cloned()
        .unwrap_or_else(|| panic!("w1 listed: {}", workers.text));
    assert_eq!(listed["group"], GROUP, "{listed}");

    // A live worker keeps its lease through a job longer than the lease.
    let id = api.invoke(&slow, "{}").await;
    let job = api.job_final(&id, Duration::from_secs(20)).await;
    assert_eq!(
        (status(&job), restarts(&job)),
        ("Completed", 0),
        "a healthy worker lost its lease: {job:#}\nworker: {}",
        log("w1")
    );

    // kill -9 of the worker mid-job: Disconnected, then queued again, and
    // the next worker of the group runs it from the start.
    let id = api.invoke(&slow, "{}").await;
    api.job_until(&id, "Running on w1", Duration::from_secs(10), |j| {
        status(j) == "Running"
    })
    .await;
    kill_9(&mut w1).await;
    let job = api
        .job_until(&id, "re-queued", Duration::from_secs(10), |j| {
            status(j) == "New" && restarts(j) == 1
        })
        .await;
    let h = history(&job);
    assert_eq!(
        &h[h.len() - 2..],
        ["Disconnected", "New"],
        "Disconnected then re-queued: {job:#}"
    );
    let w2 = start_worker(&app, "w2", logs.path());
    let job = api.job_final(&id, Duration::from_secs(20)).await;
    assert_eq!(status(&job), "Completed", "{job:#}\nworker: {}", log("w2"));
    assert_eq!(restarts(&job), 1, "{job:#}");
    assert_eq!(count(&history(&job), "Disconnected"), 1, "{job:#}");
    assert!(api.output(&id).await.contains("done"));

    // Hybrid rule: a job whose worker is lost more than 3 times is Suspended.
    let id = api.invoke(&slow, "{}").await;
    let mut worker = Some(w2);
    for lost in 1..=4 {
        let mut w = match worker.take() {
            Some(w) => w,
            None => start_worker(&app, &format!("w{}", lost + 1), logs.path()),
        };
        api.job_until(
            &id,
            &format!("running for attempt {lost}"),
            Duration::from_secs(10),
            |j| status(j) == "Running" && restarts(j) == lost - 1,
        )
        .await;
        kill_9(&mut w).await;
        let want = if lost <= 3 { "New" } else { "Suspended" };
        api.job_until(
            &id,
            &format!("{want} after losing worker {lost} times"),
            Duration::from_secs(10),
            |j| status(j) == want && restarts(j) == lost,
        )
        .await;
    }
    let job = api.job(&id).await;
    let h = history(&job);
    assert_eq!(count(&h, "Disconnected"), 4, "{job:#}");
    assert_eq!(h.last().map(String::as_str), Some("Suspended"), "{job:#}");
    assert!(
        job["statusDetails"]
            .as_str()
            .is_some_and(|d| d.contains("4 times")),
        "statusDetails says why: {job:#}"
    );
    // A Suspended job stays put until resumed (nothing picks it up).
    let r = api
        .auto(Method::POST, &format!("/jobs/{id}/resume"), None)
        .await;
    assert_eq!(r.expect(200)["properties"]["status"], "New", "{}", r.text);
    assert_eq!(r.json["properties"]["restarts"], 0, "{}", r.text);
}
