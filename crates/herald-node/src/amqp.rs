//! The AMQP edge's port, implemented over the Hubs service: the node wires
//! herald-amqp (frames, links, CBS) to herald-hubs (SAS, logs) so that
//! neither crate knows the other.

use async_trait::async_trait;
use herald_amqp::{
    AppendError, AppendReceipt, AuthError, EventPosition, Grant, HubProperties, HubsBackend,
    InboundEvent, OutboundEvent, PartitionProperties, PartitionTarget, PropertyValue as AmqpValue,
    ReadError, Rights as AmqpRights,
};
use herald_hubs::{HubError, HubService, NewEvent, PropertyValue, Right, SendTarget, StoredEvent};
use herald_storage::{HubRecord, NamespaceRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How long a hub lookup is reused: every read of a busy link needs it.
const HUB_TTL: Duration = Duration::from_secs(5);

type HubCache = HashMap<(String, String), (NamespaceRecord, HubRecord, Instant)>;

/// [`HubsBackend`] over [`HubService`].
pub(crate) struct HubsAmqp {
    hubs: HubService,
    cache: Mutex<HubCache>,
}

impl HubsAmqp {
    pub(crate) fn new(hubs: HubService) -> Arc<Self> {
        Arc::new(Self {
            hubs,
            cache: Mutex::default(),
        })
    }

    /// The namespace a connection addressed: `{ns}.{hub_base}`, or the
    /// default namespace for `localhost` and IP literals (what
    /// `UseDevelopmentEmulator=true` connection strings name).
    fn namespace(&self, host: &str) -> String {
        self.hubs.namespace_of_host(host).unwrap_or_else(|| {
            let plain = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok();
            if plain {
                herald_hubs::DEFAULT_NAMESPACE.to_owned()
            } else {
                host.to_owned()
            }
        })
    }

    async fn hub(&self, host: &str, hub: &str) -> Result<(NamespaceRecord, HubRecord), HubError> {
        let key = (host.to_owned(), hub.to_ascii_lowercase());
        if let Some((ns, h, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < HUB_TTL
        {
            return Ok((ns.clone(), h.clone()));
        }
        let (ns, h) = self.hubs.hub(&self.namespace(host), hub).await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (ns.clone(), h.clone(), Instant::now()));
        Ok((ns, h))
    }

    fn partition(hub: &HubRecord, p: &str) -> Option<i64> {
        p.parse::<i64>()
            .ok()
            .filter(|n| (0..hub.partition_count).contains(n) && *p == n.to_string())
    }

    /// The partition a link names, or Azure's not-found error.
    fn pid(host: &str, hub: &str, h: &HubRecord, partition: &str) -> Result<i64, ReadError> {
        Self::partition(h, partition).ok_or_else(|| partition_not_found(host, hub, partition))
    }
}

fn entity(host: &str, hub: &str) -> String {
    format!("sb://{host}/{hub}")
}

fn partition_not_found(host: &str, hub: &str, partition: &str) -> ReadError {
    ReadError::NotFound {
        entity: format!("{}/partitions/{partition}", entity(host, hub)),
    }
}

fn read_err(host: &str, hub: &str, e: HubError) -> ReadError {
    match e {
        HubError::NotFound {
            kind: "consumer group",
            name,
        } => ReadError::NotFound {
            entity: format!("{}/consumergroups/{name}", entity(host, hub)),
        },
        HubError::NotFound {
            kind: "partition",
            name,
        } => ReadError::NotFound {
            entity: format!("{}/partitions/{name}", entity(host, hub)),
        },
        HubError::NotFound { .. } => ReadError::NotFound {
            entity: entity(host, hub),
        },
        other => {
            tracing::error!(error = %other, "an AMQP read failed");
            ReadError::Internal("the read failed; retry".into())
        }
    }
}

fn to_domain(v: AmqpValue) -> PropertyValue {
    match v {
        AmqpValue::String(s) => PropertyValue::String(s),
        AmqpValue::Long(n) => PropertyValue::Long(n),
        AmqpValue::Int(n) => PropertyValue::Int(n),
        AmqpValue::Double(f) => PropertyValue::Double(f),
        AmqpValue::Bool(b) => PropertyValue::Bool(b),
        AmqpValue::Binary(b) => PropertyValue::Binary(b),
        AmqpValue::Timestamp(t) => PropertyValue::Timestamp(t),
        AmqpValue::Uuid(u) => PropertyValue::Uuid(u),
        AmqpValue::Null => PropertyValue::Null,
    }
}

fn to_edge(v: PropertyValue) -> AmqpValue {
    match v {
        PropertyValue::String(s) => AmqpValue::String(s),
        PropertyValue::Long(n) => AmqpValue::Long(n),
        PropertyValue::Int(n) => AmqpValue::Int(n),
        PropertyValue::Double(f) => AmqpValue::Double(f),
        PropertyValue::Bool(b) => AmqpValue::Bool(b),
        PropertyValue::Binary(b) => AmqpValue::Binary(b),
        PropertyValue::Timestamp(t) => AmqpValue::Timestamp(t),
        PropertyValue::Uuid(u) => AmqpValue::Uuid(u),
        PropertyValue::Null => AmqpValue::Null,
    }
}

fn outbound(e: StoredEvent) -> OutboundEvent {
    OutboundEvent {
        sequence_number: e.sequence_number,
        enqueued_time_ms: e.enqueued_time_ms,
        event: InboundEvent {
            body: e.body,
            partition_key: e.partition_key,
            properties: e
                .properties
                .into_iter()
                .map(|(k, v)| (k, to_edge(v)))
                .collect(),
            amqp: e.amqp,
        },
    }
}

#[async_trait]
impl HubsBackend for HubsAmqp {
    async fn authorize(
        &self,
        namespace_host: &str,
        audience: &str,
        token: &str,
        _now: SystemTime,
    ) -> Result<Grant, AuthError> {
        let ns_name = self.namespace(namespace_host);
        let ns = match self.hubs.namespace(&ns_name).await {
            Ok(ns) => ns,
            Err(HubError::NotFound { .. }) => {
                return Err(AuthError::Unauthorized(format!(
                    "The namespace '{namespace_host}' does not exist."
                )));
            }
            Err(e) => return Err(AuthError::Internal(e.to_string())),
        };
        // The audience names the hub first: sb://host[:port]/hub[/...].
        let path = audience
            .split_once("://")
            .map_or(audience, |(_, rest)| rest);
        let hub_name = path.split('/').nth(1).filter(|h| !h.is_empty());
        let hub = match hub_name {
            Some(h) => self.hubs.hub(&ns.name, h).await.ok().map(|(_, h)| h),
            None => None,
        };
        match self
            .hubs
            .verify_token(&ns, hub.as_ref(), token, audience)
            .await
        {
            Ok(g) => Ok(Grant {
                rights: AmqpRights {
                    manage: g.rights.allows(Right::Manage),
                    send: g.rights.allows(Right::Send),
                    listen: g.rights.allows(Right::Listen),
                },
                expires_at: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(g.expires_at_unix.max(0) as u64),
                resource: g.resource,
            }),
            Err(HubError::Unauthorized(herald_hubs::SasError::Expired { .. })) => {
                Err(AuthError::Expired)
            }
            Err(HubError::Unauthorized(e)) => Err(AuthError::Unauthorized(e.to_string())),
            Err(HubError::BadRequest(e)) => Err(AuthError::Unauthorized(e)),
            Err(e) => Err(AuthError::Internal(e.to_string())),
        }
    }

    async fn hub_properties(
        &self,
        namespace_host: &str,
        hub: &str,
    ) -> Result<HubProperties, ReadError> {
        let (_, h) = self
            .hub(namespace_host, hub)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        Ok(HubProperties {
            name: h.name.clone(),
            created_at_ms: h.created,
            partition_ids: (0..h.partition_count).map(|p| p.to_string()).collect(),
        })
    }

    async fn partition_properties(
        &self,
        namespace_host: &str,
        hub: &str,
        partition: &str,
    ) -> Result<PartitionProperties, ReadError> {
        let (_, h) = self
            .hub(namespace_host, hub)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        let p = self
            .hubs
            .partitions(&h)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?
            .into_iter()
            .find(|p| Some(p.partition) == Self::partition(&h, partition))
            .ok_or_else(|| partition_not_found(namespace_host, hub, partition))?;
        let empty = p.is_empty();
        let last = p.next_seq - 1;
        Ok(PartitionProperties {
            hub: h.name.clone(),
            partition: partition.to_owned(),
            begin_sequence_number: if empty { -1 } else { p.begin_seq },
            last_enqueued_sequence_number: last,
            last_enqueued_offset: last.to_string(),
            last_enqueued_time_ms: p.last_enqueued,
            is_empty: empty,
        })
    }

    async fn append(
        &self,
        namespace_host: &str,
        hub: &str,
        target: PartitionTarget,
        events: Vec<InboundEvent>,
    ) -> Result<AppendReceipt, AppendError> {
        let (_, h) = self.hub(namespace_host, hub).await.map_err(|e| match e {
            HubError::NotFound { .. } => AppendError::NotFound {
                entity: entity(namespace_host, hub),
            },
            other => AppendError::Internal(other.to_string()),
        })?;
        let n = events.len() as i64;
        let events: Vec<NewEvent> = events
            .into_iter()
            .map(|e| NewEvent {
                body: e.body,
                partition_key: e.partition_key,
                properties: e
                    .properties
                    .into_iter()
                    .map(|(k, v)| (k, to_domain(v)))
                    .collect(),
                amqp: e.amqp,
            })
            .collect();
        let target = match target {
            PartitionTarget::Any => SendTarget::Any,
            PartitionTarget::Partition(p) => SendTarget::Partition(p),
            PartitionTarget::Key(k) => SendTarget::Key(k),
        };
        match self.hubs.send(&h, target, events).await {
            Ok(r) => Ok(AppendReceipt {
                partition: r.partition.to_string(),
                first_sequence_number: r.first_sequence_number,
                last_sequence_number: r.first_sequence_number + n - 1,
            }),
            Err(HubError::NotFound { kind, name }) => Err(AppendError::NotFound {
                entity: if kind == "partition" {
                    format!("{}/partitions/{name}", entity(namespace_host, hub))
                } else {
                    entity(namespace_host, hub)
                },
            }),
            Err(HubError::TooLarge(_)) => Err(AppendError::TooLarge {
                size: 0,
                max: herald_hubs::MAX_PUBLICATION_BYTES,
            }),
            Err(HubError::BadRequest(m)) => Err(AppendError::Invalid(m)),
            Err(e) => {
                tracing::error!(error = %e, "an AMQP append failed");
                Err(AppendError::Internal("the append failed; retry".into()))
            }
        }
    }

    async fn resolve_position(
        &self,
        namespace_host: &str,
        hub: &str,
        consumer_group: &str,
        partition: &str,
        position: &EventPosition,
    ) -> Result<i64, ReadError> {
        let (_, h) = self
            .hub(namespace_host, hub)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        self.hubs
            .consumer_group(&h, consumer_group)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        let pid = Self::pid(namespace_host, hub, &h, partition)?;
        let head = self
            .hubs
            .partitions(&h)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?
            .into_iter()
            .find(|p| p.partition == pid)
            .ok_or_else(|| partition_not_found(namespace_host, hub, partition))?;
        let (begin, next) = (head.begin_seq, head.next_seq);
        let past_end = |n: i64| ReadError::SequenceOutOfRange {
            requested: n,
            last: next - 1,
        };
        let start = match position {
            EventPosition::Earliest => begin,
            EventPosition::Latest => next,
            EventPosition::Offset { offset, inclusive } => {
                let n: i64 = offset.parse().map_err(|_| past_end(-1))?;
                let start = if *inclusive { n } else { n + 1 };
                if start > next {
                    return Err(past_end(n));
                }
                start
            }
            EventPosition::SequenceNumber {
                sequence_number,
                inclusive,
            } => {
                let n = *sequence_number;
                let start = if *inclusive { n } else { n + 1 };
                if start > next {
                    return Err(past_end(n));
                }
                start
            }
            EventPosition::EnqueuedTime {
                enqueued_time_ms,
                inclusive,
            } => {
                let after = if *inclusive {
                    enqueued_time_ms - 1
                } else {
                    *enqueued_time_ms
                };
                self.hubs
                    .first_after(&h, pid, after)
                    .await
                    .map_err(|e| read_err(namespace_host, hub, e))?
                    .unwrap_or(next)
            }
        };
        Ok(start.max(begin))
    }

    async fn read(
        &self,
        namespace_host: &str,
        hub: &str,
        _consumer_group: &str,
        partition: &str,
        from_sequence: i64,
        max: usize,
    ) -> Result<Vec<OutboundEvent>, ReadError> {
        let (_, h) = self
            .hub(namespace_host, hub)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        let pid = Self::pid(namespace_host, hub, &h, partition)?;
        let events = self
            .hubs
            .read(&h, pid, from_sequence, max)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        self.hubs.count_outgoing(&h, pid, &events);
        Ok(events.into_iter().map(outbound).collect())
    }

    async fn watch(
        &self,
        namespace_host: &str,
        hub: &str,
        partition: &str,
    ) -> Result<watch::Receiver<i64>, ReadError> {
        let (_, h) = self
            .hub(namespace_host, hub)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))?;
        let pid = Self::pid(namespace_host, hub, &h, partition)?;
        self.hubs
            .watch(&h, pid)
            .await
            .map_err(|e| read_err(namespace_host, hub, e))
    }
}
