//! Request bodies: stored events rendered in the subscription's delivery
//! schema and grouped within maxEventsPerBatch and
//! preferredBatchSizeInKilobytes.

use crate::engine::Batch;
use bytes::Bytes;
use herald_router::schema::{self, DeliverySchema};
use herald_router::subscription::WebHookProperties;
use herald_router::{Subscription, TopicInfo};
use herald_storage::ClaimedMessage;

/// What the headers need of a batch besides its body.
pub(crate) struct BatchMeta {
    /// The first event's `dataVersion` (Event Grid schema only), sent as
    /// `aeg-data-version`.
    pub(crate) data_version: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataVersion {
    data_version: Option<String>,
}

/// Groups claimed events into request bodies within the batch limits.
/// Never waits to fill a batch: whatever is due goes now.
pub(super) fn form(
    topic: &TopicInfo,
    sub: &Subscription,
    hook: &WebHookProperties,
    claimed: Vec<ClaimedMessage>,
) -> Vec<Batch<BatchMeta>> {
    let schema = sub.properties.event_delivery_schema;
    let max_events = hook.max_events_per_batch.max(1) as usize;
    let max_bytes = hook.preferred_batch_size_in_kilobytes as usize * 1024;
    // Structured-mode CloudEvents go one per request, unbatched.
    let single = schema == DeliverySchema::CloudEventSchemaV1_0 && max_events == 1;
    let max_events = if single { 1 } else { max_events };
    // Bodies are built from borrowed text (most events need no
    // conversion); the messages are moved into their batches afterwards.
    let mut bodies: Vec<(String, usize, Option<String>)> = Vec::new();
    let mut batch_of: Vec<Option<usize>> = Vec::with_capacity(claimed.len());
    let mut count = 0;
    for m in &claimed {
        let text = match schema::render_raw_cow(&m.row.body, &topic.input, schema, false) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(seq = m.row.seq, error = %e, "stored event does not render; skipping it");
                batch_of.push(None);
                continue;
            }
        };
        // The finished body (comma, event, closing bracket) stays within
        // the preferred size; an event larger than that goes alone.
        let fits = bodies.last().is_some_and(|(body, _, _)| {
            count < max_events && body.len() + text.len() + 2 <= max_bytes
        });
        if !fits {
            let data_version = (schema == DeliverySchema::EventGridSchema)
                .then(|| serde_json::from_str::<DataVersion>(&text).ok())
                .flatten()
                .and_then(|d| d.data_version);
            let mut body = String::with_capacity(
                ((text.len() + 1) * max_events.min(claimed.len()) + 2)
                    .min(max_bytes.max(text.len() + 2)),
            );
            if !single {
                body.push('[');
            }
            bodies.push((body, 0, data_version));
            count = 0;
        }
        let (body, n, _) = bodies.last_mut().expect("a batch was just opened");
        if *n > 0 {
            body.push(',');
        }
        body.push_str(&text);
        *n += 1;
        count += 1;
        batch_of.push(Some(bodies.len() - 1));
    }
    let mut out: Vec<Batch<BatchMeta>> = bodies
        .into_iter()
        .map(|(mut body, n, data_version)| {
            if !single {
                body.push(']');
            }
            Batch {
                messages: Vec::with_capacity(n),
                body: Bytes::from(body),
                event_ids: Vec::with_capacity(n),
                meta: BatchMeta { data_version },
            }
        })
        .collect();
    for (m, b) in claimed.into_iter().zip(batch_of) {
        if let Some(b) = b {
            // Ids come from the log row, not from re-parsing the event.
            out[b].event_ids.push(m.row.event_id.clone());
            out[b].messages.push(m);
        }
    }
    out
}
