//! The IdentityService: principals and their client secrets, the
//! client-credentials grant, token verification, and vault access policies.

use crate::oauth::{OAuthError, TokenRequest};
use crate::permission::SecretPermissions;
use crate::token::{Audience, Claims, ResourceHosts, Signer, TokenError, audience_for_scope};
use herald_core::ArmScope;
use herald_core::seal::MasterKey;
use herald_storage::{
    AccessPolicyRecord, ClientSecretRecord, PrincipalRecord, Storage, StorageError, VaultRecord,
};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Microsoft Graph Change Tracking's well-known application id: the
/// principal that stands for Herald's change-notification service, so
/// `az keyvault set-policy --spn 0bf30f3b-...` scripts map one to one.
pub const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
const CHANGE_TRACKING_NAME: &str = "Microsoft Graph Change Tracking";

/// The settings key of the sealed token-signing key.
const SIGNING_KEY_SETTING: &str = "token_signing_key";
const SIGNING_KEY_AAD: &[u8] = b"herald:token-signing-key:v1";

/// How long a verified token skips signature checks, and how stale a
/// principal's existence may be before it is looked up again.
const VERIFIED_TTL: Duration = Duration::from_secs(30);
/// How stale a vault's access policies may be on another node.
const POLICY_TTL: Duration = Duration::from_secs(5);

/// What the identity service needs to know about the installation.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The tenant id tokens are issued in.
    pub tenant: String,
    /// Access-token lifetime, seconds.
    pub token_lifetime_secs: i64,
    /// Herald's own resource hosts, accepted in scopes.
    pub hosts: ResourceHosts,
    /// Where ARM ids (event topics) are rooted.
    pub scope: ArmScope,
}

/// A refused identity operation.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Internal(String),
}

/// Why a bearer token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The token endpoint's success body.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub token_type: &'static str,
    pub expires_in: i64,
    pub ext_expires_in: i64,
    pub access_token: String,
}

/// A principal's permissions on one vault.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    pub object_id: String,
    pub app_id: String,
    pub secrets: SecretPermissions,
    pub updated: i64,
}

#[derive(Clone)]
pub struct IdentityService {
    inner: Arc<Inner>,
}

/// A verified token's claims and when they were checked.
type VerifiedToken = (Arc<Claims>, Instant);

/// A vault's policies and when they were read.
type CachedPolicies = (Arc<Vec<AccessPolicy>>, Instant);

struct Inner {
    storage: Arc<dyn Storage>,
    signer: Signer,
    cfg: IdentityConfig,
    verified: RwLock<HashMap<[u8; 32], VerifiedToken>>,
    policies: RwLock<HashMap<String, CachedPolicies>>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A new client secret in Entra ID's shape: 40 characters whose 4th to 6th
/// are `8Q~`, the rest random (34 random characters of a 64-letter
/// alphabet: 204 bits).
fn new_client_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789~.";
    let mut rng = rand::thread_rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    };
    format!("{}8Q~{}", pick(3), pick(34))
}

impl IdentityService {
    /// Loads (or, on a new installation, creates) the token-signing key,
    /// sealed with the master key in storage so every node shares it, and
    /// makes sure the built-in principal exists.
    pub async fn open(
        storage: Arc<dyn Storage>,
        master: &MasterKey,
        cfg: IdentityConfig,
    ) -> Result<Self, IdentityError> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let fresh = Signer::generate_pkcs8().map_err(IdentityError::Internal)?;
        let sealed = STANDARD.encode(master.seal_direct(&fresh, SIGNING_KEY_AAD));
        // Two nodes starting at once: the first key stored wins for both.
        let stored = storage.init_setting(SIGNING_KEY_SETTING, &sealed).await?;
        let sealed = STANDARD.decode(stored).map_err(|_| {
            IdentityError::Internal("the stored token-signing key is corrupt".into())
        })?;
        let der = master
            .open_direct(&sealed, SIGNING_KEY_AAD)
            .map_err(|e| IdentityError::Internal(format!("opening the token-signing key: {e}")))?;
        let signer = Signer::from_pkcs8(&der).map_err(IdentityError::Internal)?;
        storage
            .create_principal(&PrincipalRecord {
                app_id: CHANGE_TRACKING_APP_ID.into(),
                object_id: uuid::Uuid::new_v4().to_string(),
                display_name: CHANGE_TRACKING_NAME.into(),
                builtin: true,
                created: now(),
            })
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                storage,
                signer,
                cfg,
                verified: RwLock::default(),
                policies: RwLock::default(),
            }),
        })
    }

    /// The tenant tokens are issued in.
    pub fn tenant(&self) -> &str {
        &self.inner.cfg.tenant
    }

    /// The public keys (`jwks_uri`).
    pub fn jwks(&self) -> serde_json::Value {
        self.inner.signer.jwks()
    }

    // ------------------------------------------------------------ principals

    pub async fn create_principal(
        &self,
        display_name: &str,
    ) -> Result<PrincipalRecord, IdentityError> {
        let display_name = display_name.trim();
        if display_name.is_empty() || display_name.len() > 120 {
            return Err(IdentityError::Invalid(
                "A principal's display name must be 1 to 120 characters.".into(),
            ));
        }
        let p = PrincipalRecord {
            app_id: uuid::Uuid::new_v4().to_string(),
            object_id: uuid::Uuid::new_v4().to_string(),
            display_name: display_name.to_owned(),
            builtin: false,
            created: now(),
        };
        if !self.inner.storage.create_principal(&p).await? {
            return Err(IdentityError::Conflict(
                "That application id is taken; try again.".into(),
            ));
        }
        tracing::info!(app_id = %p.app_id, display_name = %p.display_name, "principal created");
        Ok(p)
    }

    pub async fn principals(&self) -> Result<Vec<PrincipalRecord>, IdentityError> {
        Ok(self.inner.storage.list_principals().await?)
    }

    pub async fn principal(&self, app_id: &str) -> Result<PrincipalRecord, IdentityError> {
        self.inner
            .storage
            .principal(app_id)
            .await?
            .ok_or_else(|| not_found(app_id))
    }

    /// Deletes a principal with its secrets and access policies. Its
    /// tokens stop working at once on this node, within 30 seconds on others.
    pub async fn delete_principal(&self, app_id: &str) -> Result<(), IdentityError> {
        let p = self.principal(app_id).await?;
        if p.builtin {
            return Err(IdentityError::Invalid(format!(
                "'{}' is Herald's built-in principal and cannot be deleted.",
                p.display_name
            )));
        }
        if !self.inner.storage.delete_principal(app_id).await? {
            return Err(not_found(app_id));
        }
        self.forget_policies();
        // Its tokens stop here at once; other nodes notice within VERIFIED_TTL.
        if let Ok(mut map) = self.inner.verified.write() {
            map.clear();
        }
        tracing::info!(app_id, "principal deleted");
        Ok(())
    }

    /// Adds a client secret; the plain value is returned this once and only
    /// its digest is kept.
    pub async fn add_secret(
        &self,
        app_id: &str,
        display_name: &str,
        lifetime_days: i64,
    ) -> Result<(ClientSecretRecord, String), IdentityError> {
        if !(1..=3650).contains(&lifetime_days) {
            return Err(IdentityError::Invalid(
                "A client secret's lifetime must be 1 to 3650 days.".into(),
            ));
        }
        let p = self.principal(app_id).await?;
        if p.builtin {
            return Err(IdentityError::Invalid(
                "Herald's built-in principal gets its tokens from Herald itself; it has no client secrets.".into(),
            ));
        }
        let plain = new_client_secret();
        let created = now();
        let rec = ClientSecretRecord {
            app_id: app_id.to_owned(),
            key_id: uuid::Uuid::new_v4().to_string(),
            display_name: display_name.trim().chars().take(120).collect(),
            hint: plain[..3].to_owned(),
            hash: hex::encode(digest(&plain)),
            created,
            expires: created + lifetime_days * 86_400,
        };
        if !self.inner.storage.add_client_secret(&rec).await? {
            return Err(not_found(app_id));
        }
        tracing::info!(app_id, key_id = %rec.key_id, "client secret added");
        Ok((rec, plain))
    }

    pub async fn secrets(&self, app_id: &str) -> Result<Vec<ClientSecretRecord>, IdentityError> {
        self.principal(app_id).await?;
        Ok(self.inner.storage.client_secrets(app_id).await?)
    }

    /// Removes a client secret: it issues no more tokens at once; tokens
    /// already issued with it live out their (short) lifetime, as in Entra ID.
    pub async fn remove_secret(&self, app_id: &str, key_id: &str) -> Result<(), IdentityError> {
        self.principal(app_id).await?;
        if !self
            .inner
            .storage
            .remove_client_secret(app_id, key_id)
            .await?
        {
            return Err(IdentityError::NotFound(format!(
                "Principal '{app_id}' has no client secret with keyId '{key_id}'. List them with: herald principal secret list {app_id}"
            )));
        }
        tracing::info!(app_id, key_id, "client secret removed");
        Ok(())
    }

    // ------------------------------------------------------------ tokens

    /// The client-credentials grant. `issuer_authority` is the
    /// `host[:port]` the client called, so `iss` names what it trusts.
    pub async fn issue(
        &self,
        req: &TokenRequest,
        tenant: &str,
        issuer_authority: &str,
    ) -> Result<Result<TokenResponse, OAuthError>, IdentityError> {
        let cfg = &self.inner.cfg;
        if !tenant.eq_ignore_ascii_case(&cfg.tenant) && tenant != "organizations" {
            return Ok(Err(OAuthError::new_invalid_tenant(tenant)));
        }
        let audience = match audience_for_scope(&req.scope, &cfg.hosts) {
            Ok(a) => a,
            Err(text) if text.starts_with("AADSTS500011") => {
                return Ok(Err(OAuthError::invalid_resource(text)));
            }
            Err(text) => return Ok(Err(OAuthError::invalid_scope(1002012, text))),
        };
        let principal = match self.inner.storage.principal(&req.client_id).await? {
            Some(p) if !p.builtin => p,
            _ => {
                return Ok(Err(OAuthError::unauthorized_client(
                    700016,
                    format!(
                        "Application with identifier '{}' was not found in the directory '{}'. Create it with: herald principal create <name>",
                        req.client_id, cfg.tenant
                    ),
                )));
            }
        };
        let given = digest(&req.client_secret);
        let (mut matched, mut expired) = (false, false);
        let t = now();
        for s in self.inner.storage.client_secrets(&principal.app_id).await? {
            let Ok(stored) = hex::decode(&s.hash) else {
                continue;
            };
            if bool::from(stored.as_slice().ct_eq(&given)) {
                if s.expires > t {
                    matched = true;
                } else {
                    expired = true;
                }
            }
        }
        if !matched {
            let e = if expired {
                OAuthError::invalid_client(
                    7000222,
                    format!(
                        "The provided client secret keys for app '{}' are expired. Add a new one with: herald principal secret add {}",
                        principal.app_id, principal.app_id
                    ),
                )
            } else {
                OAuthError::invalid_client(
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                        principal.app_id
                    ),
                )
            };
            return Ok(Err(e));
        }
        Ok(Ok(self.sign_for(&principal, audience, issuer_authority)?))
    }

    /// A token for one of Herald's own principals (the change-notification
    /// service), minted without a client secret.
    pub async fn token_for(
        &self,
        app_id: &str,
        audience: Audience,
        issuer_authority: &str,
    ) -> Result<TokenResponse, IdentityError> {
        let p = self.principal(app_id).await?;
        self.sign_for(&p, audience, issuer_authority)
    }

    fn sign_for(
        &self,
        p: &PrincipalRecord,
        audience: Audience,
        issuer_authority: &str,
    ) -> Result<TokenResponse, IdentityError> {
        let cfg = &self.inner.cfg;
        let t = now();
        let claims = Claims {
            aud: audience.as_str().into(),
            iss: format!("https://{issuer_authority}/{}/v2.0", cfg.tenant),
            iat: t,
            nbf: t,
            exp: t + cfg.token_lifetime_secs,
            sub: p.object_id.clone(),
            oid: p.object_id.clone(),
            tid: cfg.tenant.clone(),
            appid: p.app_id.clone(),
            azp: p.app_id.clone(),
            idtyp: "app".into(),
            ver: "2.0".into(),
            uti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let access_token = self
            .inner
            .signer
            .sign(&claims)
            .map_err(IdentityError::Internal)?;
        tracing::debug!(app_id = %p.app_id, aud = audience.as_str(), "access token issued");
        Ok(TokenResponse {
            token_type: "Bearer",
            expires_in: cfg.token_lifetime_secs,
            ext_expires_in: cfg.token_lifetime_secs,
            access_token,
        })
    }

    /// Checks a bearer token for `audience`. A verified token is remembered
    /// for 30 seconds (bounded by its own expiry), so hot paths pay for the
    /// signature check and the principal lookup once.
    pub async fn verify(
        &self,
        token: &str,
        audience: Audience,
    ) -> Result<Arc<Claims>, VerifyError> {
        let key = digest(token);
        let t = now();
        if let Some(c) = self.cached(&key, t) {
            if c.aud != audience.as_str() {
                return Err(TokenError::WrongAudience(c.aud.clone()).into());
            }
            return Ok(c);
        }
        let claims =
            self.inner
                .signer
                .verify(token, audience.as_str(), &self.inner.cfg.tenant, t)?;
        match self.inner.storage.principal(&claims.appid).await? {
            Some(p) if p.object_id == claims.oid => {}
            _ => return Err(TokenError::UnknownPrincipal.into()),
        }
        let claims = Arc::new(claims);
        if let Ok(mut map) = self.inner.verified.write() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(key, (claims.clone(), Instant::now()));
        }
        Ok(claims)
    }

    fn cached(&self, key: &[u8; 32], t: i64) -> Option<Arc<Claims>> {
        let map = self.inner.verified.read().ok()?;
        let (c, at) = map.get(key)?;
        (at.elapsed() < VERIFIED_TTL && c.exp > t).then(|| c.clone())
    }

    // ------------------------------------------------------------ access policies

    /// The vault's access policies, cached for a few seconds.
    pub async fn policies(
        &self,
        vault: &VaultRecord,
    ) -> Result<Arc<Vec<AccessPolicy>>, IdentityError> {
        if let Ok(map) = self.inner.policies.read()
            && let Some((list, at)) = map.get(vault.id.as_str())
            && at.elapsed() < POLICY_TTL
        {
            return Ok(list.clone());
        }
        let list: Arc<Vec<AccessPolicy>> = Arc::new(
            self.inner
                .storage
                .access_policies(vault.id.as_str())
                .await?
                .into_iter()
                .map(|r| AccessPolicy {
                    secrets: SecretPermissions::from_json(&r.secrets),
                    object_id: r.object_id,
                    app_id: r.app_id,
                    updated: r.updated,
                })
                .collect(),
        );
        if let Ok(mut map) = self.inner.policies.write() {
            map.insert(vault.id.as_str().to_owned(), (list.clone(), Instant::now()));
        }
        Ok(list)
    }

    /// What `object_id` may do with the vault's secrets.
    pub async fn secret_permissions(
        &self,
        vault: &VaultRecord,
        object_id: &str,
    ) -> Result<SecretPermissions, IdentityError> {
        Ok(self
            .policies(vault)
            .await?
            .iter()
            .find(|p| p.object_id == object_id)
            .map(|p| p.secrets)
            .unwrap_or_default())
    }

    /// `az keyvault set-policy`: gives the principal exactly `secrets` on
    /// the vault and emits `VaultAccessPolicyChanged` in the same commit.
    pub async fn set_policy(
        &self,
        vault: &VaultRecord,
        vault_url: &str,
        principal: &str,
        secrets: SecretPermissions,
    ) -> Result<AccessPolicy, IdentityError> {
        let p = self.find(principal).await?;
        if secrets.is_empty() {
            return Err(IdentityError::Invalid(
                "Give at least one secret permission (get, list, set, delete, recover, backup, restore, purge or all); to take them all away, delete the policy.".into(),
            ));
        }
        let rec = AccessPolicyRecord {
            object_id: p.object_id.clone(),
            app_id: p.app_id.clone(),
            secrets: secrets.to_json(),
            updated: now(),
        };
        let event = herald_core::event::vault_access_policy_event(
            &self.inner.cfg.scope,
            &vault.name,
            vault_url,
            chrono::Utc::now(),
        );
        self.inner
            .storage
            .set_access_policy(vault.id.as_str(), &rec, &event)
            .await?;
        self.forget_policies();
        tracing::info!(vault = %vault.name, app_id = %p.app_id, secrets = ?secrets.names(), "access policy set");
        Ok(AccessPolicy {
            object_id: rec.object_id,
            app_id: rec.app_id,
            secrets,
            updated: rec.updated,
        })
    }

    /// `az keyvault delete-policy`.
    pub async fn delete_policy(
        &self,
        vault: &VaultRecord,
        vault_url: &str,
        principal: &str,
    ) -> Result<(), IdentityError> {
        let p = self.find(principal).await?;
        let event = herald_core::event::vault_access_policy_event(
            &self.inner.cfg.scope,
            &vault.name,
            vault_url,
            chrono::Utc::now(),
        );
        if !self
            .inner
            .storage
            .delete_access_policy(vault.id.as_str(), &p.object_id, &event)
            .await?
        {
            return Err(IdentityError::NotFound(format!(
                "Vault '{}' has no access policy for principal '{}'.",
                vault.name, p.app_id
            )));
        }
        self.forget_policies();
        tracing::info!(vault = %vault.name, app_id = %p.app_id, "access policy deleted");
        Ok(())
    }

    /// A principal by app id or object id (`--spn` and `--object-id`).
    async fn find(&self, id: &str) -> Result<PrincipalRecord, IdentityError> {
        if let Some(p) = self.inner.storage.principal(id).await? {
            return Ok(p);
        }
        self.inner
            .storage
            .list_principals()
            .await?
            .into_iter()
            .find(|p| p.object_id == id)
            .ok_or_else(|| not_found(id))
    }

    fn forget_policies(&self) {
        if let Ok(mut map) = self.inner.policies.write() {
            map.clear();
        }
    }
}

fn not_found(app_id: &str) -> IdentityError {
    IdentityError::NotFound(format!(
        "No principal has appId '{app_id}'. List them with: herald principal list"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_secrets_look_like_entra_ids() {
        let s = new_client_secret();
        assert_eq!(s.len(), 40);
        assert_eq!(&s[3..6], "8Q~");
        assert_ne!(s, new_client_secret());
    }
}
