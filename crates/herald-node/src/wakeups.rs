//! Wake-up routing between nodes: the storage's NOTIFY hints become the
//! local signals that the router's long polls and push workers and the
//! automation workers wait on.

use herald_core::duty::Duty;
use herald_storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every node listens for the hints meant for its own waiters.
pub(crate) fn duty(
    storage: Arc<dyn Storage>,
    router: herald_router::RouterService,
    automation: herald_automation::AutomationService,
) -> Duty {
    Duty::every_node("wake-ups", Duration::ZERO, move |stop| {
        run_wakeups(storage, router, automation, stop)
    })
}

/// Turns other nodes' NOTIFY hints into local wake-ups.
async fn run_wakeups(
    storage: Arc<dyn Storage>,
    router: herald_router::RouterService,
    automation: herald_automation::AutomationService,
    shutdown: CancellationToken,
) {
    let Some(mut rx) = storage.wakeups() else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => m,
        };
        match msg {
            Ok(p) => {
                if let Some(topic) = p.strip_prefix("topic:") {
                    router.waker(topic).notify_waiters();
                } else if let Some(group) = p.strip_prefix("job:") {
                    automation.wake_group(group);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
