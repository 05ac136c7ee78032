//! Unauthenticated operational endpoints: health, metrics, the CA file.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/herald/ca.pem", get(ca_pem))
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
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
