//! Pushing: a window's events become the protocol's batches, sent at most
//! `max_in_flight` at once through the guarded client, each judged by the
//! protocol and logged.

use super::http::{FailureKind, Outcome};
use super::{
    Batch, DeadLetterFate, Engine, Feed, PushProtocol, PushSubscription, Settled, Verdict,
};
use chrono::Utc;
use herald_storage::{AttemptRecord, ClaimedMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How much of a response body (or failure message) the delivery log keeps.
const RESPONSE_SNIPPET: usize = 512;

impl<F, P> Engine<F, P>
where
    P: PushProtocol,
    F: Feed<Subscription = P::Subscription>,
{
    /// Sends events in batches, at most `max_in_flight` at once.
    pub(super) async fn push_all(
        &self,
        sub: &P::Subscription,
        gate: &Arc<Semaphore>,
        claimed: Vec<ClaimedMessage>,
    ) -> Vec<Settled> {
        let batches = self.protocol.batches(sub, claimed);
        let state = Arc::new(self.protocol.window_state(sub).await);
        let mut tasks = Vec::with_capacity(batches.len());
        for batch in batches {
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let (sub, state) = (sub.clone(), state.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                this.push(&sub, &state, batch).await
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

    /// Sends one batch and decides its fate; the caller records it.
    async fn push(
        &self,
        sub: &P::Subscription,
        state: &P::WindowState,
        batch: Batch<P::BatchMeta>,
    ) -> Settled {
        let attempt = batch
            .messages
            .iter()
            .map(|m| m.delivery_count)
            .max()
            .unwrap_or(1);
        let outcome = match self.protocol.request(sub, &batch, attempt, state).await {
            Ok(req) => {
                self.client
                    .send(req.method, &req.url, &req.headers, req.body)
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, subscription = %sub.name(), "cannot build delivery headers; will retry");
                Outcome::Failed {
                    kind: FailureKind::Other,
                    message: format!("delivery headers: {e}"),
                    latency: Duration::ZERO,
                }
            }
        };
        let now_ms = Utc::now().timestamp_millis();
        let (status, latency, snippet) = match &outcome {
            Outcome::Response(r) => (
                Some(r.status),
                r.latency,
                String::from_utf8_lossy(&r.body[..r.body.len().min(RESPONSE_SNIPPET)]).into_owned(),
            ),
            Outcome::Failed {
                message, latency, ..
            } => (
                None,
                *latency,
                message.chars().take(RESPONSE_SNIPPET).collect(),
            ),
        };
        let judged = self.protocol.judge(sub, &batch, attempt, &outcome, now_ms);
        self.note_health(sub, &judged.verdict, judged.outcome);
        if let Verdict::DeadLetter { reason } = judged.verdict {
            let fate = DeadLetterFate {
                reason,
                outcome: judged.outcome,
                status,
                attempts: attempt,
                at_ms: now_ms,
            };
            self.protocol.dead_letter(sub, &batch, fate).await;
        }
        // One log record per request: a batch shares its fate.
        let attempts = vec![AttemptRecord {
            subscription_id: sub.id().into(),
            seq: batch.messages.first().map_or(0, |m| m.row.seq),
            event_ids: batch.event_ids,
            attempt,
            at_ms: now_ms,
            status,
            latency_ms: latency.as_millis() as i64,
            outcome: judged.outcome.to_owned(),
            response: Some(snippet),
        }];
        metrics::counter!("herald_deliveries_total", "subscription" => sub.name().to_owned(), "outcome" => judged.outcome)
            .increment(batch.messages.len() as u64);
        Settled {
            messages: batch.messages,
            verdict: judged.verdict,
            outcome: judged.outcome,
            status,
            attempts,
            at_ms: now_ms,
        }
    }
}
