//! Management API for vaults: `/api/v1/vaults`.

use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use herald_core::VaultName;
use herald_core::vault::{DEFAULT_NEAR_EXPIRY_SECS, MAX_RETENTION_DAYS, VaultSettings};
use herald_storage::VaultRecord;
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{name}", get(show).delete(delete))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateVault {
    name: String,
    soft_delete_retention_in_days: Option<i64>,
    enable_purge_protection: Option<bool>,
    near_expiry_window_in_seconds: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VaultDto {
    id: herald_core::id::VaultId,
    name: String,
    vault_uri: String,
    soft_delete_retention_in_days: i64,
    enable_purge_protection: bool,
    near_expiry_window_in_seconds: i64,
    recovery_level: &'static str,
    system_topic: String,
    created_at: String,
}

fn dto(st: &AppState, v: &VaultRecord) -> VaultDto {
    VaultDto {
        id: v.id.clone(),
        name: v.name.clone(),
        vault_uri: st.vault.urls().vault_uri(&v.name),
        soft_delete_retention_in_days: v.settings.retention_days,
        enable_purge_protection: v.settings.purge_protection,
        near_expiry_window_in_seconds: v.settings.near_expiry_secs,
        recovery_level: v.settings.recovery_level(),
        system_topic: st.vault.scope().vault_topic(&v.name),
        created_at: Utc
            .timestamp_opt(v.created, 0)
            .single()
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
    }
}

async fn create(
    State(st): State<AppState>,
    AzJson(body): AzJson<CreateVault>,
) -> Result<impl IntoResponse, ApiError> {
    let name = VaultName::parse(&body.name).map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    let settings = VaultSettings {
        retention_days: body
            .soft_delete_retention_in_days
            .unwrap_or(MAX_RETENTION_DAYS),
        purge_protection: body.enable_purge_protection.unwrap_or(false),
        near_expiry_secs: body
            .near_expiry_window_in_seconds
            .unwrap_or(DEFAULT_NEAR_EXPIRY_SECS),
    };
    let v = st.vault.create_vault(&name, settings).await?;
    st.vaults.put(&v);
    Ok((StatusCode::CREATED, Json(dto(&st, &v))))
}

async fn list(State(st): State<AppState>) -> Result<Json<super::List<VaultDto>>, ApiError> {
    let vaults = st.vault.list_vaults().await?;
    Ok(Json(vaults.iter().map(|v| dto(&st, v)).collect()))
}

async fn show(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VaultDto>, ApiError> {
    let v = st.vault.vault(&name).await?;
    Ok(Json(dto(&st, &v)))
}

async fn delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.vault.delete_vault(&name).await?;
    st.vaults.forget(&name.to_ascii_lowercase());
    // Its system topic went with it; don't serve it from the cache.
    st.router.forget(&name.to_ascii_lowercase());
    Ok(StatusCode::NO_CONTENT)
}
