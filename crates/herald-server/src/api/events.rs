//! Event Grid data plane: publishing (classic `/topics/{t}/api/events` and
//! namespace `/topics/{t}:publish`) and pull delivery
//! (`/topics/{t}/eventsubscriptions/{s}:receive` and the settle calls).

use super::query_param;
use crate::error::{ApiError, body_rejection as kv_body_rejection};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use herald_router::Settle;
use herald_router::auth::Credential;
use serde::{Deserialize, Serialize};

use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/topics/{topic}/api/events", post(publish_classic))
        .route("/topics/{topic_op}", post(publish_namespace))
        .route("/topics/{topic}/eventsubscriptions/{sub_op}", post(pull))
        .route("/topics/{topic}/eventSubscriptions/{sub_op}", post(pull))
        .route(
            "/eventsubscriptions/{name}/validate",
            axum::routing::get(manual_validation).post(manual_validation),
        )
}

/// Event Grid names an oversize body PayloadTooLarge (spec §2.4).
fn body_rejection(e: BytesRejection) -> ApiError {
    let mut err = kv_body_rejection(e);
    if err.status == StatusCode::PAYLOAD_TOO_LARGE {
        err.code = "PayloadTooLarge";
    }
    err
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    let code = match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
        _ => "Error",
    };
    ApiError::new(status, code, message)
}

/// The publisher's credential, from any of the places Event Grid reads it.
fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<Credential> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(k) = h("aeg-sas-key") {
        return Some(Credential::Key(k));
    }
    if let Some(t) = h("aeg-sas-token") {
        return Some(Credential::Sas(t));
    }
    if let Some(auth) = h("authorization") {
        if let Some(t) = auth.strip_prefix("SharedAccessSignature ") {
            return Some(Credential::Sas(t.trim().to_owned()));
        }
        if let Some(k) = auth.strip_prefix("SharedAccessKey ") {
            return Some(Credential::Key(k.trim().to_owned()));
        }
    }
    query_param(query, "aeg-sas-key").map(Credential::Key)
}

/// Admin bearer tokens may also use the data plane (handy for the CLI).
async fn is_admin(st: &AppState, headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Ok(false);
    };
    Ok(crate::auth::authenticate(st, token.trim())
        .await?
        .is_some_and(|t| t.role == "admin"))
}

async fn authorize(
    st: &AppState,
    topic: &herald_router::TopicInfo,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), ApiError> {
    let cred = credential(headers, query);
    if cred.is_none() && is_admin(st, headers).await? {
        return Ok(());
    }
    Ok(st.router.authorize(topic, cred.as_ref())?)
}

async fn publish(
    st: &AppState,
    topic_name: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Result<usize, ApiError> {
    let topic = st.router.topic(topic_name).await?;
    authorize(st, &topic, headers, query).await?;
    let body = body.map_err(body_rejection)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ce_headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("ce-"))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    Ok(st
        .router
        .publish(&topic, content_type, &ce_headers, &body)
        .await?)
}

async fn publish_classic(
    State(st): State<AppState>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    publish(&st, &topic, &headers, query.as_deref(), body).await?;
    Ok(StatusCode::OK)
}

async fn publish_namespace(
    State(st): State<AppState>,
    Path(topic_op): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(topic) = topic_op.strip_suffix(":publish") else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "No such operation; use /topics/{topic}:publish.",
        ));
    };
    publish(&st, topic, &headers, query.as_deref(), body).await?;
    // Event Grid answers a namespace publish with an empty object.
    Ok((StatusCode::OK, Json(Empty {})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockTokens {
    lock_tokens: Vec<String>,
}

const MAX_LOCK_TOKENS: usize = 1000;

async fn pull(
    State(st): State<AppState>,
    Path((topic, sub_op)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some((sub, op)) = sub_op.split_once(':') else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "No such operation; use {subscription}:receive, :acknowledge, :release, :reject or :renewLock.",
        ));
    };
    let info = st.router.topic(&topic).await?;
    authorize(&st, &info, &headers, query.as_deref()).await?;
    let q = query.as_deref();
    let int_param =
        |name: &str, default: i64, range: std::ops::RangeInclusive<i64>| -> Result<i64, ApiError> {
            match query_param(q, name) {
                None => Ok(default),
                Some(raw) => raw
                    .parse::<f64>()
                    .ok()
                    .map(|f| f as i64)
                    .filter(|v| range.contains(v))
                    .ok_or_else(|| {
                        error(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "{name} must be a number from {} to {}; got '{raw}'.",
                                range.start(),
                                range.end()
                            ),
                        )
                    }),
            }
        };
    if op == "receive" {
        let max_events = int_param("maxEvents", 1, 1..=100)?;
        // Azure allows 10-120 s; shorter waits are accepted for tests and scripts.
        let wait = int_param("maxWaitTime", 60, 0..=120)?;
        let events = st
            .router
            .receive(&topic, sub, max_events, Duration::from_secs(wait as u64))
            .await?;
        // Serialized as a struct so each event's raw text (and `data`'s exact
        // bytes) goes out untouched; a `json!` value would re-encode it.
        #[derive(serde::Serialize)]
        struct ReceiveResult {
            value: Vec<herald_router::Received>,
        }
        return Ok(Json(ReceiveResult { value: events }).into_response());
    }
    let action = match op {
        "acknowledge" => Settle::Acknowledge,
        "reject" => Settle::Reject,
        "renewLock" => Settle::RenewLock,
        "release" => {
            let delay = int_param("releaseDelayInSeconds", 0, 0..=3600)?;
            if ![0, 10, 60, 600, 3600].contains(&delay) {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "releaseDelayInSeconds must be one of 0, 10, 60, 600 or 3600.",
                ));
            }
            Settle::Release {
                delay_seconds: delay,
            }
        }
        other => {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("Unknown operation ':{other}'."),
            ));
        }
    };
    let body = body.map_err(body_rejection)?;
    let tokens: LockTokens =
        crate::error::parse_json(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e.message))?;
    if tokens.lock_tokens.is_empty() || tokens.lock_tokens.len() > MAX_LOCK_TOKENS {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("lockTokens must hold 1 to {MAX_LOCK_TOKENS} tokens."),
        ));
    }
    let results = st
        .router
        .settle(&topic, sub, action, tokens.lock_tokens.clone())
        .await?;
    let mut settled = Settled {
        failed_lock_tokens: Vec::new(),
        succeeded_lock_tokens: Vec::new(),
    };
    for (token, result) in tokens.lock_tokens.into_iter().zip(results) {
        match result {
            Ok(()) => settled.succeeded_lock_tokens.push(token),
            Err(_) => settled.failed_lock_tokens.push(FailedLockToken {
                error: TokenError {
                    code: "TokenLost",
                    message: "Token has expired or was already settled.",
                },
                lock_token: token,
            }),
        }
    }
    Ok(Json(settled).into_response())
}

/// An empty JSON object, `{}`.
#[derive(Serialize)]
struct Empty {}

/// The answer to acknowledge, release and reject, as Event Grid words it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Settled {
    failed_lock_tokens: Vec<FailedLockToken>,
    succeeded_lock_tokens: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedLockToken {
    error: TokenError,
    lock_token: String,
}

#[derive(Serialize)]
struct TokenError {
    code: &'static str,
    message: &'static str,
}

/// The `validationUrl` sent in the handshake: a GET (or POST) within the
/// window completes a manual validation. The token is the credential.
async fn manual_validation(
    State(st): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(token) = query_param(query.as_deref(), "token") else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "The validation link has no token.",
        ));
    };
    if st
        .delivery
        .complete_manual_validation(&name, &token)
        .await?
    {
        Ok((
            StatusCode::OK,
            "Webhook successfully validated as a subscription endpoint.",
        )
            .into_response())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            "This validation link is unknown, already used, or expired (links are valid for 10 minutes).",
        ))
    }
}
