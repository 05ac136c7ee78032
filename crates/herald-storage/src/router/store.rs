//! The router store (topics, the event log of custom topics, event
//! subscriptions, their queues, dead letters, counters, the delivery log),
//! written once for both engines.
//!
//! SQLite runs every write through one serialising writer; on PostgreSQL
//! several nodes run these same statements on one database at once. What
//! keeps them apart is written into the statements through [`Engine`]'s
//! dialect pieces, which are nothing on SQLite:
//!
//! - seq order is commit order per topic: appends take the topic's log lock
//!   ([`Engine::advisory_lock`], and the PostgreSQL event_log trigger takes
//!   it too) before drawing a seq, so a reader following a cursor never
//!   skips an event that commits late;
//! - due in-flight messages are claimed with `FOR UPDATE SKIP LOCKED`, so
//!   concurrent receivers get disjoint messages without waiting;
//! - a subscription's cursor only moves under its row lock (`claim`) or by
//!   compare-and-set (`commit_fresh`), so no event is handed out twice from
//!   the log and a stale window never overwrites a newer cursor;
//! - settles lock their rows (in seq order) and re-check the token;
//! - counters are upserts (`value = value + excluded.value`), added once per
//!   transaction in name order, after every other lock is taken, so counter
//!   rows never take part in a lock cycle ([`Bumps`]);
//! - "take once" operations are `DELETE ... RETURNING`: of two nodes, one
//!   gets the row and the other nothing.
//!
//! What each engine does its own way is [`RouterEngine`]: PostgreSQL
//! group-commits appends per topic and pins the planner on log reads.

use crate::Result;
use crate::engine::{BoxFuture, Conn, Engine};
use crate::router::NewLogEvent;
use std::collections::BTreeMap;
use std::future::Future;

pub(crate) const TOPIC_COLS: &str =
    "id, kind, name, arm_id, created, input_schema, input_mapping, key1, key2";
pub(crate) const SUB_COLS: &str =
    "id, topic_id, name, config, provisioning_state, state_reason, created, updated";
/// The columns of a log row, for queries on `event_log` alone.
pub(crate) const LOG_COLS: &str = "seq, event_id, event_type, subject, body, created";

/// The names of the durable counters a topic (`published`) or an event
/// subscription (the rest) keeps; `herald status` and the metrics show them.
pub(crate) mod counter {
    pub(crate) const PUBLISHED: &str = "published";
    pub(crate) const MATCHED: &str = "matched";
    pub(crate) const UNMATCHED: &str = "unmatched";
    pub(crate) const DELIVERED: &str = "delivered";
    pub(crate) const FAILED: &str = "failed";
    pub(crate) const DEAD_LETTERED: &str = "deadLettered";
}

/// The lock space of a topic's log: appends and whatever must see the log
/// without appends in flight (a new subscription's cursor, deleting the
/// topic). The event_log trigger on PostgreSQL takes the same lock.
pub(crate) const LOG_LOCK: &str = "herald:event_log";
/// The lock space of a subscription's signing-secret rotations.
pub(crate) const SIGNING_LOCK: &str = "herald:signing";

/// Counter increments of one scope, collected during a transaction and
/// written at its end. One upsert per name makes concurrent increments add
/// up; writing them last and in name order means a transaction holding a
/// counter row never waits for anything but another counter row taken in
/// the same order, so counters cannot close a deadlock cycle.
pub(crate) struct Bumps<'a> {
    pub(crate) scope: &'a str,
    pub(crate) by: BTreeMap<&'static str, i64>,
}

impl<'a> Bumps<'a> {
    pub(crate) fn new(scope: &'a str) -> Self {
        Self {
            scope,
            by: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, name: &'static str, by: i64) {
        *self.by.entry(name).or_default() += by;
    }
}

/// What each engine does its own way in the router store.
pub(crate) trait RouterEngine: Engine {
    /// Appends events to a topic's log in order and returns the last seq
    /// (the head when `events` is empty). Each engine commits them its own
    /// way, each with `router_store::append_in` from the module the store
    /// macro expands to.
    fn append_to_log(
        &self,
        topic_id: String,
        events: Vec<NewLogEvent>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Keeps the rest of the transaction's reads of a topic's log on the
    /// `(topic_id, seq)` index, sorting nothing if `no_sort`.
    fn log_order_plan<'c>(tx: &'c mut Conn<Self>, no_sort: bool) -> BoxFuture<'c, Result<()>>;
}

/// Implements [`RouterStore`](crate::RouterStore) for an engine that
/// implements [`RouterEngine`].
macro_rules! router_store {
    ($S:ty) => {
        pub(crate) mod router_store {
            use super::*;
            use crate::engine::{BoxFuture, Conn, Engine};
            use crate::router::store::{
                Bumps, LOG_COLS, LOG_LOCK, RouterEngine, SIGNING_LOCK, SUB_COLS, TOPIC_COLS,
                counter,
            };
            use crate::router::*;
            use crate::{Result, TopicRecord};
            use herald_core::ProvisioningState;
            use sqlx::{QueryBuilder, Row};
            use std::collections::HashMap;

            type S = $S;
            type Db = <S as Engine>::Db;

            /// Rows per multi-row statement, within both engines' bind limits.
            const CHUNK: usize = 500;

            async fn flush(tx: &mut Conn<S>, bumps: Bumps<'_>) -> Result<()> {
                let by: Vec<(&str, i64)> = bumps.by.into_iter().filter(|(_, v)| *v != 0).collect();
                if by.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<Db>::new("INSERT INTO counters (scope, name, value) ");
                q.push_values(&by, |mut b, (name, value)| {
                    b.push_bind(bumps.scope).push_bind(*name).push_bind(*value);
                });
                q.push(
                    " ON CONFLICT (scope, name) DO UPDATE SET value = counters.value + excluded.value",
                );
                q.build().execute(&mut *tx).await?;
                Ok(())
            }

            /// Appends several publishes to one topic's log in the caller's
            /// transaction; returns each one's last seq. The log lock is
            /// held until commit, so seqs of one topic commit in order; the
            /// timestamp is read after it, so it follows seq.
            pub(super) async fn append_in(
                tx: &mut Conn<S>,
                topic_id: &str,
                publishes: &[&[NewLogEvent]],
            ) -> Result<Vec<i64>> {
                S::advisory_lock(&mut *tx, LOG_LOCK, topic_id).await?;
                let now: i64 = sqlx::query_scalar(&format!("SELECT {}", S::UNIX_NOW))
                    .fetch_one(&mut *tx)
                    .await?;
                let mut lasts = Vec::with_capacity(publishes.len());
                let mut bumps = Bumps::new(topic_id);
                for events in publishes {
                    for chunk in events.chunks(CHUNK) {
                        let mut q = QueryBuilder::<Db>::new(
                            "INSERT INTO event_log (topic_id, event_id, event_type, subject, body, \
                             created) ",
                        );
                        q.push_values(chunk, |mut b, e| {
                            b.push_bind(topic_id)
                                .push_bind(e.event_id.as_str())
                                .push_bind(e.event_type.as_str())
                                .push_bind(e.subject.as_str())
                                .push_bind(e.body.as_str())
                                .push_bind(now);
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                    // Under the log lock the topic's newest seq is this
                    // publish's last: one index probe, where RETURNING
                    // would hand every row back (on SQLite one message per
                    // row from its worker thread).
                    let last: Option<i64> =
                        sqlx::query_scalar("SELECT MAX(seq) FROM event_log WHERE topic_id = $1")
                            .bind(topic_id)
                            .fetch_one(&mut *tx)
                            .await?;
                    let last = last.unwrap_or(0);
                    bumps.add(counter::PUBLISHED, events.len() as i64);
                    lasts.push(last);
                }
                flush(&mut *tx, bumps).await?;
                // Delivered with the commit: other nodes' receivers and
                // delivery workers on this topic wake up.
                S::notify(&mut *tx, format!("topic:{topic_id}")).await?;
                Ok(lasts)
            }

            /// Pushes ` WHERE subscription_id = sub AND seq IN (seqs)`.
            fn where_seqs<'q>(q: &mut QueryBuilder<'q, Db>, sub: &'q str, seqs: &'q [i64]) {
                q.push(" WHERE subscription_id = ")
                    .push_bind(sub)
                    .push(" AND seq IN (");
                let mut sep = q.separated(", ");
                for seq in seqs {
                    sep.push_bind(*seq);
                }
                q.push(")");
            }

            /// Moves one message (in flight or fresh) to the dead letters.
            /// The caller holds the message row's lock, if there is a row.
            #[allow(clippy::too_many_arguments)]
            async fn dead_letter(
                tx: &mut Conn<S>,
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
                    "INSERT INTO dead_letters (subscription_id, seq, body, reason, delivery_count, \
                     last_outcome, published_at, dead_lettered_at, last_status, last_attempt_at) \
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
                sqlx::query(
                    "DELETE FROM subscription_messages WHERE subscription_id = $1 AND seq = $2",
                )
                .bind(sub)
                .bind(row.seq)
                .execute(&mut *tx)
                .await?;
                bumps.add(counter::DEAD_LETTERED, 1);
                Ok(())
            }

            async fn insert_attempts(tx: &mut Conn<S>, attempts: &[AttemptRecord]) -> Result<()> {
                for chunk in attempts.chunks(CHUNK) {
                    let mut q = QueryBuilder::<Db>::new(
                        "INSERT INTO delivery_attempts (subscription_id, seq, event_id, attempt, \
                         at, status, latency_ms, outcome, response, event_count, more_event_ids) ",
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

            /// Locks the in-flight messages of the given subscriptions (in
            /// key order) before they are deleted with their subscription.
            /// A claimer holds message rows and then waits for the
            /// subscription row; deleting the subscription row first and
            /// cascading to the messages afterwards would close a cycle.
            async fn lock_messages_of(tx: &mut Conn<S>, subscription_ids: &[String]) -> Result<()> {
                if S::FOR_UPDATE.is_empty() || subscription_ids.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<Db>::new(
                    "SELECT 1 FROM subscription_messages WHERE subscription_id IN (",
                );
                let mut sep = q.separated(", ");
                for id in subscription_ids {
                    sep.push_bind(id.as_str());
                }
                q.push(") ORDER BY subscription_id, seq")
                    .push(S::FOR_UPDATE);
                q.build().fetch_all(&mut *tx).await?;
                Ok(())
            }

            /// Reads log rows of `topic_id` from `window.next_cursor` on,
            /// in pages sized to what is still wanted (so a claim of a few
            /// events does not pull a large slice of the log), until `max`
            /// rows matched or `scan_limit` rows were read. The window
            /// counts what it saw; returns how many rows were read.
            async fn scan_log(
                tx: &mut Conn<S>,
                topic_id: &str,
                window: &mut FreshWindow,
                max: i64,
                scan_limit: i64,
                min_page: i64,
                matcher: &Matcher,
            ) -> Result<i64> {
                let mut scanned = 0;
                'scan: while (window.rows.len() as i64) < max && scanned < scan_limit {
                    let page = (max - window.rows.len() as i64)
                        .max(min_page)
                        .min(scan_limit - scanned);
                    let rows: Vec<LogRow> = sqlx::query_as(&format!(
                        "SELECT {LOG_COLS} FROM event_log \
                         WHERE topic_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
                    ))
                    .bind(topic_id)
                    .bind(window.next_cursor)
                    .bind(page)
                    .fetch_all(&mut *tx)
                    .await?;
                    if rows.is_empty() {
                        break;
                    }
                    scanned += rows.len() as i64;
                    for row in rows {
                        if window.rows.len() as i64 >= max {
                            break 'scan;
                        }
                        window.next_cursor = row.seq + 1;
                        if matcher(&row) {
                            window.matched += 1;
                            window.rows.push(row);
                        } else {
                            window.unmatched += 1;
                        }
                    }
                }
                Ok(scanned)
            }

            async fn claim_in(
                tx: &mut Conn<S>,
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

                // Messages already in flight that are due again come first,
                // in order. SKIP LOCKED: rows another node is claiming or
                // settling right now are its business; concurrent receivers
                // get disjoint messages, never wait.
                let due = sqlx::query(&format!(
                    "SELECT m.seq, m.delivery_count, m.last_outcome, m.last_status, e.event_id, \
                     e.event_type, e.subject, e.body, e.created \
                     FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
                     WHERE m.subscription_id = $1 AND m.available_at <= $2 \
                     ORDER BY m.seq LIMIT $3{}",
                    S::row_lock(" FOR UPDATE OF m SKIP LOCKED")
                ))
                .bind(sub)
                .bind(o.now_ms)
                .bind(o.max.max(0))
                .fetch_all(&mut *tx)
                .await?;
                let mut relocked: Vec<(i64, String)> = Vec::new();
                for r in &due {
                    let row: LogRow = sqlx::FromRow::from_row(r)?;
                    let count: i64 = r.try_get("delivery_count")?;
                    let outcome: Option<String> = r.try_get("last_outcome")?;
                    if let Some(reason) = (o.dead_letter)(&row, count, o.now_ms) {
                        dead_letter(
                            tx,
                            &mut bumps,
                            &row,
                            reason,
                            count,
                            outcome.as_deref(),
                            None,
                            o.now_ms,
                        )
                        .await?;
                        continue;
                    }
                    let token = lock_token(row.seq);
                    relocked.push((row.seq, token.clone()));
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
                for chunk in relocked.chunks(CHUNK) {
                    // VALUES columns are `column1`, `column2` on both engines.
                    let mut q = QueryBuilder::<Db>::new(
                        "UPDATE subscription_messages AS m SET state = 'locked', \
                         lock_token = t.column2, lock_expires_at = ",
                    );
                    q.push_bind(o.now_ms + o.lock_ms)
                        .push(", available_at = ")
                        .push_bind(o.now_ms + o.lock_ms)
                        .push(", first_locked_at = ")
                        .push_bind(o.now_ms)
                        .push(", delivery_count = m.delivery_count + 1 FROM (");
                    q.push_values(chunk, |mut b, (seq, token)| {
                        b.push_bind(*seq).push_bind(token.as_str());
                    });
                    q.push(") AS t WHERE m.subscription_id = ")
                        .push_bind(sub)
                        .push(" AND m.seq = t.column1");
                    q.build().execute(&mut *tx).await?;
                }

                // Then new log rows past the cursor, filtered here so only
                // matches ever get a per-subscription row. The cursor is read
                // under the subscription row's lock: concurrent claimers take
                // turns here, and each sees the cursor the previous one
                // committed, so no log row is handed out twice. (NO KEY
                // UPDATE does not block inserts that reference the row, e.g.
                // dead letters written by settles.)
                let locked_cursor: Option<i64> = if (out.len() as i64) >= o.max || o.scan_limit <= 0
                {
                    None
                } else if S::FOR_UPDATE.is_empty() {
                    // One writer: the cursor read above is still current.
                    exists
                } else {
                    sqlx::query_scalar(&format!(
                        "SELECT cursor_seq FROM event_subscriptions WHERE id = $1{}",
                        S::row_lock(" FOR NO KEY UPDATE")
                    ))
                    .bind(sub)
                    .fetch_optional(&mut *tx)
                    .await?
                };
                if let Some(cursor) = locked_cursor {
                    S::log_order_plan(&mut *tx, false).await?;
                    let mut window = FreshWindow {
                        cursor,
                        next_cursor: cursor,
                        rows: Vec::new(),
                        matched: 0,
                        unmatched: 0,
                    };
                    let mut inserts: Vec<(i64, String)> = Vec::new();
                    let mut scanned = 0;
                    // Matches the rule dead-letters are not handed out, so
                    // the scan goes on for as many as are still wanted.
                    while (out.len() as i64) < o.max && scanned < o.scan_limit {
                        let want = o.max - out.len() as i64;
                        let read = scan_log(
                            tx,
                            topic_id,
                            &mut window,
                            want,
                            o.scan_limit - scanned,
                            16,
                            matcher,
                        )
                        .await?;
                        if read == 0 {
                            break;
                        }
                        scanned += read;
                        let mut short = false;
                        for row in std::mem::take(&mut window.rows) {
                            if let Some(reason) = (o.dead_letter)(&row, 0, o.now_ms) {
                                short = true;
                                sqlx::query(
                                    "INSERT INTO dead_letters (subscription_id, seq, body, reason, \
                                 delivery_count, published_at, dead_lettered_at) \
                                 VALUES ($1, $2, $3, $4, 0, $5, $6)",
                                )
                                .bind(sub)
                                .bind(row.seq)
                                .bind(&row.body)
                                .bind(reason)
                                .bind(row.published_at)
                                .bind(o.now_ms / 1000)
                                .execute(&mut *tx)
                                .await?;
                                bumps.add(counter::DEAD_LETTERED, 1);
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
                        // Nothing dead-lettered: the scan already went as far as it may.
                        if !short {
                            break;
                        }
                    }
                    for chunk in inserts.chunks(CHUNK) {
                        let mut q = QueryBuilder::<Db>::new(
                            "INSERT INTO subscription_messages (subscription_id, seq, state, \
                             available_at, lock_token, lock_expires_at, first_locked_at, \
                             delivery_count, enqueued_at) ",
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
                    if window.next_cursor != cursor {
                        sqlx::query("UPDATE event_subscriptions SET cursor_seq = $1 WHERE id = $2")
                            .bind(window.next_cursor)
                            .bind(sub)
                            .execute(&mut *tx)
                            .await?;
                    }
                    bumps.add(counter::MATCHED, window.matched);
                    bumps.add(counter::UNMATCHED, window.unmatched);
                }
                flush(tx, bumps).await?;
                Ok(out)
            }

            async fn settle_in(
                tx: &mut Conn<S>,
                sub: &str,
                tokens: &[String],
                action: SettleAction,
                now_ms: i64,
            ) -> Result<Vec<Result<(), SettleFailure>>> {
                // One lookup for every token's row, then one statement per
                // action kind. The rows are locked (in seq order, so two
                // settles of overlapping tokens cannot deadlock) until the
                // settle commits: a concurrent settle of the same token
                // waits, then finds the row gone or changed, and a claim
                // skips them.
                let seqs: Vec<Option<i64>> = tokens.iter().map(|t| lock_token_seq(t)).collect();
                let mut wanted: Vec<i64> = seqs.iter().flatten().copied().collect();
                wanted.sort_unstable();
                wanted.dedup();
                let mut live: HashMap<i64, (String, i64)> = HashMap::new();
                for chunk in wanted.chunks(CHUNK) {
                    let mut q = QueryBuilder::<Db>::new(
                        "SELECT seq, lock_token, first_locked_at FROM subscription_messages",
                    );
                    where_seqs(&mut q, sub, chunk);
                    q.push(" AND state = 'locked' AND lock_expires_at > ")
                        .push_bind(now_ms)
                        .push(" ORDER BY seq")
                        .push(S::FOR_UPDATE);
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
                let mut bumps = Bumps::new(sub);
                for chunk in settled.chunks(CHUNK) {
                    let n = chunk.len() as i64;
                    match action {
                        SettleAction::Acknowledge => {
                            let mut q =
                                QueryBuilder::<Db>::new("DELETE FROM subscription_messages");
                            where_seqs(&mut q, sub, chunk);
                            q.build().execute(&mut *tx).await?;
                            bumps.add(counter::DELIVERED, n);
                        }
                        SettleAction::Release { delay_ms } => {
                            let mut q = QueryBuilder::<Db>::new(
                                "UPDATE subscription_messages SET state = 'ready', \
                                 lock_token = NULL, lock_expires_at = NULL, available_at = ",
                            );
                            q.push_bind(now_ms + delay_ms);
                            where_seqs(&mut q, sub, chunk);
                            q.build().execute(&mut *tx).await?;
                        }
                        SettleAction::RenewLock { lock_ms, .. } => {
                            let mut q = QueryBuilder::<Db>::new(
                                "UPDATE subscription_messages SET lock_expires_at = ",
                            );
                            q.push_bind(now_ms + lock_ms)
                                .push(", available_at = ")
                                .push_bind(now_ms + lock_ms);
                            where_seqs(&mut q, sub, chunk);
                            q.build().execute(&mut *tx).await?;
                        }
                        SettleAction::Retry {
                            delay_ms,
                            outcome,
                            status,
                        } => {
                            let mut q = QueryBuilder::<Db>::new(
                                "UPDATE subscription_messages SET state = 'ready', \
                                 lock_token = NULL, lock_expires_at = NULL, available_at = ",
                            );
                            q.push_bind(now_ms + delay_ms)
                                .push(", last_outcome = ")
                                .push_bind(outcome)
                                .push(", last_status = ")
                                .push_bind(status.map(i64::from))
                                .push(", last_attempt_at = ")
                                .push_bind(now_ms);
                            where_seqs(&mut q, sub, chunk);
                            q.build().execute(&mut *tx).await?;
                            bumps.add(counter::FAILED, n);
                        }
                        SettleAction::DeadLetter {
                            reason,
                            outcome,
                            status,
                            attempted,
                        } => {
                            let rows = settled_rows(tx, sub, chunk).await?;
                            for seq in chunk {
                                let (row, claimed, _) =
                                    rows.get(seq).ok_or(sqlx::Error::RowNotFound)?;
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
                            bumps.add(counter::FAILED, n);
                        }
                        SettleAction::Reject => {
                            let rows = settled_rows(tx, sub, chunk).await?;
                            for seq in chunk {
                                let (row, count, outcome) =
                                    rows.get(seq).ok_or(sqlx::Error::RowNotFound)?;
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
                flush(tx, bumps).await?;
                Ok(results)
            }

            /// The log rows, delivery counts and last outcomes of messages
            /// this transaction has locked.
            async fn settled_rows(
                tx: &mut Conn<S>,
                sub: &str,
                seqs: &[i64],
            ) -> Result<HashMap<i64, (LogRow, i64, Option<String>)>> {
                let mut q = QueryBuilder::<Db>::new(
                    "SELECT m.delivery_count, m.last_outcome, e.seq, e.event_id, e.event_type, \
                     e.subject, e.body, e.created \
                     FROM subscription_messages m JOIN event_log e ON e.seq = m.seq \
                     WHERE m.subscription_id = ",
                );
                q.push_bind(sub).push(" AND m.seq IN (");
                let mut sep = q.separated(", ");
                for seq in seqs {
                    sep.push_bind(*seq);
                }
                q.push(")");
                q.build()
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| {
                        let row: LogRow = sqlx::FromRow::from_row(r)?;
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

            /// One scalar read on the reader pool. Every read there takes
            /// all rows (`fetch_all`) rather than `fetch_optional`, which on
            /// SQLite can leave the statement open and with it a read
            /// snapshot that holds WAL checkpoints back.
            fn first<T>(rows: Vec<T>) -> Result<T> {
                Ok(rows.into_iter().next().ok_or(sqlx::Error::RowNotFound)?)
            }

            #[async_trait::async_trait]
            impl RouterStore for S {
                async fn create_topic(&self, t: &TopicRecord) -> Result<bool> {
                    let t = t.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO topics (id, kind, name, arm_id, created, input_schema, \
                                 input_mapping, key1, key2) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                                 ON CONFLICT (name) DO NOTHING",
                            )
                            .bind(t.id.as_str())
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
                    Ok(
                        sqlx::query_as(&format!("SELECT {TOPIC_COLS} FROM topics WHERE name = $1"))
                            .bind(name)
                            .fetch_all(self.reader())
                            .await?
                            .into_iter()
                            .next(),
                    )
                }

                async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {TOPIC_COLS} FROM topics ORDER BY name{}",
                        S::BYTE_ORDER
                    ))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn delete_topic(&self, name: &str) -> Result<bool> {
                    let name = name.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let id: Option<String> = sqlx::query_scalar(
                                "SELECT id FROM topics WHERE name = $1 AND kind = 'custom'",
                            )
                            .bind(&name)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(id) = id else { return Ok(false) };
                            // Appends in flight finish first; later ones wait
                            // for this delete.
                            S::advisory_lock(&mut *tx, LOG_LOCK, &id).await?;
                            let subs: Vec<String> = sqlx::query_scalar(
                                "SELECT id FROM event_subscriptions WHERE topic_id = $1",
                            )
                            .bind(&id)
                            .fetch_all(&mut *tx)
                            .await?;
                            lock_messages_of(tx, &subs).await?;
                            sqlx::query("DELETE FROM event_log WHERE topic_id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            let done = sqlx::query("DELETE FROM topics WHERE id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            // A concurrent delete of the same topic finds it gone.
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn set_topic_key(
                    &self,
                    topic_id: &str,
                    which: u8,
                    sealed: &[u8],
                ) -> Result<bool> {
                    let (topic_id, sealed) = (topic_id.to_owned(), sealed.to_vec());
                    let column = if which == 2 { "key2" } else { "key1" };
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(&format!(
                                "UPDATE topics SET {column} = $1 WHERE id = $2"
                            ))
                            .bind(&sealed)
                            .bind(&topic_id)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn append_events(
                    &self,
                    topic_id: &str,
                    events: Vec<NewLogEvent>,
                ) -> Result<i64> {
                    if events.is_empty() {
                        return self.head_seq(topic_id).await;
                    }
                    self.append_to_log(topic_id.to_owned(), events).await
                }

                async fn head_seq(&self, topic_id: &str) -> Result<i64> {
                    let seq: Option<i64> = first(
                        sqlx::query_scalar("SELECT MAX(seq) FROM event_log WHERE topic_id = $1")
                            .bind(topic_id)
                            .fetch_all(self.reader())
                            .await?,
                    )?;
                    Ok(seq.unwrap_or(0))
                }

                async fn put_subscription(&self, s: &SubscriptionRecord) -> Result<bool> {
                    let s = s.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Appends to the topic that are in flight commit
                            // first, so "events published after it exists" is
                            // exact: everything below the cursor is committed,
                            // everything later gets a larger seq.
                            S::advisory_lock(&mut *tx, LOG_LOCK, &s.topic_id).await?;
                            // Two nodes creating the same subscription: one
                            // inserts, the other waits for that insert and then
                            // updates it.
                            let created = sqlx::query(
                                "INSERT INTO event_subscriptions (id, topic_id, name, config, \
                                 provisioning_state, state_reason, cursor_seq, created, updated) \
                                 VALUES ($1, $2, $3, $4, $5, $6, \
                                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM event_log), $7, $8) \
                                 ON CONFLICT (topic_id, name) DO NOTHING",
                            )
                            .bind(s.id.as_str())
                            .bind(s.topic_id.as_str())
                            .bind(&s.name)
                            .bind(&s.config)
                            .bind(s.provisioning_state.as_str())
                            .bind(&s.state_reason)
                            .bind(s.created)
                            .bind(s.updated)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                                == 1;
                            if !created {
                                sqlx::query(
                                    "UPDATE event_subscriptions SET config = $1, \
                                     provisioning_state = $2, state_reason = $3, updated = $4 \
                                     WHERE topic_id = $5 AND name = $6",
                                )
                                .bind(&s.config)
                                .bind(s.provisioning_state.as_str())
                                .bind(&s.state_reason)
                                .bind(s.updated)
                                .bind(s.topic_id.as_str())
                                .bind(&s.name)
                                .execute(&mut *tx)
                                .await?;
                            }
                            Ok(created)
                        })
                    })
                    .await
                }

                async fn subscription(
                    &self,
                    topic_id: &str,
                    name: &str,
                ) -> Result<Option<SubscriptionRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {SUB_COLS} FROM event_subscriptions WHERE topic_id = $1 AND name = $2"
                    ))
                    .bind(topic_id)
                    .bind(name)
                    .fetch_all(self.reader())
                    .await?
                    .into_iter()
                    .next())
                }

                async fn list_subscriptions(
                    &self,
                    topic_id: &str,
                ) -> Result<Vec<SubscriptionRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {SUB_COLS} FROM event_subscriptions WHERE topic_id = $1 \
                         ORDER BY name{}",
                        S::BYTE_ORDER
                    ))
                    .bind(topic_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn delete_subscription(&self, topic_id: &str, name: &str) -> Result<bool> {
                    let (topic_id, name) = (topic_id.to_owned(), name.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let id: Option<String> = sqlx::query_scalar(
                                "SELECT id FROM event_subscriptions WHERE topic_id = $1 AND name = $2",
                            )
                            .bind(&topic_id)
                            .bind(&name)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(id) = id else { return Ok(false) };
                            lock_messages_of(tx, std::slice::from_ref(&id)).await?;
                            let done = sqlx::query("DELETE FROM event_subscriptions WHERE id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn set_subscription_state(
                    &self,
                    id: &str,
                    state: ProvisioningState,
                    reason: Option<&str>,
                ) -> Result<()> {
                    let (id, state, reason) =
                        (id.to_owned(), state.as_str(), reason.map(str::to_owned));
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(&format!(
                                "UPDATE event_subscriptions SET provisioning_state = $1, \
                                 state_reason = $2, updated = {} WHERE id = $3",
                                S::UNIX_NOW
                            ))
                            .bind(state)
                            .bind(&reason)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
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
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move { claim_in(tx, &sub, &topic, &opts, &matcher).await })
                    })
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
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move { settle_in(tx, &sub, &tokens, action, now_ms).await })
                    })
                    .await
                }

                async fn dead_letters(
                    &self,
                    subscription_id: &str,
                    after_id: i64,
                    limit: i64,
                ) -> Result<Vec<DeadLetterRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT id, seq, body, reason, delivery_count, last_outcome, published_at, \
                         dead_lettered_at FROM dead_letters WHERE subscription_id = $1 AND id > $2 \
                         ORDER BY id LIMIT $3",
                    )
                    .bind(subscription_id)
                    .bind(after_id)
                    .bind(limit.max(0))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn backlog(&self, subscription_id: &str) -> Result<i64> {
                    first(
                        sqlx::query_scalar(
                            "SELECT (SELECT COUNT(*) FROM event_log e JOIN event_subscriptions s \
                             ON e.topic_id = s.topic_id WHERE s.id = $1 AND e.seq >= s.cursor_seq) \
                             + (SELECT COUNT(*) FROM subscription_messages WHERE subscription_id = $1)",
                        )
                        .bind(subscription_id)
                        .fetch_all(self.reader())
                        .await?,
                    )
                }

                async fn counters(&self, scope: &str) -> Result<Vec<(String, i64)>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT name, value FROM counters WHERE scope = $1 ORDER BY name{}",
                        S::BYTE_ORDER
                    ))
                    .bind(scope)
                    .fetch_all(self.reader())
                    .await?)
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
                    // No lock: the window carries the cursor it was read
                    // from, and commit_fresh only moves the cursor if it is
                    // still that value.
                    let stored: Option<i64> = match from {
                        Some(c) => Some(c),
                        None => sqlx::query_scalar(
                            "SELECT cursor_seq FROM event_subscriptions WHERE id = $1",
                        )
                        .bind(subscription_id)
                        .fetch_all(self.reader())
                        .await?
                        .into_iter()
                        .next(),
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
                    let mut tx = self.reader().begin().await?;
                    S::log_order_plan(&mut tx, true).await?;
                    scan_log(
                        &mut tx,
                        topic_id,
                        &mut window,
                        max,
                        scan_limit,
                        64,
                        &matcher,
                    )
                    .await?;
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
                    let sub = subscription_id.to_owned();
                    let (cursor, next_cursor, matched, unmatched) = window;
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Compare-and-set: if another node moved the cursor
                            // (or is moving it: the UPDATE waits for its row
                            // lock, then re-checks the condition against the
                            // committed value), nothing is written.
                            let moved = sqlx::query(
                                "UPDATE event_subscriptions SET cursor_seq = $1 \
                                 WHERE id = $2 AND cursor_seq = $3",
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
                            let mut bumps = Bumps::new(&sub);
                            for o in &outcomes {
                                match o {
                                    FreshOutcome::Retry {
                                        seq,
                                        retry_at_ms,
                                        outcome,
                                        status,
                                    } => {
                                        sqlx::query(
                                            "INSERT INTO subscription_messages (subscription_id, seq, \
                                             state, available_at, delivery_count, enqueued_at, \
                                             last_outcome, last_status, last_attempt_at) \
                                             VALUES ($1, $2, 'ready', $3, 1, $4, $5, $6, $7) \
                                             ON CONFLICT (subscription_id, seq) DO NOTHING",
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
                                    FreshOutcome::DeadLetter {
                                        row,
                                        reason,
                                        outcome,
                                        status,
                                        attempted,
                                    } => {
                                        dead_letter(
                                            tx,
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
                            bumps.add(counter::MATCHED, matched);
                            bumps.add(counter::UNMATCHED, unmatched);
                            bumps.add(counter::DELIVERED, delivered);
                            bumps.add(counter::FAILED, outcomes.len() as i64);
                            insert_attempts(tx, &attempts).await?;
                            flush(tx, bumps).await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn all_subscriptions(&self) -> Result<Vec<SubscriptionRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {SUB_COLS} FROM event_subscriptions ORDER BY id{}",
                        S::BYTE_ORDER
                    ))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn next_due(&self, subscription_id: &str) -> Result<Option<i64>> {
                    first(
                        sqlx::query_scalar(
                            "SELECT MIN(available_at) FROM subscription_messages \
                             WHERE subscription_id = $1",
                        )
                        .bind(subscription_id)
                        .fetch_all(self.reader())
                        .await?,
                    )
                }

                async fn record_attempts(&self, attempts: Vec<AttemptRecord>) -> Result<()> {
                    if attempts.is_empty() {
                        return Ok(());
                    }
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move { insert_attempts(tx, &attempts).await })
                    })
                    .await
                }

                async fn attempts(
                    &self,
                    subscription_id: &str,
                    event_id: Option<&str>,
                    after_id: i64,
                    limit: i64,
                ) -> Result<Vec<(i64, AttemptRecord)>> {
                    // A batch lists its events after the first as a JSON
                    // array: the event's JSON string occurs in it.
                    let of_event = if event_id.is_some() {
                        format!(
                            "AND (event_id = $4 OR {}(more_event_ids, $5) > 0)",
                            S::INSTR
                        )
                    } else {
                        String::new()
                    };
                    let sql = format!(
                        "SELECT id, subscription_id, seq, event_id, attempt, at, status, \
                         latency_ms, outcome, response, more_event_ids FROM delivery_attempts \
                         WHERE subscription_id = $1 AND id > $2 {of_event} ORDER BY id LIMIT $3"
                    );
                    let mut q = sqlx::query(&sql)
                        .bind(subscription_id)
                        .bind(after_id)
                        .bind(limit.max(0));
                    if let Some(id) = event_id {
                        q = q.bind(id).bind(AttemptRecord::needle(id));
                    }
                    q.fetch_all(self.reader())
                        .await?
                        .iter()
                        .map(|r| {
                            Ok((
                                r.try_get("id")?,
                                AttemptRecord {
                                    subscription_id: r.try_get::<String, _>("subscription_id")?.into(),
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
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query("DELETE FROM delivery_attempts WHERE at < $1")
                                .bind(before_ms)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected())
                        })
                    })
                    .await
                }

                async fn prune_event_log(
                    &self,
                    now_ms: i64,
                    max_age_ms: i64,
                    limit: i64,
                ) -> Result<u64> {
                    let limit = limit.max(1);
                    let mut pruned = 0;
                    // Consumed events, topic by topic (logs of deleted vaults
                    // included), in short transactions so appends and claims
                    // go on in between.
                    let mut topic = String::new();
                    loop {
                        let next: Option<String> = first(
                            sqlx::query_scalar(
                                "SELECT MIN(topic_id) FROM event_log WHERE topic_id > $1",
                            )
                            .bind(&topic)
                            .fetch_all(self.reader())
                            .await?,
                        )?;
                        let Some(next) = next else { break };
                        topic = next;
                        // Pinned events are skipped, not rescanned: each chunk
                        // starts after the last event the previous one deleted.
                        let mut after = 0;
                        loop {
                            let t = topic.clone();
                            // One statement, one snapshot: a cursor that moved
                            // past an event is seen together with the message
                            // or dead letter its transaction wrote for it, and
                            // events appended after a new subscription's cursor
                            // are seen only with that subscription.
                            let gone: Vec<i64> = self
                                .write(move |tx| -> BoxFuture<'_, Result<_>> {
                                    Box::pin(async move {
                                        Ok(sqlx::query_scalar(
                                            "DELETE FROM event_log WHERE seq IN (\
                                             SELECT e.seq FROM event_log e WHERE e.topic_id = $1 \
                                             AND e.seq > $2 AND e.seq < COALESCE((SELECT \
                                             MIN(cursor_seq) FROM event_subscriptions \
                                             WHERE topic_id = $1), $4) \
                                             AND NOT EXISTS (SELECT 1 FROM subscription_messages m \
                                             WHERE m.seq = e.seq) \
                                             AND NOT EXISTS (SELECT 1 FROM dead_letters d \
                                             WHERE d.seq = e.seq) \
                                             ORDER BY e.seq LIMIT $3) RETURNING seq",
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
                    // Events past the maximum age, oldest (lowest seq) first,
                    // with the messages still in flight for them.
                    let cutoff = now_ms.saturating_sub(max_age_ms).div_euclid(1000);
                    loop {
                        let gone = self
                            .write(move |tx| -> BoxFuture<'_, Result<_>> {
                                Box::pin(async move {
                                    let gone: Vec<i64> = sqlx::query_scalar(
                                        "DELETE FROM event_log WHERE seq IN (\
                                         SELECT h.seq FROM (SELECT seq, created FROM event_log \
                                         ORDER BY seq LIMIT $2) h WHERE h.created < $1) \
                                         RETURNING seq",
                                    )
                                    .bind(cutoff)
                                    .bind(limit)
                                    .fetch_all(&mut *tx)
                                    .await?;
                                    for chunk in gone.chunks(CHUNK) {
                                        let mut q = QueryBuilder::<Db>::new(
                                            "DELETE FROM subscription_messages WHERE seq IN (",
                                        );
                                        let mut sep = q.separated(", ");
                                        for seq in chunk {
                                            sep.push_bind(*seq);
                                        }
                                        q.push(")");
                                        q.build().execute(&mut *tx).await?;
                                    }
                                    Ok(gone.len() as u64)
                                })
                            })
                            .await?;
                        pruned += gone;
                        // A younger event at the head ends it; older ones
                        // behind it (clock skew between nodes) go on a later run.
                        if (gone as i64) < limit {
                            break;
                        }
                    }
                    // Messages whose event is gone (below the oldest event
                    // left), which claims would otherwise skip forever: e.g.
                    // one a claim wrote for an event while it aged out.
                    loop {
                        let gone = self
                            .write(move |tx| -> BoxFuture<'_, Result<_>> {
                                Box::pin(async move {
                                    let done = sqlx::query(
                                        "DELETE FROM subscription_messages \
                                         WHERE (subscription_id, seq) IN (\
                                         SELECT subscription_id, seq FROM subscription_messages \
                                         WHERE seq < COALESCE((SELECT MIN(seq) FROM event_log), $2) \
                                         LIMIT $1)",
                                    )
                                    .bind(limit)
                                    .bind(i64::MAX)
                                    .execute(&mut *tx)
                                    .await?;
                                    Ok(done.rows_affected())
                                })
                            })
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
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO subscription_validations (subscription_id, code, \
                                 token_hash, expires_at) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (subscription_id) DO UPDATE SET code = excluded.code, \
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

                async fn take_validation(
                    &self,
                    token_hash: &str,
                ) -> Result<Option<PendingValidation>> {
                    let hash = token_hash.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Exactly once: a concurrent DELETE of the same row
                            // waits for this one, then finds nothing to delete.
                            Ok(sqlx::query_as(
                                "DELETE FROM subscription_validations WHERE token_hash = $1 \
                                 RETURNING subscription_id, code, expires_at",
                            )
                            .bind(&hash)
                            .fetch_optional(&mut *tx)
                            .await?)
                        })
                    })
                    .await
                }

                async fn expired_validations(&self, now: i64) -> Result<Vec<PendingValidation>> {
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Each expired validation is returned to one caller only.
                            Ok(sqlx::query_as(
                                "DELETE FROM subscription_validations WHERE expires_at <= $1 \
                                 RETURNING subscription_id, code, expires_at",
                            )
                            .bind(now)
                            .fetch_all(&mut *tx)
                            .await?)
                        })
                    })
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
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Rotations of one subscription take turns, so each
                            // new secret retires the ones committed before it
                            // (without this, two concurrent rotations would each
                            // miss the other's secret).
                            S::advisory_lock(&mut *tx, SIGNING_LOCK, &sub).await?;
                            sqlx::query(
                                "UPDATE signing_secrets SET retire_at = $1 \
                                 WHERE subscription_id = $2 AND (retire_at IS NULL OR retire_at > $1)",
                            )
                            .bind(retire_others_at)
                            .bind(&sub)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "DELETE FROM signing_secrets WHERE subscription_id = $1 \
                                 AND retire_at <= $2",
                            )
                            .bind(&sub)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            let id: i64 = sqlx::query_scalar(
                                "INSERT INTO signing_secrets (subscription_id, sealed, created) \
                                 VALUES ($1, $2, $3) RETURNING id",
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
                    Ok(sqlx::query_as(
                        "SELECT id, sealed FROM signing_secrets WHERE subscription_id = $1 \
                         AND (retire_at IS NULL OR retire_at > $2) ORDER BY id DESC",
                    )
                    .bind(subscription_id)
                    .bind(now)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn replay_dead_letters(
                    &self,
                    subscription_id: &str,
                    ids: Vec<i64>,
                    now_ms: i64,
                ) -> Result<u64> {
                    let sub = subscription_id.to_owned();
                    // Sorted, so concurrent replays lock dead letters in the
                    // same order.
                    let mut ids = ids;
                    ids.sort_unstable();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let mut replayed = 0;
                            for id in ids {
                                // Exactly once: of two concurrent replays of one
                                // dead letter, the second waits for the first's
                                // DELETE and then gets no row.
                                let seq: Option<i64> = sqlx::query_scalar(
                                    "DELETE FROM dead_letters WHERE id = $1 AND subscription_id = $2 \
                                     RETURNING seq",
                                )
                                .bind(id)
                                .bind(&sub)
                                .fetch_optional(&mut *tx)
                                .await?;
                                let Some(seq) = seq else { continue };
                                // The event row is locked against retention
                                // pruning until this commits, so a replayed
                                // message never outlives its event.
                                let done = sqlx::query(&format!(
                                    "INSERT INTO subscription_messages (subscription_id, seq, state, \
                                     available_at, delivery_count, enqueued_at) \
                                     SELECT $1, $2, 'ready', $3, 0, $3 \
                                     WHERE EXISTS (SELECT 1 FROM event_log WHERE seq = $2{}) \
                                     ON CONFLICT (subscription_id, seq) DO NOTHING",
                                    S::row_lock(" FOR KEY SHARE")
                                ))
                                .bind(&sub)
                                .bind(seq)
                                .bind(now_ms)
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
        }
    };
}

pub(crate) use router_store;
