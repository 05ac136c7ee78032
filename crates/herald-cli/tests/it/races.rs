//! A create racing the delete of its parent answers the mirrored service's
//! 404 (or 409), never a 500 (issue 23 item 10): the foreign-key failure
//! the loser hits is a client-visible outcome, not an internal fault.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> u16 {
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
    if r.status >= 500 {
        panic!("{path}: {} {}", r.status, r.text);
    }
    r.status
}

const ROUNDS: usize = 30;

fn queue_sub() -> Value {
    json!({"deliveryConfiguration": {"deliveryMode": "Queue"}})
}

/// Runs `make` (which recreates the parent), then 7 creates and one
/// delete of the parent at once; every answer must be below 500.
async fn race<F, Fut>(
    app: &TestApp,
    make: F,
    creates: &[(Method, String, Option<Value>)],
    delete: &str,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..ROUNDS {
        make().await;
        let mut calls = Vec::new();
        for (i, (m, p, b)) in creates.iter().cycle().take(7).enumerate() {
            let p = p.replace("{i}", &i.to_string());
            let (m, b) = (m.clone(), b.clone());
            calls.push(async move { call(app, m, &p, b).await }.boxed_local());
        }
        calls.push(async move { call(app, Method::DELETE, delete, None).await }.boxed_local());
        let codes = futures_util::future::join_all(calls).await;
        assert!(codes.iter().all(|c| *c < 500), "{codes:?}");
    }
}

use futures_util::FutureExt;

#[tokio::test]
async fn creates_racing_a_parent_delete_never_answer_500() {
    let app = spawn_app_with(|c| c.sandbox = "none".into()).await;

    // Subscriptions against DELETE topic.
    race(
        &app,
        || async {
            let s = call(
                &app,
                Method::POST,
                "/topics",
                Some(json!({"name": "orders"})),
            )
            .await;
            assert!(s == 201 || s == 409, "{s}");
        },
        &[(
            Method::PUT,
            "/topics/orders/eventSubscriptions/s{i}".into(),
            Some(queue_sub()),
        )],
        "/topics/orders",
    )
    .await;

    // Subscriptions on a vault's system topic against DELETE vault.
    race(
        &app,
        || async {
            let s = call(
                &app,
                Method::POST,
                "/vaults",
                Some(json!({"name": "payments"})),
            )
            .await;
            assert!(s == 201 || s == 409, "{s}");
        },
        &[(
            Method::PUT,
            "/topics/payments/eventSubscriptions/s{i}".into(),
            Some(queue_sub()),
        )],
        "/vaults/payments",
    )
    .await;

    // Webhooks and starts against DELETE runbook.
    let runbook = json!({"runbookType": "Bash", "content": "echo hi", "publish": true});
    race(
        &app,
        || {
            let runbook = runbook.clone();
            let app = &app;
            async move {
                let s = call(app, Method::PUT, "/automation/runbooks/rb", Some(runbook)).await;
                assert!(s == 201 || s == 200, "{s}");
            }
        },
        &[
            (
                Method::PUT,
                "/automation/webhooks/w{i}".into(),
                Some(json!({"properties": {"runbook": {"name": "rb"}, "parameters": {}}})),
            ),
            (
                Method::POST,
                "/automation/runbooks/rb/start".into(),
                Some(json!({"parameters": {}})),
            ),
        ],
        "/automation/runbooks/rb",
    )
    .await;
}
