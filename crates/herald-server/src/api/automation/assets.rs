//! Assets: variables and credentials (encrypted values are sealed and never returned).

use super::*;
use crate::api::List;
use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;

/// A variable's or credential's properties. A plain variable shows its
/// value, as Azure does; an encrypted one never.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AssetProperties {
    creation_time: String,
    description: String,
    is_encrypted: bool,
    last_modified_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

pub(super) type AssetDto = Resource<AssetProperties>;

pub(super) fn asset_view(a: &herald_storage::AssetRecord) -> AssetDto {
    let credential = a.kind == "credential";
    Resource {
        id: None,
        name: a.name.clone(),
        properties: AssetProperties {
            creation_time: iso(a.created),
            description: a.description.clone(),
            is_encrypted: a.encrypted,
            last_modified_time: iso(a.updated),
            user_name: credential.then(|| a.username.clone()),
            value: (!credential && !a.encrypted)
                .then(|| String::from_utf8_lossy(&a.value).into_owned()),
        },
    }
}

pub(super) async fn list_assets(
    st: &AppState,
    kind: &str,
) -> Result<Json<List<AssetDto>>, ApiError> {
    let list = st.automation.assets().await?;
    Ok(Json(
        list.iter()
            .filter(|a| a.kind == kind)
            .map(asset_view)
            .collect(),
    ))
}

pub(super) async fn list_variables(
    State(st): State<AppState>,
) -> Result<Json<List<AssetDto>>, ApiError> {
    list_assets(&st, "variable").await
}

pub(super) async fn list_credentials(
    State(st): State<AppState>,
) -> Result<Json<List<AssetDto>>, ApiError> {
    list_assets(&st, "credential").await
}

pub(super) async fn get_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AssetDto>, ApiError> {
    Ok(Json(asset_view(
        &st.automation.asset("variable", &name).await?,
    )))
}

pub(super) async fn get_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AssetDto>, ApiError> {
    Ok(Json(asset_view(
        &st.automation.asset("credential", &name).await?,
    )))
}

pub(super) async fn put_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<AssetDto>, ApiError> {
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

pub(super) async fn put_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<AssetDto>, ApiError> {
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

pub(super) async fn delete_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_asset("variable", &name).await?;
    Ok(StatusCode::OK)
}

pub(super) async fn delete_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_asset("credential", &name).await?;
    Ok(StatusCode::OK)
}
