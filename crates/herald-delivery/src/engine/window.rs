//! A subscription's worker: the window-and-commit loop. Due retries go
//! first, then windows of new events, each pushed before anything is
//! written and committed afterwards, so a crash in between redelivers the
//! window (at least once) and the writes stay off the sending path.

use super::{Engine, Feed, PushProtocol, PushSubscription, Settled};
use chrono::Utc;
use herald_storage::{ClaimOptions, ClaimedMessage, FreshWindow};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long a claimed retry stays locked: the 30 s request timeout plus a
/// margin, so a crashed node's retries come back soon after it restarts.
const IN_FLIGHT_LOCK_MS: i64 = 40_000;
/// Bounds of a window: enough events to keep every in-flight slot busy,
/// but no more than one commit should carry.
const MIN_WINDOW: i64 = 64;
const MAX_WINDOW: i64 = 5000;
/// How long an idle worker waits at most before it looks again; a wake-up
/// from the feed ends the wait earlier.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// The pause after a failed read or claim.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A window of new events being read ahead, from cursor `from`.
struct Prefetch {
    from: i64,
    task: tokio::task::JoinHandle<herald_storage::Result<Option<FreshWindow>>>,
}

impl<F, P> Engine<F, P>
where
    P: PushProtocol,
    F: Feed<Subscription = P::Subscription>,
{
    /// Delivers one subscription until `stop`.
    pub(super) async fn worker(self, sub: P::Subscription, stop: CancellationToken) {
        let Some(plan) = self.protocol.plan(&sub) else {
            return;
        };
        tracing::info!(topic = %sub.scope(), subscription = %sub.name(), endpoint = %plan.endpoint,
            "delivery started");
        let reader = Arc::new(self.feed.open(&sub));
        let waker = self.feed.waker(&reader);
        let gate = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let ttl_ms = plan.time_to_live.as_millis() as i64;
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
            if let Some(until) = self.health(sub.id()).and_then(|h| h.probation_until) {
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
                .health(sub.id())
                .is_some_and(|h| h.probation_until.is_some());
            let window = if probing {
                1
            } else {
                (plan.max_events_per_batch as i64 * self.settings.max_in_flight.max(1) as i64)
                    .clamp(MIN_WINDOW, MAX_WINDOW)
            };
            // Retries that are due first: they already have rows and locks.
            let opts = ClaimOptions {
                max: window,
                now_ms: Utc::now().timestamp_millis(),
                lock_ms: IN_FLIGHT_LOCK_MS,
                // Attempts are capped when judging; this is a backstop.
                // Expiry is decided below, so expired retries reach the
                // dead-letter destination too.
                dead_letter: herald_router::dead_letter::attempts_rule(plan.max_attempts + 1),
                scan_limit: 0,
            };
            // Only go through the writer when a retry is actually due.
            let due = self.feed.next_due(&reader).await.ok().flatten();
            let retries = match due.filter(|d| *d <= opts.now_ms) {
                None => Ok(Vec::new()),
                Some(_) => self.feed.claim_due(&reader, opts).await,
            };
            let retries = match retries {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, subscription = %sub.name(), "claim failed; will retry");
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
            };
            let mut worked = !retries.is_empty();
            if !retries.is_empty() {
                // Retries that were due while no worker ran may have expired.
                let sent = self.push_or_expire(&sub, &gate, retries, ttl_ms).await;
                self.settle_retries(&reader, &sub, sent).await;
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
                        _ => self.feed.read_window(&reader, local_cursor, window).await,
                    },
                    _ => self.feed.read_window(&reader, local_cursor, window).await,
                };
                match read {
                    Ok(Some(mut w)) if w.next_cursor != w.cursor => {
                        worked = true;
                        if w.rows.len() as i64 >= window {
                            let (feed, reader) = (self.feed.clone(), reader.clone());
                            let from = w.next_cursor;
                            prefetched = Some(Prefetch {
                                from,
                                task: tokio::spawn(async move {
                                    feed.read_window(&reader, Some(from), window).await
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
                        let sent = self.push_or_expire(&sub, &gate, claimed, ttl_ms).await;
                        // Windows commit in order: the previous one first. If it
                        // failed, this window was read past a cursor that never
                        // moved: drop it and read again from the stored cursor.
                        let previous_ok = match pending.take() {
                            Some(p) => p.await.unwrap_or(false),
                            None => true,
                        };
                        if previous_ok {
                            local_cursor = Some(w.next_cursor);
                            let (this, reader, sub) = (self.clone(), reader.clone(), sub.clone());
                            pending = Some(tokio::spawn(async move {
                                this.commit_window(&reader, &sub, &w, sent).await
                            }));
                        } else {
                            local_cursor = None;
                            prefetched = None;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, subscription = %sub.name(), "reading new events failed; will retry");
                        tokio::time::sleep(STORE_RETRY).await;
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
                let next_due = self.feed.next_due(&reader).await.ok().flatten();
                let until_due = next_due
                    .map(|d| {
                        Duration::from_millis((d - Utc::now().timestamp_millis()).max(1) as u64)
                    })
                    .unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(until_due.min(IDLE_POLL)) => {}
                }
            }
        }
    }

    /// Pushes the events still within their time to live and has the
    /// protocol dead-letter the others.
    async fn push_or_expire(
        &self,
        sub: &P::Subscription,
        gate: &Arc<Semaphore>,
        messages: Vec<ClaimedMessage>,
        ttl_ms: i64,
    ) -> Vec<Settled> {
        let now_ms = Utc::now().timestamp_millis();
        let (expired, live): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| now_ms - m.row.published_at * 1000 >= ttl_ms);
        let mut sent = if live.is_empty() {
            Vec::new()
        } else {
            self.push_all(sub, gate, live).await
        };
        if !expired.is_empty() {
            sent.extend(self.protocol.expire(sub, expired, now_ms).await);
        }
        sent
    }
}
