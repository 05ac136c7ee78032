//! Automation's management API under `/api/v1/automation`: runbooks,
//! webhooks, jobs with their streams, assets, and the worker lease protocol.
//! Property names follow Azure's (isEnabled, expiryTime, runOn, ...) so the
//! Azure docs map one to one.

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value};

/// Azure's resource envelope: `{"id", "name", "properties"}`.
#[derive(Serialize)]
pub(super) struct Resource<P> {
    /// Absent on assets, which Azure shows by name only.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    properties: P,
}

mod assets;
mod job_token;
mod jobs;
mod runbooks;
mod webhooks;
mod workers;

use assets::*;
pub use job_token::job_router;
use jobs::*;
use runbooks::*;
use webhooks::*;
use workers::*;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runbooks", get(list_runbooks))
        .route(
            "/runbooks/{name}",
            get(get_runbook)
                .put(put_runbook)
                .patch(patch_runbook)
                .delete(delete_runbook),
        )
        .route(
            "/runbooks/{name}/content",
            get(get_content).put(put_content),
        )
        .route("/runbooks/{name}/publish", post(publish))
        .route("/runbooks/{name}/start", post(start))
        .route("/webhooks", get(list_webhooks))
        .route("/webhooks/generateUri", post(generate_uri))
        .route(
            "/webhooks/{name}",
            get(get_webhook)
                .put(put_webhook)
                .patch(patch_webhook)
                .delete(delete_webhook),
        )
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/output", get(output))
        .route("/jobs/{id}/streams", get(streams))
        .route("/jobs/{id}/streams/{stream_id}", get(stream_record))
        .route("/jobs/{id}/stop", post(stop))
        .route("/jobs/{id}/resume", post(resume))
        .route("/variables", get(list_variables))
        .route(
            "/variables/{name}",
            get(get_variable).put(put_variable).delete(delete_variable),
        )
        .route("/credentials", get(list_credentials))
        .route(
            "/credentials/{name}",
            get(get_credential)
                .put(put_credential)
                .delete(delete_credential),
        )
        .route("/sandbox", get(sandbox))
        .route("/workers", get(list_workers))
        .route("/workers/{group}/lease", post(lease))
        .route("/jobs/{id}/started", post(started))
        .route("/jobs/{id}/heartbeat", post(heartbeat))
        .route("/jobs/{id}/records", post(records))
        .route("/jobs/{id}/finish", post(finish))
}

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false))
        .unwrap_or_default()
}

pub(super) fn object(v: Value) -> Result<Map<String, Value>, ApiError> {
    match v {
        Value::Object(mut m) => {
            // Accept ARM's `{"properties": {...}}` as well as a flat body.
            if let Some(Value::Object(props)) = m.remove("properties") {
                for (k, v) in props {
                    m.entry(k).or_insert(v);
                }
            }
            Ok(m)
        }
        _ => Err(ApiError::bad_parameter(
            "The request body must be a JSON object.",
        )),
    }
}
