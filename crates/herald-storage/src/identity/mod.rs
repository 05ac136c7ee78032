//! Records and the store for identity: principals (applications that get
//! tokens with a client secret) and their secrets. Each vault's access
//! policies live with the vault ([`VaultStore`](crate::VaultStore)), where
//! their change event commits with them. The rules (secret format, tokens,
//! permissions) live in `herald-identity`; this is only what must commit
//! together.

use crate::Result;
use async_trait::async_trait;

pub(crate) mod store;

/// An application (service principal) that can get tokens.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PrincipalRecord {
    /// The client id callers present (`appId`).
    pub app_id: String,
    /// The id access policies name (`objectId`).
    pub object_id: String,
    pub display_name: String,
    /// Herald's own principals (change notifications) cannot be deleted.
    pub builtin: bool,
    pub created: i64,
}

/// One client secret of a principal; only its digest is kept.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClientSecretRecord {
    pub app_id: String,
    /// The credential's id (`keyId`), a UUID.
    pub key_id: String,
    pub display_name: String,
    /// The first characters of the secret (`hint`), as Entra ID shows them.
    pub hint: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created: i64,
    /// Unix seconds after which the secret stops issuing tokens.
    pub expires: i64,
}

/// One principal's permissions on one vault.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccessPolicyRecord {
    pub object_id: String,
    pub app_id: String,
    /// Secret permissions as a JSON array of lower-case names.
    pub secrets: String,
    pub updated: i64,
}

/// Principals and their client secrets.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Creates the principal; `false` if the app id or object id is taken.
    async fn create_principal(&self, p: &PrincipalRecord) -> Result<bool>;
    async fn principal(&self, app_id: &str) -> Result<Option<PrincipalRecord>>;
    async fn list_principals(&self) -> Result<Vec<PrincipalRecord>>;
    /// Deletes the principal, its secrets and its access policies in every
    /// vault; `false` if there was none.
    async fn delete_principal(&self, app_id: &str) -> Result<bool>;
    /// Adds a secret; `false` if the principal does not exist.
    async fn add_client_secret(&self, s: &ClientSecretRecord) -> Result<bool>;
    async fn client_secrets(&self, app_id: &str) -> Result<Vec<ClientSecretRecord>>;
    async fn remove_client_secret(&self, app_id: &str, key_id: &str) -> Result<bool>;
}
