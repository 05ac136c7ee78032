//! Management API for Hubs under `/api/v1/hubs`: namespaces, event hubs,
//! consumer groups and SAS policies (authorization rules), with Azure's
//! property names (`partitionCount`, `retentionTimeInHours`, `rights`,
//! `primaryConnectionString`, ...).

use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use herald_hubs::{KeyType, PolicyKeys, Rights};
use herald_storage::{
    ConsumerGroupRecord, HubRecord, NamespaceRecord, PartitionRecord, PolicyRecord,
};
use serde::{Deserialize, Serialize};

use super::List;
use super::automation::iso;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/namespaces", get(list_namespaces).post(create_namespace))
        .route(
            "/namespaces/{ns}",
            get(show_namespace).delete(delete_namespace),
        )
        .route(
            "/namespaces/{ns}/eventhubs",
            get(list_hubs).post(create_hub),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}",
            get(show_hub).patch(update_hub).delete(delete_hub),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}/consumergroups",
            get(list_groups),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}/consumergroups/{cg}",
            put(put_group).delete(delete_group),
        )
        .route("/namespaces/{ns}/authorizationRules", get(list_ns_rules))
        .route(
            "/namespaces/{ns}/authorizationRules/{rule}",
            put(put_ns_rule).delete(delete_ns_rule),
        )
        .route(
            "/namespaces/{ns}/authorizationRules/{rule}/listKeys",
            post(ns_keys),
        )
        .route(
            "/namespaces/{ns}/authorizationRules/{rule}/regenerateKeys",
            post(ns_regenerate),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}/authorizationRules",
            get(list_hub_rules),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}",
            put(put_hub_rule).delete(delete_hub_rule),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}/listKeys",
            post(hub_keys),
        )
        .route(
            "/namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}/regenerateKeys",
            post(hub_regenerate),
        )
}

// ---------------------------------------------------------------- bodies

/// A namespace, with the host its clients connect to.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceDto {
    created_at: String,
    id: String,
    name: String,
    /// `sb://{host}/`, as the connection strings' `Endpoint` says.
    service_bus_endpoint: String,
}

fn namespace_dto(st: &AppState, ns: &NamespaceRecord) -> NamespaceDto {
    NamespaceDto {
        created_at: iso(ns.created),
        id: format!("/hubs/namespaces/{}", ns.name),
        name: ns.name.clone(),
        service_bus_endpoint: format!("sb://{}/", st.hubs.namespace_host(&ns.name)),
    }
}

/// An event hub; its partitions' heads on a single hub's GET.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HubDto {
    created_at: String,
    id: String,
    name: String,
    partition_count: i64,
    partition_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<Vec<PartitionDto>>,
    retention_time_in_hours: i64,
    status: &'static str,
    updated_at: String,
}

/// A partition's retained range and traffic (Azure's partition properties).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartitionDto {
    begin_sequence_number: i64,
    incoming_bytes: i64,
    incoming_events: i64,
    is_empty: bool,
    last_enqueued_offset: String,
    last_enqueued_sequence_number: i64,
    last_enqueued_time_utc: Option<String>,
    outgoing_bytes: i64,
    outgoing_events: i64,
    partition_id: String,
}

fn partition_dto(p: &PartitionRecord) -> PartitionDto {
    let empty = p.is_empty();
    let last = if p.next_seq == 0 { -1 } else { p.next_seq - 1 };
    PartitionDto {
        begin_sequence_number: if empty { -1 } else { p.begin_seq },
        incoming_bytes: p.bytes_in,
        incoming_events: p.events_in,
        is_empty: empty,
        last_enqueued_offset: last.to_string(),
        last_enqueued_sequence_number: last,
        last_enqueued_time_utc: (p.last_enqueued > 0).then(|| iso(p.last_enqueued)),
        outgoing_bytes: p.bytes_out,
        outgoing_events: p.events_out,
        partition_id: p.partition.to_string(),
    }
}

fn hub_dto(ns: &str, h: &HubRecord) -> HubDto {
    HubDto {
        created_at: iso(h.created),
        id: format!("/hubs/namespaces/{ns}/eventhubs/{}", h.name),
        name: h.name.clone(),
        partition_count: h.partition_count,
        partition_ids: (0..h.partition_count).map(|p| p.to_string()).collect(),
        partitions: None,
        retention_time_in_hours: h.retention_hours,
        status: "Active",
        updated_at: iso(h.updated),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumerGroupDto {
    created_at: String,
    /// Retained events after the group's checkpoints, over all partitions
    /// (in lists only).
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<i64>,
    name: String,
    user_metadata: String,
}

fn group_dto(g: &ConsumerGroupRecord) -> ConsumerGroupDto {
    ConsumerGroupDto {
        created_at: iso(g.created),
        lag: None,
        name: g.name.clone(),
        user_metadata: g.user_metadata.clone(),
    }
}

/// An authorization rule; its keys only through `listKeys`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleDto {
    created_at: String,
    name: String,
    rights: Rights,
    updated_at: String,
}

fn rule_dto(p: &PolicyRecord) -> RuleDto {
    RuleDto {
        created_at: iso(p.created),
        name: p.name.clone(),
        rights: serde_json::from_str(&p.rights).unwrap_or(Rights::EMPTY),
        updated_at: iso(p.updated),
    }
}

/// Azure's `AccessKeys`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeysDto {
    key_name: String,
    primary_connection_string: String,
    primary_key: String,
    secondary_connection_string: String,
    secondary_key: String,
}

fn keys_dto(k: &PolicyKeys) -> KeysDto {
    KeysDto {
        key_name: k.name.clone(),
        primary_connection_string: k.primary_connection_string.to_string(),
        primary_key: k.primary_key.to_string(),
        secondary_connection_string: k.secondary_connection_string.to_string(),
        secondary_key: k.secondary_key.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateNamespace {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateHub {
    name: String,
    partition_count: Option<u32>,
    retention_time_in_hours: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateHub {
    partition_count: Option<u32>,
    retention_time_in_hours: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutGroup {
    #[serde(default)]
    user_metadata: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutRule {
    rights: Rights,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Regenerate {
    key_type: String,
}

fn key_type(r: &Regenerate) -> Result<KeyType, ApiError> {
    match r.key_type.as_str() {
        "PrimaryKey" => Ok(KeyType::Primary),
        "SecondaryKey" => Ok(KeyType::Secondary),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("keyType must be PrimaryKey or SecondaryKey, not '{other}'."),
        )),
    }
}

// ---------------------------------------------------------------- namespaces

async fn create_namespace(
    State(st): State<AppState>,
    AzJson(body): AzJson<CreateNamespace>,
) -> Result<impl IntoResponse, ApiError> {
    let ns = st.hubs.create_namespace(&body.name).await?;
    Ok((StatusCode::CREATED, Json(namespace_dto(&st, &ns))))
}

async fn list_namespaces(State(st): State<AppState>) -> Result<Json<List<NamespaceDto>>, ApiError> {
    let all = st.hubs.list_namespaces().await?;
    Ok(Json(all.iter().map(|n| namespace_dto(&st, n)).collect()))
}

async fn show_namespace(
    State(st): State<AppState>,
    Path(ns): Path<String>,
) -> Result<Json<NamespaceDto>, ApiError> {
    Ok(Json(namespace_dto(&st, &st.hubs.namespace(&ns).await?)))
}

async fn delete_namespace(
    State(st): State<AppState>,
    Path(ns): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.hubs.delete_namespace(&ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- hubs

async fn create_hub(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    AzJson(body): AzJson<CreateHub>,
) -> Result<impl IntoResponse, ApiError> {
    let hub = st
        .hubs
        .create_hub(
            &ns,
            &body.name,
            body.partition_count.unwrap_or(4),
            body.retention_time_in_hours,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(hub_dto(&ns, &hub))))
}

async fn list_hubs(
    State(st): State<AppState>,
    Path(ns): Path<String>,
) -> Result<Json<List<HubDto>>, ApiError> {
    let hubs = st.hubs.list_hubs(&ns).await?;
    Ok(Json(hubs.iter().map(|h| hub_dto(&ns, h)).collect()))
}

async fn show_hub(
    State(st): State<AppState>,
    Path((ns, hub)): Path<(String, String)>,
) -> Result<Json<HubDto>, ApiError> {
    let (ns_rec, hub) = st.hubs.hub(&ns, &hub).await?;
    let mut dto = hub_dto(&ns_rec.name, &hub);
    dto.partitions = Some(
        st.hubs
            .partitions(&hub)
            .await?
            .iter()
            .map(partition_dto)
            .collect(),
    );
    Ok(Json(dto))
}

async fn update_hub(
    State(st): State<AppState>,
    Path((ns, hub)): Path<(String, String)>,
    AzJson(body): AzJson<UpdateHub>,
) -> Result<Json<HubDto>, ApiError> {
    let hub = st
        .hubs
        .update_hub(
            &ns,
            &hub,
            body.partition_count,
            body.retention_time_in_hours,
        )
        .await?;
    Ok(Json(hub_dto(&ns, &hub)))
}

async fn delete_hub(
    State(st): State<AppState>,
    Path((ns, hub)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.hubs.delete_hub(&ns, &hub).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- consumer groups

async fn list_groups(
    State(st): State<AppState>,
    Path((ns, hub)): Path<(String, String)>,
) -> Result<Json<List<ConsumerGroupDto>>, ApiError> {
    let (_, hub) = st.hubs.hub(&ns, &hub).await?;
    let groups = st.hubs.consumer_lag(&hub).await?;
    Ok(Json(
        groups
            .iter()
            .map(|(g, lag)| ConsumerGroupDto {
                lag: Some(*lag),
                ..group_dto(g)
            })
            .collect(),
    ))
}

async fn put_group(
    State(st): State<AppState>,
    Path((ns, hub, cg)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let body: PutGroup = if body.is_empty() {
        PutGroup::default()
    } else {
        crate::error::parse_json(&body)?
    };
    let (g, created) = st
        .hubs
        .put_consumer_group(&ns, &hub, &cg, &body.user_metadata)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(group_dto(&g))))
}

async fn delete_group(
    State(st): State<AppState>,
    Path((ns, hub, cg)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    st.hubs.delete_consumer_group(&ns, &hub, &cg).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- authorization rules

async fn rules(
    st: &AppState,
    ns: &str,
    hub: Option<&str>,
) -> Result<Json<List<RuleDto>>, ApiError> {
    Ok(Json(
        st.hubs
            .policies(ns, hub)
            .await?
            .iter()
            .map(rule_dto)
            .collect(),
    ))
}

async fn put_rule(
    st: &AppState,
    ns: &str,
    hub: Option<&str>,
    rule: &str,
    body: PutRule,
) -> Result<(StatusCode, Json<RuleDto>), ApiError> {
    let (p, created) = st.hubs.put_policy(ns, hub, rule, body.rights).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(rule_dto(&p))))
}

async fn list_ns_rules(
    State(st): State<AppState>,
    Path(ns): Path<String>,
) -> Result<Json<List<RuleDto>>, ApiError> {
    rules(&st, &ns, None).await
}

async fn list_hub_rules(
    State(st): State<AppState>,
    Path((ns, hub)): Path<(String, String)>,
) -> Result<Json<List<RuleDto>>, ApiError> {
    rules(&st, &ns, Some(&hub)).await
}

async fn put_ns_rule(
    State(st): State<AppState>,
    Path((ns, rule)): Path<(String, String)>,
    AzJson(body): AzJson<PutRule>,
) -> Result<(StatusCode, Json<RuleDto>), ApiError> {
    put_rule(&st, &ns, None, &rule, body).await
}

async fn put_hub_rule(
    State(st): State<AppState>,
    Path((ns, hub, rule)): Path<(String, String, String)>,
    AzJson(body): AzJson<PutRule>,
) -> Result<(StatusCode, Json<RuleDto>), ApiError> {
    put_rule(&st, &ns, Some(&hub), &rule, body).await
}

async fn delete_ns_rule(
    State(st): State<AppState>,
    Path((ns, rule)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.hubs.delete_policy(&ns, None, &rule).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_hub_rule(
    State(st): State<AppState>,
    Path((ns, hub, rule)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    st.hubs.delete_policy(&ns, Some(&hub), &rule).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ns_keys(
    State(st): State<AppState>,
    Path((ns, rule)): Path<(String, String)>,
) -> Result<Json<KeysDto>, ApiError> {
    Ok(Json(keys_dto(&st.hubs.keys(&ns, None, &rule).await?)))
}

async fn hub_keys(
    State(st): State<AppState>,
    Path((ns, hub, rule)): Path<(String, String, String)>,
) -> Result<Json<KeysDto>, ApiError> {
    Ok(Json(keys_dto(&st.hubs.keys(&ns, Some(&hub), &rule).await?)))
}

async fn ns_regenerate(
    State(st): State<AppState>,
    Path((ns, rule)): Path<(String, String)>,
    AzJson(body): AzJson<Regenerate>,
) -> Result<Json<KeysDto>, ApiError> {
    let which = key_type(&body)?;
    Ok(Json(keys_dto(
        &st.hubs.regenerate(&ns, None, &rule, which).await?,
    )))
}

async fn hub_regenerate(
    State(st): State<AppState>,
    Path((ns, hub, rule)): Path<(String, String, String)>,
    AzJson(body): AzJson<Regenerate>,
) -> Result<Json<KeysDto>, ApiError> {
    let which = key_type(&body)?;
    Ok(Json(keys_dto(
        &st.hubs.regenerate(&ns, Some(&hub), &rule, which).await?,
    )))
}
