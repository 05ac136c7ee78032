//! The Hubs data plane on a namespace's host (`{ns}.{hub_base}`): REST send
//! as Event Hubs serves it (single event, batch, to a partition, via a
//! publisher), and Herald's pull extension for curl users (read a partition
//! from a sequence number, with a wait; checkpoints per consumer group).
//! Every call carries a SAS token (`Authorization: SharedAccessSignature
//! sr=...&sig=...&se=...&skn=...`); errors are Service Bus's XML body.

use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use herald_hubs::{HubError, NewEvent, PropertyValue, Right, SendTarget, StoredEvent, rest};
use herald_storage::{HubRecord, NamespaceRecord};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{hub}/messages", post(send_any))
        .route("/{hub}/partitions/{p}/messages", post(send_partition))
        .route(
            "/{hub}/publishers/{publisher}/messages",
            post(send_publisher),
        )
        .route(
            "/{hub}/consumergroups/{cg}/partitions/{p}/messages",
            get(pull),
        )
        .route(
            "/{hub}/consumergroups/{cg}/checkpoints/{p}",
            get(get_checkpoint).put(put_checkpoint),
        )
        .fallback(|| async {
            RestError::new(
                StatusCode::NOT_FOUND,
                "No such operation on an event hub namespace.",
            )
        })
        .method_not_allowed_fallback(|| async {
            RestError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "This path does not support that HTTP method.",
            )
        })
}

/// Service Bus's error body: `<Error><Code>401</Code><Detail>...</Detail></Error>`.
pub struct RestError {
    status: StatusCode,
    detail: String,
}

impl RestError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let tracking = uuid::Uuid::new_v4();
        let body = format!(
            "<Error><Code>{}</Code><Detail>{} TrackingId:{tracking}</Detail></Error>",
            self.status.as_u16(),
            xml_escape(&self.detail)
        );
        (
            self.status,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

impl From<HubError> for RestError {
    fn from(e: HubError) -> Self {
        let msg = e.to_string();
        match e {
            HubError::NotFound { .. } => RestError::new(StatusCode::NOT_FOUND, msg),
            HubError::Conflict(_) => RestError::new(StatusCode::CONFLICT, msg),
            HubError::BadRequest(_) => RestError::new(StatusCode::BAD_REQUEST, msg),
            HubError::TooLarge(_) => RestError::new(StatusCode::FORBIDDEN, msg),
            HubError::Unauthorized(_) => RestError::new(StatusCode::UNAUTHORIZED, msg),
            HubError::Storage(_) | HubError::Internal(_) => {
                let api = crate::error::ApiError::internal("serving a hubs REST request", msg);
                RestError::new(StatusCode::INTERNAL_SERVER_ERROR, api.message)
            }
        }
    }
}

impl From<rest::RestError> for RestError {
    fn from(e: rest::RestError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        RestError::new(status, e.to_string())
    }
}

type RestResult<T> = Result<T, RestError>;

/// The namespace this request's host names, or None for other hosts.
pub fn namespace_of(st: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    st.hubs.namespace_of_host(&host_of(headers, uri)?)
}

fn host_of(headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// First path segments the plain host's other planes own; a hub of the
/// default namespace with one of these names is reached on its namespace
/// host only.
const PLAIN_HOST_RESERVED: &[&str] = &[
    "api",
    "console",
    "deletedsecrets",
    "healthz",
    "herald",
    "jobs",
    "metrics",
    "secrets",
    "topics",
    "webhooks",
];

/// Whether a request to a host that names no namespace has the shape of a
/// data-plane call (`/{hub}/messages`, `.../partitions/{p}/messages`, ...):
/// those go to the default namespace, as Azure's plain host cannot but a
/// self-hosted single host wants.
pub fn is_plain_host_call(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if seg.iter().any(|s| s.is_empty())
        || PLAIN_HOST_RESERVED
            .iter()
            .any(|r| seg[0].eq_ignore_ascii_case(r))
    {
        return false;
    }
    let post = method == Method::POST;
    match seg.as_slice() {
        [_, "messages"] => post,
        [_, "partitions" | "publishers", _, "messages"] => post,
        [_, "consumergroups", _, "partitions", _, "messages"] => method == Method::GET,
        [_, "consumergroups", _, "checkpoints", _] => {
            method == Method::GET || method == Method::PUT
        }
        _ => false,
    }
}

/// Finds the hub and checks the SAS token for `right` on `entity` (a path
/// under the hub, e.g. `/consumergroups/g/partitions/0`).
async fn authorize(
    st: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    hub: &str,
    entity: &str,
    right: Right,
) -> RestResult<(NamespaceRecord, HubRecord)> {
    // A namespace host, or the plain host (the default namespace), whose
    // tokens name the host the caller used.
    let (ns, plain_host) = match namespace_of(st, headers, uri) {
        Some(ns) => (ns, None),
        None => match host_of(headers, uri) {
            Some(h) => (herald_hubs::DEFAULT_NAMESPACE.to_owned(), Some(h)),
            None => {
                return Err(RestError::new(
                    StatusCode::NOT_FOUND,
                    "This host names no event hub namespace.",
                ));
            }
        },
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            RestError::new(
                StatusCode::UNAUTHORIZED,
                "MissingToken: The request has no Authorization header; send 'Authorization: SharedAccessSignature sr=...&sig=...&se=...&skn=...'.",
            )
        })?
        .to_owned();
    // A missing hub answers 404 before the token is checked, as Azure
    // does (the spec's default), although that tells a caller without a
    // key which names exist.
    let (ns, hub) = st.hubs.hub(&ns, hub).await?;
    let entity_uri = match plain_host {
        Some(h) => format!("https://{h}/{}{entity}", hub.name),
        None => format!("{}{entity}", st.hubs.hub_uri(&ns, &hub)),
    };
    st.hubs
        .authorize(&ns, &hub, &token, &entity_uri, right)
        .await?;
    Ok((ns, hub))
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

fn is_batch(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(rest::BATCH_CONTENT_TYPE))
}

/// The events of a request and the partition key they carry, if any. A
/// batch is one atomic append, so it goes to one partition: its events
/// must agree on their key.
fn events_of(headers: &HeaderMap, body: Bytes) -> RestResult<(Vec<NewEvent>, Option<String>)> {
    rest::check_publication_size(body.len())?;
    let events = if is_batch(headers) {
        rest::parse_batch(&body)?
    } else {
        let pairs = header_pairs(headers);
        vec![rest::single_event(
            body,
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?]
    };
    let key = events.first().and_then(|e| e.partition_key.clone());
    if events.iter().any(|e| e.partition_key != key) {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "The events of one batch go to one partition: give them all the same PartitionKey, or none.",
        ));
    }
    Ok((events, key))
}

async fn send(
    st: &AppState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    hub: &str,
    entity: &str,
    target: Option<SendTarget>,
    body: Result<Bytes, BytesRejection>,
) -> RestResult<StatusCode> {
    let (_, hub) = authorize(st, headers, uri, hub, entity, Right::Send).await?;
    let body = body.map_err(|_| {
        RestError::new(
            StatusCode::FORBIDDEN,
            format!(
                "The request body is over the {} byte limit of one publication.",
                rest::MAX_PUBLICATION_BYTES
            ),
        )
    })?;
    let (events, key) = events_of(headers, body)?;
    let target = target.unwrap_or(match key {
        Some(k) => SendTarget::Key(k),
        None => SendTarget::Any,
    });
    st.hubs.send(&hub, target, events).await?;
    Ok(StatusCode::CREATED)
}

async fn send_any(
    State(st): State<AppState>,
    Path(hub): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> RestResult<StatusCode> {
    send(&st, &headers, &uri, &hub, "", None, body).await
}

async fn send_partition(
    State(st): State<AppState>,
    Path((hub, p)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> RestResult<StatusCode> {
    let entity = format!("/partitions/{p}");
    send(
        &st,
        &headers,
        &uri,
        &hub,
        &entity,
        Some(SendTarget::Partition(p)),
        body,
    )
    .await
}

/// A publisher's events all carry its name as their partition key.
async fn send_publisher(
    State(st): State<AppState>,
    Path((hub, publisher)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> RestResult<StatusCode> {
    let entity = format!("/publishers/{publisher}");
    send(
        &st,
        &headers,
        &uri,
        &hub,
        &entity,
        Some(SendTarget::Key(publisher)),
        body,
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullQuery {
    from_sequence_number: Option<i64>,
    max: Option<usize>,
    /// Seconds to wait for an event when none is there yet (0–60).
    wait: Option<u64>,
}

/// One event as the pull API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PulledEvent {
    /// The body as text, or base64 when `isBodyBase64`.
    body: String,
    enqueued_time_utc: String,
    is_body_base64: bool,
    offset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition_key: Option<String>,
    properties: serde_json::Map<String, serde_json::Value>,
    sequence_number: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PullPage {
    /// Where the next read starts.
    next_sequence_number: i64,
    value: Vec<PulledEvent>,
}

fn pulled(e: &StoredEvent) -> PulledEvent {
    let (body, is_body_base64) = match std::str::from_utf8(&e.body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&e.body),
            true,
        ),
    };
    PulledEvent {
        body,
        enqueued_time_utc: super::automation::iso(e.enqueued_time_ms),
        is_body_base64,
        offset: e.offset(),
        partition_key: e.partition_key.clone(),
        properties: e
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), property_json(v)))
            .collect(),
        sequence_number: e.sequence_number,
    }
}

fn property_json(v: &PropertyValue) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn partition_of(hub: &HubRecord, p: &str) -> RestResult<i64> {
    p.parse::<i64>()
        .ok()
        .filter(|n| (0..hub.partition_count).contains(n) && p == n.to_string())
        .ok_or_else(|| {
            RestError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "The partition '{p}' does not exist in event hub '{}'.",
                    hub.name
                ),
            )
        })
}

async fn pull(
    State(st): State<AppState>,
    Path((hub, cg, p)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    q: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> RestResult<Json<PullPage>> {
    let entity = format!("/consumergroups/{cg}/partitions/{p}");
    let (_, hub) = authorize(&st, &headers, &uri, &hub, &entity, Right::Listen).await?;
    let Query(q) = q.map_err(|_| {
        RestError::new(
            StatusCode::BAD_REQUEST,
            "Use ?fromSequenceNumber=<n>&max=<1-10000>&wait=<0-60 seconds>.",
        )
    })?;
    let group = st.hubs.consumer_group(&hub, &cg).await?;
    let partition = partition_of(&hub, &p)?;
    let from = match q.from_sequence_number {
        Some(n) => n.max(0),
        // Without a position, carry on from the group's checkpoint.
        None => st
            .hubs
            .checkpoints(&hub, &group)
            .await?
            .iter()
            .find(|c| c.partition == partition)
            .map_or(0, |c| c.seq + 1),
    };
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let events = tokio::select! {
        r = st.hubs.read_wait(&hub, partition, from, q.max.unwrap_or(100), wait) => r?,
        _ = st.shutdown.cancelled() => Vec::new(),
    };
    st.hubs.count_outgoing(&hub, partition, &events);
    let next = events.last().map_or(from, |e| e.sequence_number + 1);
    Ok(Json(PullPage {
        next_sequence_number: next,
        value: events.iter().map(pulled).collect(),
    }))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    /// The last sequence number the group processed.
    sequence_number: i64,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

async fn get_checkpoint(
    State(st): State<AppState>,
    Path((hub, cg, p)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> RestResult<Json<Checkpoint>> {
    let entity = format!("/consumergroups/{cg}");
    let (_, hub) = authorize(&st, &headers, &uri, &hub, &entity, Right::Listen).await?;
    let group = st.hubs.consumer_group(&hub, &cg).await?;
    let partition = partition_of(&hub, &p)?;
    let cp = st
        .hubs
        .checkpoints(&hub, &group)
        .await?
        .into_iter()
        .find(|c| c.partition == partition)
        .ok_or_else(|| {
            RestError::new(
                StatusCode::NOT_FOUND,
                format!("No checkpoint for partition {p} in consumer group '{cg}' yet."),
            )
        })?;
    Ok(Json(Checkpoint {
        sequence_number: cp.seq,
        updated_at: Some(super::automation::iso(cp.updated)),
    }))
}

async fn put_checkpoint(
    State(st): State<AppState>,
    Path((hub, cg, p)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> RestResult<StatusCode> {
    let entity = format!("/consumergroups/{cg}");
    let (_, hub) = authorize(&st, &headers, &uri, &hub, &entity, Right::Listen).await?;
    let group = st.hubs.consumer_group(&hub, &cg).await?;
    let partition = partition_of(&hub, &p)?;
    let cp: Checkpoint = serde_json::from_slice(&body).map_err(|_| {
        RestError::new(
            StatusCode::BAD_REQUEST,
            "The body must be {\"sequenceNumber\": <the last sequence number processed>}.",
        )
    })?;
    if cp.sequence_number < -1 {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "sequenceNumber must be -1 or more.",
        ));
    }
    st.hubs
        .put_checkpoint(&hub, &group, partition, cp.sequence_number)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
