//! The router as a feed: subscriptions come from the router's store, events
//! from its topic logs past each subscription's cursor, and retries from the
//! subscription's message rows.

use crate::engine::{Feed, Listed, PushSubscription, WindowCommit};
use herald_core::ProvisioningState;
use herald_router::schema;
use herald_router::{RouterService, Subscription, TopicInfo};
use herald_storage::{ClaimOptions, ClaimedMessage, FreshWindow, Matcher, SettleAction, Storage};
use std::sync::Arc;
use tokio::sync::Notify;

/// How many log rows one window read looks at, matching or not, so a
/// selective filter over a long log does not hold the reader.
const SCAN_LIMIT: i64 = 20_000;

/// A router subscription with its topic.
#[derive(Debug, Clone)]
pub(crate) struct RoutedSubscription {
    pub(crate) topic: Arc<TopicInfo>,
    pub(crate) sub: Subscription,
}

impl PushSubscription for RoutedSubscription {
    fn id(&self) -> &str {
        &self.sub.record.id
    }
    fn name(&self) -> &str {
        &self.sub.record.name
    }
    fn scope(&self) -> &str {
        self.topic.name()
    }
}

/// The router's subscriptions of one destination kind.
pub(crate) struct RouterFeed {
    router: RouterService,
    storage: Arc<dyn Storage>,
    /// The destination `endpointType` whose subscriptions this feed lists
    /// (`WebHook` for Event Grid's webhooks).
    destination: &'static str,
}

/// A subscription opened for reading.
pub(crate) struct RouterReader {
    subscription_id: herald_core::id::SubscriptionId,
    topic_id: herald_core::id::TopicId,
    /// The subscription's filter, compiled once per worker.
    matcher: Matcher,
    waker: Arc<Notify>,
}

impl RouterFeed {
    pub(crate) fn new(
        router: RouterService,
        storage: Arc<dyn Storage>,
        destination: &'static str,
    ) -> Self {
        Self {
            router,
            storage,
            destination,
        }
    }
}

impl Feed for RouterFeed {
    type Subscription = RoutedSubscription;
    type Reader = RouterReader;

    async fn ready(&self) -> anyhow::Result<Vec<Listed>> {
        // The records are listed without parsing their settings: this runs
        // on every tick, for every subscription.
        let kind = format!("\"{}\"", self.destination);
        Ok(self
            .storage
            .all_subscriptions()
            .await?
            .into_iter()
            .filter(|r| {
                r.provisioning_state == ProvisioningState::Succeeded && r.config.contains(&kind)
            })
            .map(|r| Listed {
                id: r.id.to_string(),
                version: r.updated,
            })
            .collect())
    }

    async fn load(&self, id: &str) -> Option<RoutedSubscription> {
        let (topic, sub) = self.router.subscription_by_id(id).await.ok().flatten()?;
        Some(RoutedSubscription { topic, sub })
    }

    fn open(&self, s: &RoutedSubscription) -> RouterReader {
        RouterReader {
            subscription_id: s.sub.record.id.clone(),
            topic_id: s.topic.record.id.clone(),
            matcher: RouterService::matcher(
                s.sub.properties.filter.clone(),
                schema::stored_envelope(&s.topic.input),
                s.sub.properties.expires_at().map(|t| t.timestamp()),
            ),
            waker: self.router.waker(&s.topic.record.id),
        }
    }

    fn waker(&self, reader: &RouterReader) -> Arc<Notify> {
        reader.waker.clone()
    }

    async fn read_window(
        &self,
        reader: &RouterReader,
        from: Option<i64>,
        max: i64,
    ) -> herald_storage::Result<Option<FreshWindow>> {
        self.storage
            .peek_fresh(
                &reader.subscription_id,
                &reader.topic_id,
                from,
                max,
                SCAN_LIMIT,
                reader.matcher.clone(),
            )
            .await
    }

    async fn commit_window(
        &self,
        reader: &RouterReader,
        c: WindowCommit<'_>,
    ) -> herald_storage::Result<bool> {
        let w = c.window;
        self.storage
            .commit_fresh(
                &reader.subscription_id,
                (w.cursor, w.next_cursor, w.matched, w.unmatched),
                c.delivered,
                c.outcomes,
                c.attempts,
                c.now_ms,
            )
            .await
    }

    async fn next_due(&self, reader: &RouterReader) -> herald_storage::Result<Option<i64>> {
        self.storage.next_due(&reader.subscription_id).await
    }

    async fn claim_due(
        &self,
        reader: &RouterReader,
        opts: ClaimOptions,
    ) -> herald_storage::Result<Vec<ClaimedMessage>> {
        self.storage
            .claim(
                &reader.subscription_id,
                &reader.topic_id,
                opts,
                reader.matcher.clone(),
            )
            .await
    }

    async fn settle(
        &self,
        reader: &RouterReader,
        tokens: Vec<String>,
        action: SettleAction,
        at_ms: i64,
    ) -> herald_storage::Result<()> {
        // Per-token failures (a lock that expired meanwhile) need nothing
        // more: the event comes back and is retried, at least once.
        self.storage
            .settle(&reader.subscription_id, tokens, action, at_ms)
            .await
            .map(drop)
    }
}
