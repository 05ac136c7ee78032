//! Event Grid, the engine's first push protocol: WebHook destinations with
//! Event Grid's handshakes ([`validation`]), headers and batches, retry
//! rules ([`retry`]), dead-letter blobs ([`deadletter`]) and the opt-in
//! SubscriptionDeletion event.

mod batches;
pub mod deadletter;
mod deletion;
mod headers;
pub mod retry;
mod sink;
pub mod validation;
mod verdict;

use crate::engine::http::{DeliveryClient, Outcome};
use crate::engine::{Batch, DeadLetterFate, Judgement, Plan, PushProtocol, PushRequest, Settled};
use crate::router_feed::RoutedSubscription;
use crate::signing::SigningSecret;
use crate::{DeliverySettings, SecretResolver};
use batches::BatchMeta;
use herald_router::subscription::{Destination, WebHookProperties};
use herald_router::{DeletedSubscription, RouterError, RouterService, Subscription, TopicInfo};
use herald_storage::{ClaimedMessage, Storage};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

/// The destination `endpointType` Event Grid pushes to.
pub(crate) const DESTINATION: &str = "WebHook";

/// The Event Grid protocol and what it needs beyond the engine: the router
/// (subscription states, signing secrets, deletions), the pending manual
/// validations, the dead-letter store and the vault for secret headers.
pub(crate) struct EventGrid {
    router: RouterService,
    storage: Arc<dyn Storage>,
    /// The same guarded client the engine sends with, for handshakes and
    /// deletion events.
    client: DeliveryClient,
    settings: Arc<DeliverySettings>,
    dead_letters: Option<DeadLetterStore>,
    /// Set after construction (the node wires the vault in last), hence the lock.
    resolver: RwLock<Option<Arc<dyn SecretResolver>>>,
    /// Herald's blob containers, set by the node like the resolver.
    blobs: RwLock<Option<Arc<dyn crate::DeadLetterBlobs>>>,
    /// Subscribed at construction, so no deletion before `run` is missed.
    deletions: Mutex<Option<Receiver<DeletedSubscription>>>,
}

use deadletter::DeadLetterStore;

impl EventGrid {
    pub(crate) fn new(
        router: RouterService,
        storage: Arc<dyn Storage>,
        client: DeliveryClient,
        settings: Arc<DeliverySettings>,
    ) -> anyhow::Result<Self> {
        let dead_letters = match (&settings.dead_letter_url, &settings.dead_letter_root) {
            (Some(url), _) => Some(DeadLetterStore::s3(url)?),
            (None, Some(root)) => Some(DeadLetterStore::local(root)?),
            (None, None) => None,
        };
        Ok(Self {
            deletions: Mutex::new(Some(router.deletions())),
            router,
            storage,
            client,
            settings,
            dead_letters,
            resolver: RwLock::new(None),
            blobs: RwLock::new(None),
        })
    }

    pub(crate) fn set_blobs(&self, blobs: Arc<dyn crate::DeadLetterBlobs>) {
        if let Ok(mut b) = self.blobs.write() {
            *b = Some(blobs);
        }
    }

    pub(crate) fn blobs(&self) -> Option<Arc<dyn crate::DeadLetterBlobs>> {
        self.blobs.read().ok().and_then(|b| b.clone())
    }

    pub(crate) fn set_resolver(&self, resolver: Arc<dyn SecretResolver>) {
        if let Ok(mut r) = self.resolver.write() {
            *r = Some(resolver);
        }
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

    /// A subscription's event time to live; the demo scale compresses it
    /// with the retry schedule it bounds.
    fn ttl(&self, sub: &Subscription) -> Duration {
        let minutes = sub
            .properties
            .retry_policy
            .event_time_to_live_in_minutes
            .max(1) as u64;
        self.scaled(Duration::from_secs(minutes * 60))
    }
}

/// Event Grid sends the subscription name upper-cased (observed behaviour).
pub(crate) fn upper_name(name: &str) -> String {
    name.to_ascii_uppercase()
}

/// The subscription's webhook, if it has one.
fn webhook(sub: &Subscription) -> Option<&WebHookProperties> {
    match &sub.properties.destination {
        Some(Destination::WebHook(hook)) => Some(hook),
        _ => None,
    }
}

impl PushProtocol for EventGrid {
    type Subscription = RoutedSubscription;
    type Handshake<'a> = (&'a TopicInfo, &'a mut Subscription);
    type HandshakeError = RouterError;
    /// The subscription's signing secrets; an error fails each request of
    /// the window (and is retried) rather than sending unsigned events.
    type WindowState = Result<Vec<SigningSecret>, String>;
    type BatchMeta = BatchMeta;

    async fn handshake<'a>(
        &'a self,
        (topic, sub): (&'a TopicInfo, &'a mut Subscription),
    ) -> Result<(), RouterError> {
        self.validate(topic, sub).await
    }

    async fn housekeeping(&self) {
        if let Err(e) = self.expire_manual_validations().await {
            tracing::error!(error = %e, "expiring manual validations failed");
        }
    }

    async fn lifecycle(self: Arc<Self>, shutdown: CancellationToken) {
        let deletions = self
            .deletions
            .lock()
            .ok()
            .and_then(|mut d| d.take())
            .unwrap_or_else(|| self.router.deletions());
        self.run_deletion_events(deletions, shutdown).await;
    }

    fn plan(&self, s: &RoutedSubscription) -> Option<Plan> {
        let hook = webhook(&s.sub)?;
        Some(Plan {
            endpoint: validation::base_url(&hook.endpoint_url),
            max_events_per_batch: hook.max_events_per_batch,
            max_attempts: s.sub.properties.retry_policy.max_delivery_attempts,
            time_to_live: self.ttl(&s.sub),
        })
    }

    async fn window_state(&self, s: &RoutedSubscription) -> Result<Vec<SigningSecret>, String> {
        // Read once per window: a rotation applies from the next one.
        self.router
            .signing_secrets(&s.sub.record.id)
            .await
            .map(|all| {
                all.iter()
                    .filter_map(|s| SigningSecret::parse(s).ok())
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    fn batches(
        &self,
        s: &RoutedSubscription,
        claimed: Vec<ClaimedMessage>,
    ) -> Vec<Batch<BatchMeta>> {
        match webhook(&s.sub) {
            Some(hook) => batches::form(&s.topic, &s.sub, hook, claimed),
            None => Vec::new(),
        }
    }

    async fn request(
        &self,
        s: &RoutedSubscription,
        batch: &Batch<BatchMeta>,
        attempt: i64,
        secrets: &Result<Vec<SigningSecret>, String>,
    ) -> anyhow::Result<PushRequest> {
        let hook = webhook(&s.sub).ok_or_else(|| anyhow::anyhow!("not a webhook"))?;
        let headers = self.headers(&s.sub, hook, batch, attempt, secrets).await?;
        Ok(PushRequest {
            method: http::Method::POST,
            url: hook.endpoint_url.clone(),
            headers,
            body: batch.body.clone(),
        })
    }

    fn judge(
        &self,
        s: &RoutedSubscription,
        batch: &Batch<BatchMeta>,
        attempt: i64,
        outcome: &Outcome,
        now_ms: i64,
    ) -> Judgement {
        self.verdict(&s.sub, &batch.messages, attempt, outcome, now_ms)
    }

    fn probation_base(&self, outcome: &str) -> Duration {
        retry::probation_for(outcome)
    }

    async fn dead_letter(
        &self,
        s: &RoutedSubscription,
        batch: &Batch<BatchMeta>,
        fate: DeadLetterFate,
    ) {
        self.write_dead_letter_objects(&s.topic, &s.sub, &batch.messages, fate)
            .await;
    }

    async fn expire(
        &self,
        s: &RoutedSubscription,
        messages: Vec<ClaimedMessage>,
        now_ms: i64,
    ) -> Vec<Settled> {
        self.expire_unsent(&s.topic, &s.sub, messages, now_ms).await
    }
}
