//! Management API for event subscriptions, their dead letters, delivery
//! log and signing secrets:
//! `/api/v1/topics/{topic}/eventSubscriptions[/{name}[/...]]`.

use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use herald_router::subscription::SubscriptionInput;
use herald_router::{Subscription, TopicInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::topics::time;
use super::{List, Metrics};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{topic}/eventSubscriptions", get(list_subscriptions))
        .route(
            "/{topic}/eventSubscriptions/{name}",
            get(show_subscription)
                .put(put_subscription)
                .patch(patch_subscription)
                .delete(delete_subscription),
        )
        .route(
            "/{topic}/eventSubscriptions/{name}/deadLetters",
            get(dead_letters),
        )
        .route(
            "/{topic}/eventSubscriptions/{name}/deadLetters/replay",
            post(replay_dead_letters),
        )
        .route("/{topic}/eventSubscriptions/{name}/attempts", get(attempts))
        .route(
            "/{topic}/eventSubscriptions/{name}/rotateSigningSecret",
            post(rotate_signing_secret),
        )
}

/// An event subscription as the management API returns it: the settings
/// the user gave, as Event Grid names them, beside what Herald keeps about it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionDto {
    /// The stored settings (destination, filter, retry policy, ...).
    #[serde(flatten)]
    settings: Map<String, Value>,
    /// Only on a single push subscription's GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    active_signing_secrets: Option<usize>,
    created_at: String,
    /// Only on a single subscription's GET, while the engine tracks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_health: Option<herald_delivery::Health>,
    id: String,
    /// Only on a single subscription's GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
    name: String,
    provisioning_state: herald_core::ProvisioningState,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_reason: Option<String>,
    topic: String,
    updated_at: String,
}

fn subscription_dto(topic: &TopicInfo, s: &Subscription) -> SubscriptionDto {
    let mut settings = match serde_json::to_value(&s.properties) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // The full URL often carries a secret in its query; show only its base, as ARM does.
    if let Some(Value::Object(props)) = settings
        .get_mut("destination")
        .and_then(|d| d.get_mut("properties"))
        && let Some(Value::String(url)) = props.remove("endpointUrl")
    {
        props.insert(
            "endpointBaseUrl".into(),
            Value::String(url.split('?').next().unwrap_or_default().to_owned()),
        );
    }
    // The record's own fields win over a setting of the same name.
    for key in [
        "activeSigningSecrets",
        "createdAt",
        "deliveryHealth",
        "id",
        "metrics",
        "name",
        "provisioningState",
        "stateReason",
        "topic",
        "updatedAt",
    ] {
        settings.remove(key);
    }
    SubscriptionDto {
        settings,
        active_signing_secrets: None,
        created_at: time(s.record.created),
        delivery_health: None,
        id: topic.subscription_arm_id(&s.record.name),
        metrics: None,
        name: s.record.name.clone(),
        provisioning_state: s.record.provisioning_state,
        state_reason: s.record.state_reason.clone(),
        topic: topic.record.arm_id.clone(),
        updated_at: time(s.record.updated),
    }
}

async fn list_subscriptions(
    State(st): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<List<SubscriptionDto>>, ApiError> {
    let t = st.router.topic(&topic).await?;
    let subs: List<SubscriptionDto> = st
        .router
        .list_subscriptions(&topic)
        .await?
        .iter()
        .map(|s| subscription_dto(&t, s))
        .collect();
    Ok(Json(subs))
}

async fn show_subscription(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<Json<SubscriptionDto>, ApiError> {
    let (t, s) = st.router.subscription(&topic, &name).await?;
    let mut v = subscription_dto(&t, &s);
    v.metrics = Some(
        st.router
            .subscription_metrics(&s)
            .await?
            .into_iter()
            .collect(),
    );
    v.delivery_health = st.delivery.health(&s.record.id);
    if !s.properties.is_queue() {
        v.active_signing_secrets = Some(st.router.signing_secrets(&s.record.id).await?.len());
    }
    Ok(Json(v))
}

/// ARM clients wrap properties in `{"properties": {...}}`; accept both.
fn unwrap_properties(body: Value) -> Value {
    match body {
        Value::Object(mut m) if m.get("properties").is_some_and(Value::is_object) => {
            m.remove("properties").unwrap_or_default()
        }
        other => other,
    }
}

fn parse_input(body: Value) -> Result<SubscriptionInput, ApiError> {
    serde_json::from_value(unwrap_properties(body)).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("Invalid event subscription: {e}"),
        )
    })
}

async fn put_subscription(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    AzJson(body): AzJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let (mut s, created) = st
        .router
        .put_subscription(&topic, &name, parse_input(body)?)
        .await?;
    let t = st.router.topic(&topic).await?;
    st.delivery.validate(&t, &mut s).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(subscription_dto(&t, &s))))
}

/// PATCH merges top-level properties into the stored ones.
async fn patch_subscription(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<SubscriptionDto>, ApiError> {
    let (_, existing) = st.router.subscription(&topic, &name).await?;
    let mut merged = match serde_json::to_value(&existing.properties) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let Value::Object(patch) = unwrap_properties(body) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The body must be a JSON object.",
        ));
    };
    for (k, v) in patch {
        merged.insert(k, v);
    }
    let (mut s, _) = st
        .router
        .put_subscription(&topic, &name, parse_input(Value::Object(merged))?)
        .await?;
    let t = st.router.topic(&topic).await?;
    st.delivery.validate(&t, &mut s).await?;
    Ok(Json(subscription_dto(&t, &s)))
}

async fn delete_subscription(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.router.delete_subscription(&topic, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?after=<id>&limit=<n>` of the id-keyed listings (limit 1-1000, default 100).
fn page_bounds(
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<(i64, i64), ApiError> {
    let Query(page) = page.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Use ?after=<id>&limit=<1-1000>.",
        )
    })?;
    Ok((
        page.after.unwrap_or(0),
        page.limit.unwrap_or(100).clamp(1, 1000),
    ))
}

#[derive(Deserialize)]
struct Page {
    after: Option<i64>,
    limit: Option<i64>,
}

/// One dead-lettered event; `event` is raw text so `data` keeps its bytes.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterItem {
    id: i64,
    event: Option<Box<serde_json::value::RawValue>>,
    dead_letter_reason: String,
    delivery_attempts: i64,
    last_delivery_outcome: Option<String>,
    publish_time: String,
    dead_lettered_time: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterPage {
    value: Vec<DeadLetterItem>,
    next_after: Option<i64>,
}

async fn dead_letters(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let (after, limit) = page_bounds(page)?;
    let (t, _, rows) = st.router.dead_letters(&topic, &name, after, limit).await?;
    let next_after = rows
        .last()
        .filter(|_| rows.len() as i64 == limit)
        .map(|d| d.id);
    let value = rows
        .iter()
        .map(|d| DeadLetterItem {
            id: d.id,
            event: herald_router::schema::render_raw(
                &d.body,
                &t.input,
                herald_router::schema::DeliverySchema::CloudEventSchemaV1_0,
                false,
            )
            .ok()
            .and_then(|text| serde_json::value::RawValue::from_string(text).ok()),
            dead_letter_reason: d.reason.clone(),
            delivery_attempts: d.delivery_count,
            last_delivery_outcome: d.last_outcome.clone(),
            publish_time: time(d.published_at),
            dead_lettered_time: time(d.dead_lettered_at),
        })
        .collect();
    Ok(Json(DeadLetterPage { value, next_after }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ReplayBody {
    /// Dead-letter ids to replay; absent means all.
    ids: Option<Vec<i64>>,
}

async fn replay_dead_letters(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Replayed>, ApiError> {
    let req: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        crate::error::parse_json(&body)?
    };
    let (_, sub) = st.router.subscription(&topic, &name).await?;
    let ids = match req.ids {
        Some(ids) => ids,
        None => {
            let (_, _, rows) = st.router.dead_letters(&topic, &name, 0, 100_000).await?;
            rows.iter().map(|d| d.id).collect()
        }
    };
    let replayed = st.router.replay_dead_letters(&sub, ids).await?;
    tracing::info!(topic = %topic, subscription = %name, replayed, "dead-lettered events replayed");
    Ok(Json(Replayed { replayed }))
}

/// How many dead letters went back to delivery.
#[derive(Serialize)]
struct Replayed {
    replayed: u64,
}

/// One request in the delivery log.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptItem {
    attempt: i64,
    event_count: usize,
    /// The first event the request carried.
    event_id: Option<String>,
    event_ids: Vec<String>,
    id: i64,
    latency_ms: i64,
    outcome: String,
    response: Option<String>,
    status: Option<u16>,
    time: Option<String>,
}

/// A page of the delivery log; `nextAfter` continues it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptPage {
    next_after: Option<i64>,
    value: Vec<AttemptItem>,
}

/// A new signing secret, shown once.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RotatedSecret {
    previous_secrets_valid_for_minutes: i64,
    signing_secret: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttemptQuery {
    event_id: Option<String>,
}

/// The delivery log: one item per request, listing the events it carried.
async fn attempts(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    filter: Result<Query<AttemptQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AttemptPage>, ApiError> {
    let (after, limit) = page_bounds(page)?;
    let Query(filter) = filter.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Use ?eventId=<id> to see the attempts of one event.",
        )
    })?;
    let (_, sub) = st.router.subscription(&topic, &name).await?;
    let rows = st
        .router
        .attempts(&sub, filter.event_id.as_deref(), after, limit)
        .await?;
    // Storage matches an id inside a batch by its JSON text; an id holding
    // quotes could match another's tail, so keep exact matches only. The
    // page still advances by the rows read.
    let exact = |a: &herald_storage::AttemptRecord| {
        filter
            .event_id
            .as_deref()
            .is_none_or(|id| a.event_ids.iter().any(|e| e == id))
    };
    let value: Vec<AttemptItem> = rows
        .iter()
        .filter(|(_, a)| exact(a))
        .map(|(id, a)| AttemptItem {
            attempt: a.attempt,
            event_count: a.event_ids.len(),
            event_id: a.event_ids.first().cloned(),
            event_ids: a.event_ids.clone(),
            id: *id,
            latency_ms: a.latency_ms,
            outcome: a.outcome.clone(),
            response: a.response.clone(),
            status: a.status,
            time: Utc
                .timestamp_millis_opt(a.at_ms)
                .single()
                .map(|t| t.to_rfc3339()),
        })
        .collect();
    let next = rows
        .last()
        .filter(|_| rows.len() as i64 == limit)
        .map(|(id, _)| *id);
    Ok(Json(AttemptPage {
        next_after: next,
        value,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotateQuery {
    overlap_minutes: Option<i64>,
}

/// Issues a new Standard Webhooks secret (shown once); the old ones keep
/// signing for the overlap, so receivers can switch without gaps.
async fn rotate_signing_secret(
    State(st): State<AppState>,
    Path((topic, name)): Path<(String, String)>,
    q: Result<Query<RotateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RotatedSecret>, ApiError> {
    let Query(q) = q.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Use ?overlapMinutes=<0-10080>.",
        )
    })?;
    let overlap = q.overlap_minutes.unwrap_or(24 * 60);
    if !(0..=10_080).contains(&overlap) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "overlapMinutes must be between 0 and 10080 (7 days).",
        ));
    }
    let (_, sub) = st.router.subscription(&topic, &name).await?;
    let secret = st.router.rotate_signing_secret(&sub, overlap * 60).await?;
    Ok(Json(RotatedSecret {
        previous_secrets_valid_for_minutes: overlap,
        signing_secret: secret,
    }))
}
