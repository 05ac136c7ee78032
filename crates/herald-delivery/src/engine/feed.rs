//! The feed: where the engine's events come from and where their fate is
//! written. The engine never reads the log or the retry rows itself; it asks
//! the feed, so another source of events (a store of Graph subscriptions,
//! say) can drive the same engine.

use herald_storage::{
    AttemptRecord, ClaimOptions, ClaimedMessage, FreshOutcome, FreshWindow, SettleAction,
};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Notify;

/// What the engine needs to know of any subscription it pushes to: keys
/// for its delivery lock, its health and its retry rows, and a name for
/// logs and metrics. The rest is the protocol's business.
pub(crate) trait PushSubscription: Clone + Send + Sync + 'static {
    /// Stable id: the delivery lock, health and storage rows are keyed by it.
    fn id(&self) -> &str;
    /// Name shown in logs and metrics.
    fn name(&self) -> &str;
    /// What the subscription belongs to, for logs (the router: its topic).
    fn scope(&self) -> &str;
}

/// A subscription the feed offers for delivery, as listed on every tick of
/// the supervisor.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) id: String,
    /// Changes whenever the subscription does: the supervisor restarts the
    /// subscription's worker when it moves.
    pub(crate) version: i64,
}

/// A source of events to push: lists the subscriptions to deliver, reads
/// windows of new events past a subscription's cursor, commits them, and
/// hands out the retries that are due.
///
/// Windows are read *without writing*: the engine pushes a window first and
/// commits it afterwards with [`Feed::commit_window`], which must move the
/// cursor only if it did not move meanwhile (compare-and-set), so a crash in
/// between redelivers the window (at least once) and a second worker never
/// commits over the first.
///
/// Retries have rows and locks of their own: [`Feed::claim_due`] locks the
/// due ones, [`Feed::settle`] records their fate by lock token.
///
/// Methods return `impl Future + Send` (not `async fn`) because the engine
/// runs each subscription on its own spawned task.
pub(crate) trait Feed: Send + Sync + 'static {
    /// A subscription as the feed loads it, with everything its protocol
    /// needs to push to it.
    type Subscription: PushSubscription;
    /// A subscription opened for reading: whatever the feed needs on every
    /// read (the router keeps the subscription's filter compiled here).
    type Reader: Send + Sync + 'static;

    /// The subscriptions ready for delivery (their handshake succeeded) that
    /// this feed's protocol serves.
    fn ready(&self) -> impl Future<Output = anyhow::Result<Vec<Listed>>> + Send;

    /// Loads one listed subscription; `None` if it went away meanwhile.
    fn load(&self, id: &str) -> impl Future<Output = Option<Self::Subscription>> + Send;

    /// Opens a subscription for its worker.
    fn open(&self, sub: &Self::Subscription) -> Self::Reader;

    /// Notified when new events may be past the cursor, so an idle worker
    /// wakes at once instead of at its next poll.
    fn waker(&self, reader: &Self::Reader) -> Arc<Notify>;

    /// Up to `max` new matching events past `from` (the stored cursor when
    /// `None`), without writing anything. `None` when there is nothing to read.
    fn read_window(
        &self,
        reader: &Self::Reader,
        from: Option<i64>,
        max: i64,
    ) -> impl Future<Output = herald_storage::Result<Option<FreshWindow>>> + Send;

    /// In one transaction: moves the cursor past `window` (only if it is
    /// still where the window was read from), counts the delivered events
    /// and writes the retry rows, dead letters and delivery-log rows.
    /// `false` when the cursor moved meanwhile and nothing was written.
    fn commit_window(
        &self,
        reader: &Self::Reader,
        commit: WindowCommit<'_>,
    ) -> impl Future<Output = herald_storage::Result<bool>> + Send;

    /// When the subscription's next retry is due (unix ms), if any.
    fn next_due(
        &self,
        reader: &Self::Reader,
    ) -> impl Future<Output = herald_storage::Result<Option<i64>>> + Send;

    /// Locks and returns the retries that are due.
    fn claim_due(
        &self,
        reader: &Self::Reader,
        opts: ClaimOptions,
    ) -> impl Future<Output = herald_storage::Result<Vec<ClaimedMessage>>> + Send;

    /// Records the fate of locked retries, by lock token.
    fn settle(
        &self,
        reader: &Self::Reader,
        tokens: Vec<String>,
        action: SettleAction,
        at_ms: i64,
    ) -> impl Future<Output = herald_storage::Result<()>> + Send;
}

/// Everything one window's commit writes.
pub(crate) struct WindowCommit<'a> {
    pub(crate) window: &'a FreshWindow,
    pub(crate) delivered: i64,
    pub(crate) outcomes: Vec<FreshOutcome>,
    pub(crate) attempts: Vec<AttemptRecord>,
    pub(crate) now_ms: i64,
}
