//! Runbooks: definitions, drafts and published content, and manual starts.

use super::*;
use crate::api::List;
use crate::error::{ApiError, AzJson};
use crate::error::{AzBytes, AzPath as Path, AzQuery as Query};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_automation::model::{ParamDecl, RunbookSettings};
use herald_storage::RunbookRecord;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A runbook's properties, as `az automation runbook show` names them,
/// with Herald's run settings beside them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunbookProperties {
    allow_network: bool,
    creation_time: String,
    description: String,
    last_modified_time: String,
    log_progress: bool,
    log_verbose: bool,
    max_concurrent_jobs: Option<i64>,
    memory_limit_mb: u64,
    parameters: Vec<ParamDecl>,
    permissions: Vec<herald_automation::model::Permission>,
    assets: Vec<String>,
    published_version: Option<i64>,
    runbook_type: String,
    state: &'static str,
    timeout_seconds: u64,
}

pub(super) type RunbookDto = Resource<RunbookProperties>;

pub(super) fn runbook_view(rb: &RunbookRecord) -> RunbookDto {
    let parameters: Vec<ParamDecl> = serde_json::from_str(&rb.draft_params).unwrap_or_default();
    let settings: RunbookSettings = serde_json::from_str(&rb.settings).unwrap_or_default();
    Resource {
        id: Some(format!("/automation/runbooks/{}", rb.name)),
        name: rb.name.clone(),
        properties: RunbookProperties {
            allow_network: settings.allow_network,
            creation_time: iso(rb.created),
            description: rb.description.clone(),
            last_modified_time: iso(rb.updated),
            log_progress: settings.log_progress,
            log_verbose: settings.log_verbose,
            max_concurrent_jobs: settings.max_concurrent_jobs,
            memory_limit_mb: settings.memory_limit_mb,
            parameters,
            permissions: settings.permissions,
            assets: settings.assets,
            published_version: rb.published_version,
            runbook_type: rb.kind.clone(),
            state: if rb.published_version.is_some() {
                "Published"
            } else {
                "New"
            },
            timeout_seconds: settings.timeout_seconds,
        },
    }
}

pub(super) async fn list_runbooks(
    State(st): State<AppState>,
) -> Result<Json<List<RunbookDto>>, ApiError> {
    let list = st.automation.list_runbooks().await?;
    Ok(Json(list.iter().map(runbook_view).collect()))
}

pub(super) async fn get_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RunbookDto>, ApiError> {
    Ok(Json(runbook_view(&st.automation.runbook(&name).await?)))
}

/// Creates the runbook, or replaces its draft when it exists.
pub(super) async fn put_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Response, ApiError> {
    let body = object(body)?;
    match st.automation.runbook(&name).await {
        Ok(_) => {
            let rb = st.automation.update_runbook(&name, &body).await?;
            Ok(Json(runbook_view(&rb)).into_response())
        }
        Err(herald_automation::AutomationError::NotFound { .. }) => {
            let rb = st.automation.create_runbook(&name, &body).await?;
            Ok((StatusCode::CREATED, Json(runbook_view(&rb))).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn patch_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<RunbookDto>, ApiError> {
    let rb = st.automation.update_runbook(&name, &object(body)?).await?;
    Ok(Json(runbook_view(&rb)))
}

pub(super) async fn delete_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_runbook(&name).await?;
    Ok(StatusCode::OK)
}

pub(super) async fn get_content(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let version = match q.get("version").map(String::as_str) {
        None | Some("draft") => None,
        Some("published") => st.automation.runbook(&name).await?.published_version,
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            ApiError::bad_parameter("version must be a number, 'draft' or 'published'")
        })?),
    };
    let text = st.automation.runbook_content(&name, version).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Replaces the draft with the raw request body (Azure's
/// `runbooks/{name}/draft/content`).
pub(super) async fn put_content(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzBytes(body): AzBytes,
) -> Result<Json<RunbookDto>, ApiError> {
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_parameter("Runbook content must be UTF-8 text."))?;
    let rb = st.automation.set_draft_content(&name, text).await?;
    Ok(Json(runbook_view(&rb)))
}

pub(super) async fn publish(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RunbookDto>, ApiError> {
    st.automation.publish_runbook(&name).await?;
    Ok(Json(runbook_view(&st.automation.runbook(&name).await?)))
}

/// Starts a job directly: `{"parameters": {...}, "runOn": "group"}`.
pub(super) async fn start(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzBytes(body): AzBytes,
) -> Result<(StatusCode, Json<JobDto>), ApiError> {
    let body = if body.is_empty() {
        Map::new()
    } else {
        object(crate::error::parse_json(&body)?)?
    };
    let params = match body.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ApiError::bad_parameter("'parameters' must be an object.")),
    };
    let run_on = match body.get("runOn") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::bad_parameter(
                "'runOn' must be a worker group name.",
            ));
        }
    };
    let id = st
        .automation
        .start_runbook(&name, &params, run_on, "admin")
        .await?;
    let job = st.automation.job(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(job_view(&st.automation, &job, None)),
    ))
}
