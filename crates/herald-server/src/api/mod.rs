//! HTTP routes, one module per API resource.

pub mod automation;
pub mod blob;
pub mod event_subscriptions;
pub mod events;
pub mod hub_data;
pub mod hubs;
pub mod identity;
pub mod principals;
pub mod secrets;
pub mod status;
pub mod storage_accounts;
pub mod system;
pub mod topics;
pub mod vaults;
pub mod webhooks;

use crate::auth;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use serde::Serialize;
use std::time::Instant;

/// A list body as Azure writes it: `{"value": [...]}`.
#[derive(Serialize)]
pub struct List<T> {
    /// The items, in the order the service returns them.
    pub value: Vec<T>,
}

impl<T> From<Vec<T>> for List<T> {
    fn from(value: Vec<T>) -> Self {
        Self { value }
    }
}

impl<T> FromIterator<T> for List<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self {
            value: iter.into_iter().collect(),
        }
    }
}

/// Access keys as Event Grid returns them (`listKeys`, `regenerateKey`).
#[derive(Serialize)]
pub struct KeyPair {
    /// The first key.
    pub key1: String,
    /// The second key.
    pub key2: String,
}

/// A counter map, serialized in name order so bodies are stable.
pub type Metrics = std::collections::BTreeMap<String, i64>;

/// Largest request body any endpoint reads (event batches need 1 MiB).
pub const MAX_BODY: usize = 1024 * 1024 + 64 * 1024;

pub fn router(state: AppState) -> Router {
    let vault_plane = secrets::router()
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::vault_auth,
        ));
    let management = Router::new()
        .nest("/api/v1/vaults", vaults::router())
        .nest(
            "/api/v1/topics",
            topics::router().merge(event_subscriptions::router()),
        )
        .nest("/api/v1/automation", automation::router())
        .nest("/api/v1/status", status::router())
        .nest("/api/v1/hubs", hubs::router())
        .nest("/api/v1/principals", principals::router())
        .nest("/api/v1/storage/accounts", storage_accounts::router())
        .merge(system::metrics_router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::admin_auth,
        ));
    // A namespace's host (`{ns}.{hub_base}`) serves the hubs data plane
    // only; every other host serves the rest, and data-plane-shaped calls
    // for the default namespace.
    let hub_plane = hub_data::router()
        .layer(middleware::from_fn(track))
        .with_state(state.clone());
    let main = Router::new()
        .merge(system::router())
        .merge(identity::router())
        .merge(management)
        .merge(events::router())
        .merge(webhooks::router())
        .merge(automation::job_router())
        .merge(vault_plane)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .with_state(state.clone());
    Router::new()
        .fallback_service(tower::service_fn(move |req: Request| {
            let (main, hub_plane, st) = (main.clone(), hub_plane.clone(), state.clone());
            async move {
                use tower::ServiceExt;
                if let Some(account) =
                    host_of(&req).and_then(|h| st.blob.account_of_host(&h).map(str::to_owned))
                {
                    return Ok(blob::handle(axum::extract::State(st), account, req).await);
                }
                if hub_data::namespace_of(&st, req.headers(), req.uri()).is_some()
                    || hub_data::is_plain_host_call(req.method(), req.uri().path())
                {
                    hub_plane.oneshot(req).await
                } else {
                    main.oneshot(req).await
                }
            }
        }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "This path does not support that HTTP method.",
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("NotFound", "No such operation. Check the path and method.")
}

/// Counts requests by route and status, and times them.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The authority the client addressed (HTTP/2 `:authority` or `Host`).
pub fn host_of(req: &Request) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    req.headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
}

/// Value of one query parameter, decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Rejects a missing or malformed `api-version` (after authentication).
pub fn require_api_version(query: Option<&str>) -> Result<String, ApiError> {
    let Some(v) = query_param(query, "api-version") else {
        return Err(ApiError::bad_parameter(
            "The 'api-version' query parameter is required, for example ?api-version=7.6.",
        ));
    };
    let core = v.strip_suffix("-preview").unwrap_or(&v);
    let numeric = core.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    });
    let dated = core.len() == 10
        && core.bytes().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if numeric || dated {
        Ok(v)
    } else {
        Err(ApiError::bad_parameter(format!(
            "The api-version '{v}' is not valid; use a version such as 7.6 or 2025-07-01."
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in [
            "7.4",
            "7.6",
            "2025-07-01",
            "2026-04-01",
            "7.6-preview",
            "2016-10-01",
        ] {
            assert!(
                require_api_version(Some(&format!("api-version={ok}"))).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "",
            "api-version=",
            "api-version=x",
            "api-version=7",
            "api-version=2025-7-01",
            "foo=1",
        ] {
            assert!(require_api_version(Some(bad)).is_err(), "{bad}");
        }
        assert!(require_api_version(None).is_err());
    }
}
