//! The dead-letter sink: dead-lettered events, annotated with their last
//! outcome, as blobs under the subscription's `deadLetterDestination`; and
//! the events that expired before an attempt could be made.

use super::deadletter::{DeadLetterInfo, DeadLetterStore, annotate};
use super::{EventGrid, retry};
use crate::engine::{DeadLetterFate, Settled, Verdict};
use chrono::{TimeZone, Utc};
use herald_router::schema::{self, DeliverySchema};
use herald_router::{Subscription, TopicInfo};
use herald_storage::ClaimedMessage;
use serde_json::Value;

impl EventGrid {
    /// Writes one blob of the dead-lettered events, if the subscription has
    /// a dead-letter destination and a store is configured. Failures are
    /// logged: the dead letters table has the events whatever happens here.
    pub(super) async fn write_dead_letter_objects(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        messages: &[ClaimedMessage],
        fate: DeadLetterFate,
    ) {
        let Some(dest) = &sub.properties.dead_letter_destination else {
            return;
        };
        let blobs = self.blobs();
        if self.dead_letters.is_none() && blobs.is_none() {
            return;
        }
        let container = dest["properties"]["blobContainerName"]
            .as_str()
            .unwrap_or("deadletters");
        let ce = sub.properties.event_delivery_schema == DeliverySchema::CloudEventSchemaV1_0;
        let at = Utc
            .timestamp_millis_opt(fate.at_ms)
            .single()
            .unwrap_or_else(Utc::now);
        let events: Vec<Value> = messages
            .iter()
            .filter_map(|m| {
                let schema = if ce {
                    DeliverySchema::CloudEventSchemaV1_0
                } else {
                    DeliverySchema::EventGridSchema
                };
                let text = schema::render_raw(&m.row.body, &topic.input, schema, false).ok()?;
                let event: Value = serde_json::from_str(&text).ok()?;
                let info = DeadLetterInfo {
                    reason: fate.reason,
                    delivery_attempts: fate.attempts,
                    last_delivery_outcome: Some(fate.outcome),
                    last_http_status: fate.status,
                    publish_time: Utc
                        .timestamp_opt(m.row.published_at, 0)
                        .single()
                        .unwrap_or(at),
                    last_attempt_time: Some(at),
                };
                Some(annotate(event, ce, &info))
            })
            .collect();
        let reason = fate.reason;
        // `resourceId` is an ARM id (`.../storageAccounts/{account}`) or a
        // bare account name; a Herald account takes the blob itself.
        let account = dest["properties"]["resourceId"]
            .as_str()
            .map(|r| r.rsplit_once("storageAccounts/").map_or(r, |(_, a)| a))
            .map(|a| a.split('/').next().unwrap_or(a))
            .unwrap_or("");
        if let Some(blobs) = blobs
            && !account.is_empty()
        {
            let path = DeadLetterStore::object_path("", &sub.record.name, at, uuid::Uuid::new_v4());
            let name = path.trim_start_matches('/');
            let body = serde_json::to_vec(&events).unwrap_or_default();
            match blobs.put(account, container, name, body).await {
                Ok(true) => {
                    tracing::info!(subscription = %sub.record.name, account, container, blob = %name,
                        events = events.len(), reason, "events dead-lettered");
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    // Azure drops dead letters whose destination does not exist.
                    tracing::error!(error = %e, subscription = %sub.record.name, account, container,
                        "writing dead-letter blob failed");
                    return;
                }
            }
        }
        let Some(store) = &self.dead_letters else {
            return;
        };
        match store.write(container, &sub.record.name, &events, at).await {
            Ok(path) => {
                tracing::info!(subscription = %sub.record.name, path = %path, events = events.len(), reason,
                "events dead-lettered")
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.record.name, "writing dead-letter object failed")
            }
        }
    }

    /// Dead-letters events that expired before their next attempt, grouped
    /// by how their last attempt ended (never attempted: Canceled, Event
    /// Grid's closest outcome).
    pub(super) async fn expire_unsent(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        messages: Vec<ClaimedMessage>,
        now_ms: i64,
    ) -> Vec<Settled> {
        let reason = "TimeToLiveExceeded";
        let mut groups: Vec<(&'static str, Option<u16>, i64, Vec<ClaimedMessage>)> = Vec::new();
        for m in messages {
            let outcome = retry::known_outcome(m.last_outcome.as_deref().unwrap_or("Canceled"));
            // The fresh path reports 1; an event never sent had no attempt.
            let attempts = if m.last_outcome.is_some() {
                m.delivery_count - 1
            } else {
                0
            };
            match groups
                .iter_mut()
                .find(|g| g.0 == outcome && g.1 == m.last_status && g.2 == attempts)
            {
                Some(g) => g.3.push(m),
                None => groups.push((outcome, m.last_status, attempts, vec![m])),
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for (outcome, status, attempts, messages) in groups {
            let fate = DeadLetterFate {
                reason,
                outcome,
                status,
                attempts,
                at_ms: now_ms,
            };
            self.write_dead_letter_objects(topic, sub, &messages, fate)
                .await;
            out.push(Settled {
                messages,
                verdict: Verdict::DeadLetter { reason },
                outcome,
                status,
                // Nothing was sent, so there is no request to log.
                attempts: Vec::new(),
                at_ms: now_ms,
            });
        }
        out
    }
}
