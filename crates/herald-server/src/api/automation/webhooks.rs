//! Automation webhooks: the token-bearing resources that start runbooks.

use super::*;
use crate::error::{ApiError, AzJson};
use crate::error::{AzPath as Path, AzQuery as Query};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_storage::WebhookRecord;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

pub(super) fn webhook_view(wh: &WebhookRecord, runbook: &str, uri: Option<&str>) -> Value {
    let mut params: Map<String, Value> = serde_json::from_str(&wh.parameters).unwrap_or_default();
    if wh.secure_parameters.is_some() {
        params.insert("(secure parameters)".into(), Value::String("*****".into()));
    }
    json!({
        "id": format!("/automation/webhooks/{}", wh.name),
        "name": wh.name,
        "properties": {
            "isEnabled": wh.is_enabled,
            "uri": uri.unwrap_or(""),
            "expiryTime": iso(wh.expiry),
            "lastInvokedTime": iso_opt(wh.last_invoked),
            "parameters": params,
            "runbook": { "name": runbook },
            "runOn": if wh.run_on.is_empty() { Value::Null } else { Value::String(wh.run_on.clone()) },
            "creationTime": iso(wh.created),
            "lastModifiedTime": iso(wh.updated),
            "description": wh.description,
        }
    })
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
) -> Result<Json<Value>, ApiError> {
    let list = st.automation.list_webhooks(q.runbook.as_deref()).await?;
    let mut names = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for wh in &list {
        let rb = runbook_name(&st, &wh.runbook_id, &mut names).await;
        out.push(webhook_view(wh, &rb, None));
    }
    Ok(Json(json!({ "value": out })))
}

pub(super) async fn generate_uri(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::String(st.automation.generate_uri().await?)))
}

pub(super) async fn get_webhook(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
) -> Result<Json<Value>, ApiError> {
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
