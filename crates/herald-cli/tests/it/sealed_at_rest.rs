//! Credentials a webhook call carries stay out of the jobs API and out of
//! every file of the data dir (issue 23 item 2): an `Authorization` header
//! sent by a caller, and a delivery header filled from a vault secret by a
//! subscription that targets a Herald webhook. The runbook still receives
//! both, as Azure hands them over.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const AUTHZ: &str = "Bearer planted-authorization-7f3a91";
const COOKIE: &str = "session=planted-cookie-52be07";
const VAULT_SECRET: &str = "planted-vault-secret-c4d812";

async fn mgmt(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut req = app
        .client
        .request(
            method,
            format!("https://localhost:{}/api/v1{path}", app.port),
        )
        .bearer_auth(&app.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = app.send(req).await;
    assert!(r.status < 500, "server error {}: {}", r.status, r.text);
    r
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read data dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn credential_headers_are_masked_by_the_jobs_api_and_sealed_at_rest() {
    let app = spawn_app_with(|c| {
        c.sandbox = "none".into();
        c.delivery_allowed_cidrs = vec!["127.0.0.0/8".into()];
    })
    .await;
    // The runbook proves it received the headers without printing them;
    // the values are spelled in two halves so the script itself (stored
    // as the runbook's content) does not hold them.
    let script = r#"
a=planted-author; b=ization-7f3a91
grep -q "$a$b" "$HERALD_JOB_INPUT" && echo got-authorization
a=planted-vault-; b=secret-c4d812
grep -q "$a$b" "$HERALD_JOB_INPUT" && echo got-vault-header
echo done
"#;
    mgmt(
        &app,
        Method::PUT,
        "/automation/runbooks/probe",
        Some(json!({"runbookType": "Bash", "content": script, "publish": true})),
    )
    .await
    .expect(201);
    let r = mgmt(
        &app,
        Method::PUT,
        "/automation/webhooks/probe-hook",
        Some(json!({"properties": {"runbook": {"name": "probe"}, "parameters": {}}})),
    )
    .await;
    let uri = r.expect(201)["properties"]["uri"]
        .as_str()
        .expect("uri")
        .to_owned();

    // 1. A caller's own credentials on the webhook call.
    let r = app
        .send(
            app.client
                .post(format!("{uri}&wait=20"))
                .header("Authorization", AUTHZ)
                .header("Cookie", COOKIE)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    let done = r.expect(200);
    assert_eq!(done["status"], "Completed", "{}", r.text);
    assert!(
        done["output"]
            .as_str()
            .unwrap_or("")
            .contains("got-authorization"),
        "the runbook receives the header: {done}"
    );

    // 2. A subscription's delivery header filled from a vault secret.
    app.set_value(DEFAULT, "api-key", VAULT_SECRET).await;
    mgmt(
        &app,
        Method::POST,
        "/topics",
        Some(json!({"name": "orders", "inputSchema": "EventGridSchema"})),
    )
    .await
    .expect(201);
    let keys = mgmt(&app, Method::GET, "/topics/orders/keys", None).await;
    let key = keys.expect(200)["key1"].as_str().expect("key1").to_owned();
    let r = mgmt(
        &app,
        Method::PUT,
        "/topics/orders/eventSubscriptions/to-runbook",
        Some(
            json!({"destination": {"endpointType": "WebHook", "properties": {
                "endpointUrl": uri,
                "deliveryAttributeMappings": [{"name": "X-Api-Key", "type": "Static",
                    "properties": {"value": "vault://default/api-key", "isSecret": true}}],
            }}}),
        ),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .send(
            app.client
                .post(format!(
                    "https://localhost:{}/topics/orders/api/events?api-version=2018-01-01",
                    app.port
                ))
                .header("aeg-sas-key", &key)
                .json(
                    &json!([{"id": "e-1", "eventType": "Herald.Test", "subject": "/x",
                    "eventTime": "2024-05-01T10:00:00Z", "data": {}, "dataVersion": "1.0"}]),
                ),
        )
        .await;
    r.expect(200);

    let jobs = eventually("two completed probe jobs", Duration::from_secs(30), || {
        let app = &app;
        async move {
            let r = mgmt(app, Method::GET, "/automation/jobs", None).await;
            let list = r.json["value"].as_array().cloned().unwrap_or_default();
            let done: Vec<Value> = list
                .into_iter()
                .filter(|j| j["properties"]["status"] == "Completed")
                .collect();
            (done.len() == 2).then_some((done, r.text.clone()))
        }
    })
    .await;
    let (list, list_text) = jobs;
    let mut answers = vec![list_text];
    let mut saw_vault_header = false;
    for j in &list {
        let id = j["name"].as_str().expect("job name");
        let one = mgmt(&app, Method::GET, &format!("/automation/jobs/{id}"), None).await;
        let headers = &one.json["properties"]["parameters"]["WebhookData"]["RequestHeader"];
        if headers.get("Authorization").is_some() {
            assert_eq!(headers["Authorization"], "*****", "{headers}");
            assert_eq!(headers["Cookie"], "*****", "{headers}");
        }
        if headers.get("X-Api-Key").is_some() {
            assert_eq!(headers["X-Api-Key"], "*****", "{headers}");
            saw_vault_header = true;
        }
        answers.push(one.text.clone());
        let out = mgmt(
            &app,
            Method::GET,
            &format!("/automation/jobs/{id}/output"),
            None,
        )
        .await;
        if out.text.contains("got-vault-header") {
            saw_vault_header = true;
        }
        answers.push(out.text.clone());
    }
    assert!(saw_vault_header, "the delivered job carried X-Api-Key");
    for planted in [AUTHZ, COOKIE, VAULT_SECRET] {
        let bare = planted.rsplit([' ', '=']).next().expect("value");
        for a in &answers {
            assert!(!a.contains(bare), "a jobs API answer shows {bare}: {a}");
        }
        let hits = files_containing(app.data_dir.path(), bare.as_bytes());
        assert!(hits.is_empty(), "{bare} is in clear in {hits:?}");
    }
}
