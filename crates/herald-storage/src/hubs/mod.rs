//! Records and the store for Hubs (Event Hubs): namespaces, hubs, their
//! partitions, consumer groups, SAS policies, the partition logs and
//! server-side checkpoints. The rules (names, rights, SAS, partition
//! hashing, the event codec) live in `herald-hubs`; this is only what must
//! commit together.

use crate::Result;
use async_trait::async_trait;
pub use herald_core::id::{HubId, NamespaceId};

pub(crate) mod store;

/// The name of the policy every namespace is created with.
pub const ROOT_POLICY: &str = "RootManageSharedAccessKey";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NamespaceRecord {
    #[sqlx(try_from = "String")]
    pub id: NamespaceId,
    /// Lower-cased name: namespaces are found by host name.
    pub key: String,
    pub name: String,
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HubRecord {
    #[sqlx(try_from = "String")]
    pub id: HubId,
    #[sqlx(try_from = "String")]
    pub namespace_id: NamespaceId,
    pub key: String,
    pub name: String,
    pub partition_count: i64,
    pub retention_hours: i64,
    pub created: i64,
    pub updated: i64,
}

/// A partition's head: its retained range and what came in.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PartitionRecord {
    pub partition: i64,
    /// First retained sequence number (`next_seq` when empty).
    pub begin_seq: i64,
    /// The next append's first sequence number; the last event is one less.
    pub next_seq: i64,
    /// Enqueued time of the last append (0 before the first).
    pub last_enqueued: i64,
    pub events_in: i64,
    pub bytes_in: i64,
    /// Delivered by the edges (all nodes), flushed about once a second.
    pub events_out: i64,
    pub bytes_out: i64,
}

impl PartitionRecord {
    /// No event is retained.
    pub fn is_empty(&self) -> bool {
        self.begin_seq >= self.next_seq
    }
}

/// One append: a run of events with consecutive sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SegmentRecord {
    pub first_seq: i64,
    pub count: i64,
    pub bytes: i64,
    pub enqueued: i64,
    /// Encoded by herald-hubs; opaque here.
    pub payload: Vec<u8>,
}

/// What an append hands the store. The payload's sequence numbers and
/// enqueued time are only known inside the transaction (several nodes may
/// append to one partition), so the store calls `stamp` on it with them.
#[derive(Debug, Clone)]
pub struct NewSegment {
    pub hub_id: HubId,
    pub partition: i64,
    pub count: i64,
    pub bytes: i64,
    /// The appender's clock; the stored time never goes backwards.
    pub now_ms: i64,
    pub payload: Vec<u8>,
}

/// Writes the first sequence number and the enqueued time into a payload.
pub type Stamp = fn(payload: &mut [u8], first_seq: i64, enqueued_ms: i64);

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_seq: i64,
    pub enqueued: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConsumerGroupRecord {
    pub key: String,
    pub name: String,
    pub user_metadata: String,
    pub created: i64,
}

/// A SAS policy (authorization rule) on a namespace (`hub_id` empty) or a
/// hub. Keys are sealed by the caller; SAS verification needs them back.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyRecord {
    #[sqlx(try_from = "String")]
    pub namespace_id: NamespaceId,
    pub hub_id: String,
    pub key: String,
    pub name: String,
    /// JSON array of Azure's right names.
    pub rights: String,
    pub primary_key: Vec<u8>,
    pub secondary_key: Vec<u8>,
    pub created: i64,
    pub updated: i64,
}

/// A consumer group's committed position in one partition.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckpointRecord {
    pub partition: i64,
    /// The last sequence number processed.
    pub seq: i64,
    pub updated: i64,
}

#[async_trait]
pub trait HubStore: Send + Sync {
    // Namespaces
    /// Creates the namespace with its root policy; `false` if the name is taken.
    async fn create_namespace(&self, ns: &NamespaceRecord, root: &PolicyRecord) -> Result<bool>;
    async fn namespace(&self, key: &str) -> Result<Option<NamespaceRecord>>;
    async fn list_namespaces(&self) -> Result<Vec<NamespaceRecord>>;
    /// Deletes the namespace with its hubs, logs and policies.
    async fn delete_namespace(&self, key: &str) -> Result<bool>;

    // Hubs
    /// Creates the hub, its partitions and `$Default`; `false` if taken.
    async fn create_hub(
        &self,
        hub: &HubRecord,
        default_group: &ConsumerGroupRecord,
    ) -> Result<bool>;
    async fn hub(&self, namespace_id: &str, key: &str) -> Result<Option<HubRecord>>;
    async fn list_hubs(&self, namespace_id: &str) -> Result<Vec<HubRecord>>;
    /// Every hub of every namespace (retention).
    async fn all_hubs(&self) -> Result<Vec<HubRecord>>;
    async fn delete_hub(&self, namespace_id: &str, key: &str) -> Result<bool>;
    /// Raises the partition count (never lowers it) and sets the retention;
    /// `false` if the hub is gone.
    async fn update_hub(
        &self,
        hub_id: &str,
        partition_count: i64,
        retention_hours: i64,
        now: i64,
    ) -> Result<bool>;

    // Consumer groups
    /// `true` if created, `false` if it existed (its metadata is replaced).
    async fn put_consumer_group(&self, hub_id: &str, group: &ConsumerGroupRecord) -> Result<bool>;
    async fn consumer_groups(&self, hub_id: &str) -> Result<Vec<ConsumerGroupRecord>>;
    async fn delete_consumer_group(&self, hub_id: &str, key: &str) -> Result<bool>;

    // Policies
    /// Creates or replaces a policy; `true` if created.
    async fn put_policy(&self, policy: &PolicyRecord) -> Result<bool>;
    async fn policies(&self, namespace_id: &str, hub_id: &str) -> Result<Vec<PolicyRecord>>;
    async fn policy(
        &self,
        namespace_id: &str,
        hub_id: &str,
        key: &str,
    ) -> Result<Option<PolicyRecord>>;
    async fn delete_policy(&self, namespace_id: &str, hub_id: &str, key: &str) -> Result<bool>;

    // The log
    /// Appends one segment, durably; `None` if the partition does not exist.
    async fn append_segment(&self, segment: NewSegment, stamp: Stamp) -> Result<Option<Appended>>;
    async fn partitions(&self, hub_id: &str) -> Result<Vec<PartitionRecord>>;
    /// Adds delivered (hub id, partition, events, bytes) to the partitions' outgoing counts.
    async fn add_outgoing(&self, deltas: Vec<(String, i64, i64, i64)>) -> Result<()>;
    /// Segments holding sequence numbers from `from_seq` on, in order,
    /// until they hold at least `max_events` of them.
    async fn read_segments(
        &self,
        hub_id: &str,
        partition: i64,
        from_seq: i64,
        max_events: i64,
    ) -> Result<Vec<SegmentRecord>>;
    /// First sequence number of the first append enqueued after `after_ms`.
    async fn first_seq_after(
        &self,
        hub_id: &str,
        partition: i64,
        after_ms: i64,
    ) -> Result<Option<i64>>;
    /// Drops segments enqueued before `before_ms`; returns the events dropped.
    async fn prune_segments(&self, hub_id: &str, before_ms: i64) -> Result<i64>;

    // Checkpoints
    async fn put_checkpoint(
        &self,
        hub_id: &str,
        group_key: &str,
        partition: i64,
        seq: i64,
        now: i64,
    ) -> Result<()>;
    async fn checkpoints(&self, hub_id: &str, group_key: &str) -> Result<Vec<CheckpointRecord>>;
}
