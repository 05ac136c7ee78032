//! The Automation webhook data plane: `POST /webhooks?token=...`, as Azure
//! Automation answers it (202 `{"JobIds":[...]}`, 400 for bad tokens), plus
//! Herald's `Idempotency-Key` and `?wait=`. No bearer auth: the token in the
//! URL is the credential, so this route's query string is never logged.

use crate::api::query_param;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use herald_automation::model::{JobStatus, MAX_WEBHOOK_BODY};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest `?wait=` honoured (Windmill's cap too).
const MAX_WAIT_SECS: u64 = 600;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks", post(invoke).options(handshake_options))
}

async fn invoke(State(st): State<AppState>, req: Request) -> Response {
    match invoke_inner(st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn invoke_inner(st: AppState, req: Request) -> Result<Response, ApiError> {
    let query = req.uri().query().map(str::to_owned);
    let token = query_param(query.as_deref(), "token").unwrap_or_default();
    let wait = match query_param(query.as_deref(), "wait") {
        None => None,
        Some(w) => Some(
            w.parse::<u64>()
                .ok()
                .filter(|w| *w <= MAX_WAIT_SECS)
                .ok_or_else(|| {
                    ApiError::bad_parameter(format!(
                        "'wait' must be a number of seconds from 0 to {MAX_WAIT_SECS}."
                    ))
                })?,
        ),
    };
    // The body is read before any answer: replying to an HTTP/2 request
    // whose body is still arriving makes some clients (curl) fail the stream.
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_WEBHOOK_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "The webhook request body is larger than 512 KB.",
            )
        })?;
    let wh = st.automation.webhook_for_token(&token).await?;
    // Event Grid proves endpoint ownership first; answer it, start nothing.
    if header(&parts.headers, "aeg-event-type")
        .is_some_and(|v| v.eq_ignore_ascii_case("SubscriptionValidation"))
    {
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                let first = if v.is_array() {
                    v.get(0).cloned()
                } else {
                    Some(v)
                };
                first?
                    .get("data")?
                    .get("validationCode")?
                    .as_str()
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                ApiError::bad_parameter("The validation event carries no data.validationCode.")
            })?;
        tracing::info!(webhook = %wh.name, "answered an Event Grid validation request");
        return Ok(Json(ValidationResponse {
            validation_response: code,
        })
        .into_response());
    }
    // The subscription that fed this webhook is gone: nothing to run.
    if header(&parts.headers, "aeg-event-type")
        .is_some_and(|v| v.eq_ignore_ascii_case("SubscriptionDeletion"))
    {
        tracing::info!(webhook = %wh.name, "an event subscription targeting this webhook was deleted");
        return Ok(StatusCode::OK.into_response());
    }
    let idempotency = match header(&parts.headers, "idempotency-key") {
        Some(k) if k.is_empty() || k.len() > 255 => {
            return Err(ApiError::bad_parameter(
                "The Idempotency-Key header must be 1-255 characters.",
            ));
        }
        other => other.map(str::to_owned),
    };
    let mut headers = BTreeMap::new();
    for (name, value) in &parts.headers {
        // Header values are bytes; runbooks get text.
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(title_case(name.as_str()))
            .and_modify(|e: &mut String| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let invoked = st
        .automation
        .invoke(&wh, headers, text, idempotency.as_deref())
        .await
        .map_err(|e| match e {
            herald_automation::AutomationError::Storage(_)
            | herald_automation::AutomationError::Internal(_) => {
                ApiError::internal("queueing a webhook job; the caller should resubmit", e)
            }
            other => other.into(),
        })?;
    metrics::counter!("herald_webhook_invocations_total").increment(1);
    let ids = JobIds {
        job_ids: vec![invoked.job_id.to_string()],
    };
    let Some(wait) = wait else {
        return Ok(accepted(ids, invoked.replayed));
    };
    let job = st
        .automation
        .wait_final(&invoked.job_id, Duration::from_secs(wait))
        .await?;
    if !job.status.is_final() {
        return Ok(accepted(ids, invoked.replayed));
    }
    let output = st.automation.output(&job.id).await?;
    let body = FinishedJob {
        job_ids: vec![job.id.to_string()],
        exception: job.exception,
        output,
        status: job.status,
        status_details: job.status_details,
    };
    let code = if job.status == JobStatus::Completed {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((code, Json(body)).into_response())
}

/// Event Grid's validation answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidationResponse {
    validation_response: String,
}

/// Azure Automation's answer to a webhook call: the queued job's id.
#[derive(Serialize)]
struct JobIds {
    #[serde(rename = "JobIds")]
    job_ids: Vec<String>,
}

/// Herald's `?wait=` extension: the job's end, when it came in time.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FinishedJob {
    #[serde(rename = "JobIds")]
    job_ids: Vec<String>,
    exception: Option<String>,
    output: String,
    status: JobStatus,
    status_details: String,
}

fn accepted(ids: JobIds, replayed: bool) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(ids)).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// The CloudEvents abuse-protection handshake (OPTIONS), for receivers of
/// CloudEvents-schema subscriptions.
async fn handshake_options(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let token = query_param(req.uri().query(), "token").unwrap_or_default();
    st.automation.webhook_for_token(&token).await?;
    let origin = header(req.headers(), "webhook-request-origin")
        .unwrap_or("*")
        .to_owned();
    let mut resp = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&origin) {
        resp.headers_mut().insert("webhook-allowed-origin", v);
    }
    resp.headers_mut()
        .insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    Ok(resp)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `content-type` → `Content-Type`, as Azure's RequestHeader shows names;
/// Event Grid's own `aeg-*` headers stay as Event Grid sends them.
fn title_case(name: &str) -> String {
    if name.starts_with("aeg-") {
        return name.to_owned();
    }
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_names() {
        assert_eq!(super::title_case("content-type"), "Content-Type");
        assert_eq!(super::title_case("aeg-event-type"), "aeg-event-type");
        assert_eq!(super::title_case("x--y"), "X--Y");
    }
}
