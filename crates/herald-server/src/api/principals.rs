//! Management API for principals: `/api/v1/principals`, shaped like
//! Microsoft Graph's applications (`appId`, `id` as the object id,
//! `passwordCredentials` with `keyId`, `hint`, `endDateTime`; `secretText`
//! only in the answer that creates a secret).

use crate::error::AzPath as Path;
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use herald_storage::{ClientSecretRecord, PrincipalRecord};
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{app_id}", get(show).delete(remove))
        .route("/{app_id}/secrets", get(list_secrets).post(add_secret))
        .route("/{app_id}/secrets/{key_id}", delete(remove_secret))
}

fn time(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordCredential {
    key_id: String,
    display_name: String,
    hint: String,
    start_date_time: String,
    end_date_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_text: Option<String>,
}

fn credential(s: &ClientSecretRecord, plain: Option<String>) -> PasswordCredential {
    PasswordCredential {
        key_id: s.key_id.clone(),
        display_name: s.display_name.clone(),
        hint: s.hint.clone(),
        start_date_time: time(s.created),
        end_date_time: time(s.expires),
        secret_text: plain,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalDto {
    app_id: String,
    /// The object id, which access policies name.
    id: String,
    display_name: String,
    tenant_id: String,
    builtin: bool,
    created_date_time: String,
    password_credentials: Vec<PasswordCredential>,
}

fn dto(st: &AppState, p: &PrincipalRecord, secrets: &[ClientSecretRecord]) -> PrincipalDto {
    PrincipalDto {
        app_id: p.app_id.clone(),
        id: p.object_id.clone(),
        display_name: p.display_name.clone(),
        tenant_id: st.identity.tenant().to_owned(),
        builtin: p.builtin,
        created_date_time: time(p.created),
        password_credentials: secrets.iter().map(|s| credential(s, None)).collect(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreatePrincipal {
    display_name: String,
}

async fn create(
    State(st): State<AppState>,
    AzJson(body): AzJson<CreatePrincipal>,
) -> Result<impl IntoResponse, ApiError> {
    let p = st.identity.create_principal(&body.display_name).await?;
    Ok((StatusCode::CREATED, Json(dto(&st, &p, &[]))))
}

async fn list(State(st): State<AppState>) -> Result<Json<super::List<PrincipalDto>>, ApiError> {
    let mut out = Vec::new();
    for p in st.identity.principals().await? {
        let secrets = st.identity.secrets(&p.app_id).await?;
        out.push(dto(&st, &p, &secrets));
    }
    Ok(Json(out.into()))
}

async fn show(
    State(st): State<AppState>,
    Path(app_id): Path<String>,
) -> Result<Json<PrincipalDto>, ApiError> {
    let p = st.identity.principal(&app_id).await?;
    let secrets = st.identity.secrets(&app_id).await?;
    Ok(Json(dto(&st, &p, &secrets)))
}

async fn remove(
    State(st): State<AppState>,
    Path(app_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.identity.delete_principal(&app_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddSecret {
    display_name: Option<String>,
    /// Days until the secret expires (default 365, as `az ad sp create-for-rbac`).
    lifetime_in_days: Option<i64>,
}

async fn add_secret(
    State(st): State<AppState>,
    Path(app_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // The body is optional: `herald principal secret add APP` sends none.
    let body: AddSecret = if body.iter().all(u8::is_ascii_whitespace) {
        AddSecret::default()
    } else {
        crate::error::parse_json(&body)?
    };
    let (rec, plain) = st
        .identity
        .add_secret(
            &app_id,
            body.display_name.as_deref().unwrap_or(""),
            body.lifetime_in_days.unwrap_or(365),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(credential(&rec, Some(plain)))))
}

async fn list_secrets(
    State(st): State<AppState>,
    Path(app_id): Path<String>,
) -> Result<Json<super::List<PasswordCredential>>, ApiError> {
    let secrets = st.identity.secrets(&app_id).await?;
    Ok(Json(secrets.iter().map(|s| credential(s, None)).collect()))
}

async fn remove_secret(
    State(st): State<AppState>,
    Path((app_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.identity.remove_secret(&app_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
