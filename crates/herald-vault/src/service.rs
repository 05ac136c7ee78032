//! Vault operations with Key Vault's rules. Handlers in herald-server turn
//! these results into wire shapes; nothing here knows about HTTP.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use herald_core::event::{SecretEventKind, SecretEventSubject, secret_event};
use herald_core::seal::MasterKey;
use herald_core::vault::VaultSettings;
use herald_core::{ArmScope, SecretName, SecretVersion, VaultName};
use herald_storage::{
    SecretRecord, Storage, TopicRecord, VaultRecord, VersionPatch, VersionRecord, WriteRefused,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest secret value Key Vault accepts, in bytes (25 KiB).
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Longest `contentType` a secret version may carry.
pub const MAX_CONTENT_TYPE: usize = 255;
/// Most tags a secret version may carry.
pub const MAX_TAGS: usize = 15;
/// Longest tag name or value.
pub const MAX_TAG_LEN: usize = 512;
/// The vault that answers on `localhost` and IP hosts.
pub const DEFAULT_VAULT: &str = "default";

/// Outcomes a client can cause. Each maps to one Key Vault error body.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "A secret with (name/id) {0} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
    )]
    /// No live secret (or version) by that name in this vault.
    SecretNotFound(String),
    /// No soft-deleted secret by that name in this vault.
    #[error("Deleted Secret not found: {0}")]
    DeletedSecretNotFound(String),
    /// The secret version exists but is disabled, so its value cannot be read.
    #[error("Operation get is not allowed on a disabled secret.")]
    Disabled,
    #[error(
        "Secret {0} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
    )]
    /// The name belongs to a soft-deleted secret: recover or purge it before reuse.
    DeletedButRecoverable(String),
    #[error(
        "There was a conflict restoring the secret '{0}'. This can happen if either: a second secret with the same name was created after the first secret was deleted; or the secret was restored after it was recovered. Delete or purge the existing secret and retry."
    )]
    /// A backup cannot be restored because a secret of that name exists again.
    RestoreConflict(String),
    #[error(
        "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Key Vault service will automatically purge it after the retention period has passed. Vault: {0};location=local"
    )]
    /// The vault has purge protection, so deleted secrets wait out their retention.
    PurgeProtected(String),
    /// The request breaks one of Key Vault's rules; the message says which.
    #[error("{0}")]
    BadParameter(String),
    /// No vault by that name.
    #[error("Vault '{0}' was not found.")]
    VaultNotFound(String),
    /// A vault by that name already exists.
    #[error("A vault named '{0}' already exists.")]
    VaultExists(String),
    /// Storage or crypto failed; not the caller's fault.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<herald_storage::StorageError> for VaultError {
    fn from(e: herald_storage::StorageError) -> Self {
        Self::Internal(e.into())
    }
}

/// The result of a vault operation.
pub type VaultResult<T> = Result<T, VaultError>;

/// Where vaults are reachable, for ids in events (requests use their own Host).
#[derive(Debug, Clone)]
pub struct VaultUrls {
    /// Parent domain of vault hosts, e.g. `vault.localhost`.
    pub base: String,
    /// HTTPS port vaults are served on (left out of URLs when 443).
    pub port: u16,
}

impl VaultUrls {
    /// Host and port of a vault: `NAME.<base>`, or `localhost` for the default vault.
    pub fn authority(&self, vault: &str) -> String {
        let host = if vault == DEFAULT_VAULT {
            "localhost".to_owned()
        } else {
            format!("{vault}.{}", self.base)
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The vault's base URI, `https://<authority>`, as Key Vault reports `vaultUri`.
    pub fn vault_uri(&self, vault: &str) -> String {
        format!("https://{}", self.authority(vault))
    }
}

/// Settable attributes of a new version.
#[derive(Debug, Clone, Default)]
pub struct NewSecret {
    /// The secret value, sealed before it is stored.
    pub value: String,
    /// Free-form hint about the value's format, e.g. `text/plain`.
    pub content_type: Option<String>,
    /// Tags on the version (at most [`MAX_TAGS`]).
    pub tags: Option<BTreeMap<String, String>>,
    /// Whether the version can be read; enabled unless `Some(false)`.
    pub enabled: Option<bool>,
    /// Not-before time, unix seconds.
    pub nbf: Option<i64>,
    /// Expiry time, unix seconds; drives SecretNearExpiry and SecretExpired events.
    pub exp: Option<i64>,
}

/// Requested metadata changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SecretUpdate {
    /// New content type.
    pub content_type: Option<String>,
    /// New tags, replacing the old ones.
    pub tags: Option<BTreeMap<String, String>>,
    /// Enable or disable the version.
    pub enabled: Option<bool>,
    /// New not-before time, unix seconds.
    pub nbf: Option<i64>,
    /// New expiry time, unix seconds.
    pub exp: Option<i64>,
}

/// What one backup blob holds: every version, values included.
#[derive(Serialize, Deserialize)]
struct BackupBlob {
    name: String,
    versions: Vec<BackupVersion>,
}

#[derive(Serialize, Deserialize)]
struct BackupVersion {
    version: String,
    ordinal: i64,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
    created: i64,
    updated: i64,
    content_type: Option<String>,
    tags: String,
    value: String,
}

const BACKUP_MAGIC: &[u8] = b"HRDB1";
const BACKUP_AAD: &[u8] = b"herald-secret-backup-v1";

/// The Key Vault service: vaults, secret versions sealed under the master key,
/// soft delete with recovery and purge, backups, and the lifecycle events
/// they publish to the vault's system topic.
#[derive(Clone)]
pub struct VaultService {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    scope: ArmScope,
    urls: VaultUrls,
    latest: Arc<LatestCache>,
}

/// The latest version of hot secrets, so reads skip the database. Local
/// writes invalidate at once; writes on other nodes sharing the database
/// are seen within the TTL.
struct LatestCache {
    ttl: Duration,
    entries: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Bumped by every local write; a read that raced a write is not cached.
    writes: u64,
    map: HashMap<(String, String), (SecretRecord, VersionRecord, Instant)>,
}

const LATEST_CACHE_MAX: usize = 10_000;

impl LatestCache {
    /// A fresh entry, or the write generation to hand back to `put`.
    fn get(&self, vault_id: &str, key: &str) -> Result<(SecretRecord, VersionRecord), u64> {
        let Ok(inner) = self.entries.lock() else {
            return Err(u64::MAX);
        };
        match inner.map.get(&(vault_id.to_owned(), key.to_owned())) {
            Some((s, v, at)) if at.elapsed() < self.ttl => Ok((s.clone(), v.clone())),
            _ => Err(inner.writes),
        }
    }

    fn put(&self, generation: u64, vault_id: &str, s: &SecretRecord, v: &VersionRecord) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut inner) = self.entries.lock()
            && inner.writes == generation
        {
            if inner.map.len() >= LATEST_CACHE_MAX {
                inner.map.clear();
            }
            inner.map.insert(
                (vault_id.to_owned(), s.key.clone()),
                (s.clone(), v.clone(), Instant::now()),
            );
        }
    }

    fn forget(&self, vault_id: &str, key: &str) {
        if let Ok(mut inner) = self.entries.lock() {
            inner.writes = inner.writes.wrapping_add(1);
            inner.map.remove(&(vault_id.to_owned(), key.to_owned()));
        }
    }
}

fn aad(vault_id: &str, key: &str, version: &str) -> Vec<u8> {
    format!("secret/{vault_id}/{key}/{version}").into_bytes()
}

/// A version from a URL: empty means the latest; anything but 32 hex
/// characters cannot exist, so it is simply not found.
fn requested_version(name: &SecretName, raw: Option<&str>) -> VaultResult<Option<String>> {
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => SecretVersion::parse(raw)
            .map(|v| Some(v.to_string()))
            .ok_or_else(|| VaultError::SecretNotFound(name.to_string())),
    }
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn check_tags(tags: &BTreeMap<String, String>) -> VaultResult<String> {
    if tags.len() > MAX_TAGS {
        return Err(VaultError::BadParameter(format!(
            "A secret can have at most {MAX_TAGS} tags; {} were given.",
            tags.len()
        )));
    }
    if tags
        .iter()
        .any(|(k, v)| k.len() > MAX_TAG_LEN || v.len() > MAX_TAG_LEN)
    {
        return Err(VaultError::BadParameter(format!(
            "Tag names and values must be at most {MAX_TAG_LEN} characters."
        )));
    }
    serde_json::to_string(tags).map_err(|e| VaultError::Internal(e.into()))
}

fn check_content_type(ct: &Option<String>) -> VaultResult<()> {
    match ct {
        Some(c) if c.len() > MAX_CONTENT_TYPE => Err(VaultError::BadParameter(format!(
            "contentType must be at most {MAX_CONTENT_TYPE} characters."
        ))),
        Some(c) if c.contains('\0') => Err(VaultError::BadParameter(
            "contentType must not contain NUL characters.".into(),
        )),
        _ => Ok(()),
    }
}

impl VaultService {
    /// A vault service with a one-second read cache.
    pub fn new(
        storage: Arc<dyn Storage>,
        master: MasterKey,
        scope: ArmScope,
        urls: VaultUrls,
    ) -> Self {
        Self::with_cache_ttl(storage, master, scope, urls, Duration::from_secs(1))
    }

    /// `cache_ttl` bounds how stale a read may be after another node writes;
    /// zero turns the read cache off.
    pub fn with_cache_ttl(
        storage: Arc<dyn Storage>,
        master: MasterKey,
        scope: ArmScope,
        urls: VaultUrls,
        cache_ttl: Duration,
    ) -> Self {
        Self {
            storage,
            master,
            scope,
            urls,
            latest: Arc::new(LatestCache {
                ttl: cache_ttl,
                entries: Mutex::new(CacheInner::default()),
            }),
        }
    }

    /// Where vaults are reachable, for ids in events.
    pub fn urls(&self) -> &VaultUrls {
        &self.urls
    }

    /// The ARM scope vault resource ids are rooted in.
    pub fn scope(&self) -> &ArmScope {
        &self.scope
    }

    /// The storage the vaults live in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    // ---- vaults ----

    /// Creates a vault and its system topic; fails if the name is taken.
    pub async fn create_vault(
        &self,
        name: &VaultName,
        settings: VaultSettings,
    ) -> VaultResult<VaultRecord> {
        settings.validate().map_err(VaultError::BadParameter)?;
        let created = now();
        let vault = VaultRecord {
            id: herald_core::id::VaultId::generate(),
            name: name.as_str().to_owned(),
            settings,
            created,
        };
        let topic = TopicRecord {
            id: herald_core::id::TopicId::generate(),
            kind: "system".into(),
            name: name.as_str().to_owned(),
            arm_id: self.scope.vault_topic(name.as_str()),
            created,
            input_schema: "EventGridSchema".into(),
            input_mapping: None,
            key1: Vec::new(),
            key2: Vec::new(),
        };
        if !self.storage.create_vault(&vault, &topic).await? {
            return Err(VaultError::VaultExists(name.to_string()));
        }
        tracing::info!(vault = %vault.name, retention_days = vault.settings.retention_days,
            purge_protection = vault.settings.purge_protection, "vault created");
        Ok(vault)
    }

    /// Creates the default vault on first start.
    pub async fn ensure_default_vault(&self, settings: VaultSettings) -> VaultResult<VaultRecord> {
        if let Some(v) = self.storage.vault_by_name(DEFAULT_VAULT).await? {
            return Ok(v);
        }
        let name = VaultName::parse(DEFAULT_VAULT).map_err(|e| VaultError::Internal(e.into()))?;
        match self.create_vault(&name, settings).await {
            Err(VaultError::VaultExists(_)) => self
                .storage
                .vault_by_name(DEFAULT_VAULT)
                .await?
                .ok_or_else(|| VaultError::VaultNotFound(DEFAULT_VAULT.into())),
            other => other,
        }
    }

    /// Looks a vault up by name (case-insensitive).
    pub async fn vault(&self, name: &str) -> VaultResult<VaultRecord> {
        if name.contains('\0') {
            return Err(VaultError::VaultNotFound(name.replace('\0', "")));
        }
        self.storage
            .vault_by_name(&name.to_ascii_lowercase())
            .await?
            .ok_or_else(|| VaultError::VaultNotFound(name.to_owned()))
    }

    /// Every vault.
    pub async fn list_vaults(&self) -> VaultResult<Vec<VaultRecord>> {
        Ok(self.storage.list_vaults().await?)
    }

    /// Deletes a vault and everything in it; the default vault cannot be deleted.
    pub async fn delete_vault(&self, name: &str) -> VaultResult<()> {
        if name.eq_ignore_ascii_case(DEFAULT_VAULT) {
            return Err(VaultError::BadParameter(
                "The default vault cannot be deleted.".into(),
            ));
        }
        if !self
            .storage
            .delete_vault(&name.to_ascii_lowercase())
            .await?
        {
            return Err(VaultError::VaultNotFound(name.to_owned()));
        }
        tracing::info!(vault = %name, "vault deleted");
        Ok(())
    }

    // ---- secrets ----

    pub(crate) fn event_for(
        &self,
        vault: &VaultRecord,
        kind: SecretEventKind,
        name: &str,
        v: &VersionRecord,
    ) -> herald_core::EventGridEvent {
        let url = format!(
            "{}/secrets/{name}/{}",
            self.urls.vault_uri(&vault.name),
            v.version
        );
        secret_event(
            &self.scope,
            kind,
            &SecretEventSubject {
                vault: &vault.name,
                object_url: &url,
                name,
                version: &v.version,
                nbf: v.nbf,
                exp: v.exp,
            },
            Utc::now(),
        )
    }

    /// Decrypts one version's value.
    pub fn open_value(
        &self,
        vault: &VaultRecord,
        secret: &SecretRecord,
        v: &VersionRecord,
    ) -> VaultResult<String> {
        let plain = self
            .master
            .open(
                &v.value,
                &v.wrapped_key,
                &aad(&vault.id, &secret.key, &v.version),
            )
            .map_err(|e| VaultError::Internal(e.into()))?;
        String::from_utf8(plain.to_vec()).map_err(|e| VaultError::Internal(e.into()))
    }

    /// Adds a new version of a secret (creating the secret if needed) and
    /// publishes SecretNewVersionCreated.
    pub async fn set_secret(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
        req: NewSecret,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        if req.value.len() > MAX_VALUE_BYTES {
            return Err(VaultError::BadParameter(format!(
                "The secret value is {} bytes; the maximum is {MAX_VALUE_BYTES} bytes.",
                req.value.len()
            )));
        }
        check_content_type(&req.content_type)?;
        let tags = check_tags(&req.tags.unwrap_or_default())?;
        let key = name.key();
        let version = SecretVersion::generate();
        let (value, wrapped_key) = self.master.seal(
            req.value.as_bytes(),
            &aad(&vault.id, &key, version.as_str()),
        );
        let t = now();
        let rec = VersionRecord {
            version: version.to_string(),
            ordinal: 0,
            enabled: req.enabled.unwrap_or(true),
            nbf: req.nbf,
            exp: req.exp,
            created: t,
            updated: t,
            content_type: req.content_type,
            tags,
            value,
            wrapped_key,
        };
        let event = self.event_for(
            vault,
            SecretEventKind::NewVersionCreated,
            name.as_str(),
            &rec,
        );
        let put = self
            .storage
            .put_version(&vault.id, &key, name.as_str(), &rec, &event)
            .await;
        self.latest.forget(&vault.id, &key);
        match put? {
            Ok(secret) => {
                tracing::info!(vault = %vault.name, secret = %secret.name, version = %rec.version,
                    "secret version created");
                Ok((secret, rec))
            }
            Err(_) => Err(VaultError::DeletedButRecoverable(name.to_string())),
        }
    }

    /// A live version; refuses disabled ones as Key Vault does.
    pub async fn get_secret(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
        version: Option<&str>,
    ) -> VaultResult<(SecretRecord, VersionRecord, String)> {
        let (s, v) = self.find(vault, name, version).await?;
        if !v.enabled {
            return Err(VaultError::Disabled);
        }
        let value = self.open_value(vault, &s, &v)?;
        Ok((s, v, value))
    }

    async fn find(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
        version: Option<&str>,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        let version = requested_version(name, version)?;
        let key = name.key();
        let mut generation = u64::MAX;
        if version.is_none() {
            match self.latest.get(&vault.id, &key) {
                Ok(hit) => return Ok(hit),
                Err(g) => generation = g,
            }
        }
        let found = self
            .storage
            .get_version(&vault.id, &key, version.as_deref())
            .await?
            .ok_or_else(|| VaultError::SecretNotFound(name.to_string()))?;
        if version.is_none() {
            self.latest.put(generation, &vault.id, &found.0, &found.1);
        }
        Ok(found)
    }

    /// A page of live secrets with their latest versions, after the key `after`.
    pub async fn list_secrets(
        &self,
        vault: &VaultRecord,
        after: Option<&str>,
        limit: i64,
    ) -> VaultResult<Vec<(SecretRecord, VersionRecord)>> {
        Ok(self.storage.list_secrets(&vault.id, after, limit).await?)
    }

    /// A page of one secret's versions, after the ordinal `after`.
    pub async fn list_versions(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
        after: Option<i64>,
        limit: i64,
    ) -> VaultResult<(SecretRecord, Vec<VersionRecord>)> {
        self.storage
            .list_versions(&vault.id, &name.key(), after, limit)
            .await?
            .ok_or_else(|| VaultError::SecretNotFound(name.to_string()))
    }

    /// Changes one version's attributes (the latest when `version` is `None`).
    pub async fn update_secret(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
        version: Option<&str>,
        req: SecretUpdate,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        check_content_type(&req.content_type)?;
        let tags = req.tags.as_ref().map(check_tags).transpose()?;
        let version = requested_version(name, version)?;
        let patch = VersionPatch {
            enabled: req.enabled,
            nbf: req.nbf.map(Some),
            exp: req.exp.map(Some),
            content_type: req.content_type.map(Some),
            tags,
            updated: now(),
        };
        let out = self
            .storage
            .update_version(&vault.id, &name.key(), version.as_deref(), &patch)
            .await;
        self.latest.forget(&vault.id, &name.key());
        let out = out?.ok_or_else(|| VaultError::SecretNotFound(name.to_string()))?;
        tracing::info!(vault = %vault.name, secret = %out.0.name, version = %out.1.version,
            "secret attributes updated");
        Ok(out)
    }

    /// Soft-deletes a secret: recoverable until the vault's retention ends.
    pub async fn delete_secret(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        let t = now();
        let purge_at = t + vault.settings.retention_days * 86_400;
        let out = self
            .storage
            .soft_delete(&vault.id, &name.key(), t, purge_at)
            .await;
        self.latest.forget(&vault.id, &name.key());
        let out = out?.ok_or_else(|| VaultError::SecretNotFound(name.to_string()))?;
        tracing::info!(vault = %vault.name, secret = %out.0.name, purge_at, "secret soft-deleted");
        Ok(out)
    }

    /// A soft-deleted secret with its latest version.
    pub async fn get_deleted(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        self.storage
            .get_deleted(&vault.id, &name.key())
            .await?
            .ok_or_else(|| VaultError::DeletedSecretNotFound(name.to_string()))
    }

    /// A page of soft-deleted secrets, after the key `after`.
    pub async fn list_deleted(
        &self,
        vault: &VaultRecord,
        after: Option<&str>,
        limit: i64,
    ) -> VaultResult<Vec<(SecretRecord, VersionRecord)>> {
        Ok(self.storage.list_deleted(&vault.id, after, limit).await?)
    }

    /// Brings a soft-deleted secret back, with all its versions.
    pub async fn recover(
        &self,
        vault: &VaultRecord,
        name: &SecretName,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        let out = self.storage.recover(&vault.id, &name.key()).await;
        self.latest.forget(&vault.id, &name.key());
        let out = out?.ok_or_else(|| VaultError::DeletedSecretNotFound(name.to_string()))?;
        tracing::info!(vault = %vault.name, secret = %out.0.name, "deleted secret recovered");
        Ok(out)
    }

    /// Deletes a soft-deleted secret for good, unless the vault has purge protection.
    pub async fn purge(&self, vault: &VaultRecord, name: &SecretName) -> VaultResult<()> {
        // Existence first: an unknown name is a 404 even under purge protection.
        self.get_deleted(vault, name).await?;
        if vault.settings.purge_protection {
            return Err(VaultError::PurgeProtected(vault.name.clone()));
        }
        let purged = self.storage.purge(&vault.id, &name.key()).await;
        self.latest.forget(&vault.id, &name.key());
        if !purged? {
            return Err(VaultError::DeletedSecretNotFound(name.to_string()));
        }
        tracing::info!(vault = %vault.name, secret = %name, "deleted secret purged");
        Ok(())
    }

    /// Every version of a secret, values included, as one sealed blob (base64url).
    pub async fn backup(&self, vault: &VaultRecord, name: &SecretName) -> VaultResult<String> {
        let (secret, versions) = self
            .storage
            .all_versions(&vault.id, &name.key())
            .await?
            .ok_or_else(|| VaultError::SecretNotFound(name.to_string()))?;
        let mut blob = BackupBlob {
            name: secret.name.clone(),
            versions: Vec::with_capacity(versions.len()),
        };
        for v in &versions {
            blob.versions.push(BackupVersion {
                value: self.open_value(vault, &secret, v)?,
                version: v.version.clone(),
                ordinal: v.ordinal,
                enabled: v.enabled,
                nbf: v.nbf,
                exp: v.exp,
                created: v.created,
                updated: v.updated,
                content_type: v.content_type.clone(),
                tags: v.tags.clone(),
            });
        }
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&blob).map_err(|e| VaultError::Internal(e.into()))?,
        );
        let mut out = BACKUP_MAGIC.to_vec();
        out.extend(self.master.seal_direct(&plain, BACKUP_AAD));
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// Restores a secret from a [`VaultService::backup`] blob, with new sealing.
    pub async fn restore(
        &self,
        vault: &VaultRecord,
        blob: &str,
    ) -> VaultResult<(SecretRecord, VersionRecord)> {
        let bad =
            || VaultError::BadParameter("Backup blob could not be decrypted or is corrupt.".into());
        let raw = URL_SAFE_NO_PAD
            .decode(blob.trim_end_matches('='))
            .map_err(|_| bad())?;
        let sealed = raw.strip_prefix(BACKUP_MAGIC).ok_or_else(bad)?;
        let plain = self
            .master
            .open_direct(sealed, BACKUP_AAD)
            .map_err(|_| bad())?;
        let blob: BackupBlob = serde_json::from_slice(&plain).map_err(|_| bad())?;
        let name = SecretName::parse(&blob.name).map_err(|_| bad())?;
        let key = name.key();
        let mut versions = Vec::with_capacity(blob.versions.len());
        let mut events = Vec::with_capacity(blob.versions.len());
        for b in blob.versions {
            let (value, wrapped_key) = self
                .master
                .seal(b.value.as_bytes(), &aad(&vault.id, &key, &b.version));
            let rec = VersionRecord {
                version: b.version,
                ordinal: b.ordinal,
                enabled: b.enabled,
                nbf: b.nbf,
                exp: b.exp,
                created: b.created,
                updated: b.updated,
                content_type: b.content_type,
                tags: b.tags,
                value,
                wrapped_key,
            };
            events.push(self.event_for(
                vault,
                SecretEventKind::NewVersionCreated,
                name.as_str(),
                &rec,
            ));
            versions.push(rec);
        }
        let latest = versions
            .iter()
            .max_by_key(|v| v.ordinal)
            .cloned()
            .ok_or_else(bad)?;
        let restored = self
            .storage
            .restore_secret(&vault.id, &key, name.as_str(), &versions, &events)
            .await;
        self.latest.forget(&vault.id, &key);
        match restored? {
            Ok(secret) => {
                tracing::info!(vault = %vault.name, secret = %secret.name, versions = versions.len(),
                    "secret restored from backup");
                Ok((secret, latest))
            }
            Err(WriteRefused::Deleted) => Err(VaultError::DeletedButRecoverable(name.to_string())),
            Err(WriteRefused::Exists) => Err(VaultError::RestoreConflict(format!(
                "{}/secrets/{}",
                self.urls.vault_uri(&vault.name),
                name
            ))),
        }
    }
}
