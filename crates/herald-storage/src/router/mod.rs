//! The router's part of the storage seam.

pub(crate) mod store;

use crate::Result;
use async_trait::async_trait;
use herald_core::ProvisioningState;
pub use herald_core::id::{SubscriptionId, TopicId};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub id: TopicId,
    /// `system` (a vault's lifecycle events) or `custom`.
    pub kind: String,
    pub name: String,
    pub arm_id: String,
    pub created: i64,
    /// Azure inputSchema name.
    pub input_schema: String,
    /// inputSchemaMapping JSON, for CustomEventSchema topics.
    pub input_mapping: Option<String>,
    /// Access keys sealed with the master key (empty for system topics).
    pub key1: Vec<u8>,
    pub key2: Vec<u8>,
}

/// Stored access keys are NULL for system topics: they read as empty.
impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for TopicRecord
where
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(r: &'r R) -> std::result::Result<Self, sqlx::Error> {
        Ok(TopicRecord {
            id: TopicId::from(r.try_get::<String, _>("id")?),
            kind: r.try_get("kind")?,
            name: r.try_get("name")?,
            arm_id: r.try_get("arm_id")?,
            created: r.try_get("created")?,
            input_schema: r.try_get("input_schema")?,
            input_mapping: r.try_get("input_mapping")?,
            key1: r.try_get::<Option<Vec<u8>>, _>("key1")?.unwrap_or_default(),
            key2: r.try_get::<Option<Vec<u8>>, _>("key2")?.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRecord {
    #[sqlx(try_from = "String")]
    pub id: SubscriptionId,
    #[sqlx(try_from = "String")]
    pub topic_id: TopicId,
    pub name: String,
    /// The subscription's properties as Azure-named JSON.
    pub config: String,
    #[sqlx(try_from = "String")]
    pub provisioning_state: ProvisioningState,
    pub state_reason: Option<String>,
    pub created: i64,
    pub updated: i64,
}

/// One event to append to a topic log.
#[derive(Debug, Clone)]
pub struct NewLogEvent {
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub body: String,
}

/// A log row as filters and deliveries see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    pub seq: i64,
    /// The event's own id (as published).
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub body: String,
    /// Unix seconds when the event was accepted.
    #[sqlx(rename = "created")]
    pub published_at: i64,
}

/// Decides whether a log row belongs to a subscription.
pub type Matcher = Arc<dyn Fn(&LogRow) -> bool + Send + Sync>;

/// Decides whether a message a claim is about to hand out is dead-lettered
/// instead, and why (the reason the dead letter records). It is given the
/// log row, how often the message was handed out before (0 for an event
/// fresh from the log) and the claim's time in unix ms. The rule is the
/// router's (Event Grid's time to live and delivery count); the store runs
/// it inside the claim's transaction.
pub type DeadLetterRule = Arc<dyn Fn(&LogRow, i64, i64) -> Option<&'static str> + Send + Sync>;

/// How one claim of a subscription's queue behaves. Times are unix ms.
#[derive(Clone)]
pub struct ClaimOptions {
    pub max: i64,
    pub now_ms: i64,
    pub lock_ms: i64,
    /// Which messages are dead-lettered instead of handed out.
    pub dead_letter: DeadLetterRule,
    /// Log rows inspected per claim while looking for matches.
    pub scan_limit: i64,
}

impl std::fmt::Debug for ClaimOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimOptions")
            .field("max", &self.max)
            .field("now_ms", &self.now_ms)
            .field("lock_ms", &self.lock_ms)
            .field("scan_limit", &self.scan_limit)
            .finish_non_exhaustive()
    }
}

/// A message locked for a receiver.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub row: LogRow,
    pub lock_token: String,
    pub delivery_count: i64,
    /// The outcome and HTTP status of the previous push attempt, if any.
    pub last_outcome: Option<String>,
    pub last_status: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleAction {
    Acknowledge,
    /// Make the message available again after a delay.
    Release {
        delay_ms: i64,
    },
    Reject,
    /// Extend the lock, unless the first lock is older than `max_hold_ms`.
    RenewLock {
        lock_ms: i64,
        max_hold_ms: i64,
    },
    /// A failed push attempt: retry after the delay.
    Retry {
        delay_ms: i64,
        outcome: &'static str,
        status: Option<u16>,
    },
    /// A push that must not be retried, or that used up its attempts.
    DeadLetter {
        reason: &'static str,
        outcome: &'static str,
        status: Option<u16>,
        /// False when the claim sent nothing (a retry that expired while it
        /// waited): the claim's count is then one past the attempts made.
        attempted: bool,
    },
}

/// The attempts a dead letter records: a claim counts one delivery, which
/// was not made when nothing was sent.
pub(crate) fn attempts_made(claimed: i64, attempted: bool) -> i64 {
    if attempted {
        claimed
    } else {
        (claimed - 1).max(0)
    }
}

/// New log rows a push worker may deliver, read without locking: the
/// cursor only moves when the worker commits what became of them.
#[derive(Debug, Clone)]
pub struct FreshWindow {
    /// The cursor the rows were read from; the commit requires it unchanged.
    pub cursor: i64,
    /// Where the cursor goes once the window is committed.
    pub next_cursor: i64,
    pub rows: Vec<LogRow>,
    pub matched: i64,
    pub unmatched: i64,
}

/// What became of one fresh event that was not delivered.
#[derive(Debug, Clone)]
pub enum FreshOutcome {
    /// Keep it for another attempt at `retry_at_ms`.
    Retry {
        seq: i64,
        retry_at_ms: i64,
        outcome: &'static str,
        status: Option<u16>,
    },
    DeadLetter {
        row: LogRow,
        reason: &'static str,
        outcome: &'static str,
        status: Option<u16>,
        /// False for an event that expired before it was ever sent.
        attempted: bool,
    },
}

/// One delivery attempt of one event, for the delivery log.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub subscription_id: SubscriptionId,
    /// The first event of the request; a batch is one attempt.
    pub seq: i64,
    /// Every event the request carried, in order; never empty.
    pub event_ids: Vec<String>,
    pub attempt: i64,
    pub at_ms: i64,
    pub status: Option<u16>,
    pub latency_ms: i64,
    pub outcome: String,
    /// A bounded snippet of the response body.
    pub response: Option<String>,
}

/// A pending manual validation of a webhook subscription.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingValidation {
    #[sqlx(try_from = "String")]
    pub subscription_id: SubscriptionId,
    pub code: String,
    pub expires_at: i64,
}

/// Why one lock token could not be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleFailure {
    /// Unknown, already settled, or expired.
    TokenLost,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetterRecord {
    pub id: i64,
    pub seq: i64,
    pub body: String,
    pub reason: String,
    pub delivery_count: i64,
    pub last_outcome: Option<String>,
    pub published_at: i64,
    pub dead_lettered_at: i64,
}

#[async_trait]
pub trait RouterStore: Send + Sync {
    async fn create_topic(&self, topic: &TopicRecord) -> Result<bool>;
    async fn topic_by_name(&self, name: &str) -> Result<Option<TopicRecord>>;
    async fn list_topics(&self) -> Result<Vec<TopicRecord>>;
    /// Deletes a custom topic with its subscriptions and log.
    async fn delete_topic(&self, name: &str) -> Result<bool>;
    async fn set_topic_key(&self, topic_id: &str, which: u8, sealed: &[u8]) -> Result<bool>;

    /// Appends events in order; returns the last sequence number.
    async fn append_events(&self, topic_id: &str, events: Vec<NewLogEvent>) -> Result<i64>;
    /// The newest sequence number of a topic (0 when empty).
    async fn head_seq(&self, topic_id: &str) -> Result<i64>;

    /// Creates (cursor at the log's head: only later events are seen) or
    /// replaces a subscription's properties. Returns whether it was created.
    async fn put_subscription(&self, sub: &SubscriptionRecord) -> Result<bool>;
    async fn subscription(&self, topic_id: &str, name: &str) -> Result<Option<SubscriptionRecord>>;
    async fn list_subscriptions(&self, topic_id: &str) -> Result<Vec<SubscriptionRecord>>;
    async fn delete_subscription(&self, topic_id: &str, name: &str) -> Result<bool>;
    async fn set_subscription_state(
        &self,
        id: &str,
        state: ProvisioningState,
        reason: Option<&str>,
    ) -> Result<()>;

    /// Locks up to `max` messages: due in-flight ones first, then new
    /// matching log rows past the cursor. Messages past their delivery count
    /// or TTL are dead-lettered on the way.
    async fn claim(
        &self,
        subscription_id: &str,
        topic_id: &str,
        opts: ClaimOptions,
        matcher: Matcher,
    ) -> Result<Vec<ClaimedMessage>>;
    /// Settles locked messages by token; one result per token, in order.
    async fn settle(
        &self,
        subscription_id: &str,
        tokens: Vec<String>,
        action: SettleAction,
        now_ms: i64,
    ) -> Result<Vec<Result<(), SettleFailure>>>;
    async fn dead_letters(
        &self,
        subscription_id: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetterRecord>>;
    /// Events not yet handed out plus those in flight.
    async fn backlog(&self, subscription_id: &str) -> Result<i64>;
    /// Durable counters of one scope (a topic or subscription id).
    async fn counters(&self, scope: &str) -> Result<Vec<(String, i64)>>;

    /// Reads up to `max` matching rows past a subscription's cursor, or past
    /// `from` when the caller already sent events beyond the stored cursor.
    async fn peek_fresh(
        &self,
        subscription_id: &str,
        topic_id: &str,
        from: Option<i64>,
        max: i64,
        scan_limit: i64,
        matcher: Matcher,
    ) -> Result<Option<FreshWindow>>;
    /// Moves the cursor past a delivered window and records what failed, in
    /// one transaction. `false` (nothing written) if the cursor moved meanwhile.
    async fn commit_fresh(
        &self,
        subscription_id: &str,
        window: (i64, i64, i64, i64),
        delivered: i64,
        outcomes: Vec<FreshOutcome>,
        attempts: Vec<AttemptRecord>,
        now_ms: i64,
    ) -> Result<bool>;
    /// Every subscription of every topic (the dispatcher's work list).
    async fn all_subscriptions(&self) -> Result<Vec<SubscriptionRecord>>;
    /// When the next in-flight message of a subscription is due (unix ms).
    async fn next_due(&self, subscription_id: &str) -> Result<Option<i64>>;
    async fn record_attempts(&self, attempts: Vec<AttemptRecord>) -> Result<()>;
    /// The delivery log after `after_id`, optionally only the requests
    /// that carried one event.
    async fn attempts(
        &self,
        subscription_id: &str,
        event_id: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, AttemptRecord)>>;
    /// Drops delivery-log rows older than `before_ms`.
    async fn prune_attempts(&self, before_ms: i64) -> Result<u64>;
    /// Deletes log events no subscription needs any more: below every
    /// cursor of their topic (all of them on a topic without subscriptions)
    /// and neither in flight nor dead-lettered. Events older than
    /// `max_age_ms` go whatever refers to them, with their in-flight
    /// messages. At most `limit` events per transaction; returns how many.
    async fn prune_event_log(&self, now_ms: i64, max_age_ms: i64, limit: i64) -> Result<u64>;
    async fn put_validation(
        &self,
        subscription_id: &str,
        code: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<()>;
    /// Completes a pending manual validation found by its token hash.
    async fn take_validation(&self, token_hash: &str) -> Result<Option<PendingValidation>>;
    /// Pending validations whose window closed (to mark them Failed).
    async fn expired_validations(&self, now: i64) -> Result<Vec<PendingValidation>>;
    /// Adds a signing secret; secrets already active retire at `retire_others_at`.
    async fn add_signing_secret(
        &self,
        subscription_id: &str,
        sealed: &[u8],
        now: i64,
        retire_others_at: i64,
    ) -> Result<i64>;
    /// Signing secrets still active at `now` (id, sealed), newest first.
    async fn signing_secrets(&self, subscription_id: &str, now: i64)
    -> Result<Vec<(i64, Vec<u8>)>>;
    /// Puts dead-lettered events back on the subscription's queue.
    async fn replay_dead_letters(
        &self,
        subscription_id: &str,
        ids: Vec<i64>,
        now_ms: i64,
    ) -> Result<u64>;
}

/// Lock tokens are opaque to clients but carry the message's sequence so
/// settling finds the row directly; the random part makes each unique.
pub fn lock_token(seq: i64) -> String {
    use base64::Engine;
    let nonce: u64 = rand::random();
    base64::engine::general_purpose::STANDARD.encode(format!("{seq}.{nonce:016x}"))
}

pub fn lock_token_seq(token: &str) -> Option<i64> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    text.split_once('.')?.0.parse().ok()
}

impl AttemptRecord {
    /// The events after the first, as stored in `more_event_ids`.
    pub(crate) fn more_event_ids(&self) -> Option<String> {
        (self.event_ids.len() > 1)
            .then(|| serde_json::to_string(&self.event_ids[1..]).unwrap_or_default())
    }

    /// Rebuilds the id list from the stored columns.
    pub(crate) fn stored_event_ids(first: String, more: Option<String>) -> Vec<String> {
        let mut ids = vec![first];
        if let Some(more) = more {
            ids.extend(serde_json::from_str::<Vec<String>>(&more).unwrap_or_default());
        }
        ids
    }

    /// What `more_event_ids` contains when it lists `id`: its JSON string.
    pub(crate) fn needle(id: &str) -> String {
        serde_json::to_string(id).unwrap_or_default()
    }
}
