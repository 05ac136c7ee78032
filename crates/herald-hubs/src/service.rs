//! The Hubs service: namespaces, hubs, consumer groups and SAS policies
//! kept in storage, sends appended durably to a partition's log, and reads
//! that wait for new events. Protocol edges (REST, AMQP, Kafka) call this;
//! it opens no sockets.

use crate::event::{NewEvent, StoredEvent, decode_segment_from, encode_append, stamp_append};
use crate::names::{
    ConsumerGroupName, HubName, NameError, NamespaceName, PartitionCount, PolicyName,
};
use crate::partition::{RoundRobin, partition_for_key};
use crate::rights::{Right, Rights};
use crate::sas::{self, SasError, SasGrant, SasRule};
use crate::{ConnectionString, rest};
use bytes::Bytes;
use herald_core::seal::MasterKey;
use herald_storage::{
    Appended, CheckpointRecord, ConsumerGroupRecord, HubId, HubRecord, NamespaceId,
    NamespaceRecord, NewSegment, PartitionRecord, PolicyRecord, ROOT_POLICY, Storage, StorageError,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use zeroize::Zeroizing;

/// The namespace every installation has, so a first hub needs no
/// namespace; it is `default.{hub_base}`.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default retention, as Azure's Standard tier (7 days).
pub const DEFAULT_RETENTION_HOURS: i64 = 168;
/// Longest retention a hub may ask for (90 days, as Premium).
pub const MAX_RETENTION_HOURS: i64 = 90 * 24;
/// Consumer groups per hub (Herald's default limit, spec A2).
pub const MAX_CONSUMER_GROUPS: usize = 100;
/// Authorization rules per namespace or hub (spec A2).
pub const MAX_POLICIES: usize = 12;
/// Most events one read returns.
pub const MAX_READ: usize = 10_000;

/// What went wrong, in terms the edges map to their protocol's errors.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A namespace, hub, consumer group, partition or policy does not exist.
    #[error("{kind} '{name}' was not found")]
    NotFound {
        /// What was looked for (`namespace`, `event hub`, ...).
        kind: &'static str,
        /// Its name as given.
        name: String,
    },
    /// The name is taken, or the change is not allowed in this state.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The publication is over the 1 MB limit.
    #[error("{0}")]
    TooLarge(String),
    /// The SAS token does not grant what was asked.
    #[error("{0}")]
    Unauthorized(#[from] SasError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stored data could not be used (a sealed key that does not open, a
    /// segment that does not decode).
    #[error("{0}")]
    Internal(String),
}

impl From<NameError> for HubError {
    fn from(e: NameError) -> Self {
        HubError::BadRequest(e.to_string())
    }
}

/// Results of the Hubs service.
pub type HubResult<T> = Result<T, HubError>;

/// Where a send goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTarget {
    /// The service picks: round robin over the partitions.
    Any,
    /// This partition, by id text (`"0"`, `"1"`, ...).
    Partition(String),
    /// The partition this key hashes to (spec A6).
    Key(String),
}

/// Where a send landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The partition the events went to.
    pub partition: i64,
    /// The first event's sequence number; the rest follow densely.
    pub first_sequence_number: i64,
    /// The events' enqueued time (ms since the epoch).
    pub enqueued_time_ms: i64,
}

/// A policy with its keys opened, for `keys` and connection strings.
#[derive(Debug, Clone)]
pub struct PolicyKeys {
    /// The policy's name.
    pub name: String,
    /// What it permits.
    pub rights: Rights,
    /// Primary key text.
    pub primary_key: Zeroizing<String>,
    /// Secondary key text.
    pub secondary_key: Zeroizing<String>,
    /// `Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=<primary>[;EntityPath=...]`
    pub primary_connection_string: Zeroizing<String>,
    /// The same with the secondary key.
    pub secondary_connection_string: Zeroizing<String>,
}

/// Which key `regenerate` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// The primary key.
    Primary,
    /// The secondary key.
    Secondary,
}

/// Per (hub, partition), the sender of its next sequence number.
type Heads = HashMap<(HubId, i64), watch::Sender<i64>>;

/// The Hubs service.
#[derive(Clone)]
pub struct HubService {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    /// Parent domain of namespace hosts: `{ns}.{base}`.
    namespace_base: String,
    round_robin: Arc<RoundRobin>,
    /// Per partition, the next sequence number, so waiting readers wake
    /// the moment an append commits on this node.
    heads: Arc<Mutex<Heads>>,
    /// Partitions whose heads a poller refreshes from storage.
    polled: Arc<Mutex<std::collections::HashSet<(HubId, i64)>>>,
    outgoing: Arc<Mutex<Outgoing>>,
}

impl std::fmt::Debug for HubService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubService")
            .field("namespace_base", &self.namespace_base)
            .finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn policy_aad(ns: &NamespaceId, hub_id: &str, key: &str, which: &str) -> Vec<u8> {
    format!("hub-policy/{ns}/{hub_id}/{key}/{which}").into_bytes()
}

impl HubService {
    /// A service over `storage`; policy keys are sealed under `master`.
    /// Namespaces are addressed as `{name}.{namespace_base}`.
    pub fn new(storage: Arc<dyn Storage>, master: MasterKey, namespace_base: &str) -> Self {
        Self {
            storage,
            master,
            namespace_base: namespace_base.trim_matches('.').to_ascii_lowercase(),
            round_robin: Arc::new(RoundRobin::new()),
            heads: Arc::default(),
            polled: Arc::default(),
            outgoing: Arc::default(),
        }
    }

    /// The host name a namespace is reached at.
    pub fn namespace_host(&self, ns: &str) -> String {
        format!("{}.{}", ns.to_ascii_lowercase(), self.namespace_base)
    }

    /// The namespace a request's host names: `{ns}.{base}` (any port).
    pub fn namespace_of_host(&self, host: &str) -> Option<String> {
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.to_ascii_lowercase();
        let ns = host.strip_suffix(&self.namespace_base)?.strip_suffix('.')?;
        (!ns.is_empty() && !ns.contains('.')).then(|| ns.to_owned())
    }

    // ------------------------------------------------------------ namespaces

    /// Creates the default namespace unless it exists (start-up; several
    /// nodes may race, and the loser finds it made).
    pub async fn ensure_default_namespace(&self) -> HubResult<()> {
        match self.create_namespace(DEFAULT_NAMESPACE).await {
            Ok(_) | Err(HubError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a namespace with its `RootManageSharedAccessKey`.
    pub async fn create_namespace(&self, name: &str) -> HubResult<NamespaceRecord> {
        let name = NamespaceName::new(name)?;
        let now = now_ms();
        let ns = NamespaceRecord {
            id: NamespaceId::generate(),
            key: name.key(),
            name: name.as_str().to_owned(),
            created: now,
        };
        let root = self.new_policy(&ns.id, "", PolicyName::new(ROOT_POLICY)?, Rights::ALL, now);
        if !self.storage.create_namespace(&ns, &root).await? {
            return Err(HubError::Conflict(format!(
                "The namespace '{}' already exists; pick another name.",
                name.as_str()
            )));
        }
        tracing::info!(namespace = %ns.name, "hubs namespace created");
        Ok(ns)
    }

    /// A namespace by name (case-insensitive).
    pub async fn namespace(&self, name: &str) -> HubResult<NamespaceRecord> {
        self.storage
            .namespace(&name.to_ascii_lowercase())
            .await?
            .ok_or_else(|| HubError::NotFound {
                kind: "namespace",
                name: name.to_owned(),
            })
    }

    /// Every namespace, by name.
    pub async fn list_namespaces(&self) -> HubResult<Vec<NamespaceRecord>> {
        Ok(self.storage.list_namespaces().await?)
    }

    /// Deletes a namespace with its hubs, their events and its policies.
    pub async fn delete_namespace(&self, name: &str) -> HubResult<()> {
        if !self
            .storage
            .delete_namespace(&name.to_ascii_lowercase())
            .await?
        {
            return Err(HubError::NotFound {
                kind: "namespace",
                name: name.to_owned(),
            });
        }
        tracing::info!(namespace = %name, "hubs namespace deleted");
        Ok(())
    }

    // ------------------------------------------------------------ hubs

    /// Creates an event hub with `partitions` partitions and `$Default`.
    pub async fn create_hub(
        &self,
        ns: &str,
        name: &str,
        partitions: u32,
        retention_hours: Option<i64>,
    ) -> HubResult<HubRecord> {
        let ns = self.namespace(ns).await?;
        let name = HubName::new(name)?;
        let count = PartitionCount::new(partitions)?;
        let retention = check_retention(retention_hours)?;
        let now = now_ms();
        let hub = HubRecord {
            id: HubId::generate(),
            namespace_id: ns.id.clone(),
            key: name.key(),
            name: name.as_str().to_owned(),
            partition_count: i64::from(count.get()),
            retention_hours: retention,
            created: now,
            updated: now,
        };
        let default = ConsumerGroupRecord {
            key: ConsumerGroupName::DEFAULT.key(),
            name: ConsumerGroupName::DEFAULT.as_str().to_owned(),
            user_metadata: String::new(),
            created: now,
        };
        if !self.storage.create_hub(&hub, &default).await? {
            return Err(HubError::Conflict(format!(
                "The event hub '{}' already exists in namespace '{}'.",
                name.as_str(),
                ns.name
            )));
        }
        tracing::info!(namespace = %ns.name, hub = %hub.name, partitions = hub.partition_count, "event hub created");
        Ok(hub)
    }

    /// A hub by namespace and name.
    pub async fn hub(&self, ns: &str, name: &str) -> HubResult<(NamespaceRecord, HubRecord)> {
        let ns = self.namespace(ns).await?;
        let hub = self
            .storage
            .hub(ns.id.as_str(), &name.to_ascii_lowercase())
            .await?
            .ok_or_else(|| HubError::NotFound {
                kind: "event hub",
                name: name.to_owned(),
            })?;
        Ok((ns, hub))
    }

    /// The hubs of a namespace.
    pub async fn list_hubs(&self, ns: &str) -> HubResult<Vec<HubRecord>> {
        let ns = self.namespace(ns).await?;
        Ok(self.storage.list_hubs(ns.id.as_str()).await?)
    }

    /// Raises the partition count (never lowers it) or changes retention.
    pub async fn update_hub(
        &self,
        ns: &str,
        name: &str,
        partitions: Option<u32>,
        retention_hours: Option<i64>,
    ) -> HubResult<HubRecord> {
        let (_, hub) = self.hub(ns, name).await?;
        let count = match partitions {
            Some(p) => i64::from(PartitionCount::new(p)?.get()),
            None => hub.partition_count,
        };
        if count < hub.partition_count {
            return Err(HubError::BadRequest(format!(
                "Partitions can be added, never removed: the hub has {} and {count} was asked for.",
                hub.partition_count
            )));
        }
        let retention = match retention_hours {
            Some(_) => check_retention(retention_hours)?,
            None => hub.retention_hours,
        };
        self.storage
            .update_hub(hub.id.as_str(), count, retention, now_ms())
            .await?;
        let (_, hub) = self.hub(ns, name).await?;
        Ok(hub)
    }

    /// Deletes a hub and its events.
    pub async fn delete_hub(&self, ns: &str, name: &str) -> HubResult<()> {
        let (ns_rec, hub) = self.hub(ns, name).await?;
        self.storage
            .delete_hub(ns_rec.id.as_str(), &hub.key)
            .await?;
        self.heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _), _| *id != hub.id);
        tracing::info!(namespace = %ns_rec.name, hub = %hub.name, "event hub deleted");
        Ok(())
    }

    /// Each partition's head.
    pub async fn partitions(&self, hub: &HubRecord) -> HubResult<Vec<PartitionRecord>> {
        // This node's deliveries of the last second count too.
        self.flush_outgoing().await?;
        Ok(self.storage.partitions(hub.id.as_str()).await?)
    }

    // ------------------------------------------------------------ consumer groups

    /// Creates a consumer group (or updates its metadata).
    pub async fn put_consumer_group(
        &self,
        ns: &str,
        hub: &str,
        name: &str,
        user_metadata: &str,
    ) -> HubResult<(ConsumerGroupRecord, bool)> {
        let (_, hub) = self.hub(ns, hub).await?;
        let name = ConsumerGroupName::new(name)?;
        let existing = self.storage.consumer_groups(hub.id.as_str()).await?;
        if existing.len() >= MAX_CONSUMER_GROUPS && !existing.iter().any(|g| g.key == name.key()) {
            return Err(HubError::Conflict(format!(
                "A hub holds at most {MAX_CONSUMER_GROUPS} consumer groups; delete one first."
            )));
        }
        let rec = ConsumerGroupRecord {
            key: name.key(),
            name: name.as_str().to_owned(),
            user_metadata: user_metadata.to_owned(),
            created: now_ms(),
        };
        let created = self
            .storage
            .put_consumer_group(hub.id.as_str(), &rec)
            .await?;
        Ok((rec, created))
    }

    /// The consumer groups of a hub.
    pub async fn consumer_groups(
        &self,
        ns: &str,
        hub: &str,
    ) -> HubResult<Vec<ConsumerGroupRecord>> {
        let (_, hub) = self.hub(ns, hub).await?;
        Ok(self.storage.consumer_groups(hub.id.as_str()).await?)
    }

    /// A consumer group, checked to exist.
    pub async fn consumer_group(
        &self,
        hub: &HubRecord,
        name: &str,
    ) -> HubResult<ConsumerGroupRecord> {
        self.storage
            .consumer_groups(hub.id.as_str())
            .await?
            .into_iter()
            .find(|g| g.key == name.to_ascii_lowercase())
            .ok_or_else(|| HubError::NotFound {
                kind: "consumer group",
                name: name.to_owned(),
            })
    }

    /// Deletes a consumer group and its checkpoints; `$Default` stays.
    pub async fn delete_consumer_group(&self, ns: &str, hub: &str, name: &str) -> HubResult<()> {
        if name.eq_ignore_ascii_case(ConsumerGroupName::DEFAULT.as_str()) {
            return Err(HubError::BadRequest(
                "The $Default consumer group always exists and cannot be deleted.".into(),
            ));
        }
        let (_, hub) = self.hub(ns, hub).await?;
        if !self
            .storage
            .delete_consumer_group(hub.id.as_str(), &name.to_ascii_lowercase())
            .await?
        {
            return Err(HubError::NotFound {
                kind: "consumer group",
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    // ------------------------------------------------------------ policies

    fn new_policy(
        &self,
        ns: &NamespaceId,
        hub_id: &str,
        name: PolicyName,
        rights: Rights,
        now: i64,
    ) -> PolicyRecord {
        let key = name.key();
        let primary = sas::generate_key();
        let secondary = sas::generate_key();
        PolicyRecord {
            namespace_id: ns.clone(),
            hub_id: hub_id.to_owned(),
            primary_key: self
                .master
                .seal_direct(primary.as_bytes(), &policy_aad(ns, hub_id, &key, "primary")),
            secondary_key: self.master.seal_direct(
                secondary.as_bytes(),
                &policy_aad(ns, hub_id, &key, "secondary"),
            ),
            key,
            name: name.as_str().to_owned(),
            rights: serde_json::to_string(&rights).unwrap_or_else(|_| "[]".into()),
            created: now,
            updated: now,
        }
    }

    /// The scope a policy call addresses: the namespace, or one of its hubs.
    async fn scope(
        &self,
        ns: &str,
        hub: Option<&str>,
    ) -> HubResult<(NamespaceRecord, Option<HubRecord>)> {
        match hub {
            Some(h) => {
                let (ns, hub) = self.hub(ns, h).await?;
                Ok((ns, Some(hub)))
            }
            None => Ok((self.namespace(ns).await?, None)),
        }
    }

    /// Creates a SAS policy on a namespace (`hub` None) or a hub, or
    /// changes an existing one's rights (its keys stay).
    pub async fn put_policy(
        &self,
        ns: &str,
        hub: Option<&str>,
        name: &str,
        rights: Rights,
    ) -> HubResult<(PolicyRecord, bool)> {
        rights
            .validate()
            .map_err(|e| HubError::BadRequest(e.to_string()))?;
        let name = PolicyName::new(name)?;
        let (ns, hub) = self.scope(ns, hub).await?;
        let hub_id = hub.as_ref().map_or("", |h| h.id.as_str());
        if let Some(mut existing) = self
            .storage
            .policy(ns.id.as_str(), hub_id, &name.key())
            .await?
        {
            existing.rights = serde_json::to_string(&rights).unwrap_or_else(|_| "[]".into());
            existing.updated = now_ms();
            self.storage.put_policy(&existing).await?;
            return Ok((existing, false));
        }
        if self.storage.policies(ns.id.as_str(), hub_id).await?.len() >= MAX_POLICIES {
            return Err(HubError::Conflict(format!(
                "At most {MAX_POLICIES} authorization rules fit on one entity; delete one first."
            )));
        }
        let rec = self.new_policy(&ns.id, hub_id, name, rights, now_ms());
        self.storage.put_policy(&rec).await?;
        tracing::info!(namespace = %ns.name, hub = hub.as_ref().map(|h| h.name.as_str()), policy = %rec.name, "SAS policy created");
        Ok((rec, true))
    }

    /// The policies on a namespace or hub.
    pub async fn policies(&self, ns: &str, hub: Option<&str>) -> HubResult<Vec<PolicyRecord>> {
        let (ns, hub) = self.scope(ns, hub).await?;
        Ok(self
            .storage
            .policies(ns.id.as_str(), hub.as_ref().map_or("", |h| h.id.as_str()))
            .await?)
    }

    async fn policy(
        &self,
        ns: &str,
        hub: Option<&str>,
        name: &str,
    ) -> HubResult<(NamespaceRecord, Option<HubRecord>, PolicyRecord)> {
        let (ns, hub) = self.scope(ns, hub).await?;
        let p = self
            .storage
            .policy(
                ns.id.as_str(),
                hub.as_ref().map_or("", |h| h.id.as_str()),
                &name.to_ascii_lowercase(),
            )
            .await?
            .ok_or_else(|| HubError::NotFound {
                kind: "authorization rule",
                name: name.to_owned(),
            })?;
        Ok((ns, hub, p))
    }

    fn open_key(&self, p: &PolicyRecord, which: &str) -> HubResult<Zeroizing<String>> {
        let sealed = if which == "primary" {
            &p.primary_key
        } else {
            &p.secondary_key
        };
        let plain = self
            .master
            .open_direct(
                sealed,
                &policy_aad(&p.namespace_id, &p.hub_id, &p.key, which),
            )
            .map_err(|_| {
                HubError::Internal(format!(
                    "the {which} key of policy '{}' does not open with this master key",
                    p.name
                ))
            })?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| HubError::Internal("a policy key is not text".into()))
    }

    fn rights_of(p: &PolicyRecord) -> Rights {
        serde_json::from_str(&p.rights).unwrap_or(Rights::EMPTY)
    }

    /// A policy's keys and connection strings (Azure's `listKeys`).
    pub async fn keys(&self, ns: &str, hub: Option<&str>, name: &str) -> HubResult<PolicyKeys> {
        let (ns, hub, p) = self.policy(ns, hub, name).await?;
        self.keys_of(&ns, hub.as_ref(), &p)
    }

    fn keys_of(
        &self,
        ns: &NamespaceRecord,
        hub: Option<&HubRecord>,
        p: &PolicyRecord,
    ) -> HubResult<PolicyKeys> {
        let primary = self.open_key(p, "primary")?;
        let secondary = self.open_key(p, "secondary")?;
        let policy_name = PolicyName::new(p.name.clone())?;
        let conn = |key: &str| -> HubResult<Zeroizing<String>> {
            let mut cs =
                ConnectionString::new(self.namespace_host(&ns.name), policy_name.clone(), key);
            if let Some(h) = hub {
                cs = cs.with_entity_path(HubName::new(h.name.clone())?);
            }
            Ok(Zeroizing::new(cs.to_string()))
        };
        Ok(PolicyKeys {
            name: p.name.clone(),
            rights: Self::rights_of(p),
            primary_connection_string: conn(&primary)?,
            secondary_connection_string: conn(&secondary)?,
            primary_key: primary,
            secondary_key: secondary,
        })
    }

    /// Replaces one key of a policy; the other keeps working.
    pub async fn regenerate(
        &self,
        ns: &str,
        hub: Option<&str>,
        name: &str,
        which: KeyType,
    ) -> HubResult<PolicyKeys> {
        let (ns, hub, mut p) = self.policy(ns, hub, name).await?;
        let fresh = sas::generate_key();
        let label = match which {
            KeyType::Primary => "primary",
            KeyType::Secondary => "secondary",
        };
        let sealed = self.master.seal_direct(
            fresh.as_bytes(),
            &policy_aad(&p.namespace_id, &p.hub_id, &p.key, label),
        );
        match which {
            KeyType::Primary => p.primary_key = sealed,
            KeyType::Secondary => p.secondary_key = sealed,
        }
        p.updated = now_ms();
        self.storage.put_policy(&p).await?;
        tracing::info!(namespace = %ns.name, policy = %p.name, key = label, "SAS policy key regenerated");
        self.keys_of(&ns, hub.as_ref(), &p)
    }

    /// Deletes a policy. The namespace's root policy may be deleted, as in Azure.
    pub async fn delete_policy(&self, ns: &str, hub: Option<&str>, name: &str) -> HubResult<()> {
        let (ns, hub, p) = self.policy(ns, hub, name).await?;
        self.storage
            .delete_policy(
                ns.id.as_str(),
                hub.as_ref().map_or("", |h| h.id.as_str()),
                &p.key,
            )
            .await?;
        Ok(())
    }

    // ------------------------------------------------------------ authorization

    /// The entity URI of a hub (what SAS `sr` values cover).
    pub fn hub_uri(&self, ns: &NamespaceRecord, hub: &HubRecord) -> String {
        format!("sb://{}/{}", self.namespace_host(&ns.name), hub.name)
    }

    /// Verifies a SAS token for `entity_uri` under `hub` and requires `right`.
    /// Rules on the hub are tried before the namespace's (spec A4).
    pub async fn authorize(
        &self,
        ns: &NamespaceRecord,
        hub: &HubRecord,
        token: &str,
        entity_uri: &str,
        right: Right,
    ) -> HubResult<SasGrant> {
        let grant = self.verify_token(ns, Some(hub), token, entity_uri).await?;
        grant.require(right, entity_uri)?;
        Ok(grant)
    }

    /// Verifies a SAS token for `entity_uri` (under `hub` when given, else
    /// anywhere in the namespace) and returns what it grants, whatever the
    /// rights: the AMQP edge checks them per link.
    pub async fn verify_token(
        &self,
        ns: &NamespaceRecord,
        hub: Option<&HubRecord>,
        token: &str,
        entity_uri: &str,
    ) -> HubResult<SasGrant> {
        let parsed = sas::SasToken::parse(token)?;
        let key = parsed.key_name().to_ascii_lowercase();
        let mut candidates = Vec::new();
        for scope in [hub.map_or("", |h| h.id.as_str()), ""] {
            if let Some(p) = self.storage.policy(ns.id.as_str(), scope, &key).await? {
                candidates.push(p);
            }
            if hub.is_none() {
                break;
            }
        }
        let opened: Vec<(Zeroizing<String>, Zeroizing<String>, Rights, String)> = candidates
            .iter()
            .map(|p| {
                Ok((
                    self.open_key(p, "primary")?,
                    self.open_key(p, "secondary")?,
                    Self::rights_of(p),
                    p.name.clone(),
                ))
            })
            .collect::<HubResult<_>>()?;
        let rules = opened.iter().map(|(a, b, r, n)| SasRule {
            key_name: n,
            primary_key: a,
            secondary_key: b,
            rights: *r,
        });
        Ok(parsed.verify(chrono::Utc::now().timestamp(), entity_uri, rules)?)
    }

    // ------------------------------------------------------------ the log

    /// Appends `events` to one partition, atomically and durably.
    pub async fn send(
        &self,
        hub: &HubRecord,
        target: SendTarget,
        events: Vec<NewEvent>,
    ) -> HubResult<SendReceipt> {
        if events.is_empty() {
            return Err(HubError::BadRequest(
                "A send needs at least one event.".into(),
            ));
        }
        // An AMQP event's encoded message holds its body; count it once.
        let size: usize = events
            .iter()
            .map(|e| {
                e.amqp
                    .as_ref()
                    .map_or_else(|| e.approximate_size(), |a| a.len())
            })
            .sum();
        if size > rest::MAX_PUBLICATION_BYTES {
            return Err(HubError::TooLarge(format!(
                "The publication is {size} bytes; the limit is {} bytes for one event or batch.",
                rest::MAX_PUBLICATION_BYTES
            )));
        }
        let count = PartitionCount::new(u32::try_from(hub.partition_count).unwrap_or(1))?;
        let partition = match &target {
            SendTarget::Any => self.round_robin.next_many(count, events.len() as u64),
            SendTarget::Partition(p) => count.parse_id(p).map_err(|_| HubError::NotFound {
                kind: "partition",
                name: p.clone(),
            })?,
            SendTarget::Key(k) => partition_for_key(k, count),
        };
        let partition = i64::from(partition.index());
        let n = events.len() as i64;
        let bytes = events.iter().map(|e| e.body.len() as i64).sum();
        let now = now_ms();
        let payload =
            encode_append(0, now, &events).map_err(|e| HubError::BadRequest(e.to_string()))?;
        let seg = NewSegment {
            hub_id: hub.id.clone(),
            partition,
            count: n,
            bytes,
            now_ms: now,
            payload,
        };
        let Appended {
            first_seq,
            enqueued,
        } = self
            .storage
            .append_segment(seg, stamp_append)
            .await?
            .ok_or_else(|| HubError::NotFound {
                kind: "event hub",
                name: hub.name.clone(),
            })?;
        self.head(&hub.id, partition)
            .send_modify(|h| *h = (*h).max(first_seq + n));
        metrics_in(hub, partition, n, bytes);
        Ok(SendReceipt {
            partition,
            first_sequence_number: first_seq,
            enqueued_time_ms: enqueued,
        })
    }

    fn head(&self, hub: &HubId, partition: i64) -> watch::Sender<i64> {
        self.heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((hub.clone(), partition))
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// The next sequence number of a partition, updated the moment an
    /// append commits on this node, and within a second of one on another
    /// node (a poller runs while anyone watches).
    pub async fn watch(&self, hub: &HubRecord, partition: i64) -> HubResult<watch::Receiver<i64>> {
        let next = self
            .partitions(hub)
            .await?
            .into_iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| HubError::NotFound {
                kind: "partition",
                name: partition.to_string(),
            })?
            .next_seq;
        let tx = self.head(&hub.id, partition);
        tx.send_if_modified(|h| {
            let grew = next > *h;
            *h = (*h).max(next);
            grew
        });
        let rx = tx.subscribe();
        let key = (hub.id.clone(), partition);
        let start = self
            .polled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        if start {
            let (svc, hub) = (self.clone(), hub.clone());
            tokio::spawn(async move {
                while tx.receiver_count() > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(parts) = svc.storage.partitions(hub.id.as_str()).await
                        && let Some(p) = parts.iter().find(|p| p.partition == partition)
                    {
                        tx.send_if_modified(|h| {
                            let grew = p.next_seq > *h;
                            *h = (*h).max(p.next_seq);
                            grew
                        });
                    }
                }
                svc.polled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
        }
        Ok(rx)
    }

    /// Up to `max` events of a partition from sequence number `from`.
    pub async fn read(
        &self,
        hub: &HubRecord,
        partition: i64,
        from: i64,
        max: usize,
    ) -> HubResult<Vec<StoredEvent>> {
        if partition < 0 || partition >= hub.partition_count {
            return Err(HubError::NotFound {
                kind: "partition",
                name: partition.to_string(),
            });
        }
        let max = max.clamp(1, MAX_READ);
        let mut out = Vec::new();
        for seg in self
            .storage
            .read_segments(hub.id.as_str(), partition, from, max as i64)
            .await?
        {
            let left = max - out.len();
            if left == 0 {
                break;
            }
            let mut events =
                decode_segment_from(Bytes::from(seg.payload), from, left).map_err(|e| {
                    HubError::Internal(format!("a stored segment does not decode: {e}"))
                })?;
            out.append(&mut events);
        }
        Ok(out)
    }

    /// Like [`read`](Self::read), but when nothing is there yet waits up to
    /// `wait` for an append. Appends on this node wake it at once; appends
    /// on another node are seen within a second.
    pub async fn read_wait(
        &self,
        hub: &HubRecord,
        partition: i64,
        from: i64,
        max: usize,
        wait: Duration,
    ) -> HubResult<Vec<StoredEvent>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.head(&hub.id, partition).subscribe();
        loop {
            let events = self.read(hub, partition, from, max).await?;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(events);
            }
            let tick = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(tick, rx.changed()).await;
        }
    }

    /// The first sequence number enqueued after `after_ms`, if any.
    pub async fn first_after(
        &self,
        hub: &HubRecord,
        partition: i64,
        after_ms: i64,
    ) -> HubResult<Option<i64>> {
        Ok(self
            .storage
            .first_seq_after(hub.id.as_str(), partition, after_ms)
            .await?)
    }

    /// Stores a consumer group's checkpoint for a partition.
    pub async fn put_checkpoint(
        &self,
        hub: &HubRecord,
        group: &ConsumerGroupRecord,
        partition: i64,
        seq: i64,
    ) -> HubResult<()> {
        if partition < 0 || partition >= hub.partition_count {
            return Err(HubError::NotFound {
                kind: "partition",
                name: partition.to_string(),
            });
        }
        Ok(self
            .storage
            .put_checkpoint(hub.id.as_str(), &group.key, partition, seq, now_ms())
            .await?)
    }

    /// A consumer group's checkpoints.
    pub async fn checkpoints(
        &self,
        hub: &HubRecord,
        group: &ConsumerGroupRecord,
    ) -> HubResult<Vec<CheckpointRecord>> {
        Ok(self
            .storage
            .checkpoints(hub.id.as_str(), &group.key)
            .await?)
    }

    /// Each consumer group's lag: the retained events after its
    /// checkpoints, summed over the partitions (all retained events of a
    /// partition without a checkpoint). Also published as the
    /// `herald_hub_consumer_lag` gauge.
    pub async fn consumer_lag(
        &self,
        hub: &HubRecord,
    ) -> HubResult<Vec<(ConsumerGroupRecord, i64)>> {
        let parts = self.storage.partitions(hub.id.as_str()).await?;
        let mut out = Vec::new();
        for group in self.storage.consumer_groups(hub.id.as_str()).await? {
            let cps = self
                .storage
                .checkpoints(hub.id.as_str(), &group.key)
                .await?;
            let lag: i64 = parts
                .iter()
                .map(|p| {
                    let from = cps
                        .iter()
                        .find(|c| c.partition == p.partition)
                        .map_or(p.begin_seq, |c| (c.seq + 1).max(p.begin_seq));
                    (p.next_seq - from).max(0)
                })
                .sum();
            metrics::gauge!("herald_hub_consumer_lag", "hub" => hub.name.clone(), "consumer_group" => group.name.clone())
                .set(lag as f64);
            out.push((group, lag));
        }
        Ok(out)
    }

    /// Every hub of every namespace, with its namespace's name.
    pub async fn all_hubs(&self) -> HubResult<Vec<(String, HubRecord)>> {
        let mut out = Vec::new();
        for ns in self.storage.list_namespaces().await? {
            for hub in self.storage.list_hubs(ns.id.as_str()).await? {
                out.push((ns.name.clone(), hub));
            }
        }
        Ok(out)
    }

    /// Drops events older than each hub's retention; returns how many.
    pub async fn prune(&self) -> HubResult<i64> {
        let now = now_ms();
        let mut dropped = 0;
        for hub in self.storage.all_hubs().await? {
            let n = self
                .storage
                .prune_segments(hub.id.as_str(), now - hub.retention_hours * 3_600_000)
                .await?;
            if n > 0 {
                tracing::info!(hub = %hub.name, events = n, "expired events dropped from the hub");
            }
            dropped += n;
        }
        Ok(dropped)
    }
}

fn check_retention(hours: Option<i64>) -> HubResult<i64> {
    let h = hours.unwrap_or(DEFAULT_RETENTION_HOURS);
    if !(1..=MAX_RETENTION_HOURS).contains(&h) {
        return Err(HubError::BadRequest(format!(
            "retentionTimeInHours must be between 1 and {MAX_RETENTION_HOURS}."
        )));
    }
    Ok(h)
}

/// Incoming events and bytes per hub and partition, for `/metrics`.
fn metrics_in(hub: &HubRecord, partition: i64, events: i64, bytes: i64) {
    let labels = [
        ("hub", hub.name.clone()),
        ("partition", partition.to_string()),
    ];
    metrics::counter!("herald_hub_incoming_events_total", &labels).increment(events as u64);
    metrics::counter!("herald_hub_incoming_bytes_total", &labels).increment(bytes as u64);
}

/// Delivered events and bytes per (hub id, partition) not yet added to storage.
#[derive(Default)]
struct Outgoing {
    deltas: HashMap<(String, i64), (i64, i64)>,
    flushed: Option<std::time::Instant>,
}

/// How often a node adds what it delivered to the partitions' counts: one
/// small write a second, not one per read.
const OUTGOING_FLUSH_EVERY: Duration = Duration::from_secs(1);

impl HubService {
    /// Counts events an edge delivered (HTTP pull, AMQP receivers): at once
    /// in `/metrics`, and in the partition's stored counts within a second.
    pub fn count_outgoing(&self, hub: &HubRecord, partition: i64, events: &[StoredEvent]) {
        if events.is_empty() {
            return;
        }
        let labels = [
            ("hub", hub.name.clone()),
            ("partition", partition.to_string()),
        ];
        let bytes: usize = events.iter().map(|e| e.body.len()).sum();
        metrics::counter!("herald_hub_outgoing_events_total", &labels)
            .increment(events.len() as u64);
        metrics::counter!("herald_hub_outgoing_bytes_total", &labels).increment(bytes as u64);
        let due = {
            let mut o = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
            let d = o
                .deltas
                .entry((hub.id.as_str().to_owned(), partition))
                .or_default();
            d.0 += events.len() as i64;
            d.1 += bytes as i64;
            let now = std::time::Instant::now();
            match o.flushed {
                Some(t) if now.duration_since(t) < OUTGOING_FLUSH_EVERY => None,
                _ => {
                    o.flushed = Some(now);
                    Some(std::mem::take(&mut o.deltas))
                }
            }
        };
        if let Some(deltas) = due {
            let storage = self.storage.clone();
            tokio::spawn(async move {
                let deltas: Vec<_> = deltas
                    .into_iter()
                    .map(|((h, p), (e, b))| (h, p, e, b))
                    .collect();
                if let Err(e) = storage.add_outgoing(deltas).await {
                    tracing::warn!(error = %e, "outgoing hub counts not stored; they stay in /metrics");
                }
            });
        }
    }

    /// Adds this node's pending outgoing counts to storage now.
    async fn flush_outgoing(&self) -> HubResult<()> {
        let deltas = {
            let mut o = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
            o.flushed = Some(std::time::Instant::now());
            std::mem::take(&mut o.deltas)
        };
        let deltas: Vec<_> = deltas
            .into_iter()
            .map(|((h, p), (e, b))| (h, p, e, b))
            .collect();
        Ok(self.storage.add_outgoing(deltas).await?)
    }
}

/// How often expired events are dropped from the hubs' logs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

impl HubService {
    /// One node at a time drops events past each hub's retention.
    pub fn duties(&self) -> Vec<herald_core::duty::Duty> {
        let hubs = self.clone();
        vec![herald_core::duty::Duty::singleton(
            "hub-retention",
            RETENTION_EVERY,
            move |stop| async move {
                let mut tick = tokio::time::interval(RETENTION_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            if let Err(e) = hubs.prune().await {
                                tracing::error!(error = %e, "hub retention pass failed; will retry");
                            }
                            // Keep the lag gauges current for /metrics.
                            if let Ok(all) = hubs.all_hubs().await {
                                for (_, hub) in all {
                                    let _ = hubs.consumer_lag(&hub).await;
                                }
                            }
                        }
                    }
                }
            },
        )]
    }
}
