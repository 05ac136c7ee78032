//! Assets: variables and credentials (encrypted values are sealed and never returned).

use super::*;
use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

pub(super) fn asset_view(a: &herald_storage::AssetRecord) -> Value {
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

pub(super) async fn list_assets(st: &AppState, kind: &str) -> Result<Json<Value>, ApiError> {
    let list = st.automation.assets().await?;
    Ok(Json(json!({
        "value": list.iter().filter(|a| a.kind == kind).map(asset_view).collect::<Vec<_>>()
    })))
}

pub(super) async fn list_variables(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    list_assets(&st, "variable").await
}

pub(super) async fn list_credentials(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    list_assets(&st, "credential").await
}

pub(super) async fn get_variable(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(asset_view(
        &st.automation.asset("variable", &name).await?,
    )))
}

pub(super) async fn get_credential(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(asset_view(
        &st.automation.asset("credential", &name).await?,
    )))
}

pub(super) async fn put_variable(
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

pub(super) async fn put_credential(
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
