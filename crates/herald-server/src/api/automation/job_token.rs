//! What a running job may call with its job token.

use crate::error::ApiError;
use crate::error::AzPath as Path;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

/// Routes a job reaches with its own token (`HERALD_TOKEN` inside a job).
pub fn job_router() -> Router<AppState> {
    Router::new().route("/api/v1/automation/job/assets/{name}", get(job_asset))
}

pub(super) async fn job_asset(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("")
        .trim();
    let job = st.automation.principal(token).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Assets are read by running jobs with their job token (HERALD_TOKEN inside the job).",
        )
    })?;
    Ok(Json(st.automation.asset_for_job(&job, &name).await?))
}
