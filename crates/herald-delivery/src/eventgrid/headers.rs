//! Delivery headers: Event Grid's `aeg-*` set, CloudEvents' origin, the
//! subscription's static, dynamic and secret headers, and Standard Webhooks
//! signatures.

use super::batches::BatchMeta;
use super::{EventGrid, upper_name};
use crate::engine::Batch;
use crate::signing::SigningSecret;
use chrono::Utc;
use herald_router::Subscription;
use herald_router::schema::DeliverySchema;
use herald_router::subscription::WebHookProperties;
use serde_json::Value;

impl EventGrid {
    pub(super) async fn headers(
        &self,
        sub: &Subscription,
        hook: &WebHookProperties,
        batch: &Batch<BatchMeta>,
        attempt: i64,
        secrets: &Result<Vec<SigningSecret>, String>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let schema = sub.properties.event_delivery_schema;
        let mut h = Vec::with_capacity(12);
        let ce = schema == DeliverySchema::CloudEventSchemaV1_0;
        let content_type = match (
            ce,
            batch.messages.len() > 1 || hook.max_events_per_batch > 1,
        ) {
            (true, true) => "application/cloudevents-batch+json; charset=utf-8",
            (true, false) => "application/cloudevents+json; charset=utf-8",
            _ => "application/json; charset=utf-8",
        };
        h.push(("content-type".into(), content_type.into()));
        h.push(("aeg-event-type".into(), "Notification".into()));
        h.push(("aeg-subscription-name".into(), upper_name(&sub.record.name)));
        // Event Grid counts deliveries from 0.
        h.push((
            "aeg-delivery-count".into(),
            (attempt - 1).max(0).to_string(),
        ));
        if ce {
            h.push(("aeg-metadata-version".into(), "1.0".into()));
            h.push((
                "webhook-request-origin".into(),
                self.settings.origin.clone(),
            ));
            h.push(("origin".into(), self.settings.origin.clone()));
        } else {
            h.push(("aeg-metadata-version".into(), "1".into()));
            h.push((
                "aeg-data-version".into(),
                batch.meta.data_version.clone().unwrap_or_default(),
            ));
        }
        if let Some(id) = batch.event_ids.first() {
            h.push(("aeg-output-event-id".into(), id.clone()));
        }
        // Parsed only when a dynamic header needs a field of it.
        let first: Option<Value> = hook
            .delivery_attribute_mappings
            .iter()
            .any(|m| m["type"].as_str() == Some("Dynamic"))
            .then(|| batch.messages.first())
            .flatten()
            .and_then(|m| serde_json::from_str(&m.row.body).ok());
        for mapping in &hook.delivery_attribute_mappings {
            let Some(name) = mapping["name"].as_str() else {
                continue;
            };
            let props = &mapping["properties"];
            let value = match mapping["type"].as_str() {
                Some("Static") if props["isSecret"].as_bool() == Some(true) => {
                    // A vault reference, resolved now and never stored.
                    let reference = props["value"].as_str().unwrap_or_default();
                    let (vault, name) = herald_router::subscription::parse_secret_reference(
                        reference,
                    )
                    .ok_or_else(|| anyhow::anyhow!("header {name} has no valid vault reference"))?;
                    // Cloned out of the lock, which must not be held across the await.
                    let resolver = self
                        .resolver
                        .read()
                        .ok()
                        .and_then(|r| r.clone())
                        .ok_or_else(|| anyhow::anyhow!("no secret resolver configured"))?;
                    Some(resolver.resolve(&vault, &name).await?)
                }
                Some("Static") => mapping["properties"]["value"].as_str().map(str::to_owned),
                Some("Dynamic") => mapping["properties"]["sourceField"]
                    .as_str()
                    .and_then(|path| lookup(first.as_ref()?, path))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    }),
                _ => None,
            };
            if let Some(v) = value {
                h.push((name.to_owned(), v));
            }
        }
        let parsed = secrets
            .as_ref()
            .map_err(|e| anyhow::anyhow!("signing secrets: {e}"))?;
        if !parsed.is_empty() {
            // Stable across retries of the same events, as the id must be.
            let msg_id = match (batch.event_ids.first(), batch.event_ids.len()) {
                (Some(id), 1) => id.clone(),
                (Some(id), n) => format!("{id}+{}", n - 1),
                (None, _) => uuid::Uuid::new_v4().to_string(),
            };
            h.extend(crate::signing::signature_headers(
                parsed,
                &msg_id,
                Utc::now().timestamp(),
                &batch.body,
            ));
        }
        Ok(h)
    }
}

/// Reads `data.a.b`-style paths (and top-level names) from an event.
fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, seg| v.get(seg))
}
