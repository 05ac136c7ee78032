//! The hubs store, written once for both engines.
//!
//! The only write that races between nodes is the append, and it needs no
//! engine-specific code: `UPDATE hub_partitions ... RETURNING` takes the
//! partition's row lock on PostgreSQL (SQLite's single writer serialises
//! it anyway), so the segment's sequence numbers are drawn and inserted
//! under that lock and stay dense, in commit order, across nodes.

pub(crate) const HUB_COLS: &str =
    "id, namespace_id, key, name, partition_count, retention_hours, created, updated";
pub(crate) const POLICY_COLS: &str = "namespace_id, hub_id, key, name, rights, primary_key, \
     secondary_key, created, updated";
pub(crate) const PARTITION_COLS: &str =
    "partition, begin_seq, next_seq, last_enqueued, events_in, bytes_in, events_out, bytes_out";
pub(crate) const SEGMENT_COLS: &str = "first_seq, count, bytes, enqueued, payload";

/// Implements [`HubStore`](crate::HubStore) for an engine.
macro_rules! hub_store {
    ($S:ty) => {
        mod hub_store {
            use super::*;
            use crate::Result;
            use crate::engine::{BoxFuture, Conn, Engine};
            use crate::hubs::store::{HUB_COLS, PARTITION_COLS, POLICY_COLS, SEGMENT_COLS};
            use crate::hubs::*;

            type S = $S;

            async fn insert_policy(tx: &mut Conn<S>, p: &PolicyRecord) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO hub_policies (namespace_id, hub_id, key, name, rights, \
                     primary_key, secondary_key, created, updated) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (namespace_id, hub_id, key) DO UPDATE SET name = $4, \
                     rights = $5, primary_key = $6, secondary_key = $7, updated = $9",
                )
                .bind(p.namespace_id.as_str())
                .bind(&p.hub_id)
                .bind(&p.key)
                .bind(&p.name)
                .bind(&p.rights)
                .bind(&p.primary_key)
                .bind(&p.secondary_key)
                .bind(p.created)
                .bind(p.updated)
                .execute(&mut *tx)
                .await?;
                // An upsert reports one row either way; `created` tells them apart.
                let created: i64 = sqlx::query_scalar(
                    "SELECT created FROM hub_policies WHERE namespace_id = $1 AND hub_id = $2 \
                     AND key = $3",
                )
                .bind(p.namespace_id.as_str())
                .bind(&p.hub_id)
                .bind(&p.key)
                .fetch_one(&mut *tx)
                .await?;
                Ok(done.rows_affected() == 1 && created == p.created && p.created == p.updated)
            }

            #[async_trait::async_trait]
            impl HubStore for S {
                async fn create_namespace(
                    &self,
                    ns: &NamespaceRecord,
                    root: &PolicyRecord,
                ) -> Result<bool> {
                    let (ns, root) = (ns.clone(), root.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO hub_namespaces (id, key, name, created) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                            )
                            .bind(ns.id.as_str())
                            .bind(&ns.key)
                            .bind(&ns.name)
                            .bind(ns.created)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() == 0 {
                                return Ok(false);
                            }
                            insert_policy(&mut *tx, &root).await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn namespace(&self, key: &str) -> Result<Option<NamespaceRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT id, key, name, created FROM hub_namespaces WHERE key = $1",
                    )
                    .bind(key)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn list_namespaces(&self) -> Result<Vec<NamespaceRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT id, key, name, created FROM hub_namespaces ORDER BY key{}",
                        S::BYTE_ORDER
                    ))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn delete_namespace(&self, key: &str) -> Result<bool> {
                    let key = key.to_owned();
                    // Foreign keys cascade to hubs, their logs, groups,
                    // checkpoints and the policies.
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query("DELETE FROM hub_namespaces WHERE key = $1")
                                .bind(&key)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn create_hub(
                    &self,
                    hub: &HubRecord,
                    default_group: &ConsumerGroupRecord,
                ) -> Result<bool> {
                    let (hub, group) = (hub.clone(), default_group.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO hubs (id, namespace_id, key, name, partition_count, \
                                 retention_hours, created, updated) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                                 ON CONFLICT (namespace_id, key) DO NOTHING",
                            )
                            .bind(hub.id.as_str())
                            .bind(hub.namespace_id.as_str())
                            .bind(&hub.key)
                            .bind(&hub.name)
                            .bind(hub.partition_count)
                            .bind(hub.retention_hours)
                            .bind(hub.created)
                            .bind(hub.updated)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() == 0 {
                                return Ok(false);
                            }
                            add_partitions(&mut *tx, hub.id.as_str(), 0, hub.partition_count)
                                .await?;
                            sqlx::query(
                                "INSERT INTO hub_consumer_groups (hub_id, key, name, \
                                 user_metadata, created) VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(hub.id.as_str())
                            .bind(&group.key)
                            .bind(&group.name)
                            .bind(&group.user_metadata)
                            .bind(group.created)
                            .execute(&mut *tx)
                            .await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn hub(&self, namespace_id: &str, key: &str) -> Result<Option<HubRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {HUB_COLS} FROM hubs WHERE namespace_id = $1 AND key = $2"
                    ))
                    .bind(namespace_id)
                    .bind(key)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn list_hubs(&self, namespace_id: &str) -> Result<Vec<HubRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {HUB_COLS} FROM hubs WHERE namespace_id = $1 ORDER BY key{}",
                        S::BYTE_ORDER
                    ))
                    .bind(namespace_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn all_hubs(&self) -> Result<Vec<HubRecord>> {
                    Ok(sqlx::query_as(&format!("SELECT {HUB_COLS} FROM hubs ORDER BY id"))
                        .fetch_all(self.reader())
                        .await?)
                }

                async fn delete_hub(&self, namespace_id: &str, key: &str) -> Result<bool> {
                    let (ns, key) = (namespace_id.to_owned(), key.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let id: Option<String> = sqlx::query_scalar(
                                "DELETE FROM hubs WHERE namespace_id = $1 AND key = $2 RETURNING id",
                            )
                            .bind(&ns)
                            .bind(&key)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(id) = id else { return Ok(false) };
                            // Hub policies name the hub by id, outside the cascade.
                            sqlx::query("DELETE FROM hub_policies WHERE hub_id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn update_hub(
                    &self,
                    hub_id: &str,
                    partition_count: i64,
                    retention_hours: i64,
                    now: i64,
                ) -> Result<bool> {
                    let id = hub_id.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let old: Option<i64> = sqlx::query_scalar(&format!(
                                "SELECT partition_count FROM hubs WHERE id = $1{}",
                                S::FOR_UPDATE
                            ))
                            .bind(&id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(old) = old else { return Ok(false) };
                            let count = partition_count.max(old);
                            sqlx::query(
                                "UPDATE hubs SET partition_count = $1, retention_hours = $2, \
                                 updated = $3 WHERE id = $4",
                            )
                            .bind(count)
                            .bind(retention_hours)
                            .bind(now)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                            add_partitions(&mut *tx, &id, old, count).await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn put_consumer_group(
                    &self,
                    hub_id: &str,
                    group: &ConsumerGroupRecord,
                ) -> Result<bool> {
                    let (id, g) = (hub_id.to_owned(), group.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let updated = sqlx::query(
                                "UPDATE hub_consumer_groups SET user_metadata = $1 \
                                 WHERE hub_id = $2 AND key = $3",
                            )
                            .bind(&g.user_metadata)
                            .bind(&id)
                            .bind(&g.key)
                            .execute(&mut *tx)
                            .await?;
                            if updated.rows_affected() == 1 {
                                return Ok(false);
                            }
                            let done = sqlx::query(
                                "INSERT INTO hub_consumer_groups (hub_id, key, name, \
                                 user_metadata, created) VALUES ($1, $2, $3, $4, $5) \
                                 ON CONFLICT (hub_id, key) DO NOTHING",
                            )
                            .bind(&id)
                            .bind(&g.key)
                            .bind(&g.name)
                            .bind(&g.user_metadata)
                            .bind(g.created)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn consumer_groups(&self, hub_id: &str) -> Result<Vec<ConsumerGroupRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT key, name, user_metadata, created FROM hub_consumer_groups \
                         WHERE hub_id = $1 ORDER BY key{}",
                        S::BYTE_ORDER
                    ))
                    .bind(hub_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn delete_consumer_group(&self, hub_id: &str, key: &str) -> Result<bool> {
                    let (id, key) = (hub_id.to_owned(), key.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "DELETE FROM hub_consumer_groups WHERE hub_id = $1 AND key = $2",
                            )
                            .bind(&id)
                            .bind(&key)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "DELETE FROM hub_checkpoints WHERE hub_id = $1 AND group_key = $2",
                            )
                            .bind(&id)
                            .bind(&key)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn put_policy(&self, policy: &PolicyRecord) -> Result<bool> {
                    let p = policy.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move { insert_policy(&mut *tx, &p).await })
                    })
                    .await
                }

                async fn policies(
                    &self,
                    namespace_id: &str,
                    hub_id: &str,
                ) -> Result<Vec<PolicyRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {POLICY_COLS} FROM hub_policies WHERE namespace_id = $1 \
                         AND hub_id = $2 ORDER BY key{}",
                        S::BYTE_ORDER
                    ))
                    .bind(namespace_id)
                    .bind(hub_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn policy(
                    &self,
                    namespace_id: &str,
                    hub_id: &str,
                    key: &str,
                ) -> Result<Option<PolicyRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {POLICY_COLS} FROM hub_policies WHERE namespace_id = $1 \
                         AND hub_id = $2 AND key = $3"
                    ))
                    .bind(namespace_id)
                    .bind(hub_id)
                    .bind(key)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn delete_policy(
                    &self,
                    namespace_id: &str,
                    hub_id: &str,
                    key: &str,
                ) -> Result<bool> {
                    let (ns, hub, key) = (namespace_id.to_owned(), hub_id.to_owned(), key.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "DELETE FROM hub_policies WHERE namespace_id = $1 AND hub_id = $2 \
                                 AND key = $3",
                            )
                            .bind(&ns)
                            .bind(&hub)
                            .bind(&key)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn append_segment(
                    &self,
                    segment: NewSegment,
                    stamp: Stamp,
                ) -> Result<Option<Appended>> {
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let mut seg = segment;
                            // The row lock taken here orders appends to
                            // one partition; the enqueued time never goes
                            // backwards, whichever node's clock stamps it.
                            let head: Option<(i64, i64)> = sqlx::query_as(
                                "UPDATE hub_partitions SET next_seq = next_seq + $3, \
                                 last_enqueued = CASE WHEN last_enqueued > $4 THEN last_enqueued \
                                 ELSE $4 END, events_in = events_in + $3, bytes_in = bytes_in + $5 \
                                 WHERE hub_id = $1 AND partition = $2 \
                                 RETURNING next_seq, last_enqueued",
                            )
                            .bind(seg.hub_id.as_str())
                            .bind(seg.partition)
                            .bind(seg.count)
                            .bind(seg.now_ms)
                            .bind(seg.bytes)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some((next, enqueued)) = head else {
                                return Ok(None);
                            };
                            let first_seq = next - seg.count;
                            stamp(&mut seg.payload, first_seq, enqueued);
                            sqlx::query(
                                "INSERT INTO hub_segments (hub_id, partition, first_seq, count, \
                                 bytes, enqueued, payload) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                            )
                            .bind(seg.hub_id.as_str())
                            .bind(seg.partition)
                            .bind(first_seq)
                            .bind(seg.count)
                            .bind(seg.bytes)
                            .bind(enqueued)
                            .bind(&seg.payload)
                            .execute(&mut *tx)
                            .await?;
                            Ok(Some(Appended {
                                first_seq,
                                enqueued,
                            }))
                        })
                    })
                    .await
                }

                async fn partitions(&self, hub_id: &str) -> Result<Vec<PartitionRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {PARTITION_COLS} FROM hub_partitions WHERE hub_id = $1 \
                         ORDER BY partition"
                    ))
                    .bind(hub_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn add_outgoing(&self, deltas: Vec<(String, i64, i64, i64)>) -> Result<()> {
                    if deltas.is_empty() {
                        return Ok(());
                    }
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            for (hub_id, partition, events, bytes) in &deltas {
                                sqlx::query(
                                    "UPDATE hub_partitions SET events_out = events_out + $3, \
                                     bytes_out = bytes_out + $4 WHERE hub_id = $1 AND partition = $2",
                                )
                                .bind(hub_id)
                                .bind(partition)
                                .bind(events)
                                .bind(bytes)
                                .execute(&mut *tx)
                                .await?;
                            }
                            Ok(())
                        })
                    })
                    .await
                }

                async fn read_segments(
                    &self,
                    hub_id: &str,
                    partition: i64,
                    from_seq: i64,
                    max_events: i64,
                ) -> Result<Vec<SegmentRecord>> {
                    // The segment holding `from_seq` starts at or before it;
                    // the rest start after it, in order.
                    let mut out: Vec<SegmentRecord> = sqlx::query_as(&format!(
                        "SELECT {SEGMENT_COLS} FROM hub_segments WHERE hub_id = $1 \
                         AND partition = $2 AND first_seq <= $3 ORDER BY first_seq DESC LIMIT 1"
                    ))
                    .bind(hub_id)
                    .bind(partition)
                    .bind(from_seq)
                    .fetch_all(self.reader())
                    .await?;
                    out.retain(|s| s.first_seq + s.count > from_seq);
                    let mut have: i64 = out
                        .iter()
                        .map(|s| s.first_seq + s.count - from_seq)
                        .sum();
                    let mut after = from_seq;
                    while have < max_events {
                        // Segments hold at least one event, so this many rows suffice.
                        let limit = (max_events - have).clamp(1, 1000);
                        let more: Vec<SegmentRecord> = sqlx::query_as(&format!(
                            "SELECT {SEGMENT_COLS} FROM hub_segments WHERE hub_id = $1 \
                             AND partition = $2 AND first_seq > $3 ORDER BY first_seq LIMIT $4"
                        ))
                        .bind(hub_id)
                        .bind(partition)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await?;
                        let Some(last) = more.last() else { break };
                        after = last.first_seq;
                        let full = more.len() as i64 == limit;
                        for s in more {
                            if have >= max_events {
                                break;
                            }
                            have += s.count;
                            out.push(s);
                        }
                        if !full {
                            break;
                        }
                    }
                    Ok(out)
                }

                async fn first_seq_after(
                    &self,
                    hub_id: &str,
                    partition: i64,
                    after_ms: i64,
                ) -> Result<Option<i64>> {
                    Ok(sqlx::query_scalar(
                        "SELECT first_seq FROM hub_segments WHERE hub_id = $1 AND partition = $2 \
                         AND enqueued > $3 ORDER BY first_seq LIMIT 1",
                    )
                    .bind(hub_id)
                    .bind(partition)
                    .bind(after_ms)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn prune_segments(&self, hub_id: &str, before_ms: i64) -> Result<i64> {
                    let id = hub_id.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let dropped: Vec<(i64, i64)> = sqlx::query_as(
                                "DELETE FROM hub_segments WHERE hub_id = $1 AND enqueued < $2 \
                                 RETURNING partition, count",
                            )
                            .bind(&id)
                            .bind(before_ms)
                            .fetch_all(&mut *tx)
                            .await?;
                            if dropped.is_empty() {
                                return Ok(0);
                            }
                            // The oldest retained segment, or the head when
                            // none is left, is where the partition begins.
                            sqlx::query(
                                "UPDATE hub_partitions SET begin_seq = COALESCE((SELECT \
                                 MIN(first_seq) FROM hub_segments s WHERE s.hub_id = \
                                 hub_partitions.hub_id AND s.partition = hub_partitions.partition), \
                                 next_seq) WHERE hub_id = $1",
                            )
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                            Ok(dropped.iter().map(|(_, n)| n).sum())
                        })
                    })
                    .await
                }

                async fn put_checkpoint(
                    &self,
                    hub_id: &str,
                    group_key: &str,
                    partition: i64,
                    seq: i64,
                    now: i64,
                ) -> Result<()> {
                    let (id, g) = (hub_id.to_owned(), group_key.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO hub_checkpoints (hub_id, group_key, partition, seq, \
                                 updated) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hub_id, \
                                 group_key, partition) DO UPDATE SET seq = $4, updated = $5",
                            )
                            .bind(&id)
                            .bind(&g)
                            .bind(partition)
                            .bind(seq)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn checkpoints(
                    &self,
                    hub_id: &str,
                    group_key: &str,
                ) -> Result<Vec<CheckpointRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT partition, seq, updated FROM hub_checkpoints WHERE hub_id = $1 \
                         AND group_key = $2 ORDER BY partition",
                    )
                    .bind(hub_id)
                    .bind(group_key)
                    .fetch_all(self.reader())
                    .await?)
                }
            }

            /// Adds partitions `from..to` (new ones start empty).
            async fn add_partitions(tx: &mut Conn<S>, hub_id: &str, from: i64, to: i64) -> Result<()> {
                for p in from..to {
                    sqlx::query(
                        "INSERT INTO hub_partitions (hub_id, partition) VALUES ($1, $2) \
                         ON CONFLICT (hub_id, partition) DO NOTHING",
                    )
                    .bind(hub_id)
                    .bind(p)
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(())
            }
        }
    };
}

pub(crate) use hub_store;
