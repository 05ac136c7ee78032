//! Endpoint health: a failure streak, and probation that holds a failing
//! endpoint's deliveries back instead of hammering it.

use super::{Engine, Feed, PushProtocol, PushSubscription, Verdict};
use chrono::Utc;
use std::time::Duration;

/// An endpoint's recent record, shown on the subscription.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Failed requests in a row since the last delivered one.
    pub consecutive_failures: u32,
    /// Unix ms until which deliveries are held back, if on probation.
    pub probation_until: Option<i64>,
    /// The outcome of the latest request, in the protocol's names.
    pub last_outcome: Option<String>,
}

/// Probation starts after this many failures in a row.
const PROBATION_AFTER: u32 = 10;
const PROBATION_MAX: Duration = Duration::from_secs(3600);

impl<F, P> Engine<F, P>
where
    P: PushProtocol,
    F: Feed<Subscription = P::Subscription>,
{
    /// Records one request's verdict on the endpoint's health.
    pub(super) fn note_health(&self, sub: &P::Subscription, verdict: &Verdict, outcome: &str) {
        let Ok(mut map) = self.health.lock() else {
            return;
        };
        let h = map.entry(sub.id().to_owned()).or_default();
        h.last_outcome = Some(outcome.to_owned());
        if matches!(verdict, Verdict::Delivered) {
            if h.probation_until.is_some() {
                tracing::info!(subscription = %sub.name(), "endpoint recovered; probation ended");
            }
            h.consecutive_failures = 0;
            h.probation_until = None;
            return;
        }
        h.consecutive_failures += 1;
        if h.consecutive_failures >= PROBATION_AFTER {
            // Doubles with each further failure, up to an hour.
            let doublings = (h.consecutive_failures - PROBATION_AFTER).min(12);
            let base = self.protocol.probation_base(outcome);
            let length = self.scaled(base.saturating_mul(1 << doublings).min(PROBATION_MAX));
            h.probation_until = Some(Utc::now().timestamp_millis() + length.as_millis() as i64);
            tracing::warn!(subscription = %sub.name(), failures = h.consecutive_failures, probation_ms = length.as_millis() as u64,
                "endpoint on probation: deliveries held back");
        }
    }
}
