//! PostgreSQL: the router store (topics, the event log of custom topics,
//! subscriptions, their queues, dead letters, counters, the delivery log).
//!
//! Semantics follow sqlite_router.rs exactly. SQLite runs every mutation
//! through one serialising writer; here several nodes run the same code on
//! one database at once, so:
//!
//! - seq order is commit order per topic: the event_log trigger (0001) takes
//!   a per-topic advisory lock before drawing a seq, so a reader following a
//!   cursor never skips an event that commits late;
//! - due in-flight messages are claimed with `FOR UPDATE SKIP LOCKED`, so
//!   concurrent receivers get disjoint messages without waiting;
//! - a subscription's cursor only moves under its row lock (`claim`) or by
//!   compare-and-set (`commit_fresh`), so no event is handed out twice from
//!   the log and a stale window never overwrites a newer cursor;
//! - settles lock their rows (in seq order) and re-check the token;
//! - counters are upserts (`value = value + excluded.value`), added once per
//!   transaction in name order, after every other lock is taken, so counter
//!   rows never take part in a lock cycle;
//! - "take once" operations are `DELETE ... RETURNING`: of two nodes, one
//!   gets the row and the other nothing.

use super::vault::{TOPIC_COLS, topic_from_row};
use super::{PgStorage, notify};
use crate::router::*;
use crate::{Result, TopicRecord};
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use std::collections::{BTreeMap, HashMap};

const SUB_COLS: &str =
    "id, topic_id, name, config, provisioning_state, state_reason, created, updated";

/// The current time in unix seconds, truncated as SQLite's `unixepoch()`.
const UNIX_NOW: &str = "floor(extract(epoch FROM clock_timestamp()))::BIGINT";

fn sub_from_row(r: &PgRow) -> Result<SubscriptionRecord> {
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

fn validation_from_row(r: &PgRow) -> Result<PendingValidation> {
    Ok(PendingValidation {
        subscription_id: r.try_get("subscription_id")?,
        code: r.try_get("code")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Keeps reads of a topic's log on the (topic_id, seq) index for the rest
/// of the transaction. Right after a burst of publishes, before autovacuum
/// has analysed event_log, the planner underestimates a topic's rows and
/// picks a bitmap scan that sorts everything past the cursor (to disk):
/// hundreds of milliseconds for each window read instead of a few.
async fn log_order_plan(tx: &mut PgConnection, no_sort: bool) -> Result<()> {
    sqlx::query(
        "SELECT set_config('enable_bitmapscan', 'off', true), \
         set_config('enable_sort', CASE WHEN $1 THEN 'off' ELSE current_setting('enable_sort') END, true)",
    )
    .bind(no_sort)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn log_row(r: &PgRow) -> Result<LogRow> {
    Ok(LogRow {
        seq: r.try_get("seq")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        published_at: r.try_get("created")?,
    })
}

/// Waits for appends to a topic's log that are in flight and holds new ones
/// off until this transaction ends: the same lock the event_log trigger
/// (migrations/postgres/0001_vault.sql) takes before it draws a seq.
/// One publish waiting for its topic's next group commit.
pub(crate) struct AppendJob {
    events: Vec<NewLogEvent>,
    reply: tokio::sync::oneshot::Sender<std::result::Result<i64, String>>,
}

impl PgStorage {
    /// The group committer of a topic's log, started on first use.
    fn appender(&self, topic_id: &str) -> tokio::sync::mpsc::Sender<AppendJob> {
        let mut map = self.appenders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(topic_id).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(run_appender(self.pool.clone(), topic_id.to_owned(), rx));
        map.insert(topic_id.to_owned(), tx.clone());
        tx
    }
}

/// Appends to one topic's log in group commits. Appends to a topic are
/// serialised by its advisory lock until COMMIT anyway (so seq order is
/// commit order); doing the publishes that queued up meanwhile in one
/// transaction turns one commit per publish into one per burst.
async fn run_appender(
    pool: sqlx::PgPool,
    topic_id: String,
    mut rx: tokio::sync::mpsc::Receiver<AppendJob>,
) {
    const MAX_EVENTS: usize = 5000;
    while let Some(first) = rx.recv().await {
        let mut n = first.events.len();
        let mut jobs = vec![first];
        while n < MAX_EVENTS {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.events.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        match append_batch(&pool, &topic_id, &jobs).await {
            Ok(lasts) => {
                for (job, last) in jobs.into_iter().zip(lasts) {
                    let _ = job.reply.send(Ok(last));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// One transaction for several publishes; returns each one's last seq.
async fn append_batch(pool: &sqlx::PgPool, topic_id: &str, jobs: &[AppendJob]) -> Result<Vec<i64>> {
    let mut tx = pool.begin().await?;
    // The event_log trigger takes the topic's advisory lock and draws
    // each seq; it is held until commit, so seqs of one topic commit in
    // order. The timestamp is read after the lock, so it follows seq.
    lock_topic_log(&mut tx, topic_id).await?;
    let now: i64 = sqlx::query_scalar(&format!("SELECT {UNIX_NOW}"))
        .fetch_one(&mut *tx)
        .await?;
    let mut lasts = Vec::with_capacity(jobs.len());
    let mut total = 0i64;
    for job in jobs {
        let mut last = 0;
        for chunk in job.events.chunks(1000) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO event_log (topic_id, event_id, event_type, subject, body, created) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(topic_id)
                    .push_bind(e.event_id.as_str())
                    .push_bind(e.event_type.as_str())
                    .push_bind(e.subject.as_str())
                    .push_bind(e.body.as_str())
                    .push_bind(now);
            });
            q.push(" RETURNING seq");
            let seqs: Vec<i64> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            last = seqs.into_iter().fold(last, i64::max);
        }
        total += job.events.len() as i64;
        lasts.push(last);
    }
    let mut bumps = Bumps::new(topic_id);
    bumps.add("published", total);
    bumps.flush(&mut tx).await?;
    // Delivered with the commit: other nodes' receivers and delivery
    // workers on this topic wake up.
    notify(&mut tx, &format!("topic:{topic_id}")).await?;
    tx.commit().await?;
    Ok(lasts)
}

async fn lock_topic_log(tx: &mut PgConnection, topic_id: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('herald:event_log'), hashtext($1))")
        .bind(topic_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Counter increments of one scope, collected during a transaction and
/// written at its end. One upsert per name makes concurrent increments add
/// up; writing them last and in name order means a transaction holding a
/// counter row never waits for anything but another counter row taken in
/// the same order, so counters cannot close a deadlock cycle.
struct Bumps<'a> {
    scope: &'a str,
    by: BTreeMap<&'static str, i64>,
}

impl<'a> Bumps<'a> {
    fn new(scope: &'a str) -> Self {
        Self {
            scope,
            by: BTreeMap::new(),
        }
    }

    fn add(&mut self, name: &'static str, by: i64) {
        *self.by.entry(name).or_default() += by;
    }

    async fn flush(self, tx: &mut PgConnection) -> Result<()> {
        let (names, values): (Vec<&str>, Vec<i64>) =
            self.by.into_iter().filter(|(_, v)| *v != 0).unzip();
        if names.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO counters (scope, name, value) \
             SELECT $1, t.name, t.value FROM UNNEST($2::TEXT[], $3::BIGINT[]) AS t(name, value) \
             ORDER BY t.name COLLATE \"C\" \
             ON CONFLICT (scope, name) DO UPDATE SET value = counters.value + excluded.value",
        )
        .bind(self.scope)
        .bind(names)
        .bind(values)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Moves one message (in flight or fresh) to the dead letters. The caller
/// holds the message row's lock, if there is a row.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    tx: &mut PgConnection,
    bumps: &mut Bumps<'_>,
    row: &LogRow,
    reason: &str,
    delivery_count: i64,
    last_outcome: Option<&str>,
    last_status: Option<u16>,
    now_ms: i64,
) -> Result<()> {
    let sub = bumps.scope;
    sqlx::query(
        "INSERT INTO dead_letters (subscription_id, seq, body, reason, delivery_count, last_outcome, \
         published_at, dead_lettered_at, last_status, last_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
    sqlx::query("DELETE FROM subscription_messages WHERE subscription_id = $1 AND seq = $2")
        .bind(sub)
        .bind(row.seq)
        .execute(&mut *tx)
        .await?;
    bumps.add("deadLettered", 1);
    Ok(())
}

async fn insert_attempts(tx: &mut PgConnection, attempts: &[AttemptRecord]) -> Result<()> {
    for chunk in attempts.chunks(500) {
        let mut q = QueryBuilder::<Postgres>::new(
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

/// Locks the in-flight messages of the given subscriptions (in key order)
/// before they are deleted with their subscription. A claimer holds message
/// rows and then waits for the subscription row; deleting the subscription
/// row first and cascading to the messages afterwards would close a cycle.
async fn lock_messages_of(tx: &mut PgConnection, subscription_ids: &[String]) -> Result<()> {
    if subscription_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT 1 FROM subscription_messages WHERE subscription_id = ANY($1) \
         ORDER BY subscription_id, seq FOR UPDATE",
    )
    .bind(subscription_ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(())
}

async fn claim_in(
    tx: &mut PgConnection,
    sub: &str,
    topic_id: &str,
    o: &ClaimOptions,
    matcher: &Matcher,
) -> Result<Vec<ClaimedMessage>> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT cursor_seq FROM event_subscriptions WHERE id = $1")
            .bind(sub)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let mut bumps = Bumps::new(sub);
    let mut out = Vec::new();
    let expired = |row: &LogRow| o.now_ms - row.published_at * 1000 >= o.ttl_ms;

    // Messages already in flight that are due again come first, in order.
    // SKIP LOCKED: rows another node is claiming or settling right now are
    // its business; concurrent receivers get disjoint messages, never wait.
    let due = sqlx::query(
        "SELECT m.seq, m.delivery_count, m.last_outcome, m.last_status, e.event_id, e.event_type, e.subject, \
         e.body, e.created \
         FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
         WHERE m.subscription_id = $1 AND m.available_at <= $2 \
         ORDER BY m.seq LIMIT $3 FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(sub)
    .bind(o.now_ms)
    .bind(o.max.max(0))
    .fetch_all(&mut *tx)
    .await?;
    let (mut relocked, mut tokens): (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
    for r in &due {
        let row = log_row(r)?;
        let count: i64 = r.try_get("delivery_count")?;
        let outcome: Option<String> = r.try_get("last_outcome")?;
        if count >= o.max_delivery_count {
            dead_letter(
                tx,
                &mut bumps,
                &row,
                "MaxDeliveryAttemptsExceeded",
                count,
                outcome.as_deref(),
                None,
                o.now_ms,
            )
            .await?;
            continue;
        }
        if expired(&row) {
            dead_letter(
                tx,
                &mut bumps,
                &row,
                "TimeToLiveExceeded",
                count,
                outcome.as_deref(),
                None,
                o.now_ms,
            )
            .await?;
            continue;
        }
        let token = lock_token(row.seq);
        relocked.push(row.seq);
        tokens.push(token.clone());
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
    if !relocked.is_empty() {
        sqlx::query(
            "UPDATE subscription_messages m SET state = 'locked', lock_token = t.token, \
             lock_expires_at = $2, available_at = $2, first_locked_at = $3, \
             delivery_count = m.delivery_count + 1 \
             FROM UNNEST($4::BIGINT[], $5::TEXT[]) AS t(seq, token) \
             WHERE m.subscription_id = $1 AND m.seq = t.seq",
        )
        .bind(sub)
        .bind(o.now_ms + o.lock_ms)
        .bind(o.now_ms)
        .bind(&relocked)
        .bind(&tokens)
        .execute(&mut *tx)
        .await?;
    }

    // Then new log rows past the cursor, filtered here so only matches
    // ever get a per-subscription row. The cursor is read under the
    // subscription row's lock: concurrent claimers take turns here, and each
    // sees the cursor the previous one committed, so no log row is handed
    // out twice. (NO KEY UPDATE does not block inserts that reference the
    // row, e.g. dead letters written by settles.)
    let locked_cursor: Option<i64> = if (out.len() as i64) < o.max && o.scan_limit > 0 {
        sqlx::query_scalar(
            "SELECT cursor_seq FROM event_subscriptions WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(sub)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        None
    };
    if let Some(cursor) = locked_cursor {
        log_order_plan(&mut *tx, false).await?;
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
                 WHERE topic_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
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
                         published_at, dead_lettered_at) \
                         VALUES ($1, $2, $3, 'TimeToLiveExceeded', 0, $4, $5)",
                    )
                    .bind(sub)
                    .bind(row.seq)
                    .bind(&row.body)
                    .bind(row.published_at)
                    .bind(o.now_ms / 1000)
                    .execute(&mut *tx)
                    .await?;
                    bumps.add("deadLettered", 1);
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
        if !inserts.is_empty() {
            let (seqs, tokens): (Vec<i64>, Vec<String>) = inserts.into_iter().unzip();
            sqlx::query(
                "INSERT INTO subscription_messages (subscription_id, seq, state, available_at, \
                 lock_token, lock_expires_at, first_locked_at, delivery_count, enqueued_at) \
                 SELECT $1, t.seq, 'locked', $2, t.token, $2, $3, 1, $3 \
                 FROM UNNEST($4::BIGINT[], $5::TEXT[]) AS t(seq, token)",
            )
            .bind(sub)
            .bind(o.now_ms + o.lock_ms)
            .bind(o.now_ms)
            .bind(&seqs)
            .bind(&tokens)
            .execute(&mut *tx)
            .await?;
        }
        if next_cursor != cursor {
            sqlx::query("UPDATE event_subscriptions SET cursor_seq = $1 WHERE id = $2")
                .bind(next_cursor)
                .bind(sub)
                .execute(&mut *tx)
                .await?;
        }
        bumps.add("matched", matched);
        bumps.add("unmatched", unmatched);
    }
    bumps.flush(tx).await?;
    Ok(out)
}

async fn settle_in(
    tx: &mut PgConnection,
    sub: &str,
    tokens: &[String],
    action: SettleAction,
    now_ms: i64,
) -> Result<Vec<Result<(), SettleFailure>>> {
    // One lookup for every token's row, then one statement per action kind.
    // The rows are locked (in seq order, so two settles of overlapping
    // tokens cannot deadlock) until the settle commits: a concurrent settle
    // of the same token waits, then finds the row gone or changed, and a
    // claim skips them.
    let seqs: Vec<Option<i64>> = tokens.iter().map(|t| lock_token_seq(t)).collect();
    let mut wanted: Vec<i64> = seqs.iter().flatten().copied().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut live: HashMap<i64, (String, i64)> = HashMap::new();
    if !wanted.is_empty() {
        let rows = sqlx::query(
            "SELECT seq, lock_token, first_locked_at FROM subscription_messages \
             WHERE subscription_id = $1 AND state = 'locked' AND lock_expires_at > $2 \
             AND seq = ANY($3) ORDER BY seq FOR UPDATE",
        )
        .bind(sub)
        .bind(now_ms)
        .bind(&wanted)
        .fetch_all(&mut *tx)
        .await?;
        for r in rows {
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
    let mut bumps = Bumps::new(sub);
    if !settled.is_empty() {
        match action {
            SettleAction::Acknowledge => {
                sqlx::query(
                    "DELETE FROM subscription_messages WHERE subscription_id = $1 AND seq = ANY($2)",
                )
                .bind(sub)
                .bind(&settled)
                .execute(&mut *tx)
                .await?;
                bumps.add("delivered", settled.len() as i64);
            }
            SettleAction::Release { delay_ms } => {
                sqlx::query(
                    "UPDATE subscription_messages SET state = 'ready', lock_token = NULL, \
                     lock_expires_at = NULL, available_at = $3 \
                     WHERE subscription_id = $1 AND seq = ANY($2)",
                )
                .bind(sub)
                .bind(&settled)
                .bind(now_ms + delay_ms)
                .execute(&mut *tx)
                .await?;
            }
            SettleAction::RenewLock { lock_ms, .. } => {
                sqlx::query(
                    "UPDATE subscription_messages SET lock_expires_at = $3, available_at = $3 \
                     WHERE subscription_id = $1 AND seq = ANY($2)",
                )
                .bind(sub)
                .bind(&settled)
                .bind(now_ms + lock_ms)
                .execute(&mut *tx)
                .await?;
            }
            SettleAction::Retry {
                delay_ms,
                outcome,
                status,
            } => {
                sqlx::query(
                    "UPDATE subscription_messages SET state = 'ready', lock_token = NULL, \
                     lock_expires_at = NULL, available_at = $3, last_outcome = $4, \
                     last_status = $5, last_attempt_at = $6 \
                     WHERE subscription_id = $1 AND seq = ANY($2)",
                )
                .bind(sub)
                .bind(&settled)
                .bind(now_ms + delay_ms)
                .bind(outcome)
                .bind(status.map(i64::from))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                bumps.add("failed", settled.len() as i64);
            }
            SettleAction::DeadLetter {
                reason,
                outcome,
                status,
                attempted,
            } => {
                let rows = settled_rows(tx, sub, &settled).await?;
                for seq in &settled {
                    let (row, claimed, _) = rows.get(seq).ok_or(sqlx::Error::RowNotFound)?;
                    dead_letter(
                        tx,
                        &mut bumps,
                        row,
                        reason,
                        attempts_made(*claimed, attempted),
                        Some(outcome),
                        status,
                        now_ms,
                    )
                    .await?;
                }
                bumps.add("failed", settled.len() as i64);
            }
            SettleAction::Reject => {
                let rows = settled_rows(tx, sub, &settled).await?;
                for seq in &settled {
                    let (row, count, outcome) = rows.get(seq).ok_or(sqlx::Error::RowNotFound)?;
                    dead_letter(
                        tx,
                        &mut bumps,
                        row,
                        "Rejected",
                        *count,
                        outcome.as_deref(),
                        None,
                        now_ms,
                    )
                    .await?;
                }
            }
        }
    }
    bumps.flush(tx).await?;
    Ok(results)
}

/// The log rows, delivery counts and last outcomes of messages this
/// transaction has locked.
async fn settled_rows(
    tx: &mut PgConnection,
    sub: &str,
    seqs: &[i64],
) -> Result<HashMap<i64, (LogRow, i64, Option<String>)>> {
    let rows = sqlx::query(
        "SELECT m.delivery_count, m.last_outcome, e.seq, e.event_id, e.event_type, e.subject, \
         e.body, e.created \
         FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
         WHERE m.subscription_id = $1 AND m.seq = ANY($2)",
    )
    .bind(sub)
    .bind(seqs)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let row = log_row(r)?;
            Ok((
                row.seq,
                (
                    row,
                    r.try_get("delivery_count")?,
                    r.try_get("last_outcome")?,
                ),
            ))
        })
        .collect()
}

#[async_trait]
impl RouterStore for PgStorage {
    async fn create_topic(&self, t: &TopicRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO topics (id, kind, name, arm_id, created, input_schema, input_mapping, key1, key2) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
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
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn topic_by_name(&self, name: &str) -> Result<Option<TopicRecord>> {
        let row = sqlx::query(&format!("SELECT {TOPIC_COLS} FROM topics WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOPIC_COLS} FROM topics ORDER BY name COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(topic_from_row).collect()
    }

    async fn delete_topic(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM topics WHERE name = $1 AND kind = 'custom'")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(id) = id else { return Ok(false) };
        // Appends in flight finish first; later ones wait for this delete.
        lock_topic_log(&mut tx, &id).await?;
        let subs: Vec<String> =
            sqlx::query_scalar("SELECT id FROM event_subscriptions WHERE topic_id = $1")
                .bind(&id)
                .fetch_all(&mut *tx)
                .await?;
        lock_messages_of(&mut tx, &subs).await?;
        sqlx::query("DELETE FROM event_log WHERE topic_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM topics WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // A concurrent delete of the same topic finds it gone.
        Ok(done.rows_affected() == 1)
    }

    async fn set_topic_key(&self, topic_id: &str, which: u8, sealed: &[u8]) -> Result<bool> {
        let column = if which == 2 { "key2" } else { "key1" };
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&format!("UPDATE topics SET {column} = $1 WHERE id = $2"))
            .bind(sealed)
            .bind(topic_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn append_events(&self, topic_id: &str, events: Vec<NewLogEvent>) -> Result<i64> {
        if events.is_empty() {
            return self.head_seq(topic_id).await;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.appender(topic_id)
            .send(AppendJob { events, reply })
            .await
            .map_err(|_| crate::StorageError::WriterStopped)?;
        answer
            .await
            .map_err(|_| crate::StorageError::WriterStopped)?
            .map_err(crate::StorageError::Commit)
    }

    async fn head_seq(&self, topic_id: &str) -> Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM event_log WHERE topic_id = $1")
                .bind(topic_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn put_subscription(&self, s: &SubscriptionRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Appends to the topic that are in flight commit first, so "events
        // published after it exists" is exact: everything below the cursor
        // is committed, everything later gets a larger seq.
        lock_topic_log(&mut tx, &s.topic_id).await?;
        // Two nodes creating the same subscription: one inserts, the other
        // waits for that insert and then updates it (as SQLite's second
        // writer would).
        let created = sqlx::query(
            "INSERT INTO event_subscriptions (id, topic_id, name, config, provisioning_state, \
             state_reason, cursor_seq, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT COALESCE(MAX(seq), 0) + 1 FROM event_log), $7, $8) \
             ON CONFLICT (topic_id, name) DO NOTHING",
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
        .await?
        .rows_affected()
            == 1;
        if !created {
            sqlx::query(
                "UPDATE event_subscriptions SET config = $1, provisioning_state = $2, \
                 state_reason = $3, updated = $4 WHERE topic_id = $5 AND name = $6",
            )
            .bind(&s.config)
            .bind(&s.provisioning_state)
            .bind(&s.state_reason)
            .bind(s.updated)
            .bind(&s.topic_id)
            .bind(&s.name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn subscription(&self, topic_id: &str, name: &str) -> Result<Option<SubscriptionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM event_subscriptions WHERE topic_id = $1 AND name = $2"
        ))
        .bind(topic_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sub_from_row).transpose()
    }

    async fn list_subscriptions(&self, topic_id: &str) -> Result<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM event_subscriptions WHERE topic_id = $1 ORDER BY name COLLATE \"C\""
        ))
        .bind(topic_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sub_from_row).collect()
    }

    async fn delete_subscription(&self, topic_id: &str, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM event_subscriptions WHERE topic_id = $1 AND name = $2",
        )
        .bind(topic_id)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else { return Ok(false) };
        lock_messages_of(&mut tx, std::slice::from_ref(&id)).await?;
        let done = sqlx::query("DELETE FROM event_subscriptions WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_subscription_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "UPDATE event_subscriptions SET provisioning_state = $1, state_reason = $2, \
             updated = {UNIX_NOW} WHERE id = $3"
        ))
        .bind(state)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim(
        &self,
        subscription_id: &str,
        topic_id: &str,
        opts: ClaimOptions,
        matcher: Matcher,
    ) -> Result<Vec<ClaimedMessage>> {
        let mut tx = self.pool.begin().await?;
        let out = claim_in(&mut tx, subscription_id, topic_id, &opts, &matcher).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn settle(
        &self,
        subscription_id: &str,
        tokens: Vec<String>,
        action: SettleAction,
        now_ms: i64,
    ) -> Result<Vec<Result<(), SettleFailure>>> {
        let mut tx = self.pool.begin().await?;
        let out = settle_in(&mut tx, subscription_id, &tokens, action, now_ms).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn dead_letters(
        &self,
        subscription_id: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetterRecord>> {
        let rows = sqlx::query(
            "SELECT id, seq, body, reason, delivery_count, last_outcome, published_at, dead_lettered_at \
             FROM dead_letters WHERE subscription_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(subscription_id)
        .bind(after_id)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
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
               WHERE s.id = $1 AND e.seq >= s.cursor_seq) \
             + (SELECT COUNT(*) FROM subscription_messages WHERE subscription_id = $1)",
        )
        .bind(subscription_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn counters(&self, scope: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT name, value FROM counters WHERE scope = $1 ORDER BY name COLLATE \"C\"",
        )
        .bind(scope)
        .fetch_all(&self.pool)
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
        // No lock: the window carries the cursor it was read from, and
        // commit_fresh only moves the cursor if it is still that value.
        let stored: Option<i64> = match from {
            Some(c) => Some(c),
            None => {
                sqlx::query_scalar("SELECT cursor_seq FROM event_subscriptions WHERE id = $1")
                    .bind(subscription_id)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        let Some(cursor) = stored else {
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
        let mut tx = self.pool.begin().await?;
        log_order_plan(&mut tx, true).await?;
        'scan: while (window.rows.len() as i64) < max && scanned < scan_limit {
            let page = (max - window.rows.len() as i64)
                .max(64)
                .min(scan_limit - scanned);
            let rows = sqlx::query(
                "SELECT seq, event_id, event_type, subject, body, created FROM event_log \
                 WHERE topic_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
            )
            .bind(topic_id)
            .bind(window.next_cursor)
            .bind(page)
            .fetch_all(&mut *tx)
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
        tx.commit().await?;
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
        let sub = subscription_id;
        let (cursor, next_cursor, matched, unmatched) = window;
        let mut tx = self.pool.begin().await?;
        // Compare-and-set: if another node moved the cursor (or is moving it:
        // the UPDATE waits for its row lock, then re-checks the condition
        // against the committed value), nothing is written.
        let moved = sqlx::query(
            "UPDATE event_subscriptions SET cursor_seq = $1 WHERE id = $2 AND cursor_seq = $3",
        )
        .bind(next_cursor)
        .bind(sub)
        .bind(cursor)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let mut bumps = Bumps::new(sub);
        for o in &outcomes {
            match o {
                FreshOutcome::Retry {
                    seq,
                    retry_at_ms,
                    outcome,
                    status,
                } => {
                    sqlx::query(
                        "INSERT INTO subscription_messages (subscription_id, seq, state, available_at, \
                         delivery_count, enqueued_at, last_outcome, last_status, last_attempt_at) \
                         VALUES ($1, $2, 'ready', $3, 1, $4, $5, $6, $7) \
                         ON CONFLICT (subscription_id, seq) DO NOTHING",
                    )
                    .bind(sub)
                    .bind(seq)
                    .bind(retry_at_ms)
                    .bind(now_ms)
                    .bind(*outcome)
                    .bind(status.map(i64::from))
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                FreshOutcome::DeadLetter {
                    row,
                    reason,
                    outcome,
                    status,
                    attempted,
                } => {
                    dead_letter(
                        &mut tx,
                        &mut bumps,
                        row,
                        reason,
                        i64::from(*attempted),
                        Some(outcome),
                        *status,
                        now_ms,
                    )
                    .await?;
                }
            }
        }
        bumps.add("matched", matched);
        bumps.add("unmatched", unmatched);
        bumps.add("delivered", delivered);
        bumps.add("failed", outcomes.len() as i64);
        insert_attempts(&mut tx, &attempts).await?;
        bumps.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn all_subscriptions(&self) -> Result<Vec<SubscriptionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLS} FROM event_subscriptions ORDER BY id COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sub_from_row).collect()
    }

    async fn next_due(&self, subscription_id: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(available_at) FROM subscription_messages WHERE subscription_id = $1",
        )
        .bind(subscription_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn record_attempts(&self, attempts: Vec<AttemptRecord>) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        insert_attempts(&mut tx, &attempts).await?;
        tx.commit().await?;
        Ok(())
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
             more_event_ids FROM delivery_attempts WHERE subscription_id = $1 AND id > $2 \
             AND ($3::text IS NULL OR event_id = $3 OR strpos(more_event_ids, $4) > 0) ORDER BY id LIMIT $5",
        )
        .bind(subscription_id)
        .bind(after_id)
        .bind(event_id)
        .bind(event_id.map(AttemptRecord::needle))
        .bind(limit.max(0))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM delivery_attempts WHERE at < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn prune_event_log(&self, now_ms: i64, max_age_ms: i64, limit: i64) -> Result<u64> {
        let limit = limit.max(1);
        let mut pruned = 0;
        // Consumed events, topic by topic (logs of deleted vaults included),
        // in short transactions so appends and claims go on in between.
        let mut topic = String::new();
        loop {
            let next: Option<String> =
                sqlx::query_scalar("SELECT MIN(topic_id) FROM event_log WHERE topic_id > $1")
                    .bind(&topic)
                    .fetch_one(&self.pool)
                    .await?;
            let Some(next) = next else { break };
            topic = next;
            // Pinned events are skipped, not rescanned: each chunk starts
            // after the last event the previous one deleted.
            let mut after = 0;
            loop {
                // One statement, one snapshot: a cursor that moved past an
                // event is seen together with the message or dead letter its
                // transaction wrote for it, and events appended after a new
                // subscription's cursor are seen only with that subscription.
                let mut tx = self.pool.begin().await?;
                let gone: Vec<i64> = sqlx::query_scalar(
                    "DELETE FROM event_log WHERE seq IN (\
                     SELECT e.seq FROM event_log e WHERE e.topic_id = $1 AND e.seq > $2 \
                     AND e.seq < COALESCE((SELECT MIN(cursor_seq) FROM event_subscriptions \
                       WHERE topic_id = $1), $4) \
                     AND NOT EXISTS (SELECT 1 FROM subscription_messages m WHERE m.seq = e.seq) \
                     AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.seq = e.seq) \
                     ORDER BY e.seq LIMIT $3) RETURNING seq",
                )
                .bind(&topic)
                .bind(after)
                .bind(limit)
                .bind(i64::MAX)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
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
            let mut tx = self.pool.begin().await?;
            let gone: Vec<i64> = sqlx::query_scalar(
                "DELETE FROM event_log WHERE seq IN (\
                 SELECT h.seq FROM (SELECT seq, created FROM event_log ORDER BY seq LIMIT $2) h \
                 WHERE h.created < $1) RETURNING seq",
            )
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            if !gone.is_empty() {
                sqlx::query("DELETE FROM subscription_messages WHERE seq = ANY($1)")
                    .bind(&gone)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            pruned += gone.len() as u64;
            // A younger event at the head ends it; older ones behind it (clock
            // skew between nodes) go on a later run.
            if (gone.len() as i64) < limit {
                break;
            }
        }
        // Messages whose event is gone (below the oldest event left), which
        // claims would otherwise skip forever: e.g. one a claim wrote for an
        // event while it aged out.
        loop {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "DELETE FROM subscription_messages WHERE (subscription_id, seq) IN (\
                 SELECT subscription_id, seq FROM subscription_messages \
                 WHERE seq < COALESCE((SELECT MIN(seq) FROM event_log), $2) LIMIT $1)",
            )
            .bind(limit)
            .bind(i64::MAX)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if (done.rows_affected() as i64) < limit {
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO subscription_validations (subscription_id, code, token_hash, expires_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (subscription_id) DO UPDATE SET code = excluded.code, \
             token_hash = excluded.token_hash, expires_at = excluded.expires_at",
        )
        .bind(subscription_id)
        .bind(code)
        .bind(token_hash)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_validation(&self, token_hash: &str) -> Result<Option<PendingValidation>> {
        let mut tx = self.pool.begin().await?;
        // Exactly once: a concurrent DELETE of the same row waits for this
        // one, then finds nothing to delete and returns no row.
        let row = sqlx::query(
            "DELETE FROM subscription_validations WHERE token_hash = $1 \
             RETURNING subscription_id, code, expires_at",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let taken = row.as_ref().map(validation_from_row).transpose()?;
        tx.commit().await?;
        Ok(taken)
    }

    async fn expired_validations(&self, now: i64) -> Result<Vec<PendingValidation>> {
        let mut tx = self.pool.begin().await?;
        // Each expired validation is returned to one caller only.
        let rows = sqlx::query(
            "DELETE FROM subscription_validations WHERE expires_at <= $1 \
             RETURNING subscription_id, code, expires_at",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let out = rows
            .iter()
            .map(validation_from_row)
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(out)
    }

    async fn add_signing_secret(
        &self,
        subscription_id: &str,
        sealed: &[u8],
        now: i64,
        retire_others_at: i64,
    ) -> Result<i64> {
        let sub = subscription_id;
        let mut tx = self.pool.begin().await?;
        // Rotations of one subscription take turns, so each new secret
        // retires the ones committed before it (without this, two
        // concurrent rotations would each miss the other's secret).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('herald:signing'), hashtext($1))")
            .bind(sub)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE signing_secrets SET retire_at = $1 \
             WHERE subscription_id = $2 AND (retire_at IS NULL OR retire_at > $1)",
        )
        .bind(retire_others_at)
        .bind(sub)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM signing_secrets WHERE subscription_id = $1 AND retire_at <= $2")
            .bind(sub)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO signing_secrets (subscription_id, sealed, created) VALUES ($1, $2, $3) \
             RETURNING id",
        )
        .bind(sub)
        .bind(sealed)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn signing_secrets(
        &self,
        subscription_id: &str,
        now: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT id, sealed FROM signing_secrets WHERE subscription_id = $1 \
             AND (retire_at IS NULL OR retire_at > $2) ORDER BY id DESC",
        )
        .bind(subscription_id)
        .bind(now)
        .fetch_all(&self.pool)
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
        let sub = subscription_id;
        // Sorted, so concurrent replays lock dead letters in the same order.
        let mut ids = ids;
        ids.sort_unstable();
        let mut tx = self.pool.begin().await?;
        let mut replayed = 0;
        for id in ids {
            // Exactly once: of two concurrent replays of one dead letter, the
            // second waits for the first's DELETE and then gets no row.
            let seq: Option<i64> = sqlx::query_scalar(
                "DELETE FROM dead_letters WHERE id = $1 AND subscription_id = $2 RETURNING seq",
            )
            .bind(id)
            .bind(sub)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(seq) = seq else { continue };
            // The event row is locked against retention pruning until this
            // commits, so a replayed message never outlives its event.
            let done = sqlx::query(
                "INSERT INTO subscription_messages (subscription_id, seq, state, available_at, \
                 delivery_count, enqueued_at) SELECT $1, $2, 'ready', $3, 0, $3 \
                 WHERE EXISTS (SELECT 1 FROM event_log WHERE seq = $2 FOR KEY SHARE) \
                 ON CONFLICT (subscription_id, seq) DO NOTHING",
            )
            .bind(sub)
            .bind(seq)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            replayed += done.rows_affected();
        }
        tx.commit().await?;
        Ok(replayed)
    }
}
