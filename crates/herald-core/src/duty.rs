//! Background duties, as each domain declares them and the node runs them.
//!
//! A domain knows what must run in the background and whether two nodes
//! may run it at once; the composition root (herald-node) knows how to run
//! it: under a singleton lock on a shared database, on every node, until
//! shutdown. Keeping the declaration with the domain means a new domain
//! brings its duties with it instead of growing the server's start-up code.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a duty runs when several nodes share one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Exactly one node at a time (another takes over when it dies).
    Singleton,
    /// Every node, for work that is its own (its connections, its workers).
    EveryNode,
}

type Start = Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// One background duty: a name for logs, where it runs, how often it
/// wakes (for `herald status` and the logs; the duty keeps its own timer),
/// and the loop itself, which returns when the token is cancelled.
pub struct Duty {
    /// The duty's name, as it appears in logs and `herald status`.
    pub name: &'static str,
    /// Whether one node or every node runs it.
    pub scope: Scope,
    /// How often the duty wakes (informational; the duty keeps its own timer).
    pub every: Duration,
    start: Start,
}

impl Duty {
    /// A duty that one node at a time runs.
    pub fn singleton<F, Fut>(name: &'static str, every: Duration, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::new(name, Scope::Singleton, every, run)
    }

    /// A duty that every node runs for itself.
    pub fn every_node<F, Fut>(name: &'static str, every: Duration, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::new(name, Scope::EveryNode, every, run)
    }

    fn new<F, Fut>(name: &'static str, scope: Scope, every: Duration, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            name,
            scope,
            every,
            start: Box::new(move |stop| Box::pin(run(stop))),
        }
    }

    /// Runs the duty until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        (self.start)(stop).await
    }
}

impl std::fmt::Debug for Duty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Duty")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}
