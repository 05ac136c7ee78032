//! The supervisor: one worker per subscription the feed lists as ready,
//! under a delivery lock so that one node at a time delivers each.

use super::{Engine, Feed, PushProtocol};
use chrono::Utc;
use herald_storage::SingletonGuard;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the supervisor looks for changed subscriptions when nothing
/// wakes it.
const TICK: Duration = Duration::from_millis(500);
/// How long a subscription another node delivers is left alone before its
/// lock is tried again.
const ELSEWHERE_RECHECK: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl<F, P> Engine<F, P>
where
    P: PushProtocol,
    F: Feed<Subscription = P::Subscription>,
{
    /// Supervises workers until `shutdown`: starts one per ready
    /// subscription, restarts it when the subscription changes, stops it
    /// when the subscription goes away. The protocol's lifecycle messages
    /// run beside it.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        tokio::spawn(self.protocol.clone().lifecycle(shutdown.clone()));
        // A worker per subscription, with the delivery lock it runs under.
        // The supervisor keeps a handle on the lock, so a worker restarted
        // for a changed subscription never lets it go; a stopped worker
        // releases it only once its in-flight requests are done.
        let mut workers: HashMap<String, (i64, CancellationToken, Arc<SingletonGuard>)> =
            HashMap::new();
        // Subscriptions another node delivers, and when we last asked.
        let mut elsewhere: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.changed.notified() => {}
            }
            let listed = match self.feed.ready().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher cannot list subscriptions; will retry");
                    continue;
                }
            };
            let mut live = HashSet::new();
            for record in listed {
                live.insert(record.id.clone());
                let fresh = workers
                    .get(&record.id)
                    .is_some_and(|(version, _, _)| *version == record.version);
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
                            .is_some_and(|at| at.elapsed() < ELSEWHERE_RECHECK)
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
                let Some(sub) = self.feed.load(&record.id).await else {
                    continue;
                };
                let stop = shutdown.child_token();
                workers.insert(
                    record.id.clone(),
                    (record.version, stop.clone(), guard.clone()),
                );
                let this = self.clone();
                tokio::spawn(async move {
                    this.worker(sub, stop).await;
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
            self.protocol.housekeeping().await;
            if last_prune.elapsed() > PRUNE_EVERY {
                last_prune = Instant::now();
                self.prune_log().await;
            }
        }
        for (_, (_, stop, _)) in workers {
            stop.cancel();
        }
    }

    /// Drops delivery-log rows past their retention.
    async fn prune_log(&self) {
        let before =
            Utc::now().timestamp_millis() - self.settings.attempt_retention.as_millis() as i64;
        match self.storage.prune_attempts(before).await {
            Ok(n) if n > 0 => tracing::info!(pruned = n, "delivery log pruned"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "pruning the delivery log failed"),
        }
    }
}
