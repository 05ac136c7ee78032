//! The vault's part of the storage seam: vaults, secrets and their
//! versions, plus the node's settings and API tokens.

pub(crate) mod store;

use crate::{AccessPolicyRecord, LoggedEvent, Result, TokenRecord, TopicRecord};
use async_trait::async_trait;
use herald_core::EventGridEvent;
pub use herald_core::id::VaultId;
use herald_core::vault::VaultSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRecord {
    pub id: VaultId,
    pub name: String,
    pub settings: VaultSettings,
    pub created: i64,
}

/// The secret as a whole (all versions share it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub vault_id: VaultId,
    /// Lower-cased lookup key.
    pub key: String,
    /// Display name, as first created.
    pub name: String,
    pub deleted_at: Option<i64>,
    pub purge_at: Option<i64>,
}

/// One immutable value plus its mutable metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: String,
    pub ordinal: i64,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub content_type: Option<String>,
    /// Tags as a JSON object string.
    pub tags: String,
    /// Sealed value (ciphertext).
    pub value: Vec<u8>,
    /// Data key wrapped by the master key.
    pub wrapped_key: Vec<u8>,
}

/// Metadata changes for one version; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct VersionPatch {
    pub enabled: Option<bool>,
    pub nbf: Option<Option<i64>>,
    pub exp: Option<Option<i64>>,
    pub content_type: Option<Option<String>>,
    pub tags: Option<String>,
    pub updated: i64,
}

/// Why a write that creates versions was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefused {
    /// The name is soft-deleted: only recover or purge are allowed.
    Deleted,
    /// Restore onto a live name.
    Exists,
}

/// A lifecycle event that is due for one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryKind {
    NearExpiry,
    Expired,
}

#[derive(Debug, Clone)]
pub struct DueExpiry {
    pub vault: VaultRecord,
    pub secret: SecretRecord,
    pub version: VersionRecord,
    pub kind: ExpiryKind,
}

/// Settings, tokens, vaults, secrets and the event log.
#[async_trait]
pub trait VaultStore: Send + Sync {
    // Settings
    async fn setting(&self, key: &str) -> Result<Option<String>>;
    /// Stores `value` unless the key exists; returns what is stored.
    async fn init_setting(&self, key: &str, value: &str) -> Result<String>;

    // API tokens
    async fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<()>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    async fn count_tokens(&self, role: &str) -> Result<i64>;

    // Vaults and their system topics
    /// Creates the vault and its system topic; `false` if the name is taken.
    async fn create_vault(&self, vault: &VaultRecord, topic: &TopicRecord) -> Result<bool>;
    async fn vault_by_name(&self, name: &str) -> Result<Option<VaultRecord>>;
    async fn list_vaults(&self) -> Result<Vec<VaultRecord>>;
    async fn delete_vault(&self, name: &str) -> Result<bool>;
    async fn topic_for_vault(&self, vault_id: &str) -> Result<Option<TopicRecord>>;

    // Access policies
    async fn access_policies(&self, vault_id: &str) -> Result<Vec<AccessPolicyRecord>>;
    /// Adds or replaces the principal's policy and logs `event` with it.
    async fn set_access_policy(
        &self,
        vault_id: &str,
        policy: &AccessPolicyRecord,
        event: &EventGridEvent,
    ) -> Result<()>;
    /// Removes the principal's policy and logs `event`; `false` (and no
    /// event) if it had none.
    async fn delete_access_policy(
        &self,
        vault_id: &str,
        object_id: &str,
        event: &EventGridEvent,
    ) -> Result<bool>;

    // Secrets
    /// Adds a version (creating the secret if new) and logs `event`.
    async fn put_version(
        &self,
        vault_id: &str,
        key: &str,
        name: &str,
        version: &VersionRecord,
        event: &EventGridEvent,
    ) -> Result<Result<SecretRecord, WriteRefused>>;
    /// A live secret's version; `None` version means the latest.
    async fn get_version(
        &self,
        vault_id: &str,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<(SecretRecord, VersionRecord)>>;
    /// Live secrets with their latest version, by key, after `after_key`.
    async fn list_secrets(
        &self,
        vault_id: &str,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(SecretRecord, VersionRecord)>>;
    /// Versions of a live secret by ordinal, after `after_ordinal`.
    async fn list_versions(
        &self,
        vault_id: &str,
        key: &str,
        after_ordinal: Option<i64>,
        limit: i64,
    ) -> Result<Option<(SecretRecord, Vec<VersionRecord>)>>;
    async fn update_version(
        &self,
        vault_id: &str,
        key: &str,
        version: Option<&str>,
        patch: &VersionPatch,
    ) -> Result<Option<(SecretRecord, VersionRecord)>>;
    /// All versions of a live secret, oldest first (for backup).
    async fn all_versions(
        &self,
        vault_id: &str,
        key: &str,
    ) -> Result<Option<(SecretRecord, Vec<VersionRecord>)>>;
    /// Recreates a secret from a backup with all its versions.
    async fn restore_secret(
        &self,
        vault_id: &str,
        key: &str,
        name: &str,
        versions: &[VersionRecord],
        events: &[EventGridEvent],
    ) -> Result<Result<SecretRecord, WriteRefused>>;
    /// Soft-deletes a live secret; returns it with its latest version.
    async fn soft_delete(
        &self,
        vault_id: &str,
        key: &str,
        deleted_at: i64,
        purge_at: i64,
    ) -> Result<Option<(SecretRecord, VersionRecord)>>;
    async fn get_deleted(
        &self,
        vault_id: &str,
        key: &str,
    ) -> Result<Option<(SecretRecord, VersionRecord)>>;
    async fn list_deleted(
        &self,
        vault_id: &str,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(SecretRecord, VersionRecord)>>;
    async fn recover(
        &self,
        vault_id: &str,
        key: &str,
    ) -> Result<Option<(SecretRecord, VersionRecord)>>;
    /// Permanently removes a soft-deleted secret.
    async fn purge(&self, vault_id: &str, key: &str) -> Result<bool>;
    /// Purges every soft-deleted secret whose scheduled purge date passed.
    async fn purge_due(&self, now: i64) -> Result<Vec<(String, String)>>;

    // Lifecycle
    /// Current versions of live secrets whose near-expiry or expiry is due.
    async fn due_expiries(&self, now: i64, limit: i64) -> Result<Vec<DueExpiry>>;
    /// Marks the fact done and logs its event in one transaction. Returns
    /// `false` (and logs nothing) if it was already recorded, so a crash
    /// or a second scanner can never emit it twice.
    async fn record_expiry(
        &self,
        vault_id: &str,
        key: &str,
        ordinal: i64,
        kind: ExpiryKind,
        event: &EventGridEvent,
    ) -> Result<bool>;

    // Event log
    async fn read_events(
        &self,
        topic_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>>;
}
