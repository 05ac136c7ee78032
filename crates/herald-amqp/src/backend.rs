//! The port this crate needs from the Hubs domain.
//!
//! The AMQP edge never sees keys, never stores events and never decides
//! placement: it turns frames into calls on [`HubsBackend`] and the answers
//! back into frames. The composition root implements the trait over the real
//! hubs domain and storage; the crate's tests implement it in memory.
//!
//! Namespace hosts passed to the backend are lower-case and carry no port
//! (`"ns1.example.net"`); hub, consumer-group and partition names are passed
//! as the client spelled them.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::position::EventPosition;

/// Rights a SAS policy grants, as Event Hubs names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// `Manage` (implies Send and Listen).
    pub manage: bool,
    /// `Send`.
    pub send: bool,
    /// `Listen`.
    pub listen: bool,
}

impl Rights {
    /// Send and Listen, no Manage.
    pub const SEND_LISTEN: Rights = Rights {
        manage: false,
        send: true,
        listen: true,
    };
    /// Send only.
    pub const SEND: Rights = Rights {
        manage: false,
        send: true,
        listen: false,
    };
    /// Listen only.
    pub const LISTEN: Rights = Rights {
        manage: false,
        send: false,
        listen: true,
    };
    /// Manage, Send and Listen.
    pub const ALL: Rights = Rights {
        manage: true,
        send: true,
        listen: true,
    };

    /// Whether these rights allow publishing.
    pub fn can_send(&self) -> bool {
        self.send || self.manage
    }
    /// Whether these rights allow reading.
    pub fn can_listen(&self) -> bool {
        self.listen || self.manage
    }
    /// Whether any right at all is present.
    pub fn any(&self) -> bool {
        self.manage || self.send || self.listen
    }
    /// Union of two sets of rights.
    pub fn union(self, other: Rights) -> Rights {
        Rights {
            manage: self.manage || other.manage,
            send: self.send || other.send,
            listen: self.listen || other.listen,
        }
    }
}

/// What a verified token (or SASL PLAIN credential) allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Rights of the policy that signed the token.
    pub rights: Rights,
    /// When the grant stops being valid (the token's `se`).
    pub expires_at: SystemTime,
    /// The resource the grant covers and everything under it, e.g.
    /// `sb://ns1.example.net/hub1` or `sb://ns1.example.net` (scheme, case,
    /// port and trailing slash are normalised by the edge before comparing).
    pub resource: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, unknown key name, malformed token, wrong namespace.
    #[error("{0}")]
    Unauthorized(String),
    /// `se` is in the past.
    #[error("the token has expired")]
    Expired,
    /// The backend could not answer.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `com.microsoft:eventhub` management answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubProperties {
    /// Hub name as stored.
    pub name: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Partition ids in order (`"0"`, `"1"`, ...).
    pub partition_ids: Vec<String>,
}

/// `com.microsoft:partition` management answer (A9.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProperties {
    /// Hub name.
    pub hub: String,
    /// Partition id.
    pub partition: String,
    /// Oldest retained sequence number (`-1` when empty).
    pub begin_sequence_number: i64,
    /// Newest sequence number (`-1` when empty).
    pub last_enqueued_sequence_number: i64,
    /// Offset text of the newest event (`"-1"` when empty).
    pub last_enqueued_offset: String,
    /// Enqueued time of the newest event, ms (0 when empty).
    pub last_enqueued_time_ms: i64,
    /// Whether the partition holds no retained event.
    pub is_empty: bool,
}

/// A value of an application property (what Kafka headers and REST user
/// properties can also carry).
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    /// AMQP string (also used for symbols and chars).
    String(String),
    /// AMQP long (also used for the other integer widths except int).
    Long(i64),
    /// AMQP int.
    Int(i32),
    /// AMQP double (also used for float).
    Double(f64),
    /// AMQP boolean.
    Bool(bool),
    /// AMQP binary.
    Binary(Bytes),
    /// AMQP timestamp, ms since the Unix epoch.
    Timestamp(i64),
    /// AMQP uuid.
    Uuid(uuid::Uuid),
    /// AMQP null.
    Null,
}

/// An event as a publisher sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// The payload: the event's `data` section(s) concatenated (for an
    /// amqp-value or amqp-sequence body: that section as encoded).
    pub body: Bytes,
    /// The partition key the event was published with.
    pub partition_key: Option<String>,
    /// The application properties, in the sender's order.
    pub properties: Vec<(String, PropertyValue)>,
    /// For events that arrived over AMQP: the complete encoded message as the
    /// sender built it (header, message-annotations, properties,
    /// application-properties, body, footer; delivery-annotations removed).
    /// A consumer is sent exactly these sections plus Herald's annotations.
    /// `None` for events from REST or Kafka: the edge then builds the message
    /// from `body` and `properties`. Store it opaquely.
    pub amqp: Option<Bytes>,
}

/// An event read back from a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundEvent {
    /// What was published.
    pub event: InboundEvent,
    /// Dense from 0 per partition.
    pub sequence_number: i64,
    /// Service time at append, ms since the Unix epoch.
    pub enqueued_time_ms: i64,
}

/// Where a publisher wants its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionTarget {
    /// The service picks (round robin).
    Any,
    /// A named partition (link address `.../Partitions/<id>`).
    Partition(String),
    /// Hash of this key (A6).
    Key(String),
}

/// Result of a durable append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Partition the batch went to.
    pub partition: String,
    /// Sequence number of the first event of the batch.
    pub first_sequence_number: i64,
    /// Sequence number of the last event of the batch.
    pub last_sequence_number: i64,
}

/// Why an append failed (nothing was stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Unknown namespace, hub or partition; `entity` is e.g. `sb://ns/hub`.
    #[error("entity not found: {entity}")]
    NotFound {
        /// The missing entity.
        entity: String,
    },
    /// The batch exceeds the publication limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size seen.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Ingress throttled; the client should retry (link detach `server-busy`).
    #[error("server busy: {0}")]
    Throttled(String),
    /// Anything else the publisher got wrong (rejected, not retried).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed; the client should retry.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a read, a position or a management lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Unknown namespace, hub, consumer group or partition; `entity` is e.g.
    /// `sb://ns/hub` or `sb://ns/hub/consumergroups/cg`.
    #[error("entity not found: {entity}")]
    NotFound {
        /// The missing entity.
        entity: String,
    },
    /// A start sequence number past the end of the partition.
    #[error("sequence number {requested} is past the last sequence number {last}")]
    SequenceOutOfRange {
        /// What the client asked for.
        requested: i64,
        /// The last sequence number in the partition.
        last: i64,
    },
    /// The backend failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The Hubs domain as the AMQP edge sees it.
#[async_trait]
pub trait HubsBackend: Send + Sync + 'static {
    /// Verify a SAS token (A4) put on `$cbs` for `audience` (as the client
    /// sent it, e.g. `sb://ns1.example.net:5671/hub1/consumergroups/$default`).
    async fn authorize(
        &self,
        namespace_host: &str,
        audience: &str,
        token: &str,
        now: SystemTime,
    ) -> Result<Grant, AuthError>;

    /// Verify a SASL PLAIN credential (user = key name, password = key) as a
    /// namespace-wide grant (A9.3 open choice). Default: refused.
    async fn authorize_key(
        &self,
        namespace_host: &str,
        key_name: &str,
        key: &str,
        now: SystemTime,
    ) -> Result<Grant, AuthError> {
        let _ = (namespace_host, key_name, key, now);
        Err(AuthError::Unauthorized(
            "SASL PLAIN credentials are not accepted".into(),
        ))
    }

    /// `com.microsoft:eventhub` READ.
    async fn hub_properties(
        &self,
        namespace_host: &str,
        hub: &str,
    ) -> Result<HubProperties, ReadError>;

    /// `com.microsoft:partition` READ.
    async fn partition_properties(
        &self,
        namespace_host: &str,
        hub: &str,
        partition: &str,
    ) -> Result<PartitionProperties, ReadError>;

    /// Append a batch atomically; returns only once it is durable.
    async fn append(
        &self,
        namespace_host: &str,
        hub: &str,
        target: PartitionTarget,
        events: Vec<InboundEvent>,
    ) -> Result<AppendReceipt, AppendError>;

    /// Resolve a start position to the first sequence number to deliver.
    /// Also validates the consumer group. `Latest` resolves to the next
    /// sequence number to be written.
    async fn resolve_position(
        &self,
        namespace_host: &str,
        hub: &str,
        consumer_group: &str,
        partition: &str,
        position: &EventPosition,
    ) -> Result<i64, ReadError>;

    /// Up to `max` events with sequence number >= `from_sequence`, in order
    /// (events before the retention horizon are skipped).
    async fn read(
        &self,
        namespace_host: &str,
        hub: &str,
        consumer_group: &str,
        partition: &str,
        from_sequence: i64,
        max: usize,
    ) -> Result<Vec<OutboundEvent>, ReadError>;

    /// The partition's next sequence number to be written, updated on every
    /// durable append; a caught-up reader waits on it.
    async fn watch(
        &self,
        namespace_host: &str,
        hub: &str,
        partition: &str,
    ) -> Result<watch::Receiver<i64>, ReadError>;
}
