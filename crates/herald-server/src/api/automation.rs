//! Automation's management API under `/api/v1/automation`: runbooks,
//! webhooks, jobs with their streams, assets, and the worker lease protocol.
//! Property names follow Azure's (isEnabled, expiryTime, runOn, ...) so the
//! Azure docs map one to one.

use crate::error::{ApiError, AzJson};
use crate::error::{AzBytes, AzPath as Path, AzQuery as Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use herald_automation::model::{JobStatus, ParamDecl, RunbookSettings};
use herald_automation::service::{JobChanged, JobReport, ReportedRecord};
use herald_storage::{JobFilter, JobRecord, RunbookRecord, StreamRecord, WebhookRecord};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

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

fn iso_opt(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(iso(m)))
}

fn object(v: Value) -> Result<Map<String, Value>, ApiError> {
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

// ---- runbooks ----

fn runbook_view(rb: &RunbookRecord) -> Value {
    let params: Vec<ParamDecl> = serde_json::from_str(&rb.draft_params).unwrap_or_default();
    let settings: RunbookSettings = serde_json::from_str(&rb.settings).unwrap_or_default();
    json!({
        "id": format!("/automation/runbooks/{}", rb.name),
        "name": rb.name,
        "properties": {
            "runbookType": rb.kind,
            "description": rb.description,
            "state": if rb.published_version.is_some() { "Published" } else { "New" },
            "publishedVersion": rb.published_version,
            "parameters": params,
            "timeoutSeconds": settings.timeout_seconds,
            "maxConcurrentJobs": settings.max_concurrent_jobs,
            "allowNetwork": settings.allow_network,
            "memoryLimitMb": settings.memory_limit_mb,
            "logVerbose": settings.log_verbose,
            "logProgress": settings.log_progress,
            "permissions": settings.permissions,
            "creationTime": iso(rb.created),
            "lastModifiedTime": iso(rb.updated),
        }
    })
}

async fn list_runbooks(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = st.automation.list_runbooks().await?;
    Ok(Json(
        json!({ "value": list.iter().map(runbook_view).collect::<Vec<_>>() }),
    ))
}

async fn get_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(runbook_view(&st.automation.runbook(&name).await?)))
}

/// Creates the runbook, or replaces its draft when it exists.
async fn put_runbook(
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

async fn patch_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let rb = st.automation.update_runbook(&name, &object(body)?).await?;
    Ok(Json(runbook_view(&rb)))
}

async fn delete_runbook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_runbook(&name).await?;
    Ok(StatusCode::OK)
}

async fn get_content(
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
async fn put_content(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzBytes(body): AzBytes,
) -> Result<Json<Value>, ApiError> {
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_parameter("Runbook content must be UTF-8 text."))?;
    let rb = st.automation.set_draft_content(&name, text).await?;
    Ok(Json(runbook_view(&rb)))
}

async fn publish(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.automation.publish_runbook(&name).await?;
    Ok(Json(runbook_view(&st.automation.runbook(&name).await?)))
}

/// Starts a job directly: `{"parameters": {...}, "runOn": "group"}`.
async fn start(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzBytes(body): AzBytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(job_view(&job, None))))
}

// ---- webhooks ----

pub fn webhook_view(wh: &WebhookRecord, runbook: &str, uri: Option<&str>) -> Value {
    let mut params: Map<String, Value> = serde_json::from_str(&wh.parameters).unwrap_or_default();
    if wh.secure_parameters.is_some() {
        params.insert("(secure parameters)".into(), Value::String("*****".into()));
    }
    json!({
        "id": format!("/automation/webhooks/{}", wh.name),
        "name": wh.name,
        "properties": {
            "isEnabled": wh.is_enabled,
            "uri": uri.unwrap_or(""),
            "expiryTime": iso(wh.expiry),
            "lastInvokedTime": iso_opt(wh.last_invoked),
            "parameters": params,
            "runbook": { "name": runbook },
            "runOn": if wh.run_on.is_empty() { Value::Null } else { Value::String(wh.run_on.clone()) },
            "creationTime": iso(wh.created),
            "lastModifiedTime": iso(wh.updated),
            "description": wh.description,
        }
    })
}

async fn runbook_name(st: &AppState, id: &str, cache: &mut HashMap<String, String>) -> String {
    if let Some(n) = cache.get(id) {
        return n.clone();
    }
    let name = st
        .storage
        .runbook_by_id(id)
        .await
        .ok()
        .flatten()
        .map_or_else(String::new, |r| r.name);
    cache.insert(id.to_owned(), name.clone());
    name
}

#[derive(Deserialize)]
struct WebhookListQuery {
    runbook: Option<String>,
}

async fn list_webhooks(
    State(st): State<AppState>,
    Query(q): Query<WebhookListQuery>,
) -> Result<Json<Value>, ApiError> {
    let list = st.automation.list_webhooks(q.runbook.as_deref()).await?;
    let mut names = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for wh in &list {
        let rb = runbook_name(&st, &wh.runbook_id, &mut names).await;
        out.push(webhook_view(wh, &rb, None));
    }
    Ok(Json(json!({ "value": out })))
}

async fn generate_uri(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::String(st.automation.generate_uri().await?)))
}

async fn get_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let wh = st.automation.webhook(&name).await?;
    let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
    Ok(Json(webhook_view(&wh, &rb, None)))
}

/// Azure's CreateOrUpdate: 201 with the URL when new, 200 when updated.
async fn put_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Response, ApiError> {
    let props = object(body)?;
    match st.automation.webhook(&name).await {
        Ok(_) => {
            let wh = st.automation.update_webhook(&name, &props).await?;
            let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
            Ok(Json(webhook_view(&wh, &rb, None)).into_response())
        }
        Err(herald_automation::AutomationError::NotFound { .. }) => {
            let (wh, uri) = st.automation.create_webhook(&name, &props).await?;
            let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
            Ok((
                StatusCode::CREATED,
                Json(webhook_view(&wh, &rb, Some(&uri))),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn patch_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let wh = st.automation.update_webhook(&name, &object(body)?).await?;
    let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
    Ok(Json(webhook_view(&wh, &rb, None)))
}

async fn delete_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_webhook(&name).await?;
    Ok(StatusCode::OK)
}

// ---- jobs ----

pub fn job_view(job: &JobRecord, history: Option<&[herald_storage::JobTransition]>) -> Value {
    let params: Value = serde_json::from_str(&job.parameters).unwrap_or(Value::Null);
    let mut props = json!({
        "jobId": job.id,
        "runbook": { "name": job.runbook_name },
        "runbookVersion": job.runbook_version,
        "startedBy": job.started_by,
        "runOn": job.run_on,
        "status": job.status,
        "statusDetails": job.status_details,
        "creationTime": iso(job.created),
        "startTime": iso_opt(job.start_time),
        "endTime": iso_opt(job.end_time),
        "exception": job.exception,
        "lastModifiedTime": iso(job.last_modified),
        "lastStatusModifiedTime": iso(job.last_status_modified),
        "parameters": params,
        "provisioningState": "Succeeded",
        "sandbox": job.sandbox,
        "exitCode": job.exit_code,
        "restarts": job.restarts,
    });
    if let Some(h) = history {
        props["history"] = h
            .iter()
            .map(|t| json!({"status": t.status, "time": iso(t.at), "details": t.details}))
            .collect();
    }
    json!({ "id": format!("/automation/jobs/{}", job.id), "name": job.id, "properties": props })
}

#[derive(Deserialize)]
struct JobQuery {
    status: Option<String>,
    runbook: Option<String>,
    #[serde(rename = "$top", alias = "top")]
    top: Option<i64>,
    /// Jobs created before this job id (paging).
    before: Option<String>,
}

async fn list_jobs(
    State(st): State<AppState>,
    Query(q): Query<JobQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match &q.status {
        Some(s) => Some(
            JobStatus::parse(s)
                .ok_or_else(|| ApiError::bad_parameter(format!("unknown job status '{s}'")))?
                .as_str()
                .to_owned(),
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
        json!({ "value": jobs.iter().map(|j| job_view(j, None)).collect::<Vec<_>>() }),
    ))
}

async fn get_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = st.automation.job(&id).await?;
    let history = st.automation.transitions(&id).await?;
    Ok(Json(job_view(&job, Some(&history))))
}

async fn output(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    st.automation.job(&id).await?;
    let text = st.automation.output(&id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

fn stream_id(job: &str, seq: i64) -> String {
    format!("{job}_{seq:020}")
}

fn record_view(job: &str, r: &StreamRecord) -> Value {
    let value: Value = r
        .value
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_else(|| json!({}));
    json!({
        "id": format!("/automation/jobs/{job}/streams/{}", stream_id(job, r.seq)),
        "jobStreamId": stream_id(job, r.seq),
        "time": iso(r.time),
        "streamType": r.stream,
        "streamText": r.text,
        "summary": r.text.chars().take(200).collect::<String>(),
        "value": value,
    })
}

#[derive(Deserialize)]
struct StreamQuery {
    #[serde(rename = "streamType", alias = "stream")]
    stream_type: Option<String>,
    /// Records after this sequence number.
    after: Option<i64>,
    follow: Option<bool>,
}

async fn streams(
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
    Ok(
        Json(json!({ "value": records.iter().map(|r| record_view(&id, r)).collect::<Vec<_>>() }))
            .into_response(),
    )
}

/// Live tail: records as they arrive, each with its sequence number as the
/// SSE id, so a reconnect with `Last-Event-ID` resumes; ends with a
/// `status` event once the job is final.
fn follow(
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
                    .data(record_view(&id, r).to_string());
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
            if JobStatus::parse(&job.status).is_some_and(JobStatus::is_final) {
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
                            .data(record_view(&id, r).to_string());
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tx
                    .send(
                        Event::default()
                            .event("status")
                            .data(job_view(&job, None).to_string()),
                    )
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
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
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

async fn stream_record(
    State(st): State<AppState>,
    Path((id, stream_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
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

async fn stop(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    st.automation.job(&id).await?;
    let job = st.automation.stop_job(&id).await?;
    Ok(Json(job_view(&job, None)))
}

async fn resume(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = st.automation.resume_job(&id).await?;
    Ok(Json(job_view(&job, None)))
}

// ---- assets ----

fn asset_view(a: &herald_storage::AssetRecord) -> Value {
    let mut v = json!({
        "name": a.name,
        "properties": {
            "isEncrypted": a.encrypted,
            "description": a.description,
            "creationTime": iso(a.created),
            "lastModifiedTime": iso(a.updated),
        }
    });
    if a.kind == "credential" {
        v["properties"]["userName"] = json!(a.username);
    } else if !a.encrypted {
        // Plain variables show their value, as Azure does; encrypted never.
        v["properties"]["value"] = json!(String::from_utf8_lossy(&a.value));
    }
    v
}

async fn list_assets(st: &AppState, kind: &str) -> Result<Json<Value>, ApiError> {
    let list = st.automation.assets().await?;
    Ok(Json(json!({
        "value": list.iter().filter(|a| a.kind == kind).map(asset_view).collect::<Vec<_>>()
    })))
}

async fn list_variables(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    list_assets(&st, "variable").await
}

async fn list_credentials(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    list_assets(&st, "credential").await
}

async fn get_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(asset_view(
        &st.automation.asset("variable", &name).await?,
    )))
}

async fn get_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(asset_view(
        &st.automation.asset("credential", &name).await?,
    )))
}

async fn put_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let value = match body.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => {
            return Err(ApiError::bad_parameter("'value' is required."));
        }
        Some(other) => other.to_string(),
    };
    let encrypted = body
        .get("isEncrypted")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let desc = body
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let a = st
        .automation
        .put_asset("variable", &name, &value, None, encrypted, desc)
        .await?;
    Ok(Json(asset_view(&a)))
}

async fn put_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let user = body
        .get("userName")
        .or_else(|| body.get("username"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_parameter("'userName' is required."))?;
    let password = body
        .get("password")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_parameter("'password' is required."))?;
    let desc = body
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let a = st
        .automation
        .put_asset("credential", &name, password, Some(user), true, desc)
        .await?;
    Ok(Json(asset_view(&a)))
}

async fn delete_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_asset("variable", &name).await?;
    Ok(StatusCode::OK)
}

async fn delete_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_asset("credential", &name).await?;
    Ok(StatusCode::OK)
}

// ---- workers ----

async fn sandbox(State(st): State<AppState>) -> Json<Value> {
    Json(json!({
        "level": st.sandbox.as_str(),
        "runbookTypes": herald_automation::sandbox::available_kinds()
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
    }))
}

async fn list_workers(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = st.automation.workers().await?;
    Ok(Json(json!({
        "value": list.iter().map(|w| json!({
            "id": w.id, "group": w.group, "hostname": w.hostname, "slots": w.slots,
            "lastSeenTime": iso(w.last_seen),
        })).collect::<Vec<_>>()
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseBody {
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

fn one() -> i64 {
    1
}

fn check_worker_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_parameter(
            "'workerId' must be 1-128 visible ASCII characters.",
        ));
    }
    Ok(())
}

/// Long-poll lease for remote workers (Azure's hybrid worker pull).
async fn lease(
    State(st): State<AppState>,
    Path(group): Path<String>,
    AzJson(body): AzJson<LeaseBody>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "jobs": jobs })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkerBody {
    worker_id: String,
    #[serde(default)]
    sandbox: Option<String>,
    #[serde(default)]
    records: Vec<ReportedRecord>,
    #[serde(default)]
    report: Option<JobReport>,
}

fn lease_lost() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "LeaseLost",
        "This worker no longer holds the job's lease; abandon the job.",
    )
}

async fn started(
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

async fn heartbeat(
    State(st): State<AppState>,
    Path(id): Path<String>,
    AzJson(body): AzJson<WorkerBody>,
) -> Result<Json<Value>, ApiError> {
    check_worker_id(&body.worker_id)?;
    match st.automation.heartbeat(&id, &body.worker_id).await? {
        Some(status) => Ok(Json(json!({ "status": status }))),
        None => Err(lease_lost()),
    }
}

async fn records(
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

async fn finish(
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

// ---- what a running job may call with its job token ----

/// Routes a job reaches with its own token (`HERALD_TOKEN` inside a job).
pub fn job_router() -> Router<AppState> {
    Router::new().route("/api/v1/automation/job/assets/{name}", get(job_asset))
}

async fn job_asset(
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
