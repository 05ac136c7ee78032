//! Runs the duties the domains declare: singletons under the storage's
//! singleton lock, the rest on every node, all until shutdown.

use herald_core::duty::{Duty, Scope};
use herald_storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts every duty; the handles end after `shutdown` is cancelled.
pub(crate) fn start(
    duties: Vec<Duty>,
    storage: &Arc<dyn Storage>,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    duties
        .into_iter()
        .map(|duty| {
            tracing::debug!(duty = duty.name, scope = ?duty.scope, every = ?duty.every, "duty registered");
            match duty.scope {
                Scope::Singleton => tokio::spawn(as_singleton(
                    storage.clone(),
                    duty,
                    shutdown.clone(),
                )),
                Scope::EveryNode => tokio::spawn(duty.run(shutdown.clone())),
            }
        })
        .collect()
}

/// Runs `duty` only while this node holds its named singleton; another
/// node takes over within seconds when the holder dies (its lock dies with
/// its database connection).
async fn as_singleton(storage: Arc<dyn Storage>, duty: Duty, shutdown: CancellationToken) {
    let name = duty.name;
    let mut waiting_logged = false;
    loop {
        match storage.try_singleton(name).await {
            Ok(Some(guard)) => {
                if storage.engine() != "sqlite" {
                    tracing::info!(duty = name, "this node now runs the singleton duty");
                }
                duty.run(shutdown.clone()).await;
                drop(guard);
                return;
            }
            Ok(None) if !waiting_logged => {
                tracing::info!(duty = name, "another node runs this duty; standing by");
                waiting_logged = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(duty = name, error = %e, "cannot take the singleton lock; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
