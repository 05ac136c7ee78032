//! Herald as an OpenID provider for its own principals: the discovery
//! document, the JWKS and the v2.0 token endpoint, at the paths Entra ID
//! uses (`/{tenant}/v2.0/.well-known/openid-configuration`,
//! `/{tenant}/discovery/v2.0/keys`, `/{tenant}/oauth2/v2.0/token`), so
//! `ClientSecretCredential(tenant, client, secret, authority="https://host:port")`
//! works unchanged. These routes are public, as Entra ID's are; the token
//! endpoint authenticates the client itself.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_identity::OAuthError;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(keys))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
}

fn oauth_error(e: OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, Json(e.body())).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The authority the client called, for the URLs it should call next.
fn authority(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "localhost".into())
}

/// The refusal for a tenant this installation does not serve, if it is one.
fn unknown_tenant(st: &AppState, tenant: &str) -> Option<Response> {
    (!tenant.eq_ignore_ascii_case(st.identity.tenant()) && tenant != "organizations")
        .then(|| oauth_error(OAuthError::new_invalid_tenant(tenant)))
}

async fn openid_configuration(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    req: Request,
) -> Response {
    if let Some(r) = unknown_tenant(&st, &tenant) {
        return r;
    }
    let base = format!(
        "https://{}/{}",
        authority(req.headers(), req.uri()),
        st.identity.tenant()
    );
    Json(json!({
        "issuer": format!("{base}/v2.0"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        // MSAL requires an authorization endpoint in the document; Herald
        // issues app tokens only, so it answers every call there with an error.
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": [
            "https://vault.azure.net/.default",
            "https://eventhubs.azure.net/.default",
            "https://storage.azure.com/.default",
            "https://management.azure.com/.default"
        ],
        "tenant_region_scope": null,
        "cloud_instance_name": "herald",
    }))
    .into_response()
}

async fn keys(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    if let Some(r) = unknown_tenant(&st, &tenant) {
        return r;
    }
    Json(st.identity.jwks()).into_response()
}

async fn token(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Ok(body) = body else {
        return Ok(oauth_error(OAuthError::invalid_request(
            90020,
            "The request body could not be read or is too large.",
        )));
    };
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    let req = match herald_identity::parse_token_request(&body, basic) {
        Ok(r) => r,
        Err(e) => return Ok(oauth_error(e)),
    };
    let issued = st
        .identity
        .issue(&req, &tenant, &authority(&headers, &uri))
        .await?;
    Ok(match issued {
        Ok(t) => {
            let mut resp = Json(t).into_response();
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(e) => {
            tracing::info!(client_id = %req.client_id, error = e.error, code = e.code, "token request refused");
            oauth_error(e)
        }
    })
}
