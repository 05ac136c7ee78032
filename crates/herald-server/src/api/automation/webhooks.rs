//! Automation webhooks: the token-bearing resources that start runbooks.

use super::*;
use crate::api::List;
use crate::error::{ApiError, AzJson};
use crate::error::{AzPath as Path, AzQuery as Query};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_storage::WebhookRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A webhook's properties. `uri` holds the token-bearing URL only in the
/// answer to the PUT that created it; Azure never shows it again.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WebhookProperties {
    creation_time: String,
    description: String,
    expiry_time: String,
    is_enabled: bool,
    last_invoked_time: Option<String>,
    last_modified_time: String,
    parameters: Map<String, Value>,
    run_on: Option<String>,
    runbook: RunbookRef,
    uri: String,
}

/// The runbook a webhook starts, by name.
#[derive(Serialize)]
pub(super) struct RunbookRef {
    pub(super) name: String,
}

pub(super) type WebhookDto = Resource<WebhookProperties>;

pub(super) fn webhook_view(wh: &WebhookRecord, runbook: &str, uri: Option<&str>) -> WebhookDto {
    let mut parameters: Map<String, Value> =
        serde_json::from_str(&wh.parameters).unwrap_or_default();
    if wh.secure_parameters.is_some() {
        parameters.insert("(secure parameters)".into(), Value::String("*****".into()));
    }
    Resource {
        id: Some(format!("/automation/webhooks/{}", wh.name)),
        name: wh.name.clone(),
        properties: WebhookProperties {
            creation_time: iso(wh.created),
            description: wh.description.clone(),
            expiry_time: iso(wh.expiry),
            is_enabled: wh.is_enabled,
            last_invoked_time: wh.last_invoked.map(iso),
            last_modified_time: iso(wh.updated),
            parameters,
            run_on: (!wh.run_on.is_empty()).then(|| wh.run_on.clone()),
            runbook: RunbookRef {
                name: runbook.to_owned(),
            },
            uri: uri.unwrap_or("").to_owned(),
        },
    }
}

pub(super) async fn runbook_name(
    st: &AppState,
    id: &str,
    cache: &mut HashMap<String, String>,
) -> String {
    if let Some(n) = cache.get(id) {
        return n.clone();
    }
    let name = st
        .storage
        .runbook_by_id(id)
        .await
        .ok()
        .flatten()
        .map_or_else(String::new, |r| r.name);
    cache.insert(id.to_owned(), name.clone());
    name
}

#[derive(Deserialize)]
pub(super) struct WebhookListQuery {
    runbook: Option<String>,
}

pub(super) async fn list_webhooks(
    State(st): State<AppState>,
    Query(q): Query<WebhookListQuery>,
) -> Result<Json<List<WebhookDto>>, ApiError> {
    let list = st.automation.list_webhooks(q.runbook.as_deref()).await?;
    let mut names = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for wh in &list {
        let rb = runbook_name(&st, &wh.runbook_id, &mut names).await;
        out.push(webhook_view(wh, &rb, None));
    }
    Ok(Json(out.into()))
}

pub(super) async fn generate_uri(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::String(st.automation.generate_uri().await?)))
}

pub(super) async fn get_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<WebhookDto>, ApiError> {
    let wh = st.automation.webhook(&name).await?;
    let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
    Ok(Json(webhook_view(&wh, &rb, None)))
}

/// Azure's CreateOrUpdate: 201 with the URL when new, 200 when updated.
pub(super) async fn put_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Response, ApiError> {
    let props = object(body)?;
    match st.automation.webhook(&name).await {
        Ok(_) => {
            let wh = st.automation.update_webhook(&name, &props).await?;
            let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
            Ok(Json(webhook_view(&wh, &rb, None)).into_response())
        }
        Err(herald_automation::AutomationError::NotFound { .. }) => {
            let (wh, uri) = st.automation.create_webhook(&name, &props).await?;
            let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
            Ok((
                StatusCode::CREATED,
                Json(webhook_view(&wh, &rb, Some(&uri))),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn patch_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
    AzJson(body): AzJson<Value>,
) -> Result<Json<WebhookDto>, ApiError> {
    let wh = st.automation.update_webhook(&name, &object(body)?).await?;
    let rb = runbook_name(&st, &wh.runbook_id, &mut HashMap::new()).await;
    Ok(Json(webhook_view(&wh, &rb, None)))
}

pub(super) async fn delete_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.automation.delete_webhook(&name).await?;
    Ok(StatusCode::OK)
}
