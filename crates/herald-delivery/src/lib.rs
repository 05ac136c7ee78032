//! Herald's push delivery (Event Grid WebHook destinations): the
//! validation handshakes, deliveries with retries and probation,
//! dead-lettering, Standard Webhooks signatures, the delivery log and the
//! opt-in SubscriptionDeletion event.
//!
//! The crate is a protocol-neutral push engine (`engine`: the guarded HTTP
//! client, the supervisor, the window-and-commit loop, retry rows,
//! probation and the delivery log) driven by a feed of events (the router,
//! `router_feed`) and a push protocol (Event Grid, `eventgrid`). Another
//! protocol, such as Microsoft Graph change notifications, plugs in by
//! implementing the engine's `PushProtocol` trait, and another source of
//! events by implementing its `Feed` trait; [`Delivery`] wires Event Grid
//! over the router.

mod engine;
mod eventgrid;
mod router_feed;
pub mod signing;

pub use engine::Health;
pub use engine::http;
pub use eventgrid::{deadletter, retry, validation};

use engine::{Engine, EngineSettings, PushProtocol};
use eventgrid::EventGrid;
use herald_router::{DeletedSubscription, RouterResult, RouterService, Subscription, TopicInfo};
use herald_storage::Storage;
use router_feed::RouterFeed;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How push delivery behaves; see each field.
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
/// Cheap to clone; clones share the engine.
#[derive(Clone)]
pub struct Delivery {
    engine: Engine<RouterFeed, EventGrid>,
    /// The engine's protocol, for the handshakes the API runs.
    eventgrid: Arc<EventGrid>,
}

/// Resolves vault references in secret delivery headers at send time.
pub trait SecretResolver: Send + Sync {
    /// The current value of secret `name` in `vault`.
    fn resolve<'a>(
        &'a self,
        vault: &'a str,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send + 'a>>;
}

/// Herald's own blob containers, as a dead-letter destination: a
/// subscription whose `deadLetterDestination.properties.resourceId` names a
/// Herald storage account gets its dead letters there, readable with the
/// Storage SDK. Set by the node, which owns the blob service.
pub trait DeadLetterBlobs: Send + Sync {
    /// Writes `body` as blob `name` in `account`'s `container`. `Ok(false)`
    /// when Herald has no such account (the configured store is used then).
    fn put<'a>(
        &'a self,
        account: &'a str,
        container: &'a str,
        name: &'a str,
        body: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<bool>> + Send + 'a>>;
}

impl Delivery {
    /// Event Grid push delivery over the router's subscriptions, sending
    /// through `client`. Fails if the dead-letter store cannot be opened.
    pub fn new(
        router: RouterService,
        storage: Arc<dyn Storage>,
        client: http::DeliveryClient,
        settings: DeliverySettings,
    ) -> anyhow::Result<Self> {
        let engine_settings = EngineSettings {
            retry_scale: settings.retry_scale,
            attempt_retention: settings.attempt_retention,
            max_in_flight: settings.max_in_flight,
        };
        let eventgrid = Arc::new(EventGrid::new(
            router.clone(),
            storage.clone(),
            client.clone(),
            Arc::new(settings),
        )?);
        let feed = Arc::new(RouterFeed::new(
            router,
            storage.clone(),
            eventgrid::DESTINATION,
        ));
        let engine = Engine::new(feed, eventgrid.clone(), storage, client, engine_settings);
        Ok(Self { engine, eventgrid })
    }

    /// Resolves secret delivery headers through `resolver` (the vault).
    pub fn with_secret_resolver(self, resolver: Arc<dyn SecretResolver>) -> Self {
        self.eventgrid.set_resolver(resolver);
        self
    }

    /// Lets dead letters go to Herald's own blob containers.
    pub fn with_dead_letter_blobs(self, blobs: Arc<dyn DeadLetterBlobs>) -> Self {
        self.eventgrid.set_blobs(blobs);
        self
    }

    /// Probation and failure streak of a subscription's endpoint, if any.
    pub fn health(&self, subscription_id: &str) -> Option<Health> {
        self.engine.health(subscription_id)
    }

    /// Runs the handshake for a webhook subscription and records the result:
    /// `Succeeded`, `AwaitingManualAction` or `Failed` with a reason.
    pub async fn validate(&self, topic: &TopicInfo, sub: &mut Subscription) -> RouterResult<()> {
        let result = self.eventgrid.handshake((topic, sub)).await;
        self.engine.notify_changed();
        result
    }

    /// Completes a manual validation (GET or POST on the validationUrl);
    /// `true` if the link was valid and the subscription is now validated.
    pub async fn complete_manual_validation(&self, name: &str, token: &str) -> RouterResult<bool> {
        let done = self
            .eventgrid
            .complete_manual_validation(name, token)
            .await?;
        if done {
            // Start delivering now, not at the dispatcher's next tick.
            self.engine.notify_changed();
        }
        Ok(done)
    }

    /// Marks subscriptions whose manual validation window closed as Failed.
    pub async fn expire_manual_validations(&self) -> RouterResult<()> {
        self.eventgrid.expire_manual_validations().await
    }

    /// Sends one SubscriptionDeletion event through the guarded client;
    /// returns the endpoint's status, if it answered.
    pub async fn send_deletion_event(&self, d: &DeletedSubscription) -> Option<u16> {
        self.eventgrid.send_deletion_event(d).await
    }

    /// Supervises delivery until `shutdown`: one worker per validated
    /// webhook subscription this node holds the lock of, plus the deletion
    /// events the router announces.
    pub async fn run(self, shutdown: CancellationToken) {
        self.engine.run(shutdown).await
    }

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
