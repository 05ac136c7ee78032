//! The SubscriptionDeletion event (spec §7, an open choice): sent once, best
//! effort and without retries, when a validated webhook subscription that
//! asked for it (`sendDeletionEvent`) is deleted or expires.

use super::validation::base_url;
use super::{EventGrid, retry, upper_name};
use crate::engine::http::Outcome;
use crate::signing;
use bytes::Bytes;
use chrono::Utc;
use herald_core::event::event_time;
use herald_router::DeletedSubscription;
use herald_router::subscription::Destination;
use http::Method;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio_util::sync::CancellationToken;

impl EventGrid {
    /// Sends a deletion event for each deletion the router announces.
    pub(super) async fn run_deletion_events(
        self: Arc<Self>,
        mut deletions: Receiver<DeletedSubscription>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = deletions.recv() => d,
            };
            match next {
                Ok(d) => {
                    // Each on its own: one slow endpoint does not hold up the rest.
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.send_deletion_event(&d).await;
                    });
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "too many subscriptions deleted at once; some deletion events were not sent"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Sends one SubscriptionDeletion event through the guarded client;
    /// returns the endpoint's status, if it answered.
    pub(crate) async fn send_deletion_event(&self, d: &DeletedSubscription) -> Option<u16> {
        let sub = &d.subscription;
        let Some(Destination::WebHook(hook)) = &sub.properties.destination else {
            return None;
        };
        let now = Utc::now();
        let id = uuid::Uuid::new_v4().to_string();
        let event = json!([{
            "id": id,
            "topic": d.topic.record.arm_id,
            "subject": "",
            "eventType": "Microsoft.EventGrid.SubscriptionDeletedEvent",
            "eventTime": event_time(now),
            "data": { "eventSubscriptionId": d.topic.subscription_arm_id(&sub.record.name) },
            "dataVersion": "1",
            "metadataVersion": "1",
        }]);
        let body = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let mut headers = vec![
            (
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            ),
            (
                "aeg-event-type".to_owned(),
                "SubscriptionDeletion".to_owned(),
            ),
            (
                "aeg-subscription-name".to_owned(),
                upper_name(&sub.record.name),
            ),
            ("aeg-metadata-version".to_owned(), "1".to_owned()),
            ("aeg-data-version".to_owned(), "1".to_owned()),
        ];
        let secrets: Vec<signing::SigningSecret> = d
            .signing_secrets
            .iter()
            .filter_map(|s| signing::SigningSecret::parse(s).ok())
            .collect();
        headers.extend(signing::signature_headers(
            &secrets,
            &id,
            now.timestamp(),
            &body,
        ));
        let outcome = self
            .client
            .send(Method::POST, &hook.endpoint_url, &headers, body)
            .await;
        let (status, result) = match &outcome {
            Outcome::Response(r) => (Some(r.status), retry::outcome_for_status(r.status)),
            Outcome::Failed { kind, .. } => (None, kind.as_str()),
        };
        let endpoint = base_url(&hook.endpoint_url);
        if status.is_some_and(retry::is_success) {
            tracing::info!(topic = %d.topic.name(), subscription = %sub.record.name, %endpoint,
                status, outcome = result, "subscription deletion event sent");
        } else {
            tracing::info!(topic = %d.topic.name(), subscription = %sub.record.name, %endpoint,
                status, outcome = result, "subscription deletion event failed; it is not retried");
        }
        status
    }
}
