//! Herald's identity domain: principals (applications) with client
//! secrets, the OAuth 2.0 client-credentials grant that `azure-identity`'s
//! `ClientSecretCredential` uses, the ES256 access tokens it issues, and
//! Key Vault access-policy permissions. The HTTP edge lives in
//! herald-server; this crate has no network.

pub mod oauth;
pub mod permission;
pub mod service;
pub mod token;

pub use oauth::{OAuthError, TokenRequest, parse_token_request};
pub use permission::{SecretPermission, SecretPermissions};
pub use service::{
    AccessPolicy, CHANGE_TRACKING_APP_ID, IdentityConfig, IdentityError, IdentityService,
    TokenResponse, VerifyError,
};
pub use token::{Audience, Claims, ResourceHosts, Signer, TokenError, audience_for_scope};
