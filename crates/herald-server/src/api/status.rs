//! `GET /api/v1/status`: one overview of the server for `herald status`.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(status))
}

async fn status(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let vaults = st.vault.list_vaults().await?;
    let topics = st.router.list_topics().await?;
    let mut subs = Vec::new();
    for t in &topics {
        for s in st.router.list_subscriptions(&t.name).await? {
            let m = st.router.subscription_metrics(&s).await?;
            subs.push(json!({
                "topic": t.name,
                "name": s.record.name,
                "provisioningState": s.record.provisioning_state,
                "backlog": m.get("backlog").copied().unwrap_or(0),
                "delivered": m.get("delivered").copied().unwrap_or(0),
                "deadLettered": m.get("deadLettered").copied().unwrap_or(0),
            }));
        }
    }
    let jobs: serde_json::Map<String, Value> = st
        .automation
        .count_jobs_by_status()
        .await?
        .into_iter()
        .map(|(s, n)| (s, json!(n)))
        .collect();
    let runbooks = st.automation.list_runbooks().await?.len();
    let webhooks = st.automation.list_webhooks(None).await?.len();
    let workers = st.automation.workers().await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "storage": st.storage.engine(),
        "sandbox": st.sandbox.as_str(),
        "vaults": vaults.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
        "topics": topics.iter().map(|t| json!({"name": t.name, "kind": t.kind})).collect::<Vec<_>>(),
        "subscriptions": subs,
        "runbooks": runbooks,
        "webhooks": webhooks,
        "jobs": jobs,
        "remoteWorkers": workers.iter().map(|w| json!({"id": w.id, "group": w.group})).collect::<Vec<_>>(),
    })))
}
