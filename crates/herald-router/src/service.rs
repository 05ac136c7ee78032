//! Router operations: topics, publishing, subscriptions and pull delivery.
//! HTTP handlers in herald-server call these; nothing here knows HTTP.

use crate::auth::{self, AuthError, Credential};
use crate::filter::{EnvelopeKind, EventFilter};
use crate::schema::{self, DeliverySchema, InputSchemaKind, InputSchemaMapping, PublishError};
use crate::subscription::{SubscriptionInput, SubscriptionProperties, parse_iso_duration};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use herald_core::id::{SubscriptionId, TopicId};
use herald_core::seal::MasterKey;
use herald_core::{ArmScope, ProvisioningState};
use herald_storage::{
    ClaimOptions, DeadLetterRecord, LogRow, Matcher, NewLogEvent, SettleAction, SettleFailure,
    Storage, SubscriptionRecord, TopicRecord,
};
use rand::RngCore;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast};

/// What a router operation can refuse or fail with; each maps to one Event Grid error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// No topic by that name.
    #[error("Topic '{0}' was not found.")]
    TopicNotFound(String),
    /// No event subscription by that name on the topic.
    #[error("Event subscription '{0}' was not found.")]
    SubscriptionNotFound(String),
    /// The name is taken by another topic (a vault's system topic included).
    #[error("The name '{0}' is already used by a topic.")]
    TopicExists(String),
    /// The request breaks one of Event Grid's rules; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// The publisher's access key or SAS token was missing or not valid.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// The operation is not allowed on this topic or subscription (e.g. publishing to a system topic).
    #[error("{0}")]
    Forbidden(String),
    /// The published events were refused (bad shape, too large, wrong content type).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Storage or crypto failed; not the caller's fault.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<herald_storage::StorageError> for RouterError {
    fn from(e: herald_storage::StorageError) -> Self {
        Self::Internal(e.into())
    }
}

/// The result of a router operation.
pub type RouterResult<T> = Result<T, RouterError>;

/// A topic with its parsed settings and its keys opened.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    /// The topic as stored.
    pub record: TopicRecord,
    /// The schema publishers must use.
    pub input: InputSchemaKind,
    /// For `CustomEventSchema` topics, how input fields map onto the Event Grid envelope.
    pub mapping: Option<InputSchemaMapping>,
    keys: [String; 2],
}

impl TopicInfo {
    /// Whether this is a vault's system topic (events come from the vault, not publishers).
    pub fn is_system(&self) -> bool {
        self.record.kind == "system"
    }

    /// The topic name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The ARM id of one of its event subscriptions.
    pub fn subscription_arm_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.EventGrid/eventSubscriptions/{name}",
            self.record.arm_id
        )
    }
}

/// A subscription with its parsed properties.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The event subscription as stored.
    pub record: SubscriptionRecord,
    /// Its destination, filter, schema, retry policy and dead-letter settings.
    pub properties: SubscriptionProperties,
}

/// A deleted webhook subscription that owes its endpoint a SubscriptionDeletion
/// event (`sendDeletionEvent`), captured before the delete.
#[derive(Debug, Clone)]
pub struct DeletedSubscription {
    /// The topic the subscription belonged to.
    pub topic: Arc<TopicInfo>,
    /// The subscription as it was before the delete.
    pub subscription: Subscription,
    /// The active signing secrets; the delete removes them with the row.
    pub signing_secrets: Vec<String>,
}

/// One event handed to a pull receiver, in the wire shape of `:receive`.
#[derive(Debug, serde::Serialize)]
pub struct Received {
    /// The lock token and delivery count of this receive.
    #[serde(rename = "brokerProperties")]
    pub broker: BrokerProperties,
    /// Rendered text, so `data` keeps its exact bytes.
    pub event: Box<serde_json::value::RawValue>,
}

/// Broker state of a received event (`brokerProperties` on the wire).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerProperties {
    /// Token to acknowledge, release, reject or renew the lock with.
    pub lock_token: String,
    /// How many times the event has been handed out, this time included.
    pub delivery_count: i64,
}

/// Pull operations that settle locked events.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    /// Delivered: delete the event from the subscription.
    Acknowledge,
    /// Give the event back for redelivery after `delay_seconds`.
    Release {
        /// Seconds before the event can be received again (the API allows 0, 10, 60, 600 or 3600).
        delay_seconds: i64,
    },
    /// Dead-letter the event.
    Reject,
    /// Keep the lock for another lock duration.
    RenewLock,
}

/// How long a replaced signing secret keeps signing, so receivers can switch.
pub const SIGNING_OVERLAP_SECS: i64 = 24 * 3600;

/// Lock renewals are accepted for up to an hour after the event was locked.
const MAX_LOCK_HOLD_MS: i64 = 3_600_000;
/// Log events deleted per transaction, so pruning never holds the writer long.
const PRUNE_CHUNK: i64 = 1000;
/// Topic name → opened topic and when it was loaded.
type TopicCache = HashMap<String, (Arc<TopicInfo>, Instant)>;

const TOPIC_TTL: Duration = Duration::from_secs(5);

/// Whether a topic name is 3–50 letters, digits and hyphens.
pub fn valid_topic_name(name: &str) -> bool {
    (3..=50).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether an event subscription name is 3–64 letters, digits and hyphens.
pub fn valid_subscription_name(name: &str) -> bool {
    (3..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn parse_input(
    record: &TopicRecord,
) -> RouterResult<(InputSchemaKind, Option<InputSchemaMapping>)> {
    let input: InputSchemaKind = serde_json::from_value(Value::String(record.input_schema.clone()))
        .map_err(|e| anyhow::anyhow!("topic {} has unknown input schema: {e}", record.name))?;
    let mapping = record
        .input_mapping
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| anyhow::anyhow!("topic {} has a corrupt input mapping: {e}", record.name))?;
    Ok((input, mapping))
}

fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

fn key_aad(topic_id: &str, slot: u8) -> Vec<u8> {
    format!("topic-key/{topic_id}/{slot}").into_bytes()
}

/// The event router (Event Grid): topics and their keys, publishing into the
/// event log, event subscriptions with filters, pull delivery and dead letters.
#[derive(Clone)]
pub struct RouterService {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    scope: ArmScope,
    topics: Arc<Mutex<TopicCache>>,
    wakers: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Deletions the delivery service sends SubscriptionDeletion events for
    /// (this crate does not send HTTP).
    deletions: broadcast::Sender<DeletedSubscription>,
}

impl RouterService {
    /// A router over `storage`; topic keys are sealed under `master`.
    pub fn new(storage: Arc<dyn Storage>, master: MasterKey, scope: ArmScope) -> Self {
        Self {
            storage,
            master,
            scope,
            topics: Arc::default(),
            wakers: Arc::default(),
            deletions: broadcast::channel(256).0,
        }
    }

    /// Announces each deleted subscription that asked for a deletion event.
    pub fn deletions(&self) -> broadcast::Receiver<DeletedSubscription> {
        self.deletions.subscribe()
    }

    /// The ARM resource id of a custom topic.
    pub fn topic_arm_id(&self, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.EventGrid/topics/{name}",
            self.scope.subscription_id, self.scope.resource_group
        )
    }

    fn seal_key(&self, topic_id: &str, slot: u8, key: &str) -> Vec<u8> {
        self.master
            .seal_direct(key.as_bytes(), &key_aad(topic_id, slot))
    }

    fn open_key(&self, topic_id: &str, slot: u8, sealed: &[u8]) -> RouterResult<String> {
        if sealed.is_empty() {
            return Ok(String::new());
        }
        let plain = self
            .master
            .open_direct(sealed, &key_aad(topic_id, slot))
            .map_err(|e| anyhow::anyhow!("topic key does not open: {e}"))?;
        String::from_utf8(plain.to_vec()).map_err(|e| RouterError::Internal(e.into()))
    }

    /// Drops a cached topic (e.g. the system topic of a deleted vault).
    pub fn forget(&self, name: &str) {
        if let Ok(mut map) = self.topics.lock() {
            map.remove(name);
        }
    }

    // ---- topics ----

    /// Creates a custom topic with two fresh access keys.
    pub async fn create_topic(
        &self,
        name: &str,
        input: InputSchemaKind,
        mapping: Option<InputSchemaMapping>,
    ) -> RouterResult<Arc<TopicInfo>> {
        if !valid_topic_name(name) {
            return Err(RouterError::BadRequest(format!(
                "Invalid topic name '{name}': use 3-50 letters, digits and hyphens."
            )));
        }
        match (&input, &mapping) {
            (InputSchemaKind::CustomEventSchema, Some(m)) => {
                m.validate().map_err(RouterError::BadRequest)?
            }
            (InputSchemaKind::CustomEventSchema, None) => {}
            (_, Some(_)) => {
                return Err(RouterError::BadRequest(
                    "inputSchemaMapping is only allowed with inputSchema CustomEventSchema.".into(),
                ));
            }
            _ => {}
        }
        let id = TopicId::generate();
        let (k1, k2) = (new_key(), new_key());
        let record = TopicRecord {
            key1: self.seal_key(&id, 1, &k1),
            key2: self.seal_key(&id, 2, &k2),
            id,
            kind: "custom".into(),
            name: name.to_owned(),
            arm_id: self.topic_arm_id(name),
            created: Utc::now().timestamp(),
            input_schema: serde_json::to_value(&input)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            input_mapping: mapping
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| RouterError::Internal(e.into()))?,
        };
        if !self.storage.create_topic(&record).await? {
            return Err(RouterError::TopicExists(name.to_owned()));
        }
        tracing::info!(topic = %name, input_schema = %record.input_schema, "topic created");
        Ok(Arc::new(TopicInfo {
            record,
            input,
            mapping,
            keys: [k1, k2],
        }))
    }

    /// A topic by name, cached briefly because publish looks it up each time.
    pub async fn topic(&self, name: &str) -> RouterResult<Arc<TopicInfo>> {
        // No topic name holds NUL; text columns would refuse the lookup.
        if name.contains('\0') {
            return Err(RouterError::TopicNotFound(name.replace('\0', "")));
        }
        if let Ok(map) = self.topics.lock()
            && let Some((t, at)) = map.get(name)
            && at.elapsed() < TOPIC_TTL
        {
            return Ok(t.clone());
        }
        let record = self
            .storage
            .topic_by_name(name)
            .await?
            .ok_or_else(|| RouterError::TopicNotFound(name.to_owned()))?;
        let info = Arc::new(self.open_topic(record).await?);
        if let Ok(mut map) = self.topics.lock() {
            map.insert(name.to_owned(), (info.clone(), Instant::now()));
        }
        Ok(info)
    }

    async fn open_topic(&self, mut record: TopicRecord) -> RouterResult<TopicInfo> {
        // System topics are created by the vault without keys; give them
        // keys on first use so pull receivers can authenticate.
        if record.key1.is_empty() {
            let (k1, k2) = (new_key(), new_key());
            record.key1 = self.seal_key(&record.id, 1, &k1);
            record.key2 = self.seal_key(&record.id, 2, &k2);
            self.storage
                .set_topic_key(&record.id, 1, &record.key1)
                .await?;
            self.storage
                .set_topic_key(&record.id, 2, &record.key2)
                .await?;
        }
        let (input, mapping) = parse_input(&record)?;
        let keys = [
            self.open_key(&record.id, 1, &record.key1)?,
            self.open_key(&record.id, 2, &record.key2)?,
        ];
        Ok(TopicInfo {
            record,
            input,
            mapping,
            keys,
        })
    }

    /// Every topic, vault system topics included.
    pub async fn list_topics(&self) -> RouterResult<Vec<TopicRecord>> {
        Ok(self.storage.list_topics().await?)
    }

    /// Deletes a custom topic and its event subscriptions; system topics go with their vault.
    pub async fn delete_topic(&self, name: &str) -> RouterResult<()> {
        let topic = self.topic(name).await?;
        if topic.is_system() {
            return Err(RouterError::BadRequest(format!(
                "'{name}' is the system topic of vault '{name}'; delete the vault instead."
            )));
        }
        self.forget(name);
        if !self.storage.delete_topic(name).await? {
            return Err(RouterError::TopicNotFound(name.to_owned()));
        }
        tracing::info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// The topic's two access keys, `key1` and `key2`.
    pub async fn keys(&self, name: &str) -> RouterResult<[String; 2]> {
        Ok(self.topic(name).await?.keys.clone())
    }

    /// Replaces `key1` or `key2` with a fresh key; returns both keys.
    pub async fn regenerate_key(&self, name: &str, key_name: &str) -> RouterResult<[String; 2]> {
        let slot = match key_name {
            "key1" => 1,
            "key2" => 2,
            other => {
                return Err(RouterError::BadRequest(format!(
                    "keyName must be 'key1' or 'key2', got '{other}'."
                )));
            }
        };
        let topic = self.topic(name).await?;
        let key = new_key();
        self.storage
            .set_topic_key(
                &topic.record.id,
                slot,
                &self.seal_key(&topic.record.id, slot, &key),
            )
            .await?;
        self.forget(name);
        tracing::info!(topic = %name, key = key_name, "topic access key regenerated");
        self.keys(name).await
    }

    // ---- publishing ----

    /// Paths a SAS token for this topic may name.
    fn publish_paths(topic: &TopicInfo) -> Vec<String> {
        let n = topic.name();
        vec![
            format!("/topics/{n}/api/events"),
            format!("/topics/{n}:publish"),
            format!("/topics/{n}"),
            format!("//{}.", n.to_ascii_lowercase()),
        ]
    }

    /// Checks a publisher's access key or SAS token against the topic's keys.
    pub fn authorize(&self, topic: &TopicInfo, cred: Option<&Credential>) -> RouterResult<()> {
        let cred = cred.ok_or(AuthError::Missing)?;
        auth::verify(
            cred,
            [&topic.keys[0], &topic.keys[1]],
            &Self::publish_paths(topic),
            Utc::now(),
        )?;
        Ok(())
    }

    /// Woken whenever this node appends to the topic's log.
    pub fn waker(&self, topic_id: &str) -> Arc<Notify> {
        let mut map = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(topic_id.to_owned()).or_default().clone()
    }

    /// Parses and durably appends a publish; returns how many events.
    pub async fn publish(
        &self,
        topic: &TopicInfo,
        content_type: Option<&str>,
        ce_headers: &[(String, String)],
        body: &[u8],
    ) -> RouterResult<usize> {
        if topic.is_system() {
            return Err(RouterError::Forbidden(format!(
                "Topic '{}' is a system topic; only its vault publishes to it.",
                topic.name()
            )));
        }
        let events = schema::parse_publish(
            &topic.input,
            topic.mapping.as_ref(),
            content_type,
            ce_headers,
            body,
            &topic.record.arm_id,
            Utc::now(),
        )?;
        let n = events.len();
        if n == 0 {
            return Ok(0);
        }
        let rows = events
            .into_iter()
            .map(|e| NewLogEvent {
                event_id: e.id,
                event_type: e.event_type,
                subject: e.subject,
                body: e.body,
            })
            .collect();
        self.storage.append_events(&topic.record.id, rows).await?;
        metrics::counter!("herald_events_published_total", "topic" => topic.name().to_owned())
            .increment(n as u64);
        self.waker(&topic.record.id).notify_waiters();
        Ok(n)
    }

    // ---- subscriptions ----

    /// Records the outcome of a webhook handshake.
    pub async fn set_subscription_state(
        &self,
        sub: &mut Subscription,
        state: ProvisioningState,
        reason: Option<&str>,
    ) -> RouterResult<()> {
        self.storage
            .set_subscription_state(&sub.record.id, state, reason)
            .await?;
        sub.record.provisioning_state = state;
        sub.record.state_reason = reason.map(str::to_owned);
        tracing::info!(subscription = %sub.record.name, state = state.as_str(), reason = reason.unwrap_or(""), "event subscription state changed");
        Ok(())
    }

    /// Finds a subscription by id (the dispatcher's view).
    pub async fn subscription_by_id(
        &self,
        id: &str,
    ) -> RouterResult<Option<(Arc<TopicInfo>, Subscription)>> {
        for record in self.storage.all_subscriptions().await? {
            if record.id == id {
                let topics = self.storage.list_topics().await?;
                let Some(t) = topics.into_iter().find(|t| t.id == record.topic_id) else {
                    return Ok(None);
                };
                let topic = self.topic(&t.name).await?;
                return Ok(Some((topic, Self::parse_sub(record)?)));
            }
        }
        Ok(None)
    }

    /// Parses a stored subscription's properties.
    pub fn parse_sub(record: SubscriptionRecord) -> RouterResult<Subscription> {
        let properties = serde_json::from_str(&record.config).map_err(|e| {
            anyhow::anyhow!("subscription {} has corrupt properties: {e}", record.name)
        })?;
        Ok(Subscription { record, properties })
    }

    /// Creates or replaces an event subscription; the flag says whether it was created.
    pub async fn put_subscription(
        &self,
        topic_name: &str,
        name: &str,
        input: SubscriptionInput,
    ) -> RouterResult<(Subscription, bool)> {
        if !valid_subscription_name(name) {
            return Err(RouterError::BadRequest(format!(
                "Invalid event subscription name '{name}': use 3-64 letters, digits and hyphens."
            )));
        }
        let topic = self.topic(topic_name).await?;
        let signing_secret = input.signing_secret.clone();
        let properties = input
            .normalise(&topic.input)
            .map_err(RouterError::BadRequest)?;
        let existing = self.storage.subscription(&topic.record.id, name).await?;
        if existing.is_none()
            && self
                .storage
                .list_subscriptions(&topic.record.id)
                .await?
                .len()
                >= 500
        {
            return Err(RouterError::BadRequest(
                "A topic can have at most 500 event subscriptions.".into(),
            ));
        }
        let now = Utc::now().timestamp();
        let record = SubscriptionRecord {
            id: existing
                .as_ref()
                .map(|e| e.id.clone())
                .unwrap_or_else(SubscriptionId::generate),
            topic_id: topic.record.id.clone(),
            name: name.to_owned(),
            config: serde_json::to_string(&properties)
                .map_err(|e| RouterError::Internal(e.into()))?,
            // Webhooks must prove ownership first (herald-delivery runs the
            // handshake); pull queues need no handshake.
            provisioning_state: if properties.is_queue() {
                ProvisioningState::Succeeded
            } else {
                ProvisioningState::Creating
            },
            state_reason: None,
            created: existing.as_ref().map_or(now, |e| e.created),
            updated: now,
        };
        let created = self.storage.put_subscription(&record).await?;
        if let Some(secret) = signing_secret {
            self.store_signing_secret(&record.id, &secret, SIGNING_OVERLAP_SECS)
                .await?;
        }
        tracing::info!(topic = %topic_name, subscription = %name, created,
            mode = if properties.is_queue() { "queue" } else { "webhook" }, "event subscription saved");
        Ok((Subscription { record, properties }, created))
    }

    /// One event subscription, with its topic.
    pub async fn subscription(
        &self,
        topic_name: &str,
        name: &str,
    ) -> RouterResult<(Arc<TopicInfo>, Subscription)> {
        let topic = self.topic(topic_name).await?;
        if name.contains('\0') {
            return Err(RouterError::SubscriptionNotFound(name.replace('\0', "")));
        }
        let record = self
            .storage
            .subscription(&topic.record.id, name)
            .await?
            .ok_or_else(|| RouterError::SubscriptionNotFound(name.to_owned()))?;
        Ok((topic, Self::parse_sub(record)?))
    }

    /// Every event subscription on a topic.
    pub async fn list_subscriptions(&self, topic_name: &str) -> RouterResult<Vec<Subscription>> {
        let topic = self.topic(topic_name).await?;
        self.storage
            .list_subscriptions(&topic.record.id)
            .await?
            .into_iter()
            .map(Self::parse_sub)
            .collect()
    }

    /// Deletes an event subscription (announcing it on [`RouterService::deletions`]
    /// when it asked for a SubscriptionDeletion event).
    pub async fn delete_subscription(&self, topic_name: &str, name: &str) -> RouterResult<()> {
        let topic = self.topic(topic_name).await?;
        let notice = match self.subscription(topic_name, name).await {
            Ok((_, sub)) => self.deletion_notice(&topic, sub).await,
            Err(RouterError::SubscriptionNotFound(_)) => None,
            // A corrupt subscription can still be deleted, without its event.
            Err(e) => {
                tracing::error!(error = %e, subscription = %name,
                    "cannot read the subscription; no deletion event will be sent");
                None
            }
        };
        if !self
            .storage
            .delete_subscription(&topic.record.id, name)
            .await?
        {
            return Err(RouterError::SubscriptionNotFound(name.to_owned()));
        }
        tracing::info!(topic = %topic_name, subscription = %name, "event subscription deleted");
        self.announce(notice);
        Ok(())
    }

    /// Whether deleting `sub` owes its endpoint a SubscriptionDeletion event:
    /// a validated webhook that asked for one.
    fn wants_deletion_event(sub: &Subscription) -> bool {
        sub.properties.send_deletion_event
            && !sub.properties.is_queue()
            && sub.record.provisioning_state == ProvisioningState::Succeeded
    }

    /// What the deletion event needs, read before the delete. Best effort: a
    /// failure here costs the event, never the delete.
    async fn deletion_notice(
        &self,
        topic: &Arc<TopicInfo>,
        sub: Subscription,
    ) -> Option<DeletedSubscription> {
        if !Self::wants_deletion_event(&sub) {
            return None;
        }
        match self.signing_secrets(&sub.record.id).await {
            Ok(signing_secrets) => Some(DeletedSubscription {
                topic: topic.clone(),
                subscription: sub,
                signing_secrets,
            }),
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.record.name,
                    "cannot read signing secrets; no deletion event will be sent");
                None
            }
        }
    }

    fn announce(&self, notice: Option<DeletedSubscription>) {
        if let Some(n) = notice {
            // No listener (no delivery service in this process): nobody sends it.
            let _ = self.deletions.send(n);
        }
    }

    /// A filter as a storage matcher. Basic filters read only the indexed
    /// columns; the body is parsed only when advanced filters need it.
    pub fn matcher(filter: EventFilter, kind: EnvelopeKind, expires: Option<i64>) -> Matcher {
        let trivial = filter == EventFilter::default();
        let basic_only = filter.advanced_filters.is_empty();
        Arc::new(move |row: &LogRow| {
            if expires.is_some_and(|e| row.published_at >= e) {
                return false;
            }
            if trivial {
                return true;
            }
            if basic_only {
                let view = json!({"eventType": row.event_type, "type": row.event_type, "subject": row.subject});
                return filter.matches(&view, kind);
            }
            serde_json::from_str::<Value>(&row.body).is_ok_and(|v| filter.matches(&v, kind))
        })
    }

    fn queue_sub(topic_name: &str, sub: &Subscription) -> RouterResult<()> {
        if sub.properties.is_queue() {
            Ok(())
        } else {
            Err(RouterError::BadRequest(format!(
                "Event subscription '{}' on topic '{topic_name}' delivers to a webhook; only Queue subscriptions support pull.",
                sub.record.name
            )))
        }
    }

    /// Long-polls for up to `max_events`, waiting up to `max_wait`.
    pub async fn receive(
        &self,
        topic_name: &str,
        sub_name: &str,
        max_events: i64,
        max_wait: Duration,
    ) -> RouterResult<Vec<Received>> {
        let (topic, sub) = self.subscription(topic_name, sub_name).await?;
        Self::queue_sub(topic_name, &sub)?;
        let q = sub.properties.queue();
        let ttl_ms = parse_iso_duration(&q.event_time_to_live).unwrap_or(86_400) * 1000;
        let matcher = Self::matcher(
            sub.properties.filter.clone(),
            schema::stored_envelope(&topic.input),
            sub.properties.expires_at().map(|t| t.timestamp()),
        );
        let waker = self.waker(&topic.record.id);
        let deadline = Instant::now() + max_wait;
        loop {
            // Register interest before looking, so a publish in between still wakes us.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let opts = ClaimOptions {
                max: max_events,
                now_ms: Utc::now().timestamp_millis(),
                lock_ms: q.receive_lock_duration_in_seconds * 1000,
                dead_letter: crate::dead_letter::claim_rule(q.max_delivery_count, ttl_ms),
                scan_limit: 1000,
            };
            let claimed = self
                .storage
                .claim(&sub.record.id, &topic.record.id, opts, matcher.clone())
                .await?;
            let now = Instant::now();
            if !claimed.is_empty() || now >= deadline {
                let mut out = Vec::with_capacity(claimed.len());
                for c in claimed {
                    let text = schema::render_raw(
                        &c.row.body,
                        &topic.input,
                        DeliverySchema::CloudEventSchemaV1_0,
                        false,
                    )
                    .map_err(|e| {
                        anyhow::anyhow!("stored event {} does not render: {e}", c.row.seq)
                    })?;
                    let event = serde_json::value::RawValue::from_string(text).map_err(|e| {
                        anyhow::anyhow!("stored event {} renders invalid JSON: {e}", c.row.seq)
                    })?;
                    out.push(Received {
                        broker: BrokerProperties {
                            lock_token: c.lock_token,
                            delivery_count: c.delivery_count,
                        },
                        event,
                    });
                }
                metrics::counter!("herald_events_received_total", "topic" => topic_name.to_owned())
                    .increment(out.len() as u64);
                return Ok(out);
            }
            // Other nodes publish without waking us: poll as a fallback.
            let pause = (deadline - now).min(Duration::from_millis(250));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Acknowledges, releases, rejects or renews locked events of a Queue
    /// subscription; one result per lock token.
    pub async fn settle(
        &self,
        topic_name: &str,
        sub_name: &str,
        action: Settle,
        tokens: Vec<String>,
    ) -> RouterResult<Vec<Result<(), SettleFailure>>> {
        let (_, sub) = self.subscription(topic_name, sub_name).await?;
        Self::queue_sub(topic_name, &sub)?;
        let q = sub.properties.queue();
        let action = match action {
            Settle::Acknowledge => SettleAction::Acknowledge,
            Settle::Release { delay_seconds } => SettleAction::Release {
                delay_ms: delay_seconds * 1000,
            },
            Settle::Reject => SettleAction::Reject,
            Settle::RenewLock => SettleAction::RenewLock {
                lock_ms: q.receive_lock_duration_in_seconds * 1000,
                max_hold_ms: MAX_LOCK_HOLD_MS,
            },
        };
        Ok(self
            .storage
            .settle(
                &sub.record.id,
                tokens,
                action,
                Utc::now().timestamp_millis(),
            )
            .await?)
    }

    /// A page of a subscription's dead-lettered events, after the id `after_id`.
    pub async fn dead_letters(
        &self,
        topic_name: &str,
        sub_name: &str,
        after_id: i64,
        limit: i64,
    ) -> RouterResult<(Arc<TopicInfo>, Subscription, Vec<DeadLetterRecord>)> {
        let (topic, sub) = self.subscription(topic_name, sub_name).await?;
        let rows = self
            .storage
            .dead_letters(&sub.record.id, after_id, limit)
            .await?;
        Ok((topic, sub, rows))
    }

    async fn store_signing_secret(
        &self,
        sub_id: &str,
        secret: &str,
        overlap_secs: i64,
    ) -> RouterResult<()> {
        let now = Utc::now().timestamp();
        let sealed = self
            .master
            .seal_direct(secret.as_bytes(), format!("signing/{sub_id}").as_bytes());
        self.storage
            .add_signing_secret(sub_id, &sealed, now, now + overlap_secs.max(0))
            .await?;
        Ok(())
    }

    /// A new Standard Webhooks secret, returned once; the previous ones keep
    /// signing for `overlap_secs` so receivers can switch without gaps.
    pub async fn rotate_signing_secret(
        &self,
        sub: &Subscription,
        overlap_secs: i64,
    ) -> RouterResult<String> {
        if sub.properties.is_queue() {
            return Err(RouterError::BadRequest(
                "Signing secrets apply to webhook subscriptions only.".into(),
            ));
        }
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secret = format!("whsec_{}", STANDARD.encode(bytes));
        self.store_signing_secret(&sub.record.id, &secret, overlap_secs)
            .await?;
        tracing::info!(subscription = %sub.record.name, overlap_secs, "signing secret rotated");
        Ok(secret)
    }

    /// The active signing secrets of a subscription, newest first.
    pub async fn signing_secrets(&self, sub_id: &str) -> RouterResult<Vec<String>> {
        let aad = format!("signing/{sub_id}");
        let mut out = Vec::new();
        for (_, sealed) in self
            .storage
            .signing_secrets(sub_id, Utc::now().timestamp())
            .await?
        {
            let plain = self
                .master
                .open_direct(&sealed, aad.as_bytes())
                .map_err(|e| anyhow::anyhow!("signing secret does not open: {e}"))?;
            out.push(String::from_utf8_lossy(&plain).into_owned());
        }
        Ok(out)
    }

    /// Puts the dead-lettered events `ids` back on the subscription's queue
    /// for delivery; returns how many were replayed.
    pub async fn replay_dead_letters(
        &self,
        sub: &Subscription,
        ids: Vec<i64>,
    ) -> RouterResult<u64> {
        Ok(self
            .storage
            .replay_dead_letters(&sub.record.id, ids, Utc::now().timestamp_millis())
            .await?)
    }

    /// A page of the delivery log: push attempts, optionally only those that
    /// carried `event_id`.
    pub async fn attempts(
        &self,
        sub: &Subscription,
        event_id: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> RouterResult<Vec<(i64, herald_storage::AttemptRecord)>> {
        Ok(self
            .storage
            .attempts(&sub.record.id, event_id, after_id, limit)
            .await?)
    }

    /// Durable counters of a topic or subscription id.
    pub async fn counters(&self, scope_id: &str) -> RouterResult<HashMap<String, i64>> {
        Ok(self.storage.counters(scope_id).await?.into_iter().collect())
    }

    /// Durable counters like the portal's Events tab.
    pub async fn topic_metrics(&self, topic: &TopicInfo) -> RouterResult<HashMap<String, i64>> {
        Ok(self
            .storage
            .counters(&topic.record.id)
            .await?
            .into_iter()
            .collect())
    }

    /// The subscription's counters (matched, delivered, dead-lettered, backlog...).
    pub async fn subscription_metrics(
        &self,
        sub: &Subscription,
    ) -> RouterResult<HashMap<String, i64>> {
        let mut m: HashMap<String, i64> = self
            .storage
            .counters(&sub.record.id)
            .await?
            .into_iter()
            .collect();
        m.insert(
            "backlog".into(),
            self.storage.backlog(&sub.record.id).await?,
        );
        Ok(m)
    }

    /// Deletes log events every subscription of their topic is done with,
    /// and any older than `max_age` (the retention); returns how many.
    pub async fn prune_event_log(&self, max_age: Duration) -> RouterResult<u64> {
        let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .storage
            .prune_event_log(Utc::now().timestamp_millis(), max_age_ms, PRUNE_CHUNK)
            .await?)
    }

    /// Removes subscriptions whose expirationTimeUtc passed, as Event Grid does.
    pub async fn sweep_expired_subscriptions(&self) -> RouterResult<usize> {
        let now = Utc::now();
        let mut removed = 0;
        for topic in self.storage.list_topics().await? {
            for record in self.storage.list_subscriptions(&topic.id).await? {
                let sub = Self::parse_sub(record)?;
                if sub.properties.expires_at().is_none_or(|t| t > now) {
                    continue;
                }
                let notice = if Self::wants_deletion_event(&sub) {
                    match self.topic(&topic.name).await {
                        Ok(info) => self.deletion_notice(&info, sub.clone()).await,
                        Err(e) => {
                            tracing::error!(error = %e, topic = %topic.name,
                                "cannot open the topic; no deletion event will be sent");
                            None
                        }
                    }
                } else {
                    None
                };
                if self
                    .storage
                    .delete_subscription(&topic.id, &sub.record.name)
                    .await?
                {
                    removed += 1;
                    tracing::info!(topic = %topic.name, subscription = %sub.record.name,
                        "event subscription expired and was deleted");
                    self.announce(notice);
                }
            }
        }
        Ok(removed)
    }
}
