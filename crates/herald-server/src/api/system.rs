//! Operational endpoints: health and the CA file (unauthenticated), and
//! metrics (behind the admin token: they name every topic and
//! subscription).

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/herald/ca.pem", get(ca_pem))
}

/// `/metrics`, mounted under the admin token's check.
pub fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.storage.setting("tenant_id").await {
        Ok(_) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::error!(error = %e, "health check: storage unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&event_counters(&state).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The Events-tab counters are durable and shared by all nodes, so they
/// are read from storage rather than kept per process. That costs queries
/// per topic and subscription, so a rendering is reused for a second:
/// frequent scrapes then cost the publish path nothing.
async fn event_counters(state: &AppState) -> std::sync::Arc<str> {
    let mut cached = state.metrics_cache.rendered.lock().await;
    if let Some((at, text)) = cached.as_ref()
        && at.elapsed() < crate::state::METRICS_TTL
    {
        return text.clone();
    }
    let mut text = String::new();
    if let Err(e) = render_event_counters(state, &mut text).await {
        tracing::error!(error = %e, "reading event counters for /metrics failed");
    }
    let text: std::sync::Arc<str> = text.into();
    *cached = Some((std::time::Instant::now(), text.clone()));
    text
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

async fn render_event_counters(state: &AppState, out: &mut String) -> anyhow::Result<()> {
    use std::fmt::Write;
    let topics = state.router.list_topics().await?;
    out.push_str("# HELP herald_topic_events_total Events accepted per topic.\n# TYPE herald_topic_events_total counter\n");
    for t in &topics {
        let c = state.router.counters(&t.id).await?;
        let _ = writeln!(
            out,
            "herald_topic_events_total{{topic=\"{}\",kind=\"{}\"}} {}",
            label(&t.name),
            t.kind,
            c.get("published").copied().unwrap_or(0)
        );
    }
    out.push_str("# HELP herald_subscription_events_total Events per event subscription and outcome.\n# TYPE herald_subscription_events_total counter\n");
    for t in &topics {
        for s in state.router.list_subscriptions(&t.name).await? {
            let c = state.router.counters(&s.record.id).await?;
            for kind in [
                "matched",
                "unmatched",
                "delivered",
                "failed",
                "deadLettered",
            ] {
                let _ = writeln!(
                    out,
                    "herald_subscription_events_total{{topic=\"{}\",subscription=\"{}\",outcome=\"{kind}\"}} {}",
                    label(&t.name),
                    label(&s.record.name),
                    c.get(kind).copied().unwrap_or(0)
                );
            }
        }
    }
    Ok(())
}

async fn ca_pem(State(state): State<AppState>) -> impl IntoResponse {
    match tokio::fs::read_to_string(state.config.data_dir.join("tls").join("ca.pem")).await {
        Ok(pem) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            "this server uses a configured certificate",
        )
            .into_response(),
    }
}
