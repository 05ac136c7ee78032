//! What a receiver's answer means (spec §8): delivered, retried after the
//! schedule's wait, or dead-lettered, and under which outcome name.

use super::{EventGrid, retry};
use crate::engine::http::{FailureKind, Outcome};
use crate::engine::{Judgement, Verdict};
use herald_router::Subscription;
use herald_storage::ClaimedMessage;

impl EventGrid {
    pub(super) fn verdict(
        &self,
        sub: &Subscription,
        messages: &[ClaimedMessage],
        attempt: i64,
        outcome: &Outcome,
        now_ms: i64,
    ) -> Judgement {
        let (status, outcome_name, retry_after) = match outcome {
            Outcome::Response(r) => (
                Some(r.status),
                retry::outcome_for_status(r.status),
                r.retry_after,
            ),
            Outcome::Failed { kind, .. } => (None, retry::outcome_for_failure(*kind), None),
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
            // The guard refused the target: no later attempt can reach it.
            _ if matches!(
                outcome,
                Outcome::Failed {
                    kind: FailureKind::Blocked,
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
                let ttl_ms = self.ttl(sub).as_millis() as i64;
                let ttl_left_ms = messages
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
        Judgement {
            verdict,
            outcome: outcome_name,
        }
    }
}
