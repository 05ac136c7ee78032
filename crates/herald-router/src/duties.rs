//! The router's background duty: Event Grid's subscription expiry and the
//! pruning of topic logs.

use crate::RouterService;
use herald_core::duty::Duty;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often expired subscriptions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often topic logs are pruned (event_retention_hours and consumed events).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl RouterService {
    /// One node at a time deletes expired subscriptions and prunes the
    /// logs, keeping events for `retention` at most.
    pub fn duties(&self, retention: Duration) -> Vec<Duty> {
        let router = self.clone();
        vec![Duty::singleton("router-duties", SWEEP_EVERY, move |stop| {
            run_router_duties(router, retention, stop)
        })]
    }
}

/// Router housekeeping: expired subscriptions are deleted, as in Event
/// Grid, and topic logs are pruned.
async fn run_router_duties(
    router: RouterService,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first pass comes a period after taking the duty, so a start or a
    // takeover is not slowed by a whole pass over the logs.
    let mut prune =
        tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = router.sweep_expired_subscriptions().await {
                    tracing::error!(error = %e, "subscription expiry sweep failed; will retry");
                }
            }
            _ = prune.tick() => {
                // Each chunk commits on its own, so stopping halfway is safe.
                let pruned = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = router.prune_event_log(retention) => r,
                };
                match pruned {
                    Ok(n) if n > 0 => tracing::info!(events = n, "event log pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "pruning the event log failed; will retry"),
                }
            }
        }
    }
}
