//! Background duties of the vault: expiry events and the purge sweeper.
//!
//! Each due fact is claimed and logged in one transaction (see
//! `Storage::record_expiry`), so a crash between noticing and recording
//! neither loses the event nor records it twice.

use crate::VaultService;
use chrono::Utc;
use herald_core::event::SecretEventKind;
use herald_storage::ExpiryKind;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl VaultService {
    /// Emits every due NearExpiry/Expired event; returns how many.
    pub async fn scan_expiries(&self) -> anyhow::Result<usize> {
        let mut emitted = 0;
        loop {
            let due = self
                .storage()
                .due_expiries(Utc::now().timestamp(), 200)
                .await?;
            if due.is_empty() {
                return Ok(emitted);
            }
            for d in due {
                let kind = match d.kind {
                    ExpiryKind::NearExpiry => SecretEventKind::NearExpiry,
                    ExpiryKind::Expired => SecretEventKind::Expired,
                };
                let event = self.event_for(&d.vault, kind, &d.secret.name, &d.version);
                if self
                    .storage()
                    .record_expiry(
                        &d.vault.id,
                        &d.secret.key,
                        d.version.ordinal,
                        d.kind,
                        &event,
                    )
                    .await?
                {
                    emitted += 1;
                    tracing::info!(vault = %d.vault.name, secret = %d.secret.name,
                        version = %d.version.version, event_type = kind.event_type(), "secret lifecycle event");
                }
            }
        }
    }

    /// Purges every soft-deleted secret whose scheduled purge date has passed; returns how many.
    pub async fn sweep_purges(&self) -> anyhow::Result<usize> {
        let purged = self.storage().purge_due(Utc::now().timestamp()).await?;
        for (vault, name) in &purged {
            tracing::info!(vault = %vault, secret = %name, "deleted secret purged at its scheduled date");
        }
        Ok(purged.len())
    }

    /// The vault's background duty: expiry events and scheduled purges,
    /// on one node at a time (each fact is claimed once anyway; one
    /// scanner saves the other nodes the reads).
    pub fn duties(&self, every: Duration) -> Vec<herald_core::duty::Duty> {
        let vault = self.clone();
        vec![herald_core::duty::Duty::singleton(
            "vault-lifecycle",
            every,
            move |stop| vault.run_lifecycle(every, stop),
        )]
    }

    /// Runs both duties every `every` until `shutdown` is cancelled.
    pub async fn run_lifecycle(self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.scan_expiries().await {
                tracing::error!(error = %e, "expiry scan failed; will retry");
            }
            if let Err(e) = self.sweep_purges().await {
                tracing::error!(error = %e, "purge sweep failed; will retry");
            }
        }
    }
}
