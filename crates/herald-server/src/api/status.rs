//! `GET /api/v1/status`: one overview of the server for `herald status`.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(status))
}

/// The server overview `herald status` prints. Fields are in wire-name order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    hubs: Vec<HubSummary>,
    /// Jobs by status.
    jobs: BTreeMap<String, i64>,
    remote_workers: Vec<WorkerSummary>,
    runbooks: usize,
    sandbox: &'static str,
    storage: &'static str,
    subscriptions: Vec<SubscriptionSummary>,
    topics: Vec<TopicSummary>,
    vaults: Vec<String>,
    version: &'static str,
    webhooks: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionSummary {
    backlog: i64,
    dead_lettered: i64,
    delivered: i64,
    name: String,
    provisioning_state: herald_core::ProvisioningState,
    topic: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HubSummary {
    consumer_groups: Vec<GroupLag>,
    incoming_events: i64,
    name: String,
    namespace: String,
    outgoing_events: i64,
    partitions: i64,
}

#[derive(Serialize)]
struct GroupLag {
    lag: i64,
    name: String,
}

#[derive(Serialize)]
struct TopicSummary {
    kind: String,
    name: String,
}

#[derive(Serialize)]
struct WorkerSummary {
    group: String,
    id: String,
}

async fn status(State(st): State<AppState>) -> Result<Json<Status>, ApiError> {
    let vaults = st.vault.list_vaults().await?;
    let topics = st.router.list_topics().await?;
    let mut subscriptions = Vec::new();
    for t in &topics {
        for s in st.router.list_subscriptions(&t.name).await? {
            let m = st.router.subscription_metrics(&s).await?;
            let count = |name: &str| m.get(name).copied().unwrap_or(0);
            subscriptions.push(SubscriptionSummary {
                backlog: count("backlog"),
                dead_lettered: count("deadLettered"),
                delivered: count("delivered"),
                name: s.record.name.clone(),
                provisioning_state: s.record.provisioning_state,
                topic: t.name.clone(),
            });
        }
    }
    let jobs = st
        .automation
        .count_jobs_by_status()
        .await?
        .into_iter()
        .collect();
    let runbooks = st.automation.list_runbooks().await?.len();
    let webhooks = st.automation.list_webhooks(None).await?.len();
    let workers = st.automation.workers().await?;
    let mut hubs = Vec::new();
    for (namespace, hub) in st.hubs.all_hubs().await? {
        let parts = st.hubs.partitions(&hub).await?;
        let incoming_events = parts.iter().map(|p| p.events_in).sum();
        let outgoing_events = parts.iter().map(|p| p.events_out).sum();
        let consumer_groups = st
            .hubs
            .consumer_lag(&hub)
            .await?
            .into_iter()
            .map(|(g, lag)| GroupLag { lag, name: g.name })
            .collect();
        hubs.push(HubSummary {
            consumer_groups,
            incoming_events,
            name: hub.name.clone(),
            namespace,
            outgoing_events,
            partitions: hub.partition_count,
        });
    }
    Ok(Json(Status {
        hubs,
        jobs,
        remote_workers: workers
            .iter()
            .map(|w| WorkerSummary {
                group: w.group.clone(),
                id: w.id.clone(),
            })
            .collect(),
        runbooks,
        sandbox: st.sandbox.as_str(),
        storage: st.storage.engine(),
        subscriptions,
        topics: topics
            .iter()
            .map(|t| TopicSummary {
                kind: t.kind.clone(),
                name: t.name.clone(),
            })
            .collect(),
        vaults: vaults.iter().map(|v| v.name.clone()).collect(),
        version: env!("CARGO_PKG_VERSION"),
        webhooks,
    }))
}
