//! Management API for storage accounts: `/api/v1/storage/accounts`, with
//! ARM's shapes (`primaryEndpoints.blob`, `listKeys` answering
//! `{"keys": [{"keyName", "value", "permissions"}]}`, `regenerateKey`).

use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_blob::service::{AccountKeys, BlobError};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{name}", get(show).delete(remove))
        .route("/{name}/listKeys", post(list_keys))
        .route("/{name}/regenerateKey", post(regenerate))
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Client {
                status,
                code,
                message,
            } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                code,
                message,
            ),
            other => ApiError::internal("managing storage accounts", other),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Endpoints {
    blob: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    creation_time: String,
    primary_endpoints: Endpoints,
    provisioning_state: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountDto {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    properties: Properties,
}

fn dto(st: &AppState, a: &AccountKeys, headers: &HeaderMap) -> AccountDto {
    let scope = herald_core::ArmScope {
        subscription_id: st.config.subscription_id.clone(),
        resource_group: st.config.resource_group.clone(),
    };
    AccountDto {
        id: format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
            scope.subscription_id, scope.resource_group, a.name
        ),
        name: a.name.clone(),
        kind: "Microsoft.Storage/storageAccounts",
        properties: Properties {
            creation_time: chrono::DateTime::from_timestamp_millis(a.created)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
            primary_endpoints: Endpoints {
                blob: super::blob::account_endpoint(st, &a.name, headers),
            },
            provisioning_state: "Succeeded",
        },
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccount {
    name: String,
}

async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    AzJson(body): AzJson<CreateAccount>,
) -> Result<impl IntoResponse, ApiError> {
    let a = st.blob.create_account(&body.name).await?;
    Ok((StatusCode::CREATED, Json(dto(&st, &a, &headers))))
}

async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<super::List<AccountDto>>, ApiError> {
    let all = st.blob.accounts().await?;
    Ok(Json(all.iter().map(|a| dto(&st, a, &headers)).collect()))
}

async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<AccountDto>, ApiError> {
    let a = st.blob.account(&name).await?;
    Ok(Json(dto(&st, &a, &headers)))
}

async fn remove(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.blob.delete_account(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    key_name: &'static str,
    value: String,
    permissions: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    keys: Vec<Key>,
    /// `DefaultEndpointsProtocol=https;AccountName=..;AccountKey=..;BlobEndpoint=..`
    /// with key1 (Herald's addition: `az storage account show-connection-string`).
    connection_string: String,
}

fn keys(st: &AppState, a: &AccountKeys, headers: &HeaderMap) -> Keys {
    let blob = super::blob::account_endpoint(st, &a.name, headers);
    Keys {
        keys: vec![
            Key {
                key_name: "key1",
                value: a.keys[0].to_string(),
                permissions: "FULL",
            },
            Key {
                key_name: "key2",
                value: a.keys[1].to_string(),
                permissions: "FULL",
            },
        ],
        connection_string: format!(
            "DefaultEndpointsProtocol=https;AccountName={};AccountKey={};BlobEndpoint={blob}",
            a.name, *a.keys[0]
        ),
    }
}

async fn list_keys(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Keys>, ApiError> {
    let a = st.blob.account(&name).await?;
    Ok(Json(keys(&st, &a, &headers)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Regenerate {
    key_name: String,
}

async fn regenerate(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    AzJson(body): AzJson<Regenerate>,
) -> Result<Json<Keys>, ApiError> {
    let which = match body.key_name.as_str() {
        "key1" => 1,
        "key2" => 2,
        _ => {
            return Err(ApiError::bad_parameter("keyName must be key1 or key2."));
        }
    };
    let a = st.blob.regenerate_key(&name, which).await?;
    Ok(Json(keys(&st, &a, &headers)))
}
