//! In-memory Hubs backend for the listener's tests, examples and probes:
//! a Vec per partition, a watch channel per partition, and real SAS
//! (HMAC-SHA256) verification against a small key table.
#![allow(dead_code, unreachable_pub)]

pub mod client;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use base64::Engine;
use herald_amqp::{
    AppendError, AppendReceipt, AuthError, EventPosition, Grant, HubProperties, HubsBackend,
    InboundEvent, OutboundEvent, PartitionProperties, PartitionTarget, ReadError, Rights,
    position::start_sequence,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

pub const KEY_NAME: &str = "RootManageSharedAccessKey";
pub const KEY: &str = "cm9vdC1rZXktZm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc=";
pub const SEND_KEY_NAME: &str = "send-only";
pub const SEND_KEY: &str = "c2VuZC1vbmx5LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc=";
pub const LISTEN_KEY_NAME: &str = "listen-only";
pub const LISTEN_KEY: &str = "bGlzdGVuLW9ubHkta2V5LWZvci10ZXN0cy0wMTIzNDU=";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Partition {
    events: RwLock<Vec<OutboundEvent>>,
    next: watch::Sender<i64>,
}

struct Hub {
    name: String,
    created_at_ms: i64,
    partitions: Vec<Partition>,
    consumer_groups: Vec<String>,
    rr: AtomicUsize,
}

/// The in-memory backend.
pub struct MemBackend {
    namespaces: Vec<String>,
    keys: Vec<(String, String, Rights)>,
    hubs: Mutex<HashMap<(String, String), Arc<Hub>>>,
    /// Every append call (for assertions): (hub, partition, count).
    pub appends: Mutex<Vec<(String, String, usize)>>,
}

impl MemBackend {
    /// Namespaces served, e.g. `["127.0.0.1", "localhost"]`.
    pub fn new(namespaces: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            keys: vec![
                (KEY_NAME.into(), KEY.into(), Rights::ALL),
                (SEND_KEY_NAME.into(), SEND_KEY.into(), Rights::SEND),
                (LISTEN_KEY_NAME.into(), LISTEN_KEY.into(), Rights::LISTEN),
            ],
            hubs: Mutex::new(HashMap::new()),
            appends: Mutex::new(Vec::new()),
        })
    }

    pub fn create_hub(&self, ns: &str, hub: &str, partitions: usize) {
        let h = Hub {
            name: hub.to_string(),
            created_at_ms: now_ms(),
            partitions: (0..partitions)
                .map(|_| Partition {
                    events: RwLock::new(Vec::new()),
                    next: watch::channel(0).0,
                })
                .collect(),
            consumer_groups: vec!["$default".into()],
            rr: AtomicUsize::new(0),
        };
        self.hubs
            .lock()
            .unwrap()
            .insert((ns.to_string(), hub.to_ascii_lowercase()), Arc::new(h));
    }

    fn hub(&self, ns: &str, hub: &str) -> Result<Arc<Hub>, String> {
        self.hubs
            .lock()
            .unwrap()
            .get(&(ns.to_string(), hub.to_ascii_lowercase()))
            .cloned()
            .ok_or_else(|| format!("sb://{ns}/{hub}"))
    }

    fn partition<'a>(hub: &'a Hub, ns: &str, p: &str) -> Result<&'a Partition, String> {
        p.parse::<usize>()
            .ok()
            .and_then(|i| hub.partitions.get(i))
            .ok_or_else(|| format!("sb://{ns}/{}/Partitions/{p}", hub.name))
    }

    /// Append directly (for backlog set-up in probes).
    pub fn append_direct(&self, ns: &str, hub: &str, partition: usize, events: Vec<InboundEvent>) {
        let h = self.hub(ns, hub).unwrap();
        let p = &h.partitions[partition];
        let mut log = p.events.write().unwrap();
        let t = now_ms();
        for e in events {
            let seq = log.len() as i64;
            log.push(OutboundEvent {
                event: e,
                sequence_number: seq,
                enqueued_time_ms: t,
            });
        }
        let n = log.len() as i64;
        drop(log);
        p.next.send_replace(n);
    }
}

/// Build a SAS token the way the SDK does (A4).
pub fn sas_token(uri: &str, key_name: &str, key: &str, ttl: Duration) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let sr = enc(uri);
    let se = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{se}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={se}&skn={key_name}",
        enc(&sig)
    )
}

fn url_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn normalize(uri: &str) -> String {
    let s = uri.trim().to_ascii_lowercase();
    let s = s.split_once("://").map(|x| x.1.to_string()).unwrap_or(s);
    let (host, path) = s.split_once('/').unwrap_or((&s, ""));
    let host = host.split(':').next().unwrap_or(host);
    format!("{host}/{path}").trim_end_matches('/').to_string()
}

#[async_trait]
impl HubsBackend for MemBackend {
    async fn authorize(
        &self,
        ns: &str,
        audience: &str,
        token: &str,
        now: SystemTime,
    ) -> Result<Grant, AuthError> {
        if !self.namespaces.iter().any(|n| n == ns) {
            return Err(AuthError::Unauthorized(format!("unknown namespace '{ns}'")));
        }
        let body = token
            .strip_prefix("SharedAccessSignature ")
            .ok_or_else(|| AuthError::Unauthorized("not a SAS token".into()))?;
        let mut f: HashMap<&str, &str> = HashMap::new();
        for kv in body.split('&') {
            if let Some((k, v)) = kv.split_once('=') {
                f.insert(k, v);
            }
        }
        let (Some(sr), Some(sig), Some(se), Some(skn)) =
            (f.get("sr"), f.get("sig"), f.get("se"), f.get("skn"))
        else {
            return Err(AuthError::Unauthorized("malformed SAS token".into()));
        };
        let (_, key, rights) = self
            .keys
            .iter()
            .find(|(n, _, _)| n == skn)
            .ok_or_else(|| AuthError::Unauthorized(format!("unknown key '{skn}'")))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(format!("{sr}\n{se}").as_bytes());
        let want = base64::engine::general_purpose::STANDARD
            .decode(url_decode(sig))
            .unwrap_or_default();
        mac.verify_slice(&want)
            .map_err(|_| AuthError::Unauthorized("invalid signature".into()))?;
        let se: u64 = se
            .parse()
            .map_err(|_| AuthError::Unauthorized("bad se".into()))?;
        let expires_at = UNIX_EPOCH + Duration::from_secs(se);
        if expires_at <= now {
            return Err(AuthError::Expired);
        }
        let resource = url_decode(sr);
        let (r, a) = (normalize(&resource), normalize(audience));
        if !(a == r || a.starts_with(&format!("{r}/"))) {
            return Err(AuthError::Unauthorized(
                "the token does not cover the audience".into(),
            ));
        }
        Ok(Grant {
            rights: *rights,
            expires_at,
            resource,
        })
    }

    async fn authorize_key(
        &self,
        ns: &str,
        key_name: &str,
        key: &str,
        _now: SystemTime,
    ) -> Result<Grant, AuthError> {
        match self.keys.iter().find(|(n, k, _)| n == key_name && k == key) {
            Some((_, _, rights)) => Ok(Grant {
                rights: *rights,
                expires_at: SystemTime::now() + Duration::from_secs(86_400 * 365),
                resource: format!("sb://{ns}"),
            }),
            None => Err(AuthError::Unauthorized("bad key".into())),
        }
    }

    async fn hub_properties(&self, ns: &str, hub: &str) -> Result<HubProperties, ReadError> {
        let h = self
            .hub(ns, hub)
            .map_err(|entity| ReadError::NotFound { entity })?;
        Ok(HubProperties {
            name: h.name.clone(),
            created_at_ms: h.created_at_ms,
            partition_ids: (0..h.partitions.len()).map(|i| i.to_string()).collect(),
        })
    }

    async fn partition_properties(
        &self,
        ns: &str,
        hub: &str,
        partition: &str,
    ) -> Result<PartitionProperties, ReadError> {
        let h = self
            .hub(ns, hub)
            .map_err(|entity| ReadError::NotFound { entity })?;
        let p =
            Self::partition(&h, ns, partition).map_err(|entity| ReadError::NotFound { entity })?;
        let log = p.events.read().unwrap();
        Ok(match log.last() {
            None => PartitionProperties {
                hub: h.name.clone(),
                partition: partition.to_string(),
                begin_sequence_number: -1,
                last_enqueued_sequence_number: -1,
                last_enqueued_offset: "-1".into(),
                last_enqueued_time_ms: 0,
                is_empty: true,
            },
            Some(last) => PartitionProperties {
                hub: h.name.clone(),
                partition: partition.to_string(),
                begin_sequence_number: 0,
                last_enqueued_sequence_number: last.sequence_number,
                last_enqueued_offset: last.sequence_number.to_string(),
                last_enqueued_time_ms: last.enqueued_time_ms,
                is_empty: false,
            },
        })
    }

    async fn append(
        &self,
        ns: &str,
        hub: &str,
        target: PartitionTarget,
        events: Vec<InboundEvent>,
    ) -> Result<AppendReceipt, AppendError> {
        let h = self
            .hub(ns, hub)
            .map_err(|entity| AppendError::NotFound { entity })?;
        let n = h.partitions.len();
        let idx = match &target {
            PartitionTarget::Any => h.rr.fetch_add(1, Ordering::Relaxed) % n,
            PartitionTarget::Partition(p) => p
                .parse::<usize>()
                .ok()
                .filter(|i| *i < n)
                .ok_or_else(|| AppendError::NotFound {
                    entity: format!("sb://{ns}/{hub}/Partitions/{p}"),
                })?,
            PartitionTarget::Key(k) => {
                let hash = k.bytes().fold(0xcbf2_9ce4_8422_2325u64, |a, b| {
                    (a ^ b as u64).wrapping_mul(0x100_0000_01b3)
                });
                (hash % n as u64) as usize
            }
        };
        let count = events.len();
        let p = &h.partitions[idx];
        let t = now_ms();
        let (first, last) = {
            let mut log = p.events.write().unwrap();
            let first = log.len() as i64;
            for e in events {
                let seq = log.len() as i64;
                log.push(OutboundEvent {
                    event: e,
                    sequence_number: seq,
                    enqueued_time_ms: t,
                });
            }
            (first, log.len() as i64 - 1)
        };
        p.next.send_replace(last + 1);
        self.appends
            .lock()
            .unwrap()
            .push((hub.to_string(), idx.to_string(), count));
        Ok(AppendReceipt {
            partition: idx.to_string(),
            first_sequence_number: first,
            last_sequence_number: last,
        })
    }

    async fn resolve_position(
        &self,
        ns: &str,
        hub: &str,
        consumer_group: &str,
        partition: &str,
        position: &EventPosition,
    ) -> Result<i64, ReadError> {
        let h = self
            .hub(ns, hub)
            .map_err(|entity| ReadError::NotFound { entity })?;
        if !h
            .consumer_groups
            .iter()
            .any(|c| c.eq_ignore_ascii_case(consumer_group))
        {
            return Err(ReadError::NotFound {
                entity: format!("sb://{ns}/{hub}/consumergroups/{consumer_group}"),
            });
        }
        let p =
            Self::partition(&h, ns, partition).map_err(|entity| ReadError::NotFound { entity })?;
        let log = p.events.read().unwrap();
        let next = log.len() as i64;
        let by_time = |t: i64| {
            log.iter()
                .find(|e| e.enqueued_time_ms >= t)
                .map_or(next, |e| e.sequence_number)
        };
        let start = start_sequence(position, 0, next, by_time).map_err(ReadError::Internal)?;
        if start > next {
            let requested = match position {
                EventPosition::SequenceNumber {
                    sequence_number, ..
                } => *sequence_number,
                _ => start,
            };
            return Err(ReadError::SequenceOutOfRange {
                requested,
                last: next - 1,
            });
        }
        Ok(start)
    }

    async fn read(
        &self,
        ns: &str,
        hub: &str,
        _cg: &str,
        partition: &str,
        from: i64,
        max: usize,
    ) -> Result<Vec<OutboundEvent>, ReadError> {
        let h = self
            .hub(ns, hub)
            .map_err(|entity| ReadError::NotFound { entity })?;
        let p =
            Self::partition(&h, ns, partition).map_err(|entity| ReadError::NotFound { entity })?;
        let log = p.events.read().unwrap();
        let from = from.max(0) as usize;
        Ok(log.iter().skip(from).take(max).cloned().collect())
    }

    async fn watch(
        &self,
        ns: &str,
        hub: &str,
        partition: &str,
    ) -> Result<watch::Receiver<i64>, ReadError> {
        let h = self
            .hub(ns, hub)
            .map_err(|entity| ReadError::NotFound { entity })?;
        let p =
            Self::partition(&h, ns, partition).map_err(|entity| ReadError::NotFound { entity })?;
        Ok(p.next.subscribe())
    }
}

/// A CA and a server certificate for `localhost` / 127.0.0.1, as rustls
/// config + CA PEM.
pub fn test_tls() -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Herald test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (Arc::new(cfg), ca_cert.pem())
}
