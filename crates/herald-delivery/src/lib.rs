//! Herald's push delivery (Event Grid WebHook destinations): the
//! validation handshakes, deliveries with retries and probation,
//! dead-lettering, Standard Webhooks signatures, the delivery log and the
//! opt-in SubscriptionDeletion event.

pub mod deadletter;
mod deletion;
mod engine;
pub mod http;
pub mod retry;
pub mod signing;
pub mod validation;

use herald_router::{DeletedSubscription, RouterService};
use herald_storage::Storage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use engine::Health;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Base URL of this Herald for validation links, e.g. `https://localhost:8443`.
    pub public_base_url: String,
    /// Origin announced in the CloudEvents handshake and deliveries.
    pub origin: String,
    /// Multiplies every retry and handshake wait; 1.0 is Event Grid's
    /// schedule, small values compress it for tests and demos.
    pub retry_scale: f64,
    /// URL prefixes of Herald's own endpoints, validated automatically.
    pub internal_prefixes: Vec<String>,
    /// How long the delivery log keeps attempts.
    pub attempt_retention: Duration,
    /// Root of the local dead-letter store (object layout as Azure blobs).
    pub dead_letter_root: Option<PathBuf>,
    /// `s3://bucket[/prefix]` to keep dead letters in S3-compatible storage instead.
    pub dead_letter_url: Option<String>,
    /// Batches in flight at once per subscription (bounded per endpoint).
    pub max_in_flight: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            public_base_url: "https://localhost:8443".into(),
            origin: "eventgrid.azure.net".into(),
            retry_scale: 1.0,
            internal_prefixes: Vec::new(),
            attempt_retention: Duration::from_secs(7 * 86_400),
            dead_letter_root: None,
            dead_letter_url: None,
            max_in_flight: 32,
        }
    }
}

/// The delivery service: handshakes, the dispatcher and its health view.
#[derive(Clone)]
pub struct Delivery {
    pub(crate) router: RouterService,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) client: http::DeliveryClient,
    pub(crate) settings: Arc<DeliverySettings>,
    pub(crate) health: Arc<Mutex<HashMap<String, Health>>>,
    pub(crate) dead_letters: Option<Arc<deadletter::DeadLetterStore>>,
    pub(crate) resolver: Option<Arc<dyn SecretResolver>>,
    /// Wakes the supervisor when a subscription changes on this node, so
    /// delivery starts at once rather than at the next poll.
    pub(crate) changed: Arc<tokio::sync::Notify>,
    /// Subscribed at construction, so no deletion before `run` is missed.
    pub(crate) deletions: Arc<Mutex<Option<tokio::sync::broadcast::Receiver<DeletedSubscription>>>>,
}

/// Resolves vault references in secret delivery headers at send time.
pub trait SecretResolver: Send + Sync {
    fn resolve<'a>(
        &'a self,
        vault: &'a str,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send + 'a>>;
}

impl Delivery {
    pub fn new(
        router: RouterService,
        storage: Arc<dyn Storage>,
        client: http::DeliveryClient,
        settings: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let dead_letters = match (&settings.dead_letter_url, &settings.dead_letter_root) {
            (Some(url), _) => Some(Arc::new(deadletter::DeadLetterStore::s3(url)?)),
            (None, Some(root)) => Some(Arc::new(deadletter::DeadLetterStore::local(root)?)),
            (None, None) => None,
        };
        Ok(Self {
            deletions: Arc::new(Mutex::new(Some(router.deletions()))),
            router,
            storage,
            client,
            settings: Arc::new(settings),
            health: Arc::default(),
            dead_letters,
            resolver: None,
            changed: Arc::default(),
        })
    }

    pub fn with_secret_resolver(mut self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.settings.retry_scale.max(0.0))
    }

    pub(crate) fn is_internal(&self, url: &str) -> bool {
        self.settings
            .internal_prefixes
            .iter()
            .any(|p| url.starts_with(p.as_str()))
    }

    /// Probation and failure streak of a subscription's endpoint, if any.
    pub fn health(&self, subscription_id: &str) -> Option<Health> {
        self.health.lock().ok()?.get(subscription_id).cloned()
    }
}

/// Event Grid sends the subscription name upper-cased (observed behaviour).
pub(crate) fn upper_name(name: &str) -> String {
    name.to_ascii_uppercase()
}

impl Delivery {
    /// Push delivery runs on every node: each node's supervisor takes the
    /// subscriptions whose singleton it wins, so nodes share the work.
    pub fn duties(&self) -> Vec<herald_core::duty::Duty> {
        let delivery = self.clone();
        vec![herald_core::duty::Duty::every_node(
            "push-delivery",
            Duration::from_millis(500),
            move |stop| delivery.run(stop),
        )]
    }
}
