//! Management API for topics and their access keys:
//! `/api/v1/topics[/{topic}[/keys|/regenerateKey]]`.

use super::{KeyPair, List, Metrics};
use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use herald_router::schema::{InputSchemaKind, InputSchemaMapping};
use herald_storage::TopicRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(list_topics).post(create_topic))
        .route("/{topic}", get(show_topic).delete(delete_topic))
        .route("/{topic}/keys", get(keys))
        .route("/{topic}/regenerateKey", post(regenerate_key))
}

/// The authority the client used (HTTP/2 sends it in the URI, HTTP/1.1 in Host).
fn host(uri: &Uri, headers: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into())
}

pub(super) fn time(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .single()
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// A topic as the management API returns it. Fields are in wire-name order,
/// the order the bodies had when they were built as JSON maps.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicDto {
    created_at: String,
    endpoint: String,
    /// Only on a single topic's GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_subscriptions: Option<usize>,
    id: String,
    input_schema: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_schema_mapping: Option<Value>,
    kind: String,
    /// Only on a single topic's GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
    name: String,
    namespace_endpoint: String,
}

fn topic_dto(r: &TopicRecord, host: &str) -> TopicDto {
    TopicDto {
        created_at: time(r.created),
        endpoint: format!("https://{host}/topics/{}/api/events", r.name),
        event_subscriptions: None,
        id: r.arm_id.clone(),
        input_schema: r.input_schema.clone(),
        input_schema_mapping: r
            .input_mapping
            .as_deref()
            .and_then(|m| serde_json::from_str::<Value>(m).ok()),
        kind: r.kind.clone(),
        metrics: None,
        name: r.name.clone(),
        namespace_endpoint: format!("https://{host}"),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTopic {
    name: String,
    input_schema: Option<InputSchemaKind>,
    input_schema_mapping: Option<InputSchemaMapping>,
}

async fn create_topic(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    AzJson(body): AzJson<CreateTopic>,
) -> Result<impl IntoResponse, ApiError> {
    let t = st
        .router
        .create_topic(
            &body.name,
            body.input_schema
                .unwrap_or(InputSchemaKind::EventGridSchema),
            body.input_schema_mapping,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(topic_dto(&t.record, &host(&uri, &headers))),
    ))
}

async fn list_topics(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<List<TopicDto>>, ApiError> {
    let h = host(&uri, &headers);
    let topics: List<TopicDto> = st
        .router
        .list_topics()
        .await?
        .iter()
        .map(|t| topic_dto(t, &h))
        .collect();
    Ok(Json(topics))
}

async fn show_topic(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<TopicDto>, ApiError> {
    let t = st.router.topic(&name).await?;
    let mut v = topic_dto(&t.record, &host(&uri, &headers));
    v.metrics = Some(st.router.topic_metrics(&t).await?.into_iter().collect());
    v.event_subscriptions = Some(st.router.list_subscriptions(&name).await?.len());
    Ok(Json(v))
}

async fn delete_topic(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.router.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn keys(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<KeyPair>, ApiError> {
    let [key1, key2] = st.router.keys(&name).await?;
    Ok(Json(KeyPair { key1, key2 }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegenerateKey {
    key_name: String,
}

async fn regenerate_key(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<RegenerateKey>,
) -> Result<Json<KeyPair>, ApiError> {
    let [key1, key2] = st.router.regenerate_key(&name, &body.key_name).await?;
    Ok(Json(KeyPair { key1, key2 }))
}
