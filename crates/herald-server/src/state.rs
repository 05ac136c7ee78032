//! Shared, cheaply cloneable application state.

use crate::auth::TokenCache;
use crate::config::Config;
use herald_storage::{Storage, VaultRecord};
use herald_vault::VaultService;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub storage: Arc<dyn Storage>,
    pub vault: VaultService,
    pub router: herald_router::RouterService,
    pub delivery: herald_delivery::Delivery,
    pub tokens: Arc<TokenCache>,
    pub vaults: Arc<VaultCache>,
    pub tenant_id: Arc<str>,
    pub metrics: PrometheusHandle,
    pub automation: herald_automation::AutomationService,
    pub hubs: herald_hubs::HubService,
    pub identity: herald_identity::IdentityService,
    pub blob: herald_blob::service::BlobService,
    pub sandbox: herald_automation::sandbox::SandboxLevel,
    /// The storage-backed part of `/metrics`, rendered at most once a second
    /// however often it is scraped.
    pub metrics_cache: Arc<MetricsCache>,
    /// Cancelled when the server stops; long polls end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Host → vault lookups happen on every data-plane request; cache them
/// briefly. Local changes invalidate at once; other nodes' within the TTL.
#[derive(Default)]
pub struct VaultCache {
    entries: RwLock<HashMap<String, (VaultRecord, Instant)>>,
}

const VAULT_TTL: Duration = Duration::from_secs(5);

impl VaultCache {
    pub fn get(&self, name: &str) -> Option<VaultRecord> {
        let map = self.entries.read().ok()?;
        let (v, at) = map.get(name)?;
        (at.elapsed() < VAULT_TTL).then(|| v.clone())
    }

    pub fn put(&self, v: &VaultRecord) {
        if let Ok(mut map) = self.entries.write() {
            map.insert(v.name.clone(), (v.clone(), Instant::now()));
        }
    }

    pub fn forget(&self, name: &str) {
        if let Ok(mut map) = self.entries.write() {
            map.remove(name);
        }
    }
}

/// The last rendering of the durable event counters, with when it was made.
#[derive(Default)]
pub struct MetricsCache {
    pub rendered: tokio::sync::Mutex<Option<(Instant, Arc<str>)>>,
}

/// How long a rendering of the event counters is served again.
pub const METRICS_TTL: Duration = Duration::from_secs(1);
