//! Event subscription properties, with Azure's property names, validated
//! once at the edge and stored as normalised JSON.

use crate::filter::EventFilter;
use crate::schema::{DeliverySchema, InputSchemaKind, compatible};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most labels an event subscription may carry.
pub const MAX_LABELS: usize = 10;

/// Where and how a push subscription posts events (`destination.properties`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebHookProperties {
    /// The HTTPS URL events are posted to (validated by handshake before delivery starts).
    pub endpoint_url: String,
    /// Most events in one POST (default 1).
    #[serde(default = "one")]
    pub max_events_per_batch: u32,
    /// Target size of one POST in KiB (default 64).
    #[serde(default = "sixty_four")]
    pub preferred_batch_size_in_kilobytes: u32,
    /// Extra HTTP headers on each delivery: static values, event fields or vault secret references.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivery_attribute_mappings: Vec<Value>,
}

fn one() -> u32 {
    1
}
fn sixty_four() -> u32 {
    64
}

/// Where a push subscription delivers, tagged by `endpointType`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "endpointType", content = "properties")]
pub enum Destination {
    /// HTTP POSTs to a webhook endpoint.
    WebHook(WebHookProperties),
}

/// Pull-delivery settings of a Queue subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSettings {
    /// How long a received event stays locked before it is handed out again (default 60).
    #[serde(default = "lock_default")]
    pub receive_lock_duration_in_seconds: i64,
    /// Receives after which an unsettled event is dead-lettered (default 10).
    #[serde(default = "max_count_default")]
    pub max_delivery_count: i64,
    /// How long an event waits to be received, as an ISO-8601 duration (default `P1D`).
    #[serde(default = "ttl_default")]
    pub event_time_to_live: String,
}

fn lock_default() -> i64 {
    60
}
fn max_count_default() -> i64 {
    10
}
fn ttl_default() -> String {
    "P1D".into()
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            receive_lock_duration_in_seconds: lock_default(),
            max_delivery_count: max_count_default(),
            event_time_to_live: ttl_default(),
        }
    }
}

/// `deliveryConfiguration`: present on pull (Queue) subscriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryConfiguration {
    /// Always `Queue`.
    pub delivery_mode: String,
    /// The queue's lock, delivery count and time-to-live settings.
    #[serde(default)]
    pub queue: QueueSettings,
}

/// How long a push subscription keeps retrying an event before dead-lettering it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Delivery attempts before the event is dead-lettered (default 30).
    #[serde(default = "attempts_default")]
    pub max_delivery_attempts: i64,
    /// Minutes after which an undelivered event is dead-lettered (default 1440).
    #[serde(default = "ttl_minutes_default")]
    pub event_time_to_live_in_minutes: i64,
}

fn attempts_default() -> i64 {
    30
}
fn ttl_minutes_default() -> i64 {
    1440
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_delivery_attempts: attempts_default(),
            event_time_to_live_in_minutes: ttl_minutes_default(),
        }
    }
}

/// Namespace-style filters (`filtersConfiguration`), folded into `filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiltersConfiguration {
    /// Event types to deliver; absent or empty means all.
    #[serde(default)]
    pub included_event_types: Option<Vec<String>>,
    /// Advanced filters, all of which must match.
    #[serde(default)]
    pub filters: Vec<crate::filter::AdvancedFilter>,
}

/// What a client sends to create or update a subscription.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionInput {
    /// The webhook to push to; absent for Queue subscriptions.
    pub destination: Option<Destination>,
    /// Makes the subscription a pull (Queue) subscription.
    pub delivery_configuration: Option<DeliveryConfiguration>,
    /// Which events the subscription takes.
    pub filter: Option<EventFilter>,
    /// Namespace-style filters, folded into `filter`.
    pub filters_configuration: Option<FiltersConfiguration>,
    /// The envelope events are delivered in; defaults from the topic's input schema.
    pub event_delivery_schema: Option<DeliverySchema>,
    /// Retry limits for push delivery.
    pub retry_policy: Option<RetryPolicy>,
    /// Azure's `deadLetterDestination` (StorageBlob): where dead-lettered events are also written.
    pub dead_letter_destination: Option<Value>,
    /// When the subscription expires and is deleted, RFC 3339.
    pub expiration_time_utc: Option<String>,
    /// Free-form labels (at most [`MAX_LABELS`]).
    pub labels: Option<Vec<String>>,
    /// Herald extension: a Standard Webhooks secret (`whsec_...`). Stored
    /// sealed, apart from the properties, and never echoed.
    pub signing_secret: Option<String>,
    /// Herald extension: send a SubscriptionDeletion event to the webhook
    /// when this subscription is deleted (spec §7, off by default).
    pub send_deletion_event: Option<bool>,
}

/// The stored, normalised properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionProperties {
    /// The webhook pushed to; absent for Queue subscriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// Present on pull (Queue) subscriptions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_configuration: Option<DeliveryConfiguration>,
    /// Which events the subscription takes (filtersConfiguration folded in).
    pub filter: EventFilter,
    /// The envelope events are delivered in.
    pub event_delivery_schema: DeliverySchema,
    /// Retry limits for push delivery.
    pub retry_policy: RetryPolicy,
    /// Where dead-lettered events are also written, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_destination: Option<Value>,
    /// When the subscription expires, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time_utc: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Herald extension: announce the deletion to the webhook, once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub send_deletion_event: bool,
}

impl SubscriptionProperties {
    /// Whether events are pulled (Queue) rather than pushed to a webhook.
    pub fn is_queue(&self) -> bool {
        self.delivery_configuration.is_some()
    }

    /// The queue settings, for pull subscriptions.
    pub fn queue(&self) -> QueueSettings {
        self.delivery_configuration
            .as_ref()
            .map(|d| d.queue.clone())
            .unwrap_or_default()
    }

    /// The expiration time, parsed; `None` when absent or unparsable.
    pub fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.expiration_time_utc
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// A vault reference in a secret delivery header: Azure App Service's
/// `@Microsoft.KeyVault(VaultName=v;SecretName=s)` or `vault://v/s`.
pub fn parse_secret_reference(value: &str) -> Option<(String, String)> {
    if let Some(rest) = value.strip_prefix("vault://") {
        let (vault, name) = rest.split_once('/')?;
        return (!vault.is_empty() && !name.is_empty() && !name.contains('/'))
            .then(|| (vault.to_owned(), name.to_owned()));
    }
    let inner = value
        .strip_prefix("@Microsoft.KeyVault(")?
        .strip_suffix(')')?;
    let mut vault = None;
    let mut name = None;
    for part in inner.split(';') {
        match part.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("VaultName") => {
                vault = Some(v.trim().to_owned())
            }
            Some((k, v)) if k.trim().eq_ignore_ascii_case("SecretName") => {
                name = Some(v.trim().to_owned())
            }
            _ => {}
        }
    }
    Some((vault?, name?))
}

fn check_attribute_mapping(m: &Value) -> Result<(), String> {
    let name = m["name"].as_str().unwrap_or_default();
    if name.is_empty()
        || name.len() > 256
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(
            "Each deliveryAttributeMapping needs a header 'name' of letters, digits, '-' or '_'."
                .into(),
        );
    }
    let props = &m["properties"];
    match m["type"].as_str() {
        Some("Static") => {
            let value = props["value"]
                .as_str()
                .ok_or("A Static deliveryAttributeMapping needs properties.value.")?;
            if value.len() > 4096 {
                return Err("Delivery attribute values are limited to 4096 bytes.".into());
            }
            if props["isSecret"].as_bool() == Some(true) && parse_secret_reference(value).is_none()
            {
                return Err(format!(
                    "Secret header '{name}' must reference a vault secret, e.g. @Microsoft.KeyVault(VaultName=default;SecretName=api-key) or vault://default/api-key; Herald never stores secret values in subscriptions."
                ));
            }
            Ok(())
        }
        Some("Dynamic") => match props["sourceField"].as_str() {
            Some(f) if !f.is_empty() => Ok(()),
            _ => Err("A Dynamic deliveryAttributeMapping needs properties.sourceField.".into()),
        },
        _ => Err("deliveryAttributeMapping type must be 'Static' or 'Dynamic'.".into()),
    }
}

/// Parses an ISO-8601 duration of days/hours/minutes/seconds (`P1D`, `PT10M`).
pub fn parse_iso_duration(raw: &str) -> Option<i64> {
    let rest = raw.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut secs = 0i64;
    let mut num = String::new();
    for c in date.chars() {
        match c {
            '0'..='9' => num.push(c),
            'D' => secs += num.parse::<i64>().ok()? * 86_400,
            'W' => secs += num.parse::<i64>().ok()? * 7 * 86_400,
            _ => return None,
        }
        if !c.is_ascii_digit() {
            num.clear();
        }
    }
    if !num.is_empty() {
        return None;
    }
    if let Some(t) = time {
        for c in t.chars() {
            match c {
                '0'..='9' => num.push(c),
                'H' => secs += num.parse::<i64>().ok()? * 3600,
                'M' => secs += num.parse::<i64>().ok()? * 60,
                'S' => secs += num.parse::<i64>().ok()?,
                _ => return None,
            }
            if !c.is_ascii_digit() {
                num.clear();
            }
        }
        if !num.is_empty() {
            return None;
        }
    }
    (secs > 0).then_some(secs)
}

impl SubscriptionInput {
    /// Validates against Azure's rules and the topic's input schema.
    pub fn normalise(self, input: &InputSchemaKind) -> Result<SubscriptionProperties, String> {
        if let Some(secret) = &self.signing_secret {
            let ok = secret.strip_prefix("whsec_").is_some_and(|b| {
                !b.is_empty()
                    && b.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
            });
            if !ok {
                return Err("signingSecret must be a Standard Webhooks secret: 'whsec_' followed by base64.".into());
            }
            if self.delivery_configuration.is_some() {
                return Err("signingSecret applies to webhook destinations only.".into());
            }
        }
        let send_deletion_event = self.send_deletion_event.unwrap_or(false);
        if send_deletion_event && self.delivery_configuration.is_some() {
            return Err(
                "sendDeletionEvent applies to webhook destinations only: a Queue subscription has no endpoint to tell.".into(),
            );
        }
        let mut filter = self.filter.unwrap_or_default();
        if let Some(fc) = self.filters_configuration {
            if filter.included_event_types.is_none() {
                filter.included_event_types = fc.included_event_types;
            }
            filter.advanced_filters.extend(fc.filters);
        }
        filter.validate()?;
        match (&self.destination, &self.delivery_configuration) {
            (None, None) => {
                return Err("Set 'destination' (endpointType WebHook) or 'deliveryConfiguration' (deliveryMode Queue).".into());
            }
            (Some(_), Some(_)) => {
                return Err(
                    "Set either 'destination' or 'deliveryConfiguration', not both.".into(),
                );
            }
            (Some(Destination::WebHook(w)), None) => {
                let url = w.endpoint_url.to_ascii_lowercase();
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || w.endpoint_url.len() > 2048
                {
                    return Err(
                        "destination.properties.endpointUrl must be an http:// or https:// URL."
                            .into(),
                    );
                }
                if !(1..=5000).contains(&w.max_events_per_batch) {
                    return Err("maxEventsPerBatch must be between 1 and 5000.".into());
                }
                if !(1..=1024).contains(&w.preferred_batch_size_in_kilobytes) {
                    return Err("preferredBatchSizeInKilobytes must be between 1 and 1024.".into());
                }
                if w.delivery_attribute_mappings.len() > 10 {
                    return Err("At most 10 deliveryAttributeMappings are allowed.".into());
                }
                for m in &w.delivery_attribute_mappings {
                    check_attribute_mapping(m)?;
                }
            }
            (None, Some(d)) => {
                if !d.delivery_mode.eq_ignore_ascii_case("Queue") {
                    return Err("deliveryConfiguration.deliveryMode must be 'Queue'.".into());
                }
                let q = &d.queue;
                if !(30..=300).contains(&q.receive_lock_duration_in_seconds) {
                    return Err("receiveLockDurationInSeconds must be between 30 and 300.".into());
                }
                if !(1..=10).contains(&q.max_delivery_count) {
                    return Err("maxDeliveryCount must be between 1 and 10.".into());
                }
                match parse_iso_duration(&q.event_time_to_live) {
                    Some(secs) if (60..=7 * 86_400).contains(&secs) => {}
                    _ => {
                        return Err("eventTimeToLive must be an ISO-8601 duration from PT1M to P7D, such as P1D or PT10M.".into());
                    }
                }
            }
        }
        let schema = self.event_delivery_schema.unwrap_or(match input {
            InputSchemaKind::CloudEventSchemaV1_0 => DeliverySchema::CloudEventSchemaV1_0,
            _ => DeliverySchema::EventGridSchema,
        });
        if !compatible(input, schema) {
            return Err(format!(
                "eventDeliverySchema {schema:?} cannot be used with a topic whose inputSchema is {input:?}."
            ));
        }
        let retry = self.retry_policy.unwrap_or_default();
        if !(1..=30).contains(&retry.max_delivery_attempts) {
            return Err("retryPolicy.maxDeliveryAttempts must be between 1 and 30.".into());
        }
        if !(1..=1440).contains(&retry.event_time_to_live_in_minutes) {
            return Err("retryPolicy.eventTimeToLiveInMinutes must be between 1 and 1440.".into());
        }
        let labels = self.labels.unwrap_or_default();
        if labels.len() > MAX_LABELS || labels.iter().any(|l| l.len() > 256) {
            return Err(format!(
                "At most {MAX_LABELS} labels of up to 256 characters are allowed."
            ));
        }
        if let Some(t) = &self.expiration_time_utc
            && chrono::DateTime::parse_from_rfc3339(t).is_err()
        {
            return Err(
                "expirationTimeUtc must be an RFC 3339 time, e.g. 2030-01-01T00:00:00Z.".into(),
            );
        }
        if let Some(dl) = &self.dead_letter_destination
            && !dl.is_object()
        {
            return Err("deadLetterDestination must be an object.".into());
        }
        Ok(SubscriptionProperties {
            destination: self.destination,
            delivery_configuration: self.delivery_configuration,
            filter,
            event_delivery_schema: schema,
            retry_policy: retry,
            dead_letter_destination: self.dead_letter_destination,
            expiration_time_utc: self.expiration_time_utc,
            labels,
            send_deletion_event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_iso_duration("P1D"), Some(86_400));
        assert_eq!(parse_iso_duration("PT10M"), Some(600));
        assert_eq!(parse_iso_duration("P1DT1H30S"), Some(90_030));
        for bad in ["", "P", "1D", "PT", "P1X", "PT5", "P0D"] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }

    fn input(v: Value) -> Result<SubscriptionProperties, String> {
        serde_json::from_value::<SubscriptionInput>(v)
            .map_err(|e| e.to_string())?
            .normalise(&InputSchemaKind::EventGridSchema)
    }

    #[test]
    fn validation() {
        let p =
            input(serde_json::json!({"deliveryConfiguration": {"deliveryMode": "Queue"}})).unwrap();
        assert!(p.is_queue());
        assert_eq!(p.queue().max_delivery_count, 10);
        assert!(input(serde_json::json!({})).is_err());
        assert!(input(serde_json::json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "ftp://x"}}})).is_err());
        assert!(input(serde_json::json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "https://x", "maxEventsPerBatch": 5001}}})).is_err());
        assert!(input(serde_json::json!({"deliveryConfiguration": {"deliveryMode": "Queue", "queue": {"maxDeliveryCount": 11}}})).is_err());
        assert!(input(serde_json::json!({"deliveryConfiguration": {"deliveryMode": "Queue"}, "retryPolicy": {"maxDeliveryAttempts": 31}})).is_err());
        assert!(input(serde_json::json!({"deliveryConfiguration": {"deliveryMode": "Queue"}, "eventDeliverySchema": "CustomInputSchema"})).is_err());
    }

    #[test]
    fn send_deletion_event() {
        let hook = serde_json::json!({"endpointType": "WebHook", "properties": {"endpointUrl": "https://x"}});
        let p = input(serde_json::json!({"destination": hook})).unwrap();
        assert!(!p.send_deletion_event);
        let stored = serde_json::to_value(&p).unwrap();
        assert!(stored.get("sendDeletionEvent").is_none(), "{stored}");
        // Stored before the property existed: off.
        let old: SubscriptionProperties = serde_json::from_value(stored).unwrap();
        assert!(!old.send_deletion_event);

        let p = input(serde_json::json!({"destination": hook, "sendDeletionEvent": true})).unwrap();
        assert!(p.send_deletion_event);
        assert_eq!(serde_json::to_value(&p).unwrap()["sendDeletionEvent"], true);

        let queue = serde_json::json!({"deliveryMode": "Queue"});
        let e =
            input(serde_json::json!({"deliveryConfiguration": queue, "sendDeletionEvent": true}))
                .unwrap_err();
        assert!(e.contains("sendDeletionEvent"), "{e}");
        assert!(
            input(serde_json::json!({"deliveryConfiguration": queue, "sendDeletionEvent": false}))
                .is_ok()
        );
    }
}
