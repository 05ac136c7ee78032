//! The Key Vault secrets data plane (`/secrets`, `/deletedsecrets`), wire
//! compatible with `azure-keyvault-secrets`. The vault is chosen by the
//! request's host, never by path, as the SDK requires.

use super::{query_param, require_api_version};
use crate::error::{ApiError, AzJson};
use crate::state::AppState;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::SecretName;
use herald_identity::SecretPermission;
use herald_storage::{SecretRecord, VaultRecord, VersionRecord};
use herald_vault::{DEFAULT_VAULT, NewSecret, SecretUpdate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

const PAGE_MAX: i64 = 25;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/secrets", get(list_secrets))
        .route(
            "/secrets/{name}",
            get(get_latest)
                .put(set_secret)
                .patch(update_latest)
                .delete(delete_secret)
                .post(restore_or_404),
        )
        .route("/secrets/{name}/", get(get_latest).patch(update_latest))
        .route(
            "/secrets/{name}/{version}",
            get(get_version_or_list).patch(update_version).post(backup),
        )
        .route("/deletedsecrets", get(list_deleted))
        .route("/deletedsecrets/{name}", get(get_deleted).delete(purge))
        .route(
            "/deletedsecrets/{name}/recover",
            axum::routing::post(recover),
        )
}

/// The vault addressed by the request's host, plus what responses echo.
pub struct VaultCtx {
    vault: VaultRecord,
    /// `host[:port]` as the client sent it; every id is built on it.
    authority: String,
    api_version: String,
    query: Option<String>,
}

impl FromRequestParts<AppState> for VaultCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query = parts.uri.query().map(str::to_owned);
        let api_version = require_api_version(query.as_deref())?;
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(axum::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .ok_or_else(|| ApiError::bad_parameter("The request has no Host header."))?;
        let name = vault_name_for_host(&authority, &state.config.vault_base).ok_or_else(|| {
            ApiError::not_found(
                "VaultNotFound",
                format!("No vault is served at host '{authority}'."),
            )
        })?;
        let vault = match state.vaults.get(&name) {
            Some(v) => v,
            None => {
                let v = state.vault.vault(&name).await.map_err(|e| match e {
                    herald_vault::VaultError::VaultNotFound(_) => ApiError::not_found(
                        "VaultNotFound",
                        format!("No vault is served at host '{authority}'."),
                    ),
                    other => other.into(),
                })?;
                state.vaults.put(&v);
                v
            }
        };
        let caller = parts
            .extensions
            .get::<crate::auth::Caller>()
            .ok_or_else(|| {
                ApiError::internal(
                    "authorizing a vault call",
                    "no caller on an authenticated route",
                )
            })?;
        let need = secret_permission(&parts.method, parts.uri.path());
        crate::auth::authorize_secret(state, caller, &vault, need).await?;
        Ok(Self {
            vault,
            authority,
            api_version,
            query,
        })
    }
}

/// The secret permission a Key Vault call needs, as Key Vault documents
/// each operation (getting or listing deleted secrets needs `list`).
///
/// The action is read from the path's segments exactly as the router above
/// matches them, never from a suffix: a secret may be named `versions`,
/// `backup` or `recover`, and reading it must need `get`, not `list`.
fn secret_permission(method: &axum::http::Method, path: &str) -> SecretPermission {
    use axum::http::Method;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // `/secrets/{name}/` is routed like `/secrets/{name}`.
    let segments: &[&str] = match segments.as_slice() {
        [rest @ .., ""] if rest.len() == 2 => rest,
        s => s,
    };
    match (method, segments) {
        (&Method::GET, ["deletedsecrets", ..]) => SecretPermission::List,
        (&Method::DELETE, ["deletedsecrets", _]) => SecretPermission::Purge,
        (&Method::POST, ["deletedsecrets", _, "recover"]) => SecretPermission::Recover,
        (&Method::GET, ["secrets"] | ["secrets", ""]) => SecretPermission::List,
        (&Method::GET, ["secrets", _, "versions"]) => SecretPermission::List,
        (&Method::GET, ["secrets", _] | ["secrets", _, _]) => SecretPermission::Get,
        (&Method::PUT | &Method::PATCH, ["secrets", ..]) => SecretPermission::Set,
        (&Method::DELETE, ["secrets", _]) => SecretPermission::Delete,
        (&Method::POST, ["secrets", _, "backup"]) => SecretPermission::Backup,
        (&Method::POST, ["secrets", "restore"]) => SecretPermission::Restore,
        // Anything else ends in 404 or 405; ask for the most guarded
        // permission so an unmatched path never widens what a caller may do.
        _ => SecretPermission::Purge,
    }
}

/// `payments.vault.localhost:8443` → `payments`; `localhost`, the bare base
/// and IP literals → the default vault.
pub fn vault_name_for_host(authority: &str, base: &str) -> Option<String> {
    let host = match authority.strip_prefix('[') {
        Some(v6) => return v6.contains(']').then(|| DEFAULT_VAULT.to_owned()),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host == base || host.parse::<std::net::IpAddr>().is_ok() {
        return Some(DEFAULT_VAULT.to_owned());
    }
    let label = host.strip_suffix(base)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_owned())
}

fn parse_name(raw: &str) -> Result<SecretName, ApiError> {
    SecretName::parse(raw).map_err(|e| ApiError::bad_parameter(e.to_string()))
}

type NamePath = Result<Path<String>, axum::extract::rejection::PathRejection>;
type NameVersionPath = Result<Path<(String, String)>, axum::extract::rejection::PathRejection>;

fn path_err(_: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::bad_parameter("The request URI contains an invalid name.")
}

// ---- wire shapes ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Attributes {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetBody {
    value: String,
    tags: Option<BTreeMap<String, String>>,
    content_type: Option<String>,
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    tags: Option<BTreeMap<String, String>>,
    content_type: Option<String>,
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
struct BlobBody {
    value: String,
}

/// Key Vault's `SecretAttributes`: times are unix seconds; unset ones are
/// omitted, as Key Vault omits them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretAttributes {
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    created: i64,
    updated: i64,
    recoverable_days: i64,
    recovery_level: &'static str,
}

/// Key Vault's `SecretBundle` (with a value) and `SecretItem` (without),
/// and with `deleted` their `DeletedSecretBundle` / `DeletedSecretItem`.
/// Null fields are omitted, as Key Vault omits them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretBundle {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    attributes: SecretAttributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<Map<String, Value>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    deleted: Option<Deleted>,
}

/// What a deleted secret adds to its bundle.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Deleted {
    recovery_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_purge_date: Option<i64>,
}

/// A page of a Key Vault listing: `nextLink` is null on the last page.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    value: Vec<T>,
    next_link: Option<String>,
}

fn attributes(vault: &VaultRecord, v: &VersionRecord) -> SecretAttributes {
    SecretAttributes {
        enabled: v.enabled,
        nbf: v.nbf,
        exp: v.exp,
        created: v.created,
        updated: v.updated,
        recoverable_days: vault.settings.retention_days,
        recovery_level: vault.settings.recovery_level(),
    }
}

/// The bundle of one version (`versioned`: its id names the version).
fn shape(
    ctx: &VaultCtx,
    s: &SecretRecord,
    v: &VersionRecord,
    versioned: bool,
    value: Option<String>,
) -> SecretBundle {
    let id = if versioned {
        format!("https://{}/secrets/{}/{}", ctx.authority, s.name, v.version)
    } else {
        format!("https://{}/secrets/{}", ctx.authority, s.name)
    };
    let tags = match serde_json::from_str::<Value>(&v.tags) {
        Ok(Value::Object(tags)) if !tags.is_empty() => Some(tags),
        _ => None,
    };
    SecretBundle {
        value,
        id,
        content_type: v.content_type.clone(),
        attributes: attributes(&ctx.vault, v),
        tags,
        deleted: None,
    }
}

fn deleted_shape(
    ctx: &VaultCtx,
    s: &SecretRecord,
    v: &VersionRecord,
    versioned: bool,
) -> SecretBundle {
    SecretBundle {
        deleted: Some(Deleted {
            recovery_id: format!("https://{}/deletedsecrets/{}", ctx.authority, s.name),
            deleted_date: s.deleted_at,
            scheduled_purge_date: s.purge_at,
        }),
        ..shape(ctx, s, v, versioned, None)
    }
}

fn page_size(ctx: &VaultCtx) -> Result<i64, ApiError> {
    match query_param(ctx.query.as_deref(), "maxresults") {
        None => Ok(PAGE_MAX),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_parameter(format!(
                "maxresults must be an integer from 1 to {PAGE_MAX}; got '{raw}'."
            ))),
        },
    }
}

fn skiptoken(ctx: &VaultCtx) -> Result<Option<String>, ApiError> {
    query_param(ctx.query.as_deref(), "$skiptoken")
        .map(|t| {
            URL_SAFE_NO_PAD
                .decode(t.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::bad_parameter("The $skiptoken is not valid; restart the listing.")
                })
        })
        .transpose()
}

/// An absolute nextLink on the caller's host, echoing api-version and maxresults.
fn next_link(ctx: &VaultCtx, path: &str, cursor: Option<String>, size: i64) -> Option<String> {
    cursor.map(|c| {
        format!(
            "https://{}{path}?api-version={}&$skiptoken={}&maxresults={size}",
            ctx.authority,
            ctx.api_version,
            URL_SAFE_NO_PAD.encode(c)
        )
    })
}

// ---- handlers ----

async fn set_secret(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
    AzJson(body): AzJson<SetBody>,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = parse_name(&name.map_err(path_err)?.0)?;
    let attrs = body.attributes.unwrap_or_default();
    let value = body.value.clone();
    let (s, v) = st
        .vault
        .set_secret(
            &ctx.vault,
            &name,
            NewSecret {
                value: body.value,
                content_type: body.content_type,
                tags: body.tags,
                enabled: attrs.enabled,
                nbf: attrs.nbf,
                exp: attrs.exp,
            },
        )
        .await?;
    Ok(Json(shape(&ctx, &s, &v, true, Some(value))))
}

async fn get_latest(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = parse_name(&name.map_err(path_err)?.0)?;
    let (s, v, value) = st.vault.get_secret(&ctx.vault, &name, None).await?;
    Ok(Json(shape(&ctx, &s, &v, true, Some(value))))
}

async fn get_version_or_list(
    State(st): State<AppState>,
    ctx: VaultCtx,
    p: NameVersionPath,
) -> Result<axum::response::Response, ApiError> {
    let Path((name, version)) = p.map_err(path_err)?;
    let name = parse_name(&name)?;
    if version == "versions" {
        return Ok(list_versions(st, ctx, name).await?.into_response());
    }
    let (s, v, value) = st
        .vault
        .get_secret(&ctx.vault, &name, Some(&version))
        .await?;
    Ok(Json(shape(&ctx, &s, &v, true, Some(value))).into_response())
}

async fn list_secrets(
    State(st): State<AppState>,
    ctx: VaultCtx,
) -> Result<Json<Page<SecretBundle>>, ApiError> {
    let size = page_size(&ctx)?;
    let after = skiptoken(&ctx)?;
    let mut rows = st
        .vault
        .list_secrets(&ctx.vault, after.as_deref(), size + 1)
        .await?;
    let cursor = (rows.len() as i64 > size).then(|| {
        rows.truncate(size as usize);
        rows.last().map(|(s, _)| s.key.clone())
    });
    Ok(Json(Page {
        value: rows
            .iter()
            .map(|(s, v)| shape(&ctx, s, v, false, None))
            .collect(),
        next_link: next_link(&ctx, "/secrets", cursor.flatten(), size),
    }))
}

async fn list_versions(
    st: AppState,
    ctx: VaultCtx,
    name: SecretName,
) -> Result<Json<Page<SecretBundle>>, ApiError> {
    let size = page_size(&ctx)?;
    let after = skiptoken(&ctx)?
        .map(|t| {
            t.parse::<i64>().map_err(|_| {
                ApiError::bad_parameter("The $skiptoken is not valid; restart the listing.")
            })
        })
        .transpose()?;
    let (s, mut versions) = st
        .vault
        .list_versions(&ctx.vault, &name, after, size + 1)
        .await?;
    let cursor = (versions.len() as i64 > size).then(|| {
        versions.truncate(size as usize);
        versions.last().map(|v| v.ordinal.to_string())
    });
    let path = format!("/secrets/{}/versions", s.name);
    Ok(Json(Page {
        value: versions
            .iter()
            .map(|v| shape(&ctx, &s, v, true, None))
            .collect(),
        next_link: next_link(&ctx, &path, cursor.flatten(), size),
    }))
}

async fn update(
    st: AppState,
    ctx: VaultCtx,
    name: &str,
    version: Option<&str>,
    body: UpdateBody,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = parse_name(name)?;
    let attrs = body.attributes.unwrap_or_default();
    let (s, v) = st
        .vault
        .update_secret(
            &ctx.vault,
            &name,
            version,
            SecretUpdate {
                content_type: body.content_type,
                tags: body.tags,
                enabled: attrs.enabled,
                nbf: attrs.nbf,
                exp: attrs.exp,
            },
        )
        .await?;
    Ok(Json(shape(&ctx, &s, &v, true, None)))
}

async fn update_latest(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
    AzJson(body): AzJson<UpdateBody>,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = name.map_err(path_err)?.0;
    update(st, ctx, &name, None, body).await
}

async fn update_version(
    State(st): State<AppState>,
    ctx: VaultCtx,
    p: NameVersionPath,
    AzJson(body): AzJson<UpdateBody>,
) -> Result<Json<SecretBundle>, ApiError> {
    let Path((name, version)) = p.map_err(path_err)?;
    update(st, ctx, &name, Some(&version), body).await
}

async fn delete_secret(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = parse_name(&name.map_err(path_err)?.0)?;
    let (s, v) = st.vault.delete_secret(&ctx.vault, &name).await?;
    Ok(Json(deleted_shape(&ctx, &s, &v, true)))
}

async fn get_deleted(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = parse_name(&name.map_err(path_err)?.0)?;
    let (s, v) = st.vault.get_deleted(&ctx.vault, &name).await?;
    Ok(Json(deleted_shape(&ctx, &s, &v, true)))
}

async fn list_deleted(
    State(st): State<AppState>,
    ctx: VaultCtx,
) -> Result<Json<Page<SecretBundle>>, ApiError> {
    let size = page_size(&ctx)?;
    let after = skiptoken(&ctx)?;
    let mut rows = st
        .vault
        .list_deleted(&ctx.vault, after.as_deref(), size + 1)
        .await?;
    let cursor = (rows.len() as i64 > size).then(|| {
        rows.truncate(size as usize);
        rows.last().map(|(s, _)| s.key.clone())
    });
    Ok(Json(Page {
        value: rows
            .iter()
            .map(|(s, v)| deleted_shape(&ctx, s, v, false))
            .collect(),
        next_link: next_link(&ctx, "/deletedsecrets", cursor.flatten(), size),
    }))
}

async fn recover(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
) -> Result<Json<SecretBundle>, ApiError> {
    let name = parse_name(&name.map_err(path_err)?.0)?;
    let (s, v) = st.vault.recover(&ctx.vault, &name).await?;
    Ok(Json(shape(&ctx, &s, &v, true, None)))
}

async fn purge(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
) -> Result<Response, ApiError> {
    let name = parse_name(&name.map_err(path_err)?.0)?;
    st.vault.purge(&ctx.vault, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn backup(
    State(st): State<AppState>,
    ctx: VaultCtx,
    p: NameVersionPath,
) -> Result<Json<BackupResult>, ApiError> {
    let Path((name, op)) = p.map_err(path_err)?;
    if op != "backup" {
        return Err(ApiError::not_found(
            "NotFound",
            "No such operation. Check the path and method.",
        ));
    }
    let name = parse_name(&name)?;
    let blob = st.vault.backup(&ctx.vault, &name).await?;
    Ok(Json(BackupResult { value: blob }))
}

/// Key Vault's `BackupSecretResult`: the opaque, sealed backup blob.
#[derive(Serialize)]
struct BackupResult {
    value: String,
}

/// `POST /secrets/restore` shares its shape with `/secrets/{name}`.
async fn restore_or_404(
    State(st): State<AppState>,
    ctx: VaultCtx,
    name: NamePath,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<SecretBundle>, ApiError> {
    if name.map_err(path_err)?.0 != "restore" {
        return Err(ApiError::not_found(
            "NotFound",
            "No such operation. Check the path and method.",
        ));
    }
    let body = body.map_err(crate::error::body_rejection)?;
    let body: BlobBody = crate::error::parse_json(&body)?;
    let (s, v) = st.vault.restore(&ctx.vault, &body.value).await?;
    Ok(Json(shape(&ctx, &s, &v, true, None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_to_vaults() {
        let b = "vault.localhost";
        assert_eq!(
            vault_name_for_host("payments.vault.localhost:8443", b).as_deref(),
            Some("payments")
        );
        assert_eq!(
            vault_name_for_host("Payments.Vault.Localhost", b).as_deref(),
            Some("payments")
        );
        assert_eq!(
            vault_name_for_host("localhost:8443", b).as_deref(),
            Some("default")
        );
        assert_eq!(
            vault_name_for_host("127.0.0.1:8443", b).as_deref(),
            Some("default")
        );
        assert_eq!(
            vault_name_for_host("[::1]:8443", b).as_deref(),
            Some("default")
        );
        assert_eq!(vault_name_for_host("a.b.vault.localhost", b), None);
        assert_eq!(vault_name_for_host("example.com", b), None);
        assert_eq!(vault_name_for_host("xvault.localhost", b), None);
    }

    #[test]
    fn permissions_follow_routes_not_suffixes() {
        use SecretPermission as P;
        use axum::http::Method;
        let cases: &[(Method, &str, P)] = &[
            (Method::GET, "/secrets", P::List),
            (Method::GET, "/secrets/", P::List),
            (Method::GET, "/secrets/versions", P::Get),
            (Method::GET, "/secrets/versions/", P::Get),
            (Method::GET, "/secrets/deletedsecrets", P::Get),
            (Method::GET, "/secrets/a/versions", P::List),
            (Method::GET, "/secrets/versions/versions", P::List),
            (
                Method::GET,
                "/secrets/a/0123456789abcdef0123456789abcdef",
                P::Get,
            ),
            (Method::GET, "/deletedsecrets", P::List),
            (Method::GET, "/deletedsecrets/a", P::List),
            (Method::PUT, "/secrets/versions", P::Set),
            (Method::PATCH, "/secrets/a/v", P::Set),
            (Method::DELETE, "/secrets/versions", P::Delete),
            (Method::DELETE, "/deletedsecrets/a", P::Purge),
            (Method::POST, "/secrets/backup/backup", P::Backup),
            (Method::POST, "/secrets/backup", P::Purge),
            (Method::POST, "/secrets/restore", P::Restore),
            (Method::POST, "/deletedsecrets/recover/recover", P::Recover),
            (Method::GET, "/secrets/a/b/c", P::Purge),
        ];
        for (m, path, want) in cases {
            assert_eq!(secret_permission(m, path), *want, "{m} {path}");
        }
    }
}
