//! The router's tables on SQLite. Every mutation runs through the group
//! committer, so a claim or settle is one serialised transaction.

use super::SqliteStorage;
use super::vault::{TOPIC_COLS, topic_from_row};
use crate::engine::BoxFuture;
use crate::router::*;
use crate::{Result, TopicRecord};
use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

const SUB_COLS: &str =
    "id, topic_id, name, config, provisioning_state, state_reason, created, updated";

fn sub_from_row(r: &SqliteRow) -> Result<SubscriptionRecord> {
    Ok(SubscriptionRecord {
        id: r.try_get("id")?,
        topic_id: r.try_get("topic_id")?,
        name: r.try_get("name")?,
        config: r.try_get("config")?,
        provisioning_state: r.try_get("provisioning_state")?,
        state_reason: r.try_get("state_reason")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

fn validation_from_row(r: &SqliteRow) -> Result<PendingValidation> {
    Ok(PendingValidation {
        subscription_id: r.try_get("subscription_id")?,
        code: r.try_get("code")?,
        expires_at: r.try_get("expires_at")?,
    })
}

fn log_row(r: &SqliteRow) -> Result<LogRow> {
    Ok(LogRow {
        seq: r.try_get("seq")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        published_at: r.try_get("created")?,
    })
}

async fn bump(tx: &mut SqliteConnection, scope: &str, name: &str, by: i64) -> Result<()> {
    if by == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO counters (scope, name, value) VALUES (?, ?, ?) \
         ON CONFLICT (scope, name) DO UPDATE SET value = value + excluded.value",
    )
    .bind(scope)
    .bind(name)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    tx: &mut SqliteConnection,
    sub: &str,
    row: &LogRow,
    reason: &str,
    delivery_count: i64,
    last_outcome: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    dead_letter_with_status(
        tx,
        sub,
        row,
        reason,
        delivery_count,
        last_outcome,
        None,
        now_ms,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter_with_status(
    tx: &mut SqliteConnection,
    sub: &str,
    row: &LogRow,
    reason: &str,
    delivery_count: i64,
    last_outcome: Option<&str>,
    last_status: Option<u16>,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO dead_letters (subscription_id, seq, body, reason, delivery_count, last_outcome, \
         published_at, dead_lettered_at, last_status, last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(sub)
    .bind(row.seq)
    .bind(&row.body)
    .bind(reason)
    .bind(delivery_count)
    .bind(last_outcome)
    .bind(row.published_at)
    .bind(now_ms / 1000)
    .bind(last_status.map(i64::from))
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM subscription_messages WHERE subscription_id = ? AND seq = ?")
        .bind(sub)
        .bind(row.seq)
        .execute(&mut *tx)
        .await?;
    bump(tx, sub, "deadLettered", 1).await
}

async fn insert_attempts(tx: &mut SqliteConnection, attempts: &[AttemptRecord]) -> Result<()> {
    for chunk in attempts.chunks(100) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO delivery_attempts (subscription_id, seq, event_id, attempt, at, status, \
             latency_ms, outcome, response, event_count, more_event_ids) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.subscription_id.as_str())
                .push_bind(a.seq)
                .push_bind(a.event_ids.first().map_or("", String::as_str))
                .push_bind(a.attempt)
                .push_bind(a.at_ms)
                .push_bind(a.status.map(i64::from))
                .push_bind(a.latency_ms)
                .push_bind(a.outcome.as_str())
                .push_bind(a.response.as_deref())
                .push_bind(a.event_ids.len() as i64)
                .push_bind(a.more_event_ids());
        });
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

async fn claim_in(
    tx: &mut SqliteConnection,
    sub: &str,
    topic_id: &str,
    o: &ClaimOptions,
    matcher: &Matcher,
) -> Result<Vec<ClaimedMessage>> {
    let Some(cursor): Option<i64> =
        sqlx::query_scalar("SELECT cursor_seq FROM event_subscriptions WHERE id = ?")
            .bind(sub)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let expired = |row: &LogRow| o.now_ms - row.published_at * 1000 >= o.ttl_ms;

    // Messages already in flight that are due again come first, in order.
    let due = sqlx::query(
        "SELECT m.seq, m.delivery_count, m.last_outcome, m.last_status, e.event_id, e.event_type, e.subject, e.body, e.created \
         FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
         WHERE m.subscription_id = ?1 AND m.available_at <= ?2 \
         ORDER BY m.seq LIMIT ?3",
    )
    .bind(sub)
    .bind(o.now_ms)
    .bind(o.max)
    .fetch_all(&mut *tx)
    .await?;
    for r in &due {
        let row = log_row(r)?;
        let count: i64 = r.try_get("delivery_count")?;
        let outcome: Option<String> = r.try_get("last_outcome")?;
        if count >= o.max_delivery_count {
            dead_letter(
                tx,
                sub,
                &row,
                "MaxDeliveryAttemptsExceeded",
                count,
                outcome.as_deref(),
                o.now_ms,
            )
            .await?;
            continue;
        }
        if expired(&row) {
            dead_letter(
                tx,
                sub,
                &row,
                "TimeToLiveExceeded",
                count,
                outcome.as_deref(),
                o.now_ms,
            )
            .await?;
            continue;
        }
        let token = lock_token(row.seq);
        sqlx::query(
            "UPDATE subscription_messages SET state = 'locked', lock_token = ?1, lock_expires_at = ?2, \
             available_at = ?2, first_locked_at = ?3, delivery_count = delivery_count + 1 \
             WHERE subscription_id = ?4 AND seq = ?5",
        )
        .bind(&token)
        .bind(o.now_ms + o.lock_ms)
        .bind(o.now_ms)
        .bind(sub)
        .bind(row.seq)
        .execute(&mut *tx)
        .await?;
        out.push(ClaimedMessage {
            row,
            lock_token: token,
            delivery_count: count + 1,
            last_status: r
                .try_get::<Option<i64>, _>("last_status")?
                .and_then(|v| u16::try_from(v).ok()),
            last_outcome: outcome,
        });
    }
    if out.len() as i64 >= o.max {
        return Ok(out);
    }

    // Then new log rows past the cursor, filtered here so only matches
    // ever get a per-subscription row.
    let (mut matched, mut unmatched) = (0, 0);
    let mut next_cursor = cursor;
    let mut inserts: Vec<(i64, String)> = Vec::new();
    let mut scanned = 0;
    // Read in pages sized to what is still wanted, so a claim of a few
    // events does not pull a large slice of the log.
    'scan: while (out.len() as i64) < o.max && scanned < o.scan_limit {
        let page = (o.max - out.len() as i64)
            .max(16)
            .min(o.scan_limit - scanned);
        let fresh = sqlx::query(
            "SELECT seq, event_id, event_type, subject, body, created FROM event_log \
             WHERE topic_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
        )
        .bind(topic_id)
        .bind(next_cursor)
        .bind(page)
        .fetch_all(&mut *tx)
        .await?;
        if fresh.is_empty() {
            break;
        }
        scanned += fresh.len() as i64;
        for r in &fresh {
            if out.len() as i64 >= o.max {
                break 'scan;
            }
            let row = log_row(r)?;
            next_cursor = row.seq + 1;
            if !matcher(&row) {
                unmatched += 1;
                continue;
            }
            matched += 1;
            if expired(&row) {
                sqlx::query(
                    "INSERT INTO dead_letters (subscription_id, seq, body, reason, delivery_count, \
                     published_at, dead_lettered_at) VALUES (?, ?, ?, 'TimeToLiveExceeded', 0, ?, ?)",
                )
                .bind(sub)
                .bind(row.seq)
                .bind(&row.body)
                .bind(row.published_at)
                .bind(o.now_ms / 1000)
                .execute(&mut *tx)
                .await?;
                bump(tx, sub, "deadLettered", 1).await?;
                continue;
            }
            let token = lock_token(row.seq);
            inserts.push((row.seq, token.clone()));
            out.push(ClaimedMessage {
                row,
                lock_token: token,
                delivery_count: 1,
                last_outcome: None,
                last_status: None,
            });
        }
    }
    for chunk in inserts.chunks(100) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO subscription_messages (subscription_id, seq, state, available_at, lock_token, \
             lock_expires_at, first_locked_at, delivery_count, enqueued_at) ",
        );
        q.push_values(chunk, |mut b, (seq, token)| {
            b.push_bind(sub)
                .push_bind(*seq)
                .push_bind("locked")
                .push_bind(o.now_ms + o.lock_ms)
                .push_bind(token.as_str())
                .push_bind(o.now_ms + o.lock_ms)
                .push_bind(o.now_ms)
                .push_bind(1i64)
                .push_bind(o.now_ms);
        });
        q.build().execute(&mut *tx).await?;
    }
    if next_cursor != cursor {
        sqlx::query("UPDATE event_subscriptions SET cursor_seq = ? WHERE id = ?")
            .bind(next_cursor)
            .bind(sub)
            .execute(&mut *tx)
            .await?;
    }
    bump(tx, sub, "matched", matched).await?;
    bump(tx, sub, "unmatched", unmatched).await?;
    Ok(out)
}

async fn settle_in(
    tx: &mut SqliteConnection,
    sub: &str,
    tokens: &[String],
    action: SettleAction,
    now_ms: i64,
) -> Result<Vec<Result<(), SettleFailure>>> {
    // One lookup for every token's row, then one statement per action kind.
    let seqs: Vec<Option<i64>> = tokens.iter().map(|t| lock_token_seq(t)).collect();
    let wanted: Vec<i64> = seqs.iter().flatten().copied().collect();
    let mut live: std::collections::HashMap<i64, (String, i64)> = std::collections::HashMap::new();
    for chunk in wanted.chunks(500) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT seq, lock_token, first_locked_at FROM subscription_messages WHERE subscription_id = ",
        );
        q.push_bind(sub)
            .push(" AND state = 'locked' AND lock_expires_at > ")
            .push_bind(now_ms)
            .push(" AND seq IN (");
        let mut sep = q.separated(", ");
        for seq in chunk {
            sep.push_bind(*seq);
        }
        q.push(")");
        for r in q.build().fetch_all(&mut *tx).await? {
            let token: Option<String> = r.try_get("lock_token")?;
            let first: Option<i64> = r.try_get("first_locked_at")?;
            live.insert(
                r.try_get("seq")?,
                (token.unwrap_or_default(), first.unwrap_or(now_ms)),
            );
        }
    }
    let mut results = Vec::with_capacity(tokens.len());
    let mut settled: Vec<i64> = Vec::new();
    for (token, seq) in tokens.iter().zip(&seqs) {
        let ok = seq
            .and_then(|s| live.get(&s).map(|(t, first)| (s, t, *first)))
            .filter(|(_, t, first)| {
                *t == token
                    && match action {
                        SettleAction::RenewLock { max_hold_ms, .. } => {
                            now_ms - first <= max_hold_ms
                        }
                        _ => true,
                    }
            });
        match ok {
            Some((s, _, _)) if !settled.contains(&s) => {
                settled.push(s);
                results.push(Ok(()));
            }
            _ => results.push(Err(SettleFailure::TokenLost)),
        }
    }
    for chunk in settled.chunks(500) {
        let in_list = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push(" WHERE subscription_id = ")
                .push_bind(sub.to_owned())
                .push(" AND seq IN (");
            let mut sep = q.separated(", ");
            for seq in chunk {
                sep.push_bind(*seq);
            }
            q.push(")");
        };
        match action {
            SettleAction::Acknowledge => {
                let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM subscription_messages");
                in_list(&mut q);
                q.build().execute(&mut *tx).await?;
            }
            SettleAction::Release { delay_ms } => {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "UPDATE subscription_messages SET state = 'ready', lock_token = NULL, lock_expires_at = NULL, available_at = ",
                );
                q.push_bind(now_ms + delay_ms);
                in_list(&mut q);
                q.build().execute(&mut *tx).await?;
            }
            SettleAction::RenewLock { lock_ms, .. } => {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "UPDATE subscription_messages SET lock_expires_at = ",
                );
                q.push_bind(now_ms + lock_ms)
                    .push(", available_at = ")
                    .push_bind(now_ms + lock_ms);
                in_list(&mut q);
                q.build().execute(&mut *tx).await?;
            }
            SettleAction::Retry {
                delay_ms,
                outcome,
                status,
            } => {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "UPDATE subscription_messages SET state = 'ready', lock_token = NULL, lock_expires_at = NULL, available_at = ",
                );
                q.push_bind(now_ms + delay_ms)
                    .push(", last_outcome = ")
                    .push_bind(outcome)
                    .push(", last_status = ")
                    .push_bind(status.map(i64::from))
                    .push(", last_attempt_at = ")
                    .push_bind(now_ms);
                in_list(&mut q);
                q.build().execute(&mut *tx).await?;
                bump(tx, sub, "failed", chunk.len() as i64).await?;
            }
            SettleAction::DeadLetter {
                reason,
                outcome,
                status,
                attempted,
            } => {
                for seq in chunk {
                    let row = sqlx::query(
                        "SELECT m.delivery_count, e.seq, e.event_id, e.event_type, e.subject, e.body, e.created \
                         FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
                         WHERE m.subscription_id = ? AND m.seq = ?",
                    )
                    .bind(sub)
                    .bind(seq)
                    .fetch_one(&mut *tx)
                    .await?;
                    let count = attempts_made(row.try_get("delivery_count")?, attempted);
                    dead_letter_with_status(
                        tx,
                        sub,
                        &log_row(&row)?,
                        reason,
                        count,
                        Some(outcome),
                        status,
                        now_ms,
                    )
                    .await?;
                }
                bump(tx, sub, "failed", chunk.len() as i64).await?;
            }
            SettleAction::Reject => {
                for seq in chunk {
                    let row = sqlx::query(
                        "SELECT m.delivery_count, m.last_outcome, e.seq, e.event_id, e.event_type, e.subject, e.body, e.created \
                         FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
                         WHERE m.subscription_id = ? AND m.seq = ?",
                    )
                    .bind(sub)
                    .bind(seq)
                    .fetch_one(&mut *tx)
                    .await?;
                    let count: i64 = row.try_get("delivery_count")?;
                    let outcome: Option<String> = row.try_get("last_outcome")?;
                    dead_letter(
                        tx,
                        sub,
                        &log_row(&row)?,
                        "Rejected",
                        count,
                        outcome.as_deref(),
                        now_ms,
                    )
                    .await?;
                }
            }
        }
    }
    if matches!(action, SettleAction::Acknowledge) {
        bump(tx, sub, "delivered", settled.len() as i64).await?;
    }
    Ok(results)
}

#[async_trait]
impl RouterStore for SqliteStorage {
    async fn create_topic(&self, t: &TopicRecord) -> Result<bool> {
        let t = t.clone();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let done = sqlx::query(
                        "INSERT INTO topics (id, kind, name, arm_id, created, input_schema, input_mapping, key1, key2) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&t.id)
                    .bind(&t.kind)
                    .bind(&t.name)
                    .bind(&t.arm_id)
                    .bind(t.created)
                    .bind(&t.input_schema)
                    .bind(&t.input_mapping)
                    .bind(&t.key1)
                    .bind(&t.key2)
                    .execute(&mut *tx)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            })
            .await
    }

    async fn topic_by_name(&self, name: &str) -> Result<Option<TopicRecord>> {
        let row = sqlx::query(&format!("SELECT {TOPIC_COLS} FROM topics WHERE name = ?"))
            .bind(name)
            .fetch_all(&self.reader)
            .await?
            .into_iter()
            .next();
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
        let rows = sqlx::query(&format!("SELECT {TOPIC_COLS} FROM topics ORDER BY name"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(topic_from_row).collect()
    }

    async fn delete_topic(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let id: Option<String> = sqlx::query_scalar(
                            "SELECT id FROM topics WHERE name = ? AND kind = 'custom'",
                        )
                        .bind(&name)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(id) = id else { return Ok(false) };
                        sqlx::query("DELETE FROM event_log WHERE topic_id = ?")
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("DELETE FROM topics WHERE id = ?")
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                        Ok(true)
                    })
                },
            )
            .await
    }

    async fn set_topic_key(&self, topic_id: &str, which: u8, sealed: &[u8]) -> Result<bool> {
        let (topic_id, sealed) = (topic_id.to_owned(), sealed.to_vec());
        let column = if which == 2 { "key2" } else { "key1" };
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let done =
                            sqlx::query(&format!("UPDATE topics SET {column} = ? WHERE id = ?"))
                                .bind(&sealed)
                                .bind(&topic_id)
                                .execute(&mut *tx)
                                .await?;
                        Ok(done.rows_affected() == 1)
                    })
                },
            )
            .await
    }

    async fn append_events(&self, topic_id: &str, events: Vec<NewLogEvent>) -> Result<i64> {
        let topic_id = topic_id.to_owned();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let now: i64 = sqlx::query_scalar("SELECT unixepoch()").fetch_one(&mut *tx).await?;
                    for chunk in events.chunks(200) {
                        let mut q = QueryBuilder::<Sqlite>::new(
                            "INSERT INTO event_log (topic_id, event_id, event_type, subject, body, created) ",
                        );
                        q.push_values(chunk, |mut b, e| {
                            b.push_bind(topic_id.as_str())
                                .push_bind(e.event_id.as_str())
                                .push_bind(e.event_type.as_str())
                                .push_bind(e.subject.as_str())
                                .push_bind(e.body.as_str())
                                .push_bind(now);
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                    bump(tx, &topic_id, "published", events.len() as i64).await?;
                    let last: i64 = sqlx::query_scalar("SELECT last_insert_rowid()").fetch_one(&mut *tx).await?;
                    Ok(last)
                })
            })
            .await
    }

    async fn head_seq(&self, topic_id: &str) -> Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM event_log WHERE topic_id = ?")
                .bind(topic_id)
                .fetch_all(&self.reader)
                .await?
                .into_iter()
                .next()
                .ok_or(sqlx::Error::RowNotFound)?;
        Ok(seq.unwrap_or(0))
    }

    async fn put_subscription(&self, s: &SubscriptionRecord) -> Result<bool> {
        let s = s.clone();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let exists: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM event_subscriptions WHERE topic_id = ? AND name = ?",
                    )
                    .bind(&s.topic_id)
                    .bind(&s.name)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if exists.is_some() {
                        sqlx::query(
                            "UPDATE event_subscriptions SET config = ?, provisioning_state = ?, state_reason = ?, \
                             updated = ? WHERE topic_id = ? AND name = ?",
                        )
                        .bind(&s.config)
                        .bind(&s.provisioning_state)
                        .bind(&s.state_reason)
                        .bind(s.updated)
                        .bind(&s.topic_id)
                        .bind(&s.name)
                        .execute(&mut *tx)
                        .await?;
                        return Ok(false);
                    }
                    // A new subscription sees events published after it exists.
                    sqlx::query(
                        "INSERT INTO event_subscriptions (id, topic_id, name, config, provisioning_state, \
                         state_reason, cursor_seq, created, updated) \
                         VALUES (?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM event_log), ?, ?)",
                    )
                    .bind(&s.id)
                    .bind(&s.topic_id)
                    .bind(&s.name)
                    .bind(&s.config)
                    .bind(&s.provisioning_state)
                    .bind(&s.state_reason)
                    .bind(s.created)
                    .bind(s.updated)
                    .execute(&mut *tx)
                    .await?;
                    Ok(true)
                })
            })
            .await
    }

    async fn subscription(&self, topic_id: &str, name: &str) -> Result<Option<SubscriptionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM event_subscriptions WHERE topic_id = ? AND name = ?"
        ))
        .bind(topic_id)
        .bind(name)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .next();
        row.as_ref().map(sub_from_row).transpose()
    }

    async fn list_subscriptions(&self, topic_id: &str) -> Result<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM event_subscriptions WHERE topic_id = ? ORDER BY name"
        ))
        .bind(topic_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(sub_from_row).collect()
    }

    async fn delete_subscription(&self, topic_id: &str, name: &str) -> Result<bool> {
        let (topic_id, name) = (topic_id.to_owned(), name.to_owned());
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let done = sqlx::query(
                            "DELETE FROM event_subscriptions WHERE topic_id = ? AND name = ?",
                        )
                        .bind(&topic_id)
                        .bind(&name)
                        .execute(&mut *tx)
                        .await?;
                        Ok(done.rows_affected() == 1)
                    })
                },
            )
            .await
    }

    async fn set_subscription_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let (id, state, reason) = (id.to_owned(), state.to_owned(), reason.map(str::to_owned));
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        sqlx::query(
                        "UPDATE event_subscriptions SET provisioning_state = ?, state_reason = ?, \
                         updated = unixepoch() WHERE id = ?",
                    )
                    .bind(&state)
                    .bind(&reason)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn claim(
        &self,
        subscription_id: &str,
        topic_id: &str,
        opts: ClaimOptions,
        matcher: Matcher,
    ) -> Result<Vec<ClaimedMessage>> {
        let (sub, topic) = (subscription_id.to_owned(), topic_id.to_owned());
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move { claim_in(tx, &sub, &topic, &opts, &matcher).await })
                },
            )
            .await
    }

    async fn settle(
        &self,
        subscription_id: &str,
        tokens: Vec<String>,
        action: SettleAction,
        now_ms: i64,
    ) -> Result<Vec<Result<(), SettleFailure>>> {
        let sub = subscription_id.to_owned();
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move { settle_in(tx, &sub, &tokens, action, now_ms).await })
                },
            )
            .await
    }

    async fn dead_letters(
        &self,
        subscription_id: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetterRecord>> {
        let rows = sqlx::query(
            "SELECT id, seq, body, reason, delivery_count, last_outcome, published_at, dead_lettered_at \
             FROM dead_letters WHERE subscription_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(subscription_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetterRecord {
                    id: r.try_get("id")?,
                    seq: r.try_get("seq")?,
                    body: r.try_get("body")?,
                    reason: r.try_get("reason")?,
                    delivery_count: r.try_get("delivery_count")?,
                    last_outcome: r.try_get("last_outcome")?,
                    published_at: r.try_get("published_at")?,
                    dead_lettered_at: r.try_get("dead_lettered_at")?,
                })
            })
            .collect()
    }

    async fn backlog(&self, subscription_id: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM event_log e JOIN event_subscriptions s ON e.topic_id = s.topic_id \
               WHERE s.id = ?1 AND e.seq >= s.cursor_seq) \
             + (SELECT COUNT(*) FROM subscription_messages WHERE subscription_id = ?1)",
        )
        .bind(subscription_id)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .next()
        .ok_or(sqlx::Error::RowNotFound)?)
    }

    async fn counters(&self, scope: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT name, value FROM counters WHERE scope = ? ORDER BY name")
            .bind(scope)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    async fn peek_fresh(
        &self,
        subscription_id: &str,
        topic_id: &str,
        from: Option<i64>,
        max: i64,
        scan_limit: i64,
        matcher: Matcher,
    ) -> Result<Option<FreshWindow>> {
        let stored: Option<i64> = match from {
            Some(c) => Some(c),
            None => sqlx::query_scalar("SELECT cursor_seq FROM event_subscriptions WHERE id = ?")
                .bind(subscription_id)
                .fetch_all(&self.reader)
                .await?
                .into_iter()
                .next(),
        };
        let Some(cursor): Option<i64> = stored else {
            return Ok(None);
        };
        let mut window = FreshWindow {
            cursor,
            next_cursor: cursor,
            rows: Vec::new(),
            matched: 0,
            unmatched: 0,
        };
        let mut scanned = 0;
        'scan: while (window.rows.len() as i64) < max && scanned < scan_limit {
            let page = (max - window.rows.len() as i64)
                .max(64)
                .min(scan_limit - scanned);
            let rows = sqlx::query(
                "SELECT seq, event_id, event_type, subject, body, created FROM event_log \
                 WHERE topic_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
            )
            .bind(topic_id)
            .bind(window.next_cursor)
            .bind(page)
            .fetch_all(&self.reader)
            .await?;
            if rows.is_empty() {
                break;
            }
            scanned += rows.len() as i64;
            for r in &rows {
                if window.rows.len() as i64 >= max {
                    break 'scan;
                }
                let row = log_row(r)?;
                window.next_cursor = row.seq + 1;
                if matcher(&row) {
                    window.matched += 1;
                    window.rows.push(row);
                } else {
                    window.unmatched += 1;
                }
            }
        }
        Ok(Some(window))
    }

    async fn commit_fresh(
        &self,
        subscription_id: &str,
        window: (i64, i64, i64, i64),
        delivered: i64,
        outcomes: Vec<FreshOutcome>,
        attempts: Vec<AttemptRecord>,
        now_ms: i64,
    ) -> Result<bool> {
        let sub = subscription_id.to_owned();
        let (cursor, next_cursor, matched, unmatched) = window;
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let moved = sqlx::query(
                        "UPDATE event_subscriptions SET cursor_seq = ? WHERE id = ? AND cursor_seq = ?",
                    )
                    .bind(next_cursor)
                    .bind(&sub)
                    .bind(cursor)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved == 0 {
                        return Ok(false);
                    }
                    for o in &outcomes {
                        match o {
                            FreshOutcome::Retry { seq, retry_at_ms, outcome, status } => {
                                sqlx::query(
                                    "INSERT INTO subscription_messages (subscription_id, seq, state, available_at, \
                                     delivery_count, enqueued_at, last_outcome, last_status, last_attempt_at) \
                                     VALUES (?, ?, 'ready', ?, 1, ?, ?, ?, ?) ON CONFLICT (subscription_id, seq) DO NOTHING",
                                )
                                .bind(&sub)
                                .bind(seq)
                                .bind(retry_at_ms)
                                .bind(now_ms)
                                .bind(*outcome)
                                .bind(status.map(i64::from))
                                .bind(now_ms)
                                .execute(&mut *tx)
                                .await?;
                            }
                            FreshOutcome::DeadLetter { row, reason, outcome, status, attempted } => {
                                let count = i64::from(*attempted);
                                dead_letter_with_status(tx, &sub, row, reason, count, Some(outcome), *status, now_ms).await?;
                            }
                        }
                    }
                    let failed = outcomes.len() as i64;
                    bump(tx, &sub, "matched", matched).await?;
                    bump(tx, &sub, "unmatched", unmatched).await?;
                    bump(tx, &sub, "delivered", delivered).await?;
                    bump(tx, &sub, "failed", failed).await?;
                    insert_attempts(tx, &attempts).await?;
                    Ok(true)
                })
            })
            .await
    }

    async fn all_subscriptions(&self) -> Result<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM event_subscriptions ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(sub_from_row).collect()
    }

    async fn next_due(&self, subscription_id: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(available_at) FROM subscription_messages WHERE subscription_id = ?",
        )
        .bind(subscription_id)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .next()
        .ok_or(sqlx::Error::RowNotFound)?)
    }

    async fn record_attempts(&self, attempts: Vec<AttemptRecord>) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move { insert_attempts(tx, &attempts).await })
                },
            )
            .await
    }

    async fn attempts(
        &self,
        subscription_id: &str,
        event_id: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, AttemptRecord)>> {
        let rows = sqlx::query(
            "SELECT id, subscription_id, seq, event_id, attempt, at, status, latency_ms, outcome, response, \
             more_event_ids FROM delivery_attempts WHERE subscription_id = ?1 AND id > ?2 \
             AND (?3 IS NULL OR event_id = ?3 OR instr(more_event_ids, ?4) > 0) ORDER BY id LIMIT ?5",
        )
        .bind(subscription_id)
        .bind(after_id)
        .bind(event_id)
        .bind(event_id.map(AttemptRecord::needle))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    AttemptRecord {
                        subscription_id: r.try_get("subscription_id")?,
                        seq: r.try_get("seq")?,
                        event_ids: AttemptRecord::stored_event_ids(
                            r.try_get("event_id")?,
                            r.try_get("more_event_ids")?,
                        ),
                        attempt: r.try_get("attempt")?,
                        at_ms: r.try_get("at")?,
                        status: r
                            .try_get::<Option<i64>, _>("status")?
                            .and_then(|s| u16::try_from(s).ok()),
                        latency_ms: r.try_get("latency_ms")?,
                        outcome: r.try_get("outcome")?,
                        response: r.try_get("response")?,
                    },
                ))
            })
            .collect()
    }

    async fn prune_attempts(&self, before_ms: i64) -> Result<u64> {
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let done = sqlx::query("DELETE FROM delivery_attempts WHERE at < ?")
                            .bind(before_ms)
                            .execute(&mut *tx)
                            .await?;
                        Ok(done.rows_affected())
                    })
                },
            )
            .await
    }

    async fn prune_event_log(&self, now_ms: i64, max_age_ms: i64, limit: i64) -> Result<u64> {
        let limit = limit.max(1);
        let mut pruned = 0;
        // Consumed events, topic by topic (logs of deleted vaults included),
        // each chunk its own short write so publishes go on in between.
        let mut topic = String::new();
        loop {
            let next: Option<String> =
                sqlx::query_scalar("SELECT MIN(topic_id) FROM event_log WHERE topic_id > ?")
                    .bind(&topic)
                    .fetch_all(&self.reader)
                    .await?
                    .into_iter()
                    .next()
                    .flatten();
            let Some(next) = next else { break };
            topic = next;
            // Pinned events are skipped, not rescanned: each chunk starts
            // after the last event the previous one deleted.
            let mut after = 0;
            loop {
                let t = topic.clone();
                let gone: Vec<i64> = self
                    .writer
                    .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // The floor is read in the same transaction: a
                            // subscription created since must not lose events.
                            Ok(sqlx::query_scalar(
                                "DELETE FROM event_log WHERE seq IN (\
                                 SELECT e.seq FROM event_log e WHERE e.topic_id = ?1 AND e.seq > ?2 \
                                 AND e.seq < COALESCE((SELECT MIN(cursor_seq) FROM event_subscriptions \
                                   WHERE topic_id = ?1), ?4) \
                                 AND NOT EXISTS (SELECT 1 FROM subscription_messages m WHERE m.seq = e.seq) \
                                 AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = e.seq) \
                                 ORDER BY e.seq LIMIT ?3) RETURNING seq",
                            )
                            .bind(&t)
                            .bind(after)
                            .bind(limit)
                            .bind(i64::MAX)
                            .fetch_all(&mut *tx)
                            .await?)
                        })
                    })
                    .await?;
                pruned += gone.len() as u64;
                match gone.iter().max() {
                    Some(last) if gone.len() as i64 >= limit => after = *last,
                    _ => break,
                }
            }
        }
        // Events past the maximum age, oldest (lowest seq) first, with the
        // messages still in flight for them.
        let cutoff = now_ms.saturating_sub(max_age_ms).div_euclid(1000);
        loop {
            let gone = self
                .writer
                .write(
                    move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            const OLD: &str = "SELECT seq FROM (SELECT seq, created FROM event_log \
                                           ORDER BY seq LIMIT ?2) WHERE created < ?1";
                            sqlx::query(&format!(
                                "DELETE FROM subscription_messages WHERE seq IN ({OLD})"
                            ))
                            .bind(cutoff)
                            .bind(limit)
                            .execute(&mut *tx)
                            .await?;
                            let done =
                                sqlx::query(&format!("DELETE FROM event_log WHERE seq IN ({OLD})"))
                                    .bind(cutoff)
                                    .bind(limit)
                                    .execute(&mut *tx)
                                    .await?;
                            Ok(done.rows_affected())
                        })
                    },
                )
                .await?;
            pruned += gone;
            // A younger event at the head ends it; older ones behind it (clock
            // steps) go on a later run.
            if (gone as i64) < limit {
                break;
            }
        }
        // Messages whose event is gone (below the oldest event left), which
        // claims would otherwise skip forever.
        loop {
            let gone = self
                .writer
                .write(
                    move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "DELETE FROM subscription_messages WHERE rowid IN (\
                             SELECT rowid FROM subscription_messages \
                             WHERE seq < COALESCE((SELECT MIN(seq) FROM event_log), ?2) LIMIT ?1)",
                            )
                            .bind(limit)
                            .bind(i64::MAX)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected())
                        })
                    },
                )
                .await?;
            if (gone as i64) < limit {
                break;
            }
        }
        Ok(pruned)
    }

    async fn put_validation(
        &self,
        subscription_id: &str,
        code: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<()> {
        let (sub, code, hash) = (
            subscription_id.to_owned(),
            code.to_owned(),
            token_hash.to_owned(),
        );
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO subscription_validations (subscription_id, code, token_hash, expires_at) \
                         VALUES (?, ?, ?, ?) ON CONFLICT (subscription_id) DO UPDATE SET code = excluded.code, \
                         token_hash = excluded.token_hash, expires_at = excluded.expires_at",
                    )
                    .bind(&sub)
                    .bind(&code)
                    .bind(&hash)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn take_validation(&self, token_hash: &str) -> Result<Option<PendingValidation>> {
        let hash = token_hash.to_owned();
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let row = sqlx::query(
                            "DELETE FROM subscription_validations WHERE token_hash = ? \
                         RETURNING subscription_id, code, expires_at",
                        )
                        .bind(&hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                        row.as_ref().map(validation_from_row).transpose()
                    })
                },
            )
            .await
    }

    async fn expired_validations(&self, now: i64) -> Result<Vec<PendingValidation>> {
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let rows = sqlx::query(
                            "DELETE FROM subscription_validations WHERE expires_at <= ? \
                         RETURNING subscription_id, code, expires_at",
                        )
                        .bind(now)
                        .fetch_all(&mut *tx)
                        .await?;
                        rows.iter().map(validation_from_row).collect()
                    })
                },
            )
            .await
    }

    async fn add_signing_secret(
        &self,
        subscription_id: &str,
        sealed: &[u8],
        now: i64,
        retire_others_at: i64,
    ) -> Result<i64> {
        let (sub, sealed) = (subscription_id.to_owned(), sealed.to_vec());
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE signing_secrets SET retire_at = ? \
                         WHERE subscription_id = ? AND (retire_at IS NULL OR retire_at > ?)",
                    )
                    .bind(retire_others_at)
                    .bind(&sub)
                    .bind(retire_others_at)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM signing_secrets WHERE subscription_id = ? AND retire_at <= ?")
                        .bind(&sub)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO signing_secrets (subscription_id, sealed, created) VALUES (?, ?, ?) RETURNING id",
                    )
                    .bind(&sub)
                    .bind(&sealed)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    Ok(id)
                })
            })
            .await
    }

    async fn signing_secrets(
        &self,
        subscription_id: &str,
        now: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT id, sealed FROM signing_secrets WHERE subscription_id = ? \
             AND (retire_at IS NULL OR retire_at > ?) ORDER BY id DESC",
        )
        .bind(subscription_id)
        .bind(now)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("sealed")?)))
            .collect()
    }

    async fn replay_dead_letters(
        &self,
        subscription_id: &str,
        ids: Vec<i64>,
        now_ms: i64,
    ) -> Result<u64> {
        let sub = subscription_id.to_owned();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let mut replayed = 0;
                    for id in ids {
                        let seq: Option<i64> = sqlx::query_scalar(
                            "DELETE FROM dead_letters WHERE id = ? AND subscription_id = ? RETURNING seq",
                        )
                        .bind(id)
                        .bind(&sub)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(seq) = seq else { continue };
                        let done = sqlx::query(
                            "INSERT INTO subscription_messages (subscription_id, seq, state, available_at, \
                             delivery_count, enqueued_at) SELECT ?, ?, 'ready', ?, 0, ? \
                             WHERE EXISTS (SELECT 1 FROM event_log WHERE seq = ?) \
                             ON CONFLICT (subscription_id, seq) DO NOTHING",
                        )
                        .bind(&sub)
                        .bind(seq)
                        .bind(now_ms)
                        .bind(now_ms)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                        replayed += done.rows_affected();
                    }
                    Ok(replayed)
                })
            })
            .await
    }
}
