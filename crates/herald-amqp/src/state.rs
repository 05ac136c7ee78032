//! State shared by a connection's links, and across connections.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    address::{covers, normalize_resource},
    backend::{Grant, HubsBackend, Rights},
    listener::Limits,
};

/// Process-wide state of one listener.
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn HubsBackend>,
    pub(crate) limits: Limits,
    pub(crate) readers: ReaderRegistry,
    pub(crate) pacer: Pacer,
    pub(crate) shutdown: CancellationToken,
}

/// One grant as held by a connection (resource normalised).
#[derive(Debug, Clone)]
struct HeldGrant {
    resource: String,
    rights: Rights,
    expires_at: SystemTime,
}

/// Per-connection context.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
    /// Namespace host from the Open hostname (lower-case, no port).
    pub(crate) open_host: Option<String>,
    grants: Mutex<Vec<HeldGrant>>,
    /// Bumped on every put-token so links re-check their grant.
    pub(crate) grants_version: watch::Sender<u64>,
}

/// What a link's authorization check found.
pub(crate) enum Authz {
    /// Covered until this time.
    Until(SystemTime),
    /// A covering grant exists but lacks the right.
    MissingRight,
    /// No grant covers the resource.
    NoGrant,
}

impl ConnCtx {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr, open_host: Option<String>) -> Self {
        Self {
            shared,
            peer,
            open_host,
            grants: Mutex::new(Vec::new()),
            grants_version: watch::channel(0).0,
        }
    }

    /// Record a verified grant (a repeated put-token for the same resource
    /// extends it).
    pub(crate) fn add_grant(&self, grant: &Grant) {
        let resource = normalize_resource(&grant.resource);
        if let Ok(mut g) = self.grants.lock() {
            let now = SystemTime::now();
            g.retain(|h| h.expires_at > now);
            match g
                .iter_mut()
                .find(|h| h.resource == resource && h.rights == grant.rights)
            {
                Some(h) => h.expires_at = h.expires_at.max(grant.expires_at),
                None => g.push(HeldGrant {
                    resource,
                    rights: grant.rights,
                    expires_at: grant.expires_at,
                }),
            }
        }
        self.grants_version.send_modify(|v| *v += 1);
    }

    /// Check that `resource` (a URI or normalised path) is covered with the
    /// right `need` selects.
    pub(crate) fn authorize(&self, resource: &str, need: fn(&Rights) -> bool) -> Authz {
        let wanted = normalize_resource(resource);
        let now = SystemTime::now();
        let Ok(g) = self.grants.lock() else {
            return Authz::NoGrant;
        };
        let mut best: Option<SystemTime> = None;
        let mut covered = false;
        for h in g
            .iter()
            .filter(|h| h.expires_at > now && covers(&h.resource, &wanted))
        {
            covered = true;
            if need(&h.rights) {
                best = Some(best.map_or(h.expires_at, |b| b.max(h.expires_at)));
            }
        }
        match (best, covered) {
            (Some(t), _) => Authz::Until(t),
            (None, true) => Authz::MissingRight,
            (None, false) => Authz::NoGrant,
        }
    }

    /// Namespace host of the first live grant (fallback when the Open had no
    /// hostname).
    pub(crate) fn grant_host(&self) -> Option<String> {
        let g = self.grants.lock().ok()?;
        g.first()
            .map(|h| h.resource.split('/').next().unwrap_or_default().to_string())
    }

    /// The namespace a node without a host in its address belongs to.
    pub(crate) fn namespace(&self) -> Option<String> {
        self.open_host.clone().or_else(|| self.grant_host())
    }
}

/// Key of a (namespace, hub, consumer group, partition) reader slot.
type ReaderKey = (String, String, String, String);

#[derive(Default)]
struct Slot {
    epoch: Option<(u64, i64, CancellationToken)>,
    others: HashMap<u64, CancellationToken>,
}

/// Epoch and reader-count rules (A9.7), process-wide.
#[derive(Default)]
pub(crate) struct ReaderRegistry {
    next_id: AtomicU64,
    slots: Mutex<HashMap<ReaderKey, Slot>>,
}

/// Why a reader was refused.
pub(crate) enum ReaderRefusal {
    LowerEpoch { current: i64 },
    EpochReaderExists { current: i64 },
    TooMany,
}

/// A registered reader; dropping it unregisters.
pub(crate) struct ReaderLease {
    registry: Arc<Shared>,
    key: ReaderKey,
    id: u64,
    /// Cancelled when a higher-epoch reader takes over.
    pub(crate) stolen: CancellationToken,
}

impl Drop for ReaderLease {
    fn drop(&mut self) {
        let reg = &self.registry.readers;
        if let Ok(mut slots) = reg.slots.lock()
            && let Some(slot) = slots.get_mut(&self.key)
        {
            if slot.epoch.as_ref().is_some_and(|(id, _, _)| *id == self.id) {
                slot.epoch = None;
            }
            slot.others.remove(&self.id);
            if slot.epoch.is_none() && slot.others.is_empty() {
                slots.remove(&self.key);
            }
        }
    }
}

impl ReaderRegistry {
    pub(crate) fn register(
        shared: &Arc<Shared>,
        ns: &str,
        hub: &str,
        consumer_group: &str,
        partition: &str,
        epoch: Option<i64>,
    ) -> Result<ReaderLease, ReaderRefusal> {
        let reg = &shared.readers;
        let key = (
            ns.to_string(),
            hub.to_ascii_lowercase(),
            consumer_group.to_ascii_lowercase(),
            partition.to_string(),
        );
        let id = reg.next_id.fetch_add(1, Ordering::Relaxed);
        let stolen = CancellationToken::new();
        let mut slots = reg.slots.lock().map_err(|_| ReaderRefusal::TooMany)?;
        let slot = slots.entry(key.clone()).or_default();
        match epoch {
            Some(e) => {
                if let Some((_, current, _)) = &slot.epoch
                    && e < *current
                {
                    return Err(ReaderRefusal::LowerEpoch { current: *current });
                }
                if let Some((_, _, old)) = slot.epoch.take() {
                    old.cancel();
                }
                for (_, t) in slot.others.drain() {
                    t.cancel();
                }
                slot.epoch = Some((id, e, stolen.clone()));
            }
            None => {
                if let Some((_, current, _)) = &slot.epoch {
                    return Err(ReaderRefusal::EpochReaderExists { current: *current });
                }
                if slot.others.len() >= shared.limits.max_readers_per_partition {
                    return Err(ReaderRefusal::TooMany);
                }
                slot.others.insert(id, stolen.clone());
            }
        }
        drop(slots);
        Ok(ReaderLease {
            registry: shared.clone(),
            key,
            id,
            stolen,
        })
    }
}

/// Slows down peers that keep re-attaching to a failing address (the Python
/// SDK reconnects about once a second without backing off).
#[derive(Default)]
pub(crate) struct Pacer {
    peers: Mutex<HashMap<IpAddr, PeerFailures>>,
}

struct PeerFailures {
    window_start: Instant,
    count: u32,
    last_log: Option<Instant>,
}

impl Pacer {
    /// Record a refused attach; returns how long to hold the refusal.
    pub(crate) fn on_failure(&self, peer: IpAddr, what: &str) -> Duration {
        let now = Instant::now();
        let Ok(mut peers) = self.peers.lock() else {
            return Duration::ZERO;
        };
        if peers.len() > 10_000 {
            peers.retain(|_, f| now.duration_since(f.window_start) < Duration::from_secs(60));
        }
        let f = peers.entry(peer).or_insert(PeerFailures {
            window_start: now,
            count: 0,
            last_log: None,
        });
        if now.duration_since(f.window_start) > Duration::from_secs(60) {
            f.window_start = now;
            f.count = 0;
        }
        f.count += 1;
        if f.count <= 3 {
            return Duration::ZERO;
        }
        if f.last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            f.last_log = Some(now);
            tracing::info!(%peer, failures = f.count, last = what, "pacing peer that keeps re-attaching to failing addresses");
        }
        Duration::from_millis(250 * u64::from(f.count - 3)).min(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_slows_repeat_failures() {
        let p = Pacer::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let delays: Vec<Duration> = (0..8).map(|_| p.on_failure(ip, "x")).collect();
        assert!(delays[..3].iter().all(|d| d.is_zero()));
        assert!(delays[3] > Duration::ZERO && delays[7] > delays[3]);
        assert!(
            p.on_failure(IpAddr::from([127, 0, 0, 2]), "x").is_zero(),
            "per peer"
        );
    }
}
