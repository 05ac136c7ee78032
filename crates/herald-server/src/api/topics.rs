//! Management API for topics and their access keys:
//! `/api/v1/topics[/{topic}[/keys|/regenerateKey]]`.

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
use serde::Deserialize;
use serde_json::{Value, json};

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

fn topic_dto(r: &TopicRecord, host: &str) -> Value {
    let mut v = json!({
        "name": r.name,
        "id": r.arm_id,
        "kind": r.kind,
        "inputSchema": r.input_schema,
        "endpoint": format!("https://{host}/topics/{}/api/events", r.name),
        "namespaceEndpoint": format!("https://{host}"),
        "createdAt": time(r.created),
    });
    if let Some(m) = r
        .input_mapping
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
    {
        v["inputSchemaMapping"] = m;
    }
    v
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
) -> Result<Json<Value>, ApiError> {
    let h = host(&uri, &headers);
    let topics: Vec<Value> = st
        .router
        .list_topics()
        .await?
        .iter()
        .map(|t| topic_dto(t, &h))
        .collect();
    Ok(Json(json!({ "value": topics })))
}

async fn show_topic(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t = st.router.topic(&name).await?;
    let mut v = topic_dto(&t.record, &host(&uri, &headers));
    v["metrics"] = json!(st.router.topic_metrics(&t).await?);
    v["eventSubscriptions"] = json!(st.router.list_subscriptions(&name).await?.len());
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
) -> Result<Json<Value>, ApiError> {
    let [key1, key2] = st.router.keys(&name).await?;
    Ok(Json(json!({ "key1": key1, "key2": key2 })))
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
) -> Result<Json<Value>, ApiError> {
    let [key1, key2] = st.router.regenerate_key(&name, &body.key_name).await?;
    Ok(Json(json!({ "key1": key1, "key2": key2 })))
}
