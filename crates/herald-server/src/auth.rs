//! Bearer-token authentication.
//!
//! Tokens are random 256-bit strings, so they are stored and looked up by
//! SHA-256 digest: the digest is all a timing side channel could reveal,
//! and the final comparison is constant time anyway.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use herald_storage::TokenRecord;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Remembers valid tokens briefly so hot paths skip the database.
#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<String, (TokenRecord, Instant)>>,
}

const TOKEN_TTL: Duration = Duration::from_secs(30);

impl TokenCache {
    fn get(&self, hash: &str) -> Option<TokenRecord> {
        let map = self.entries.read().ok()?;
        let (rec, at) = map.get(hash)?;
        (at.elapsed() < TOKEN_TTL).then(|| rec.clone())
    }

    fn put(&self, hash: String, rec: TokenRecord) {
        if let Ok(mut map) = self.entries.write() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(hash, (rec, Instant::now()));
        }
    }
}

/// Who made the request: the one value every authorization rule reads.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A static API token (the admin token).
    Token(TokenRecord),
    /// A principal, with a token from Herald's token endpoint.
    Principal(std::sync::Arc<herald_identity::Claims>),
    /// A running job, with its job token.
    Job(herald_automation::service::JobPrincipal),
}

/// A bearer value shaped like a JWT (`header.payload.signature`).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub async fn authenticate(state: &AppState, token: &str) -> Result<Option<TokenRecord>, ApiError> {
    let hash = hash_token(token);
    if let Some(rec) = state.tokens.get(&hash) {
        return Ok(Some(rec));
    }
    let found = state
        .storage
        .token_by_hash(&hash)
        .await
        .map_err(|e| ApiError::internal("looking up a token", e))?;
    if let Some(rec) = &found {
        // Equal by construction of the lookup; kept explicit and constant time.
        if !bool::from(hash.as_bytes().ct_eq(hash_token(token).as_bytes())) {
            return Ok(None);
        }
        state.tokens.put(hash, rec.clone());
    }
    Ok(found)
}

/// Guards the vault data plane with Key Vault's challenge flow: any request
/// without a valid token gets the 401 the SDK needs, before any validation.
pub async fn vault_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Owned values only: the request body is not Sync, so no borrow of the
    // request may live across an await.
    let authority = req_authority(&req, &state);
    let challenge = || {
        format!(
            "Bearer authorization=\"https://{authority}/{}\", resource=\"https://{authority}\"",
            state.tenant_id
        )
    };
    let Some(token) = bearer(&req).map(str::to_owned) else {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
        e.challenge = Some(challenge());
        return Err(e);
    };
    let refuse = |message: String| {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message);
        e.challenge = Some(challenge());
        e
    };
    if looks_like_jwt(&token) {
        return match state
            .identity
            .verify(&token, herald_identity::Audience::KeyVault)
            .await
        {
            Ok(claims) => {
                req.extensions_mut().insert(Caller::Principal(claims));
                Ok(next.run(req).await)
            }
            Err(herald_identity::VerifyError::Token(e)) => Err(refuse(format!("AKV10022: {e}."))),
            Err(herald_identity::VerifyError::Storage(e)) => {
                Err(ApiError::internal("verifying a token", e))
            }
        };
    }
    match authenticate(&state, &token).await? {
        Some(rec) => {
            req.extensions_mut().insert(Caller::Token(rec));
            Ok(next.run(req).await)
        }
        None if token.starts_with("hjt_") => {
            let Some(job) = state.automation.principal(&token).await? else {
                return Err(refuse(
                    "AKV10022: The job token has expired or its job has ended.".into(),
                ));
            };
            let job_id = job.job_id.clone();
            req.extensions_mut().insert(Caller::Job(job));
            let resp = next.run(req).await;
            Ok(mask_for_job(&state, &job_id, resp).await)
        }
        None => Err(refuse(
            "AKV10022: The bearer token is not valid for this Herald server.".into(),
        )),
    }
}

/// The one authorization rule of the vault data plane: may `caller` use
/// `need` on `vault`'s secrets? Admin tokens may do anything; principals
/// need the permission in the vault's access policy; jobs need it among
/// their runbook's declared permissions.
pub async fn authorize_secret(
    state: &AppState,
    caller: &Caller,
    vault: &herald_storage::VaultRecord,
    need: herald_identity::SecretPermission,
) -> Result<(), ApiError> {
    use herald_identity::SecretPermission as P;
    let forbidden = |message: String| {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message).with_inner("AccessDenied")
    };
    match caller {
        Caller::Token(rec) if rec.role == "admin" => Ok(()),
        Caller::Token(_) => Err(forbidden(
            "This token may not use the vault data plane; use an admin token or a principal's token.".into(),
        )),
        Caller::Principal(claims) => {
            let granted = state.identity.secret_permissions(vault, &claims.oid).await?;
            if granted.contains(need) {
                return Ok(());
            }
            Err(forbidden(format!(
                "The user, group or application 'appid={};oid={};iss={}' does not have secrets {need} permission on key vault '{};location=local'. Grant it with: herald vault set-policy {} --spn {} --secret-permissions {need}",
                claims.appid, claims.oid, claims.iss, vault.name, vault.name, claims.appid
            )))
        }
        Caller::Job(job) => {
            // Runbooks declare get, list, set, delete, or manage for the rest.
            let action = match need {
                P::Get => "get",
                P::List => "list",
                P::Set => "set",
                P::Delete => "delete",
                P::Recover | P::Backup | P::Restore | P::Purge => "manage",
            };
            if job.permissions.iter().any(|p| p.allows(&vault.name, action)) {
                return Ok(());
            }
            Err(forbidden(format!(
                "Runbook '{}' may not {action} secrets in vault '{}'. Grant it with permissions: [{{\"vault\": \"{}\", \"actions\": [\"{action}\"]}}].",
                job.runbook, vault.name, vault.name
            )))
        }
    }
}

/// Secret values a job reads or writes are masked in its streams from then
/// on, so a runbook that echoes them cannot leak them into job output.
async fn mask_for_job(state: &AppState, job_id: &str, resp: Response) -> Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4 * 1024 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(value) = v.get("value").and_then(|v| v.as_str())
    {
        state.automation.register_mask(job_id, value).await;
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// `{vault_base}:{port}` as the client addressed us, the parent domain the
/// SDK's resource check needs.
fn req_authority(req: &Request, state: &AppState) -> String {
    let port = crate::api::host_of(req).and_then(|h| h.rsplit_once(':').map(|(_, p)| p.to_owned()));
    match port {
        Some(p) if p != "443" => format!("{}:{p}", state.config.vault_base),
        _ => state.config.vault_base.clone(),
    }
}

/// Guards the management API: admin tokens only.
pub async fn admin_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", m);
    let Some(token) = bearer(&req).map(str::to_owned) else {
        return Err(unauthorized(
            "Missing bearer token. Send 'Authorization: Bearer <admin token>' (the CLI reads HERALD_TOKEN).",
        ));
    };
    if looks_like_jwt(&token) {
        // Principals have no management rights (Herald has no RBAC): a
        // valid management token is refused as forbidden, anything else as
        // unauthenticated.
        return match state
            .identity
            .verify(&token, herald_identity::Audience::Management)
            .await
        {
            Ok(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Principals may not use the management API; use an admin token.",
            )),
            Err(herald_identity::VerifyError::Token(e)) => Err(unauthorized(&format!(
                "The bearer token is not valid here: {e}."
            ))),
            Err(herald_identity::VerifyError::Storage(e)) => {
                Err(ApiError::internal("verifying a token", e))
            }
        };
    }
    match authenticate(&state, &token).await? {
        Some(rec) if rec.role == "admin" => {
            req.extensions_mut().insert(Caller::Token(rec));
            Ok(next.run(req).await)
        }
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "This token may not use the management API; use an admin token.",
        )),
        None if token.starts_with("hjt_")
            && state.automation.principal(&token).await?.is_some() =>
        {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Job tokens may not use the management API.",
            ))
        }
        None => Err(unauthorized(
            "The bearer token is not valid for this Herald server. Check HERALD_TOKEN.",
        )),
    }
}
