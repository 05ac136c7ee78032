//! Recording fates: retry rows, dead letters and the delivery log. Retries
//! are settled by lock token; a window of new events is committed whole,
//! with the cursor move, in one transaction.

use super::{Engine, Feed, PushProtocol, PushSubscription, Settled, Verdict, WindowCommit};
use chrono::Utc;
use herald_storage::{FreshOutcome, FreshWindow, SettleAction};

impl<F, P> Engine<F, P>
where
    P: PushProtocol,
    F: Feed<Subscription = P::Subscription>,
{
    /// Records the fate of retried (locked) events: one settle per kind.
    pub(super) async fn settle_retries(
        &self,
        reader: &F::Reader,
        sub: &P::Subscription,
        sent: Vec<Settled>,
    ) {
        let mut attempts = Vec::new();
        let mut acks = Vec::new();
        let now_ms = Utc::now().timestamp_millis();
        for s in sent {
            // Only expiry yields a verdict without a logged request.
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
            if let Err(e) = self.feed.settle(reader, tokens, action, s.at_ms).await {
                // The locks expire and the events are retried: at least once.
                tracing::error!(error = %e, subscription = %sub.name(), "settling a delivery failed");
            }
        }
        if !acks.is_empty()
            && let Err(e) = self
                .feed
                .settle(reader, acks, SettleAction::Acknowledge, now_ms)
                .await
        {
            tracing::error!(error = %e, subscription = %sub.name(), "acknowledging deliveries failed");
        }
        if let Err(e) = self.storage.record_attempts(attempts).await {
            tracing::warn!(error = %e, "recording delivery attempts failed");
        }
    }

    /// Moves the cursor past a window of new events and records the ones
    /// that failed, all in one transaction. `false` if nothing was written.
    pub(super) async fn commit_window(
        &self,
        reader: &F::Reader,
        sub: &P::Subscription,
        w: &FreshWindow,
        sent: Vec<Settled>,
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
        let commit = WindowCommit {
            window: w,
            delivered,
            outcomes,
            attempts,
            now_ms: Utc::now().timestamp_millis(),
        };
        match self.feed.commit_window(reader, commit).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(subscription = %sub.name(),
                    "the subscription's cursor moved during delivery; events may be delivered twice");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.name(),
                    "committing a delivery window failed; its events will be delivered again");
                false
            }
        }
    }
}
