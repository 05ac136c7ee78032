//! Workers and the lease protocol remote workers speak (lease, started, heartbeat, records, finish).

use super::*;
use crate::api::List;
use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use herald_automation::service::{JobReport, ReportedRecord};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The job sandbox this server runs, and the runbook types it can run.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SandboxInfo {
    level: &'static str,
    runbook_types: Vec<&'static str>,
}

pub(super) async fn sandbox(State(st): State<AppState>) -> Json<SandboxInfo> {
    Json(SandboxInfo {
        level: st.sandbox.as_str(),
        runbook_types: herald_automation::sandbox::available_kinds()
            .iter()
            .map(|k| k.as_str())
            .collect(),
    })
}

/// A remote worker, as last seen.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkerDto {
    group: String,
    hostname: String,
    id: String,
    last_seen_time: String,
    slots: i64,
}

pub(super) async fn list_workers(
    State(st): State<AppState>,
) -> Result<Json<List<WorkerDto>>, ApiError> {
    let list = st.automation.workers().await?;
    Ok(Json(
        list.iter()
            .map(|w| WorkerDto {
                group: w.group.clone(),
                hostname: w.hostname.clone(),
                id: w.id.clone(),
                last_seen_time: iso(w.last_seen),
                slots: w.slots,
            })
            .collect(),
    ))
}

/// The jobs a lease handed to a worker (possibly none, after the wait).
#[derive(Serialize)]
pub(super) struct Leased {
    jobs: Vec<herald_automation::service::LeasedJob>,
}

/// A heartbeat's answer: the job's status, so a worker sees a stop request.
#[derive(Serialize)]
pub(super) struct HeartbeatAnswer {
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LeaseBody {
    worker_id: String,
    #[serde(default)]
    hostname: String,
    #[serde(default = "one")]
    max_jobs: i64,
    #[serde(default)]
    slots: i64,
    #[serde(default)]
    wait_seconds: Option<u64>,
}

pub(super) fn one() -> i64 {
    1
}

pub(super) fn check_worker_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_parameter(
            "'workerId' must be 1-128 visible ASCII characters.",
        ));
    }
    Ok(())
}

/// Long-poll lease for remote workers (Azure's hybrid worker pull).
pub(super) async fn lease(
    State(st): State<AppState>,
    Path(group): Path<String>,
    AzJson(body): AzJson<LeaseBody>,
) -> Result<Json<Leased>, ApiError> {
    check_worker_id(&body.worker_id)?;
    herald_automation::model::parse_name("worker group", &group)
        .map_err(|e| ApiError::bad_parameter(e.0))?;
    st.automation
        .touch_worker(
            &body.worker_id,
            &group,
            &body.hostname,
            body.slots.max(body.max_jobs),
        )
        .await?;
    let hold = Duration::from_secs(body.wait_seconds.unwrap_or(25).min(60));
    let jobs = st
        .automation
        .lease(
            &group,
            &body.worker_id,
            body.max_jobs.clamp(1, 50),
            hold,
            &st.shutdown,
        )
        .await?;
    Ok(Json(Leased { jobs }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkerBody {
    worker_id: String,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    records: Vec<ReportedRecord>,
    #[serde(default)]
    report: Option<JobReport>,
}

pub(super) fn lease_lost() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "LeaseLost",
        "This worker no longer holds the job's lease; abandon the job.",
    )
}

pub(super) async fn started(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AzJson(body): AzJson<WorkerBody>,
) -> Result<StatusCode, ApiError> {
    check_worker_id(&body.worker_id)?;
    let sandbox = body.sandbox.unwrap_or_else(|| "none".into());
    if !st
        .automation
        .mark_running(&id, &body.worker_id, &sandbox)
        .await?
    {
        return Err(lease_lost());
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn heartbeat(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AzJson(body): AzJson<WorkerBody>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    check_worker_id(&body.worker_id)?;
    match st.automation.heartbeat(&id, &body.worker_id).await? {
        Some(status) => Ok(Json(HeartbeatAnswer { status })),
        None => Err(lease_lost()),
    }
}

pub(super) async fn records(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AzJson(body): AzJson<WorkerBody>,
) -> Result<StatusCode, ApiError> {
    check_worker_id(&body.worker_id)?;
    if body.records.len() > 5000 {
        return Err(ApiError::bad_parameter("At most 5000 records per call."));
    }
    if st
        .automation
        .heartbeat(&id, &body.worker_id)
        .await?
        .is_none()
    {
        return Err(lease_lost());
    }
    st.automation.append(&id, &body.records).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn finish(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AzJson(body): AzJson<WorkerBody>,
) -> Result<StatusCode, ApiError> {
    check_worker_id(&body.worker_id)?;
    let report = body
        .report
        .ok_or_else(|| ApiError::bad_parameter("'report' is required."))?;
    if report.records.len() > 5000 {
        return Err(ApiError::bad_parameter("At most 5000 records per call."));
    }
    if !st
        .automation
        .finish(&id, Some(&body.worker_id), &report)
        .await?
    {
        return Err(lease_lost());
    }
    Ok(StatusCode::NO_CONTENT)
}
