//! The protocol-neutral push engine: the SSRF-guarded client ([`http`]),
//! the supervisor that runs one worker per subscription, the
//! window-and-commit loop, retry rows, probation and the delivery log.
//!
//! It is driven by two traits: a [`Feed`] (where events come from and where
//! their fate is committed) and a [`PushProtocol`] (what a receiver is sent
//! and what its answers mean). Event Grid is the first protocol
//! (`crate::eventgrid`) over the router's feed (`crate::router_feed`).

mod feed;
mod health;
pub mod http;
mod protocol;
mod send;
mod settle;
mod supervisor;
mod window;

pub(crate) use feed::{Feed, Listed, PushSubscription, WindowCommit};
pub use health::Health;
pub(crate) use protocol::{
    Batch, DeadLetterFate, Judgement, Plan, PushProtocol, PushRequest, Settled, Verdict,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The engine's own settings.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// Multiplies probation lengths, as it does the protocol's waits.
    pub(crate) retry_scale: f64,
    /// How long the delivery log keeps attempts.
    pub(crate) attempt_retention: Duration,
    /// Batches in flight at once per subscription.
    pub(crate) max_in_flight: usize,
}

/// The engine over one feed and one protocol. Cheap to clone: clones share
/// the health view and the wake-up signal.
pub(crate) struct Engine<F, P> {
    pub(crate) feed: Arc<F>,
    pub(crate) protocol: Arc<P>,
    /// Delivery locks and the delivery log; events go through `feed`.
    pub(crate) storage: Arc<dyn herald_storage::Storage>,
    pub(crate) client: http::DeliveryClient,
    pub(crate) settings: Arc<EngineSettings>,
    pub(crate) health: Arc<Mutex<HashMap<String, Health>>>,
    /// Wakes the supervisor when a subscription changes on this node, so
    /// delivery starts at once rather than at the next poll.
    pub(crate) changed: Arc<tokio::sync::Notify>,
}

// Not derived: a derive would require `F: Clone` and `P: Clone`.
impl<F, P> Clone for Engine<F, P> {
    fn clone(&self) -> Self {
        Self {
            feed: self.feed.clone(),
            protocol: self.protocol.clone(),
            storage: self.storage.clone(),
            client: self.client.clone(),
            settings: self.settings.clone(),
            health: self.health.clone(),
            changed: self.changed.clone(),
        }
    }
}

impl<F, P> Engine<F, P>
where
    P: PushProtocol,
    F: Feed<Subscription = P::Subscription>,
{
    pub(crate) fn new(
        feed: Arc<F>,
        protocol: Arc<P>,
        storage: Arc<dyn herald_storage::Storage>,
        client: http::DeliveryClient,
        settings: EngineSettings,
    ) -> Self {
        Self {
            feed,
            protocol,
            storage,
            client,
            settings: Arc::new(settings),
            health: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Probation and failure streak of a subscription's endpoint, if any.
    pub(crate) fn health(&self, subscription_id: &str) -> Option<Health> {
        self.health.lock().ok()?.get(subscription_id).cloned()
    }

    /// Starts delivery of a changed subscription now, not at the next tick.
    pub(crate) fn notify_changed(&self) {
        self.changed.notify_one();
    }

    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.settings.retry_scale.max(0.0))
    }
}
