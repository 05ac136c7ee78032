//! The push protocol: how events reach a receiver. The engine decides when
//! to send and records what happened; the protocol decides what a request
//! looks like and what the receiver's answer means.

use super::feed::PushSubscription;
use super::http::Outcome;
use bytes::Bytes;
use herald_storage::{AttemptRecord, ClaimedMessage};
use http::Method;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What becomes of the events of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered,
    /// Another attempt after `delay`.
    Retry {
        delay: Duration,
    },
    /// No further attempt; `reason` is recorded on the dead letter.
    DeadLetter {
        reason: &'static str,
    },
}

/// The protocol's reading of one attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Judgement {
    pub(crate) verdict: Verdict,
    /// The outcome's name as the delivery log, the retry rows and the
    /// endpoint's health record it (Event Grid: `lastDeliveryOutcome`).
    pub(crate) outcome: &'static str,
}

/// Events that go in one request. `meta` is what the protocol keeps about
/// the batch beyond its body, for its headers.
pub(crate) struct Batch<M> {
    pub(crate) messages: Vec<ClaimedMessage>,
    pub(crate) body: Bytes,
    /// Ids of `messages`, in order, for the delivery log.
    pub(crate) event_ids: Vec<String>,
    pub(crate) meta: M,
}

/// One request to a receiver, sent through the engine's guarded client.
pub(crate) struct PushRequest {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

/// What became of some events, for the engine to record: sent ones carry
/// the request's log record, ones dead-lettered unsent carry none.
pub(crate) struct Settled {
    pub(crate) messages: Vec<ClaimedMessage>,
    pub(crate) verdict: Verdict,
    pub(crate) outcome: &'static str,
    pub(crate) status: Option<u16>,
    pub(crate) attempts: Vec<AttemptRecord>,
    pub(crate) at_ms: i64,
}

/// A subscription's limits, read once when its worker starts.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The endpoint without its query string (which may hold a secret), for logs.
    pub(crate) endpoint: String,
    /// Sizes the windows: enough events to keep every in-flight slot busy.
    pub(crate) max_events_per_batch: u32,
    /// A backstop on claims; the protocol caps attempts in [`PushProtocol::judge`].
    pub(crate) max_attempts: i64,
    /// Events older than this are expired rather than sent (already scaled).
    pub(crate) time_to_live: Duration,
}

/// Why and after what a batch is dead-lettered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadLetterFate {
    pub(crate) reason: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) status: Option<u16>,
    /// Attempts made, this one included.
    pub(crate) attempts: i64,
    pub(crate) at_ms: i64,
}

/// A way of pushing events to receivers over the engine.
///
/// The engine owns scheduling (windows, in-flight limits, retries that are
/// due, probation) and bookkeeping (commits, retry rows, the delivery log,
/// health); a protocol owns everything a receiver sees and every rule about
/// what it answers:
///
/// - the handshake that proves a receiver wants the events, run when a
///   subscription is created or updated ([`PushProtocol::handshake`]), and
///   the housekeeping of pending ones ([`PushProtocol::housekeeping`]);
/// - turning events into batches and batches into requests, headers and
///   body ([`PushProtocol::batches`], [`PushProtocol::request`]);
/// - turning the receiver's answer into a verdict and a retry schedule
///   ([`PushProtocol::judge`], [`PushProtocol::probation_base`]);
/// - where dead letters go ([`PushProtocol::dead_letter`],
///   [`PushProtocol::expire`]);
/// - messages outside the event flow, such as deletion or lifecycle
///   notifications ([`PushProtocol::lifecycle`]).
///
/// Event Grid (`crate::eventgrid`) is the first protocol. The shapes are
/// meant to admit Microsoft Graph change notifications without touching the
/// engine: its handshake (`Handshake` = the Graph subscription being created)
/// POSTs `?validationToken=` and requires the token echoed as `text/plain`
/// within 10 s (a `tokio::time::timeout` around the client's send); its
/// batches are `{"value": [...]}` bodies carrying each subscription's
/// `clientState`, with `BatchMeta = ()`; its verdicts follow Graph's retry
/// window, and its dead-letter sink may simply log and drop; its lifecycle
/// notifications (`subscriptionRemoved`, `reauthorizationRequired`) run in
/// [`PushProtocol::lifecycle`].
pub(crate) trait PushProtocol: Send + Sync + 'static {
    /// The subscriptions this protocol pushes to, as the feed loads them.
    type Subscription: PushSubscription;
    /// What a handshake is run on: borrowed, and mutable so the protocol can
    /// record the result on the subscription.
    type Handshake<'a>: Send
    where
        Self: 'a;
    /// Why a handshake could not be run or recorded (a failed handshake is
    /// a result, recorded on the subscription, not an error).
    type HandshakeError;
    /// Read once per window and shared by its requests, so a change (such as
    /// a rotated signing secret) applies from the next window.
    type WindowState: Send + Sync + 'static;
    /// What the protocol keeps about a batch besides its body.
    type BatchMeta: Send + Sync + 'static;

    /// Proves that the receiver wants the events before any is pushed, and
    /// records the result where the subscription lives. The engine starts
    /// pushing once the feed lists the subscription as ready.
    fn handshake<'a>(
        &'a self,
        target: Self::Handshake<'a>,
    ) -> impl Future<Output = Result<(), Self::HandshakeError>> + Send + 'a;

    /// Runs on every tick of the supervisor, e.g. to fail handshakes that
    /// waited too long for a manual step.
    fn housekeeping(&self) -> impl Future<Output = ()> + Send;

    /// Runs beside the supervisor until `shutdown`: notifications that are
    /// not events of a subscription (Event Grid's deletion events).
    fn lifecycle(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// The subscription's limits; `None` if this protocol cannot push to it
    /// (its worker then stops at once).
    fn plan(&self, sub: &Self::Subscription) -> Option<Plan>;

    /// State read once per window (see [`PushProtocol::WindowState`]).
    fn window_state(
        &self,
        sub: &Self::Subscription,
    ) -> impl Future<Output = Self::WindowState> + Send;

    /// Groups events into request bodies within the subscription's batch
    /// limits. Never waits to fill a batch: whatever is due goes now. Events
    /// that cannot be rendered are left out (and stay unsettled).
    fn batches(
        &self,
        sub: &Self::Subscription,
        claimed: Vec<ClaimedMessage>,
    ) -> Vec<Batch<Self::BatchMeta>>;

    /// The request for one batch at its `attempt` (1-based). An error is
    /// logged and counts as a failed attempt.
    fn request(
        &self,
        sub: &Self::Subscription,
        batch: &Batch<Self::BatchMeta>,
        attempt: i64,
        state: &Self::WindowState,
    ) -> impl Future<Output = anyhow::Result<PushRequest>> + Send;

    /// What the receiver's answer (or the failure to get one) means for the
    /// batch: delivered, retried after a delay, or dead-lettered.
    fn judge(
        &self,
        sub: &Self::Subscription,
        batch: &Batch<Self::BatchMeta>,
        attempt: i64,
        outcome: &Outcome,
        now_ms: i64,
    ) -> Judgement;

    /// How long probation lasts after this outcome, before the engine's
    /// doubling and scaling.
    fn probation_base(&self, outcome: &str) -> Duration;

    /// Keeps a dead-lettered batch where the subscription asked (called
    /// after the verdict, before the engine records it).
    fn dead_letter(
        &self,
        sub: &Self::Subscription,
        batch: &Batch<Self::BatchMeta>,
        fate: DeadLetterFate,
    ) -> impl Future<Output = ()> + Send;

    /// Dead-letters events that outlived their time to live before an
    /// attempt could be made, and says how to record them.
    fn expire(
        &self,
        sub: &Self::Subscription,
        messages: Vec<ClaimedMessage>,
        now_ms: i64,
    ) -> impl Future<Output = Vec<Settled>> + Send;
}
