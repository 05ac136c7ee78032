//! Event Grid's retry rules (spec §8): the schedule, per-status minimums,
//! which statuses are never retried, and the outcome names.

use crate::engine::http::FailureKind;
use std::time::Duration;

/// Wait after the n-th failed attempt (1-based); 12 h after the ninth.
const SCHEDULE_SECS: [u64; 9] = [10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600];
const LATER_SECS: u64 = 43_200;

/// The wait after the `failed_attempt`-th failed attempt (1-based).
pub fn schedule(failed_attempt: i64) -> Duration {
    let i = usize::try_from(failed_attempt.max(1) - 1).unwrap_or(usize::MAX);
    Duration::from_secs(SCHEDULE_SECS.get(i).copied().unwrap_or(LATER_SECS))
}

/// The least wait a status demands before the next attempt.
pub fn status_minimum(status: Option<u16>) -> Duration {
    Duration::from_secs(match status {
        Some(404) | Some(410) => 300,
        Some(408) => 120,
        Some(503) => 30,
        _ => 10,
    })
}

/// 400, 401, 403 and 413 are the receiver saying "never"; 410 means the
/// target is gone. None of them is retried.
pub fn is_final(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 410 | 413)
}

/// The statuses Event Grid counts as delivered.
pub fn is_success(status: u16) -> bool {
    (200..=204).contains(&status)
}

/// `lastDeliveryOutcome` for a status (spec §8 mapping).
pub fn outcome_for_status(status: u16) -> &'static str {
    match status {
        200..=204 => "Delivered",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 | 410 => "NotFound",
        413 => "PayloadTooLarge",
        429 | 503 => "Busy",
        _ => "Aborted",
    }
}

/// `lastDeliveryOutcome` for a request that got no response.
pub fn outcome_for_failure(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::TimedOut => "TimedOut",
        FailureKind::ResolutionError => "ResolutionError",
        FailureKind::SocketError => "SocketError",
        // Event Grid has no name for a refused target; Forbidden is the closest.
        FailureKind::Blocked => "Forbidden",
        FailureKind::Other => "Aborted",
    }
}

/// A stored outcome name as the static name the engine records; anything
/// unknown becomes Aborted.
pub fn known_outcome(name: &str) -> &'static str {
    [
        "Delivered",
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "PayloadTooLarge",
        "Busy",
        "Aborted",
        "TimedOut",
        "ResolutionError",
        "SocketError",
        "Canceled",
        "Probation",
    ]
    .into_iter()
    .find(|known| *known == name)
    .unwrap_or("Aborted")
}

/// How long an endpoint stays on probation after this outcome.
pub fn probation_for(outcome: &str) -> Duration {
    Duration::from_secs(match outcome {
        "Busy" | "TimedOut" => 10,
        "SocketError" => 30,
        _ => 300,
    })
}

/// `wait * (1 ± 10%)`, so retries of many events spread out.
pub fn jitter(wait: Duration) -> Duration {
    let f: f64 = rand::random::<f64>() * 0.2 - 0.1;
    wait.mul_f64(1.0 + f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_outcomes_map_to_known_names() {
        for status in [200, 400, 401, 403, 404, 413, 429, 500] {
            let name = outcome_for_status(status);
            assert_eq!(known_outcome(name), name);
        }
        assert_eq!(known_outcome("Canceled"), "Canceled");
        assert_eq!(known_outcome("TimedOut"), "TimedOut");
        assert_eq!(known_outcome("whatever"), "Aborted");
    }

    #[test]
    fn schedule_matches_event_grid() {
        let secs: Vec<u64> = (1..=12).map(|n| schedule(n).as_secs()).collect();
        assert_eq!(
            secs,
            [
                10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 43_200, 43_200
            ]
        );
        assert_eq!(status_minimum(Some(404)).as_secs(), 300);
        assert_eq!(status_minimum(Some(503)).as_secs(), 30);
        assert!(is_final(400) && is_final(401) && is_final(403) && is_final(413) && is_final(410));
        assert!(!is_final(404) && !is_final(429) && !is_final(500));
        assert!(is_success(204) && !is_success(205));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10)).as_secs_f64();
            assert!((9.0..=11.0).contains(&j));
        }
    }
}
