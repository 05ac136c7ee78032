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
        .route("/{name}/accessPolicies", get(list_policies))
        .route(
            "/{name}/accessPolicies/{principal}",
            axum::routing::put(set_policy).delete(delete_policy),
        )
}

/// One access policy as Key Vault's ARM API writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicyDto {
    tenant_id: String,
    object_id: String,
    application_id: String,
    permissions: PermissionsDto,
    updated_at: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsDto {
    secrets: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicy {
    permissions: PermissionsDto,
}

fn policy_dto(st: &AppState, p: &herald_identity::AccessPolicy) -> AccessPolicyDto {
    AccessPolicyDto {
        tenant_id: st.identity.tenant().to_owned(),
        object_id: p.object_id.clone(),
        application_id: p.app_id.clone(),
        permissions: PermissionsDto {
            secrets: p.secrets.names().into_iter().map(str::to_owned).collect(),
        },
        updated_at: Utc
            .timestamp_opt(p.updated, 0)
            .single()
            .map(|t| t.to_rfc3339())
            .unwrap_or_default(),
    }
}

async fn list_policies(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<super::List<AccessPolicyDto>>, ApiError> {
    let v = st.vault.vault(&name).await?;
    let policies = st.identity.policies(&v).await?;
    Ok(Json(policies.iter().map(|p| policy_dto(&st, p)).collect()))
}

/// `az keyvault set-policy`: the principal (app id or object id) gets
/// exactly these secret permissions on the vault.
async fn set_policy(
    State(st): State<AppState>,
    Path((name, principal)): Path<(String, String)>,
    AzJson(body): AzJson<SetPolicy>,
) -> Result<Json<AccessPolicyDto>, ApiError> {
    let v = st.vault.vault(&name).await?;
    let perms = herald_identity::SecretPermissions::parse(&body.permissions.secrets)
        .map_err(ApiError::bad_parameter)?;
    let url = st.vault.urls().vault_uri(&v.name);
    let p = st.identity.set_policy(&v, &url, &principal, perms).await?;
    Ok(Json(policy_dto(&st, &p)))
}

async fn delete_policy(
    State(st): State<AppState>,
    Path((name, principal)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let v = st.vault.vault(&name).await?;
    let url = st.vault.urls().vault_uri(&v.name);
    st.identity.delete_policy(&v, &url, &principal).await?;
    Ok(StatusCode::NO_CONTENT)
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
