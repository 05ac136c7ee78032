//! Jobs: listing, status with history, output, streams (with live tail), stop and resume.

use super::webhooks::RunbookRef;
use super::*;
use crate::api::List;
use crate::error::ApiError;
use crate::error::{AzPath as Path, AzQuery as Query};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use herald_automation::model::JobStatus;
use herald_automation::service::JobChanged;
use herald_storage::{JobFilter, JobRecord, StreamRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;

/// A job's properties, in Azure's names, with Herald's run details
/// (sandbox, exit code, restarts) beside them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobProperties {
    creation_time: String,
    end_time: Option<String>,
    exception: Option<String>,
    exit_code: Option<i64>,
    /// Every status change, on a single job's GET only.
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<JobHistoryItem>>,
    job_id: String,
    last_modified_time: String,
    last_status_modified_time: String,
    parameters: Value,
    provisioning_state: &'static str,
    restarts: i64,
    run_on: String,
    runbook: RunbookRef,
    runbook_version: i64,
    sandbox: Option<String>,
    start_time: Option<String>,
    started_by: String,
    status: JobStatus,
    status_details: String,
}

/// One status change of a job.
#[derive(Serialize)]
pub(super) struct JobHistoryItem {
    details: String,
    status: JobStatus,
    time: String,
}

pub(super) type JobDto = Resource<JobProperties>;

pub(super) fn job_view(
    automation: &herald_automation::AutomationService,
    job: &JobRecord,
    history: Option<&[herald_storage::JobTransition]>,
) -> JobDto {
    Resource {
        id: Some(format!("/automation/jobs/{}", job.id)),
        name: job.id.to_string(),
        properties: JobProperties {
            creation_time: iso(job.created),
            end_time: job.end_time.map(iso),
            exception: job.exception.clone(),
            exit_code: job.exit_code,
            history: history.map(|h| {
                h.iter()
                    .map(|t| JobHistoryItem {
                        details: t.details.clone(),
                        status: t.status,
                        time: iso(t.at),
                    })
                    .collect()
            }),
            job_id: job.id.to_string(),
            last_modified_time: iso(job.last_modified),
            last_status_modified_time: iso(job.last_status_modified),
            parameters: automation.shown_parameters(job),
            provisioning_state: "Succeeded",
            restarts: job.restarts,
            run_on: job.run_on.clone(),
            runbook: RunbookRef {
                name: job.runbook_name.clone(),
            },
            runbook_version: job.runbook_version,
            sandbox: job.sandbox.clone(),
            start_time: job.start_time.map(iso),
            started_by: job.started_by.clone(),
            status: job.status,
            status_details: job.status_details.clone(),
        },
    }
}

#[derive(Deserialize)]
pub(super) struct JobQuery {
    status: Option<String>,
    runbook: Option<String>,
    #[serde(rename = "$top", alias = "top")]
    top: Option<i64>,
    /// Jobs created before this job id (paging).
    before: Option<String>,
}

pub(super) async fn list_jobs(
    State(st): State<AppState>,
    Query(q): Query<JobQuery>,
) -> Result<Json<List<JobDto>>, ApiError> {
    let status = match &q.status {
        Some(s) => Some(
            JobStatus::parse(s)
                .ok_or_else(|| ApiError::bad_parameter(format!("unknown job status '{s}'")))?,
        ),
        None => None,
    };
    let runbook_id = match &q.runbook {
        Some(r) => Some(st.automation.runbook_id(r).await?),
        None => None,
    };
    let jobs = st
        .automation
        .list_jobs(&JobFilter {
            status,
            runbook_id,
            created_after: None,
            before_id: q.before.clone(),
            limit: q.top.unwrap_or(100).clamp(1, 1000),
        })
        .await?;
    Ok(Json(
        jobs.iter()
            .map(|j| job_view(&st.automation, j, None))
            .collect(),
    ))
}

pub(super) async fn get_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobDto>, ApiError> {
    let job = st.automation.job(&id).await?;
    let history = st.automation.transitions(&id).await?;
    Ok(Json(job_view(&st.automation, &job, Some(&history))))
}

pub(super) async fn output(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.automation.job(&id).await?;
    let text = st.automation.output(&id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

pub(super) fn stream_id(job: &str, seq: i64) -> String {
    format!("{job}_{seq:020}")
}

/// One job stream record, as Azure's job stream API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StreamRecordDto {
    id: String,
    job_stream_id: String,
    stream_text: String,
    stream_type: String,
    summary: String,
    time: String,
    value: Value,
}

pub(super) fn record_view(job: &str, r: &StreamRecord) -> StreamRecordDto {
    let value: Value = r
        .value
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_else(|| Value::Object(Default::default()));
    StreamRecordDto {
        id: format!("/automation/jobs/{job}/streams/{}", stream_id(job, r.seq)),
        job_stream_id: stream_id(job, r.seq),
        stream_text: r.text.clone(),
        stream_type: r.stream.clone(),
        summary: r.text.chars().take(200).collect(),
        time: iso(r.time),
        value,
    }
}

/// Server-sent events carry one JSON document per event.
fn sse_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[derive(Deserialize)]
pub(super) struct StreamQuery {
    #[serde(rename = "streamType", alias = "stream")]
    stream_type: Option<String>,
    /// Records after this sequence number.
    after: Option<i64>,
    follow: Option<bool>,
}

pub(super) async fn streams(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.automation.job(&id).await?;
    let stream = match q.stream_type.as_deref() {
        None | Some("Any") | Some("any") => None,
        Some(s) => Some(
            herald_automation::exec::StreamType::parse(s)
                .ok_or_else(|| ApiError::bad_parameter(format!("unknown stream type '{s}'")))?
                .as_str()
                .to_owned(),
        ),
    };
    let wants_sse = q.follow == Some(true)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = resume.or(q.after).unwrap_or(0).max(0);
    if wants_sse {
        return Ok(Sse::new(follow(st, id, stream, after))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }
    let records = st
        .automation
        .records(&id, after, stream.as_deref(), 5000)
        .await?;
    Ok(Json(
        records
            .iter()
            .map(|r| record_view(&id, r))
            .collect::<List<_>>(),
    )
    .into_response())
}

/// Live tail: records as they arrive, each with its sequence number as the
/// SSE id, so a reconnect with `Last-Event-ID` resumes; ends with a
/// `status` event once the job is final.
pub(super) fn follow(
    st: AppState,
    id: String,
    stream: Option<String>,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let mut after = after;
        let mut changes = st.automation.subscribe();
        loop {
            let records = match st
                .automation
                .records(&id, after, stream.as_deref(), 1000)
                .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            for r in &records {
                after = r.seq;
                let ev = Event::default()
                    .id(r.seq.to_string())
                    .event(r.stream.clone())
                    .data(sse_json(&record_view(&id, r)));
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if records.len() == 1000 {
                continue;
            }
            let job = match st.automation.job(&id).await {
                Ok(j) => j,
                Err(_) => return,
            };
            if job.status.is_final() {
                // Records land before the final status; one more read catches stragglers.
                if let Ok(rest) = st
                    .automation
                    .records(&id, after, stream.as_deref(), 100_000)
                    .await
                {
                    for r in &rest {
                        let ev = Event::default()
                            .id(r.seq.to_string())
                            .event(r.stream.clone())
                            .data(sse_json(&record_view(&id, r)));
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tx
                    .send(Event::default().event("status").data(sse_json(&job_view(
                        &st.automation,
                        &job,
                        None,
                    ))))
                    .await;
                return;
            }
            let wake = async {
                loop {
                    match changes.recv().await {
                        Ok(JobChanged(j)) if *j == *id => return,
                        Ok(_) => continue,
                        Err(_) => return,
                    }
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tx.closed() => return,
            }
        }
    })
}

/// A stream fed by a task through a channel (keeps SSE code linear).
pub(super) fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok(ev), rx))
    })
}

pub(super) async fn stream_record(
    State(st): State<AppState>,
    Path((id, stream_id)): Path<(String, String)>,
) -> Result<Json<StreamRecordDto>, ApiError> {
    let seq = stream_id
        .rsplit('_')
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| ApiError::not_found("NotFound", "No such job stream record."))?;
    let rec = st
        .automation
        .records(&id, seq - 1, None, 1)
        .await?
        .into_iter()
        .find(|r| r.seq == seq)
        .ok_or_else(|| ApiError::not_found("NotFound", "No such job stream record."))?;
    Ok(Json(record_view(&id, &rec)))
}

pub(super) async fn stop(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobDto>, ApiError> {
    st.automation.job(&id).await?;
    let job = st.automation.stop_job(&id).await?;
    Ok(Json(job_view(&st.automation, &job, None)))
}

pub(super) async fn resume(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobDto>, ApiError> {
    let job = st.automation.resume_job(&id).await?;
    Ok(Json(job_view(&st.automation, &job, None)))
}
