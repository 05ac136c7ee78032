//! Event Grid's dead-letter decisions for the messages a claim finds: the
//! rule is written here, beside the subscription settings it reads, and the
//! store runs it inside the claim's transaction (as it runs the filter's
//! `Matcher`).

use herald_storage::{DeadLetterRule, LogRow};
use std::sync::Arc;

/// The dead-letter reason for a message handed out as often as it may be.
pub const MAX_DELIVERY_ATTEMPTS_EXCEEDED: &str = "MaxDeliveryAttemptsExceeded";
/// The dead-letter reason for an event older than its time to live.
pub const TIME_TO_LIVE_EXCEEDED: &str = "TimeToLiveExceeded";

/// A message that was handed out `max_delivery_count` times (at least 1)
/// is dead-lettered rather than handed out again; one published `ttl_ms`
/// or longer ago is dead-lettered as expired.
pub fn claim_rule(max_delivery_count: i64, ttl_ms: i64) -> DeadLetterRule {
    Arc::new(move |row: &LogRow, handed_out: i64, now_ms: i64| {
        if handed_out >= max_delivery_count.max(1) {
            Some(MAX_DELIVERY_ATTEMPTS_EXCEEDED)
        } else if now_ms - row.published_at * 1000 >= ttl_ms {
            Some(TIME_TO_LIVE_EXCEEDED)
        } else {
            None
        }
    })
}

/// Only the delivery count: for callers that decide expiry themselves (push
/// delivery, whose expired events go to the dead-letter destination too).
pub fn attempts_rule(max_delivery_count: i64) -> DeadLetterRule {
    claim_rule(max_delivery_count, i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(published_at: i64) -> LogRow {
        LogRow {
            seq: 1,
            event_id: "e".into(),
            event_type: "t".into(),
            subject: "s".into(),
            body: "{}".into(),
            published_at,
        }
    }

    #[test]
    fn count_then_time_to_live() {
        let rule = claim_rule(3, 60_000);
        assert_eq!(rule(&row(100), 0, 100_000), None);
        assert_eq!(rule(&row(100), 2, 159_999), None);
        assert_eq!(
            rule(&row(100), 3, 100_000),
            Some(MAX_DELIVERY_ATTEMPTS_EXCEEDED)
        );
        assert_eq!(rule(&row(100), 0, 160_000), Some(TIME_TO_LIVE_EXCEEDED));
        // A fresh event is never over the count, even with a count of 0.
        assert_eq!(claim_rule(0, 60_000)(&row(100), 0, 100_000), None);
        assert_eq!(attempts_rule(2)(&row(0), 1, 4_000_000_000_000), None);
        assert_eq!(
            attempts_rule(2)(&row(0), 2, 0),
            Some(MAX_DELIVERY_ATTEMPTS_EXCEEDED)
        );
    }
}
