//! The dispatcher: one worker per validated webhook subscription claims due
//! messages from the subscription's queue, sends them in batches, and
//! settles each batch as delivered, retried later, or dead-lettered.

use crate::http::Outcome;
use crate::retry;
use crate::signing::SigningSecret;
use crate::validation::base_url;
use crate::{Delivery, upper_name};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use herald_router::schema::{self, DeliverySchema};
use herald_router::subscription::{Destination, WebHookProperties};
use herald_router::{RouterService, Subscription, TopicInfo};
use herald_storage::{
    AttemptRecord, ClaimOptions, ClaimedMessage, FreshOutcome, SettleAction, SingletonGuard,
};
use http::Method;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// An endpoint's recent record, shown on the subscription.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub consecutive_failures: u32,
    /// Unix ms until which deliveries are held back, if on probation.
    pub probation_until: Option<i64>,
    pub last_outcome: Option<String>,
}

/// Probation starts after this many failures in a row.
const PROBATION_AFTER: u32 = 10;
const PROBATION_MAX: Duration = Duration::from_secs(3600);
/// How long a claimed retry stays locked: the 30 s request timeout plus a
/// margin, so a crashed node's retries come back soon after it restarts.
const IN_FLIGHT_LOCK_MS: i64 = 40_000;
const RESPONSE_SNIPPET: usize = 512;

struct Batch {
    messages: Vec<ClaimedMessage>,
    body: Bytes,
    event_ids: Vec<String>,
    data_version: Option<String>,
}

/// What became of one sent batch, for the worker to record.
struct Sent {
    messages: Vec<ClaimedMessage>,
    verdict: Verdict,
    outcome: &'static str,
    status: Option<u16>,
    attempts: Vec<AttemptRecord>,
    at_ms: i64,
}

/// A window of new events being read ahead, from cursor `from`.
struct Prefetch {
    from: i64,
    task: tokio::task::JoinHandle<herald_storage::Result<Option<herald_storage::FreshWindow>>>,
}

enum Verdict {
    Delivered,
    Retry { delay: Duration },
    DeadLetter { reason: &'static str },
}

impl Delivery {
    /// Supervises workers until `shutdown`: starts one per validated webhook
    /// subscription, restarts it when the subscription changes, stops it
    /// when the subscription goes away. Also sends the deletion events the
    /// router announces.
    pub async fn run(self, shutdown: CancellationToken) {
        let deletions = self
            .deletions
            .lock()
            .ok()
            .and_then(|mut d| d.take())
            .unwrap_or_else(|| self.router.deletions());
        tokio::spawn(
            self.clone()
                .run_deletion_events(deletions, shutdown.clone()),
        );
        // A worker per subscription, with the delivery lock it runs under.
        // The dispatcher keeps a handle on the lock, so a worker restarted
        // for a changed subscription never lets it go; a stopped worker
        // releases it only once its in-flight requests are done.
        let mut workers: HashMap<String, (i64, CancellationToken, Arc<SingletonGuard>)> =
            HashMap::new();
        // Subscriptions another node delivers, and when we last asked.
        let mut elsewhere: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.changed.notified() => {}
            }
            let subs = match self.storage.all_subscriptions().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher cannot list subscriptions; will retry");
                    continue;
                }
            };
            let mut live = std::collections::HashSet::new();
            for record in subs {
                if record.provisioning_state != "Succeeded"
                    || !record.config.contains("\"WebHook\"")
                {
                    continue;
                }
                live.insert(record.id.clone());
                let fresh = workers
                    .get(&record.id)
                    .is_some_and(|(updated, _, _)| *updated == record.updated);
                if fresh {
                    continue;
                }
                let held = workers.remove(&record.id).map(|(_, old, guard)| {
                    old.cancel();
                    guard
                });
                let guard = match held {
                    Some(guard) => guard,
                    None => {
                        if elsewhere
                            .get(&record.id)
                            .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
                        {
                            continue;
                        }
                        // One node delivers a subscription at a time; the lock
                        // dies with its holder, and another node takes over here.
                        match self
                            .storage
                            .try_singleton(&format!("delivery:{}", record.id))
                            .await
                        {
                            Ok(Some(g)) => Arc::new(g),
                            Ok(None) => {
                                elsewhere.insert(record.id.clone(), Instant::now());
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot take a subscription's delivery lock; will retry");
                                continue;
                            }
                        }
                    }
                };
                elsewhere.remove(&record.id);
                let Some((topic, sub)) = self
                    .router
                    .subscription_by_id(&record.id)
                    .await
                    .ok()
                    .flatten()
                else {
                    continue;
                };
                let stop = shutdown.child_token();
                workers.insert(
                    record.id.clone(),
                    (record.updated, stop.clone(), guard.clone()),
                );
                let this = self.clone();
                tokio::spawn(async move {
                    this.worker(topic, sub, stop).await;
                    drop(guard);
                });
            }
            workers.retain(|id, (_, stop, _)| {
                let keep = live.contains(id);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            if let Err(e) = self.expire_manual_validations().await {
                tracing::error!(error = %e, "expiring manual validations failed");
            }
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = Instant::now();
                let before = Utc::now().timestamp_millis()
                    - self.settings.attempt_retention.as_millis() as i64;
                match self.storage.prune_attempts(before).await {
                    Ok(n) if n > 0 => tracing::info!(pruned = n, "delivery log pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "pruning the delivery log failed"),
                }
            }
        }
        for (_, (_, stop, _)) in workers {
            stop.cancel();
        }
    }

    async fn worker(self, topic: Arc<TopicInfo>, sub: Subscription, stop: CancellationToken) {
        let Some(Destination::WebHook(hook)) = sub.properties.destination.clone() else {
            return;
        };
        tracing::info!(topic = %topic.name(), subscription = %sub.record.name, endpoint = %base_url(&hook.endpoint_url),
            "delivery started");
        let matcher = RouterService::matcher(
            sub.properties.filter.clone(),
            schema::stored_envelope(&topic.input),
            sub.properties.expires_at().map(|t| t.timestamp()),
        );
        let waker = self.router.waker(&topic.record.id);
        let gate = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        // The commit of one window overlaps the sending of the next; the next
        // is read from where the last one ended, not from the stored cursor.
        let mut pending: Option<tokio::task::JoinHandle<bool>> = None;
        let mut local_cursor: Option<i64> = None;
        // After a full window the next is read while this one is sent.
        let mut prefetched: Option<Prefetch> = None;
        loop {
            if stop.is_cancelled() {
                if let Some(p) = pending.take() {
                    let _ = p.await;
                }
                return;
            }
            if let Some(until) = self.health(&sub.record.id).and_then(|h| h.probation_until) {
                let wait = until - Utc::now().timestamp_millis();
                if wait > 0 {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    }
                }
            }
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A probe of one event after probation; otherwise a full window.
            let probing = self
                .health(&sub.record.id)
                .is_some_and(|h| h.probation_until.is_some());
            // Enough events to keep every in-flight slot busy.
            let window = if probing {
                1
            } else {
                (hook.max_events_per_batch as i64 * self.settings.max_in_flight.max(1) as i64)
                    .clamp(64, 5000)
            };
            // Retries that are due first: they already have rows and locks.
            let opts = ClaimOptions {
                max: window,
                now_ms: Utc::now().timestamp_millis(),
                lock_ms: IN_FLIGHT_LOCK_MS,
                // Attempts are capped when settling; this is a backstop.
                max_delivery_count: sub.properties.retry_policy.max_delivery_attempts + 1,
                // Expiry is decided below, so expired retries reach the
                // dead-letter destination too.
                ttl_ms: i64::MAX / 4,
                scan_limit: 0,
            };
            // Only go through the writer when a retry is actually due.
            let due = self.storage.next_due(&sub.record.id).await.ok().flatten();
            let retries = match due.filter(|d| *d <= opts.now_ms) {
                None => Ok(Vec::new()),
                Some(_) => {
                    self.storage
                        .claim(&sub.record.id, &topic.record.id, opts, matcher.clone())
                        .await
                }
            };
            let retries = match retries {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, subscription = %sub.record.name, "claim failed; will retry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut worked = !retries.is_empty();
            if !retries.is_empty() {
                // Retries that were due while no worker ran may have expired.
                let now_ms = Utc::now().timestamp_millis();
                let ttl_ms = self.ttl_ms(&sub);
                let (expired, live): (Vec<_>, Vec<_>) = retries
                    .into_iter()
                    .partition(|m| now_ms - m.row.published_at * 1000 >= ttl_ms);
                let mut sent = if live.is_empty() {
                    Vec::new()
                } else {
                    self.send_all(&topic, &sub, &hook, &gate, live).await
                };
                if !expired.is_empty() {
                    sent.extend(self.expire(&topic, &sub, expired, now_ms).await);
                }
                self.settle_sent(&sub, sent).await;
            }
            // Then new events past the cursor, delivered before any row is
            // written: the cursor moves only when their fate is committed,
            // so a crash in between redelivers them (at least once).
            if !probing {
                let read = match prefetched.take() {
                    // Only a non-empty read ahead is trusted: an empty one may
                    // predate events whose wake-up came before we listened.
                    Some(p) if Some(p.from) == local_cursor => match p.task.await {
                        Ok(Ok(Some(w))) if !w.rows.is_empty() => Ok(Some(w)),
                        _ => {
                            self.peek(&sub, &topic, local_cursor, window, &matcher)
                                .await
                        }
                    },
                    _ => {
                        self.peek(&sub, &topic, local_cursor, window, &matcher)
                            .await
                    }
                };
                match read {
                    Ok(Some(mut w)) if w.next_cursor != w.cursor => {
                        worked = true;
                        if w.rows.len() as i64 >= window {
                            let (this, sub2, topic2, m) =
                                (self.clone(), sub.clone(), topic.clone(), matcher.clone());
                            let from = w.next_cursor;
                            prefetched = Some(Prefetch {
                                from,
                                task: tokio::spawn(async move {
                                    this.peek(&sub2, &topic2, Some(from), window, &m).await
                                }),
                            });
                        }
                        // The commit needs only the window's bounds and counts.
                        let claimed: Vec<ClaimedMessage> = std::mem::take(&mut w.rows)
                            .into_iter()
                            .map(|row| ClaimedMessage {
                                row,
                                lock_token: String::new(),
                                delivery_count: 1,
                                last_outcome: None,
                                last_status: None,
                            })
                            .collect();
                        // Events that outlived their time to live (the worker
                        // was held back or down) are dead letters, not sends.
                        let now_ms = Utc::now().timestamp_millis();
                        let ttl_ms = self.ttl_ms(&sub);
                        let (expired, live): (Vec<_>, Vec<_>) = claimed
                            .into_iter()
                            .partition(|m| now_ms - m.row.published_at * 1000 >= ttl_ms);
                        let mut sent = if live.is_empty() {
                            Vec::new()
                        } else {
                            self.send_all(&topic, &sub, &hook, &gate, live).await
                        };
                        if !expired.is_empty() {
                            sent.extend(self.expire(&topic, &sub, expired, now_ms).await);
                        }
                        // Windows commit in order: the previous one first. If it
                        // failed, this window was read past a cursor that never
                        // moved: drop it and read again from the stored cursor.
                        let previous_ok = match pending.take() {
                            Some(p) => p.await.unwrap_or(false),
                            None => true,
                        };
                        if previous_ok {
                            local_cursor = Some(w.next_cursor);
                            let (this, sub2) = (self.clone(), sub.clone());
                            pending = Some(tokio::spawn(async move {
                                this.commit_fresh(&sub2, &w, sent).await
                            }));
                        } else {
                            local_cursor = None;
                            prefetched = None;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, subscription = %sub.record.name, "reading new events failed; will retry");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if !worked {
                // Settle the last window before idling, so state is current.
                if let Some(p) = pending.take()
                    && !p.await.unwrap_or(false)
                {
                    local_cursor = None;
                    prefetched = None;
                }
                let next_due = self.storage.next_due(&sub.record.id).await.ok().flatten();
                let until_due = next_due
                    .map(|d| {
                        Duration::from_millis((d - Utc::now().timestamp_millis()).max(1) as u64)
                    })
                    .unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(until_due.min(Duration::from_millis(50))) => {}
                }
            }
        }
    }

    /// A subscription's event time to live; the demo scale compresses it
    /// with the retry schedule it bounds.
    fn ttl_ms(&self, sub: &Subscription) -> i64 {
        let minutes = sub
            .properties
            .retry_policy
            .event_time_to_live_in_minutes
            .max(1) as u64;
        self.scaled(Duration::from_secs(minutes * 60)).as_millis() as i64
    }

    /// Dead-letters events that expired before their next attempt, grouped
    /// by how their last attempt ended (never attempted: Canceled, Event
    /// Grid's closest outcome).
    async fn expire(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        messages: Vec<ClaimedMessage>,
        now_ms: i64,
    ) -> Vec<Sent> {
        let reason = "TimeToLiveExceeded";
        let mut groups: Vec<(&'static str, Option<u16>, i64, Vec<ClaimedMessage>)> = Vec::new();
        for m in messages {
            let outcome = retry::known_outcome(m.last_outcome.as_deref().unwrap_or("Canceled"));
            // The fresh path reports 1; an event never sent had no attempt.
            let attempts = if m.last_outcome.is_some() {
                m.delivery_count - 1
            } else {
                0
            };
            match groups
                .iter_mut()
                .find(|g| g.0 == outcome && g.1 == m.last_status && g.2 == attempts)
            {
                Some(g) => g.3.push(m),
                None => groups.push((outcome, m.last_status, attempts, vec![m])),
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for (outcome, status, attempts, messages) in groups {
            let batch = Batch {
                event_ids: messages.iter().map(|m| m.row.event_id.clone()).collect(),
                messages,
                body: Bytes::new(),
                data_version: None,
            };
            self.write_dead_letter_objects(
                topic, sub, &batch, reason, outcome, status, attempts, now_ms,
            )
            .await;
            out.push(Sent {
                messages: batch.messages,
                verdict: Verdict::DeadLetter { reason },
                outcome,
                status,
                attempts: Vec::new(),
                at_ms: now_ms,
            });
        }
        out
    }

    /// Reads the next window of new events past `from` (or the stored cursor).
    async fn peek(
        &self,
        sub: &Subscription,
        topic: &TopicInfo,
        from: Option<i64>,
        window: i64,
        matcher: &herald_storage::Matcher,
    ) -> herald_storage::Result<Option<herald_storage::FreshWindow>> {
        self.storage
            .peek_fresh(
                &sub.record.id,
                &topic.record.id,
                from,
                window,
                20_000,
                matcher.clone(),
            )
            .await
    }

    /// Sends claimed events in batches, at most `max_in_flight` at once.
    async fn send_all(
        &self,
        topic: &Arc<TopicInfo>,
        sub: &Subscription,
        hook: &WebHookProperties,
        gate: &Arc<Semaphore>,
        claimed: Vec<ClaimedMessage>,
    ) -> Vec<Sent> {
        let batches = self.form_batches(topic, sub, hook, claimed);
        // Read once per window: a rotation applies from the next one.
        let secrets: Arc<Result<Vec<SigningSecret>, String>> = Arc::new(
            self.router
                .signing_secrets(&sub.record.id)
                .await
                .map(|all| {
                    all.iter()
                        .filter_map(|s| SigningSecret::parse(s).ok())
                        .collect()
                })
                .map_err(|e| e.to_string()),
        );
        let mut tasks = Vec::with_capacity(batches.len());
        for batch in batches {
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let (topic, sub, hook, secrets) =
                (topic.clone(), sub.clone(), hook.clone(), secrets.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                this.deliver(&topic, &sub, &hook, &secrets, batch).await
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(sent) = t.await {
                out.push(sent);
            }
        }
        out
    }

    /// Records the fate of retried (locked) events: one settle per kind.
    async fn settle_sent(&self, sub: &Subscription, sent: Vec<Sent>) {
        let mut attempts = Vec::new();
        let mut acks = Vec::new();
        let now_ms = Utc::now().timestamp_millis();
        for s in sent {
            // Only `expire` yields a verdict without a logged request.
            let attempted = !s.attempts.is_empty();
            attempts.extend(s.attempts);
            let tokens: Vec<String> = s.messages.iter().map(|m| m.lock_token.clone()).collect();
            let action = match s.verdict {
                Verdict::Delivered => {
                    acks.extend(tokens);
                    continue;
                }
                Verdict::Retry { delay } => SettleAction::Retry {
                    delay_ms: delay.as_millis() as i64,
                    outcome: s.outcome,
                    status: s.status,
                },
                Verdict::DeadLetter { reason } => SettleAction::DeadLetter {
                    reason,
                    outcome: s.outcome,
                    status: s.status,
                    attempted,
                },
            };
            if let Err(e) = self
                .storage
                .settle(&sub.record.id, tokens, action, s.at_ms)
                .await
            {
                // The locks expire and the events are retried: at least once.
                tracing::error!(error = %e, subscription = %sub.record.name, "settling a delivery failed");
            }
        }
        if !acks.is_empty()
            && let Err(e) = self
                .storage
                .settle(&sub.record.id, acks, SettleAction::Acknowledge, now_ms)
                .await
        {
            tracing::error!(error = %e, subscription = %sub.record.name, "acknowledging deliveries failed");
        }
        if let Err(e) = self.storage.record_attempts(attempts).await {
            tracing::warn!(error = %e, "recording delivery attempts failed");
        }
    }

    /// Moves the cursor past a window of new events and records the ones
    /// that failed, all in one transaction.
    async fn commit_fresh(
        &self,
        sub: &Subscription,
        w: &herald_storage::FreshWindow,
        sent: Vec<Sent>,
    ) -> bool {
        let mut attempts = Vec::new();
        let mut outcomes = Vec::new();
        let mut delivered = 0;
        for s in sent {
            let attempted = !s.attempts.is_empty();
            attempts.extend(s.attempts);
            match s.verdict {
                Verdict::Delivered => delivered += s.messages.len() as i64,
                Verdict::Retry { delay } => {
                    for m in &s.messages {
                        outcomes.push(FreshOutcome::Retry {
                            seq: m.row.seq,
                            retry_at_ms: s.at_ms + delay.as_millis() as i64,
                            outcome: s.outcome,
                            status: s.status,
                        });
                    }
                }
                Verdict::DeadLetter { reason } => {
                    for m in s.messages {
                        outcomes.push(FreshOutcome::DeadLetter {
                            row: m.row,
                            reason,
                            outcome: s.outcome,
                            status: s.status,
                            attempted,
                        });
                    }
                }
            }
        }
        let committed = self
            .storage
            .commit_fresh(
                &sub.record.id,
                (w.cursor, w.next_cursor, w.matched, w.unmatched),
                delivered,
                outcomes,
                attempts,
                Utc::now().timestamp_millis(),
            )
            .await;
        match committed {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(subscription = %sub.record.name,
                    "the subscription's cursor moved during delivery; events may be delivered twice");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.record.name,
                    "committing a delivery window failed; its events will be delivered again");
                false
            }
        }
    }

    /// Groups claimed events into request bodies within the batch limits.
    /// Never waits to fill a batch: whatever is due goes now.
    fn form_batches(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        hook: &WebHookProperties,
        claimed: Vec<ClaimedMessage>,
    ) -> Vec<Batch> {
        let schema = sub.properties.event_delivery_schema;
        let max_events = hook.max_events_per_batch.max(1) as usize;
        let max_bytes = hook.preferred_batch_size_in_kilobytes as usize * 1024;
        // Structured-mode CloudEvents go one per request, unbatched.
        let single = schema == DeliverySchema::CloudEventSchemaV1_0 && max_events == 1;
        let max_events = if single { 1 } else { max_events };
        // Bodies are built from borrowed text (most events need no
        // conversion); the messages are moved into their batches afterwards.
        let mut bodies: Vec<(String, usize, Option<String>)> = Vec::new();
        let mut batch_of: Vec<Option<usize>> = Vec::with_capacity(claimed.len());
        let mut count = 0;
        for m in &claimed {
            let text = match schema::render_raw_cow(&m.row.body, &topic.input, schema, false) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(seq = m.row.seq, error = %e, "stored event does not render; skipping it");
                    batch_of.push(None);
                    continue;
                }
            };
            // The finished body (comma, event, closing bracket) stays within
            // the preferred size; an event larger than that goes alone.
            let fits = bodies.last().is_some_and(|(body, _, _)| {
                count < max_events && body.len() + text.len() + 2 <= max_bytes
            });
            if !fits {
                let data_version = (schema == DeliverySchema::EventGridSchema)
                    .then(|| serde_json::from_str::<DataVersion>(&text).ok())
                    .flatten()
                    .and_then(|d| d.data_version);
                let mut body = String::with_capacity(
                    ((text.len() + 1) * max_events.min(claimed.len()) + 2)
                        .min(max_bytes.max(text.len() + 2)),
                );
                if !single {
                    body.push('[');
                }
                bodies.push((body, 0, data_version));
                count = 0;
            }
            let (body, n, _) = bodies.last_mut().expect("a batch was just opened");
            if *n > 0 {
                body.push(',');
            }
            body.push_str(&text);
            *n += 1;
            count += 1;
            batch_of.push(Some(bodies.len() - 1));
        }
        let mut out: Vec<Batch> = bodies
            .into_iter()
            .map(|(mut body, n, data_version)| {
                if !single {
                    body.push(']');
                }
                Batch {
                    messages: Vec::with_capacity(n),
                    body: Bytes::from(body),
                    event_ids: Vec::with_capacity(n),
                    data_version,
                }
            })
            .collect();
        for (m, b) in claimed.into_iter().zip(batch_of) {
            if let Some(b) = b {
                // Ids come from the log row, not from re-parsing the event.
                out[b].event_ids.push(m.row.event_id.clone());
                out[b].messages.push(m);
            }
        }
        out
    }

    async fn headers(
        &self,
        sub: &Subscription,
        hook: &WebHookProperties,
        batch: &Batch,
        attempt: i64,
        secrets: &Result<Vec<SigningSecret>, String>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let schema = sub.properties.event_delivery_schema;
        let mut h = Vec::with_capacity(12);
        let ce = schema == DeliverySchema::CloudEventSchemaV1_0;
        let content_type = match (
            ce,
            batch.messages.len() > 1 || hook.max_events_per_batch > 1,
        ) {
            (true, true) => "application/cloudevents-batch+json; charset=utf-8",
            (true, false) => "application/cloudevents+json; charset=utf-8",
            _ => "application/json; charset=utf-8",
        };
        h.push(("content-type".into(), content_type.into()));
        h.push(("aeg-event-type".into(), "Notification".into()));
        h.push(("aeg-subscription-name".into(), upper_name(&sub.record.name)));
        // Event Grid counts deliveries from 0.
        h.push((
            "aeg-delivery-count".into(),
            (attempt - 1).max(0).to_string(),
        ));
        if ce {
            h.push(("aeg-metadata-version".into(), "1.0".into()));
            h.push((
                "webhook-request-origin".into(),
                self.settings.origin.clone(),
            ));
            h.push(("origin".into(), self.settings.origin.clone()));
        } else {
            h.push(("aeg-metadata-version".into(), "1".into()));
            h.push((
                "aeg-data-version".into(),
                batch.data_version.clone().unwrap_or_default(),
            ));
        }
        if let Some(id) = batch.event_ids.first() {
            h.push(("aeg-output-event-id".into(), id.clone()));
        }
        // Parsed only when a dynamic header needs a field of it.
        let first: Option<Value> = hook
            .delivery_attribute_mappings
            .iter()
            .any(|m| m["type"].as_str() == Some("Dynamic"))
            .then(|| batch.messages.first())
            .flatten()
            .and_then(|m| serde_json::from_str(&m.row.body).ok());
        for mapping in &hook.delivery_attribute_mappings {
            let Some(name) = mapping["name"].as_str() else {
                continue;
            };
            let props = &mapping["properties"];
            let value = match mapping["type"].as_str() {
                Some("Static") if props["isSecret"].as_bool() == Some(true) => {
                    // A vault reference, resolved now and never stored.
                    let reference = props["value"].as_str().unwrap_or_default();
                    let (vault, name) = herald_router::subscription::parse_secret_reference(
                        reference,
                    )
                    .ok_or_else(|| anyhow::anyhow!("header {name} has no valid vault reference"))?;
                    let resolver = self
                        .resolver
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("no secret resolver configured"))?;
                    Some(resolver.resolve(&vault, &name).await?)
                }
                Some("Static") => mapping["properties"]["value"].as_str().map(str::to_owned),
                Some("Dynamic") => mapping["properties"]["sourceField"]
                    .as_str()
                    .and_then(|path| lookup(first.as_ref()?, path))
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    }),
                _ => None,
            };
            if let Some(v) = value {
                h.push((name.to_owned(), v));
            }
        }
        let parsed = secrets
            .as_ref()
            .map_err(|e| anyhow::anyhow!("signing secrets: {e}"))?;
        if !parsed.is_empty() {
            // Stable across retries of the same events, as the id must be.
            let msg_id = match (batch.event_ids.first(), batch.event_ids.len()) {
                (Some(id), 1) => id.clone(),
                (Some(id), n) => format!("{id}+{}", n - 1),
                (None, _) => uuid::Uuid::new_v4().to_string(),
            };
            h.extend(crate::signing::signature_headers(
                parsed,
                &msg_id,
                Utc::now().timestamp(),
                &batch.body,
            ));
        }
        Ok(h)
    }

    /// Sends one batch and decides its fate; the caller records it.
    async fn deliver(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        hook: &WebHookProperties,
        secrets: &Result<Vec<SigningSecret>, String>,
        batch: Batch,
    ) -> Sent {
        let attempt = batch
            .messages
            .iter()
            .map(|m| m.delivery_count)
            .max()
            .unwrap_or(1);
        let outcome = match self.headers(sub, hook, &batch, attempt, secrets).await {
            Ok(headers) => {
                self.client
                    .send(
                        Method::POST,
                        &hook.endpoint_url,
                        &headers,
                        batch.body.clone(),
                    )
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.record.name, "cannot build delivery headers; will retry");
                Outcome::Failed {
                    kind: crate::http::FailureKind::Other,
                    message: format!("delivery headers: {e}"),
                    latency: Duration::ZERO,
                }
            }
        };
        let now_ms = Utc::now().timestamp_millis();
        let (status, outcome_name, latency, snippet, retry_after) = match &outcome {
            Outcome::Response(r) => (
                Some(r.status),
                retry::outcome_for_status(r.status),
                r.latency,
                Some(
                    String::from_utf8_lossy(&r.body[..r.body.len().min(RESPONSE_SNIPPET)])
                        .into_owned(),
                ),
                r.retry_after,
            ),
            Outcome::Failed {
                kind,
                message,
                latency,
            } => {
                let name = match kind {
                    crate::http::FailureKind::TimedOut => "TimedOut",
                    crate::http::FailureKind::ResolutionError => "ResolutionError",
                    crate::http::FailureKind::SocketError => "SocketError",
                    crate::http::FailureKind::Blocked => "Forbidden",
                    crate::http::FailureKind::Other => "Aborted",
                };
                (
                    None,
                    name,
                    *latency,
                    Some(message.chars().take(RESPONSE_SNIPPET).collect()),
                    None,
                )
            }
        };
        let max_attempts = sub.properties.retry_policy.max_delivery_attempts;
        let verdict = match status {
            Some(s) if retry::is_success(s) => Verdict::Delivered,
            Some(s) if retry::is_final(s) => Verdict::DeadLetter {
                reason: "UndeliverableDueToClientError",
            },
            _ if attempt >= max_attempts => Verdict::DeadLetter {
                reason: "MaxDeliveryAttemptsExceeded",
            },
            _ if matches!(
                outcome,
                Outcome::Failed {
                    kind: crate::http::FailureKind::Blocked,
                    ..
                }
            ) =>
            {
                Verdict::DeadLetter {
                    reason: "UndeliverableDueToClientError",
                }
            }
            _ => {
                let wait = retry::schedule(attempt).max(retry::status_minimum(status));
                let mut delay = self.scaled(retry::jitter(wait));
                let ttl_ms = self.ttl_ms(sub);
                let ttl_left_ms = batch
                    .messages
                    .iter()
                    .map(|m| m.row.published_at * 1000 + ttl_ms - now_ms)
                    .min()
                    .unwrap_or(0)
                    .max(0);
                // The receiver's own Retry-After is a floor the demo scale
                // must not shrink.
                if matches!(status, Some(429) | Some(503))
                    && let Some(ra) = retry_after
                {
                    delay = delay.max(ra);
                }
                // No attempt fits before the events expire: they are dead
                // letters now rather than at the end of their time to live.
                if delay.as_millis() as i64 >= ttl_left_ms {
                    Verdict::DeadLetter {
                        reason: "TimeToLiveExceeded",
                    }
                } else {
                    Verdict::Retry { delay }
                }
            }
        };
        self.note_health(sub, &verdict, outcome_name);
        if let Verdict::DeadLetter { reason } = &verdict {
            self.write_dead_letter_objects(
                topic,
                sub,
                &batch,
                reason,
                outcome_name,
                status,
                attempt,
                now_ms,
            )
            .await;
        }
        // One log record per request: a batch shares its fate.
        let attempts = vec![AttemptRecord {
            subscription_id: sub.record.id.clone(),
            seq: batch.messages.first().map_or(0, |m| m.row.seq),
            event_ids: batch.event_ids,
            attempt,
            at_ms: now_ms,
            status,
            latency_ms: latency.as_millis() as i64,
            outcome: outcome_name.to_owned(),
            response: snippet,
        }];
        metrics::counter!("herald_deliveries_total", "subscription" => sub.record.name.clone(), "outcome" => outcome_name)
            .increment(batch.messages.len() as u64);
        Sent {
            messages: batch.messages,
            verdict,
            outcome: outcome_name,
            status,
            attempts,
            at_ms: now_ms,
        }
    }

    fn note_health(&self, sub: &Subscription, verdict: &Verdict, outcome: &str) {
        let Ok(mut map) = self.health.lock() else {
            return;
        };
        let h = map.entry(sub.record.id.clone()).or_default();
        h.last_outcome = Some(outcome.to_owned());
        if matches!(verdict, Verdict::Delivered) {
            if h.probation_until.is_some() {
                tracing::info!(subscription = %sub.record.name, "endpoint recovered; probation ended");
            }
            h.consecutive_failures = 0;
            h.probation_until = None;
            return;
        }
        h.consecutive_failures += 1;
        if h.consecutive_failures >= PROBATION_AFTER {
            // Doubles with each further failure, up to an hour.
            let doublings = (h.consecutive_failures - PROBATION_AFTER).min(12);
            let base = retry::probation_for(outcome);
            let length = self.scaled(base.saturating_mul(1 << doublings).min(PROBATION_MAX));
            h.probation_until = Some(Utc::now().timestamp_millis() + length.as_millis() as i64);
            tracing::warn!(subscription = %sub.record.name, failures = h.consecutive_failures, probation_ms = length.as_millis() as u64,
                "endpoint on probation: deliveries held back");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_dead_letter_objects(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        batch: &Batch,
        reason: &str,
        outcome: &str,
        status: Option<u16>,
        attempt: i64,
        now_ms: i64,
    ) {
        let (Some(store), Some(dest)) =
            (&self.dead_letters, &sub.properties.dead_letter_destination)
        else {
            return;
        };
        let container = dest["properties"]["blobContainerName"]
            .as_str()
            .unwrap_or("deadletters");
        let ce = sub.properties.event_delivery_schema == DeliverySchema::CloudEventSchemaV1_0;
        let at = Utc
            .timestamp_millis_opt(now_ms)
            .single()
            .unwrap_or_else(Utc::now);
        let events: Vec<Value> = batch
            .messages
            .iter()
            .filter_map(|m| {
                let schema = if ce {
                    DeliverySchema::CloudEventSchemaV1_0
                } else {
                    DeliverySchema::EventGridSchema
                };
                let text = schema::render_raw(&m.row.body, &topic.input, schema, false).ok()?;
                let event: Value = serde_json::from_str(&text).ok()?;
                let info = crate::deadletter::DeadLetterInfo {
                    reason,
                    delivery_attempts: attempt,
                    last_delivery_outcome: Some(outcome),
                    last_http_status: status,
                    publish_time: Utc
                        .timestamp_opt(m.row.published_at, 0)
                        .single()
                        .unwrap_or(at),
                    last_attempt_time: Some(at),
                };
                Some(crate::deadletter::annotate(event, ce, &info))
            })
            .collect();
        match store.write(container, &sub.record.name, &events, at).await {
            Ok(path) => {
                tracing::info!(subscription = %sub.record.name, path = %path, events = events.len(), reason,
                "events dead-lettered")
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.record.name, "writing dead-letter object failed")
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataVersion {
    data_version: Option<String>,
}

/// Reads `data.a.b`-style paths (and top-level names) from an event.
fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, seg| v.get(seg))
}
