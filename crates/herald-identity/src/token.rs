//! Access tokens: ES256 JWTs signed with the installation's key, which every
//! node loads from storage (so any node verifies what another issued), and
//! published as a JWKS for anyone else who wants to check them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Longest token Herald reads: its own are well under 2 KiB; anything
/// near this is not one of them and is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Who a token was issued to and for what, in Entra ID's claim names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The resource the token is for, e.g. `https://vault.azure.net`.
    pub aud: String,
    /// `https://{authority}/{tenant}/v2.0`.
    pub iss: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// The principal's object id (the subject of an app token).
    pub sub: String,
    /// The principal's object id.
    pub oid: String,
    /// The tenant.
    pub tid: String,
    /// The client id (v1 name).
    pub appid: String,
    /// The client id (v2 name).
    pub azp: String,
    /// `app`: an application token, not a user's.
    pub idtyp: String,
    /// Token version, `2.0`.
    pub ver: String,
    /// A unique id for this token.
    pub uti: String,
}

/// Why a bearer token was refused. The text is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT Herald can read")]
    Malformed,
    #[error("the token is longer than any token Herald issues")]
    TooLong,
    #[error("the token was signed with a key Herald does not know (kid)")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token is for audience '{0}', not this service")]
    WrongAudience(String),
    #[error("the token was issued for another tenant")]
    WrongTenant,
    #[error("the token's principal no longer exists")]
    UnknownPrincipal,
}

/// The installation's token-signing key.
pub struct Signer {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    x: String,
    y: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(kid={}, <redacted>)", self.kid)
    }
}

impl Signer {
    /// A new P-256 key as PKCS#8 DER (to be sealed and stored).
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| "generating the token-signing key failed".to_owned())
    }

    /// Loads the key from its PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| "the stored token-signing key is not a P-256 PKCS#8 key".to_owned())?;
        // Uncompressed point: 0x04 || x || y.
        let public = pair.public_key().as_ref();
        if public.len() != 65 {
            return Err("unexpected P-256 public key length".into());
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&public[1..33]),
            URL_SAFE_NO_PAD.encode(&public[33..]),
        );
        let kid = hex::encode(&Sha256::digest(public)[..16]);
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| format!("token-signing public key: {e}"))?;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ec_der(der),
            decoding,
            x,
            y,
        })
    }

    /// The key id tokens name in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set (`jwks_uri`).
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "EC", "use": "sig", "crv": "P-256", "alg": "ES256",
            "kid": self.kid, "x": self.x, "y": self.y,
        }]})
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| format!("signing a token: {e}"))
    }

    /// Checks the signature, lifetime, audience and tenant of `token`.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        tenant: &str,
        now: i64,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Malformed);
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        // Times and audience are checked below with Herald's clock and
        // messages; the library checks only the signature and shape.
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?
            .claims;
        // A minute of leeway on `nbf` for clock skew between the nodes; none
        // on `exp`, so a token's lifetime is what the endpoint said.
        const LEEWAY: i64 = 60;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf - LEEWAY > now {
            return Err(TokenError::NotYetValid);
        }
        if claims.aud.trim_end_matches('/') != audience {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        if claims.tid != tenant {
            return Err(TokenError::WrongTenant);
        }
        Ok(claims)
    }
}

/// The resources tokens are issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The vault data plane (`https://vault.azure.net`).
    KeyVault,
    /// Hubs (`https://eventhubs.azure.net`).
    EventHubs,
    /// Blob storage (`https://storage.azure.com`).
    Storage,
    /// Herald's management API (`https://management.azure.com`).
    Management,
}

impl Audience {
    /// The `aud` claim, as Entra ID writes it for the resource.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyVault => "https://vault.azure.net",
            Self::EventHubs => "https://eventhubs.azure.net",
            Self::Storage => "https://storage.azure.com",
            Self::Management => "https://management.azure.com",
        }
    }
}

/// Host names that stand for a resource besides Azure's own.
#[derive(Debug, Clone, Default)]
pub struct ResourceHosts {
    /// The vaults' parent domain (`vault.localhost`).
    pub vault_base: String,
    /// The namespaces' parent domain (`servicebus.localhost`).
    pub hub_base: String,
}

/// Maps a client-credentials `scope` (`{resource}/.default`) to an audience.
/// The SDKs ask for Azure's resources (`https://vault.azure.net/.default`)
/// or, after Key Vault's challenge, for Herald's own host
/// (`https://vault.localhost:8443/.default`); both mean the same audience.
pub fn audience_for_scope(scope: &str, hosts: &ResourceHosts) -> Result<Audience, String> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let [one] = scopes[..] else {
        return Err(
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a single scope value with /.default suffixed to the resource identifier (application ID URI).".into(),
        );
    };
    let Some(resource) = one.strip_suffix("/.default") else {
        return Err(format!(
            "AADSTS1002012: The provided value for scope {one} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
        ));
    };
    let host = resource
        .strip_prefix("https://")
        .unwrap_or(resource)
        .trim_end_matches('/');
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.to_ascii_lowercase();
    let under =
        |base: &str| !base.is_empty() && (host == base || host.ends_with(&format!(".{base}")));
    let aud = if host == "vault.azure.net" || under(&hosts.vault_base) {
        Audience::KeyVault
    } else if host == "eventhubs.azure.net"
        || host.ends_with(".servicebus.windows.net")
        || under(&hosts.hub_base)
    {
        Audience::EventHubs
    } else if host == "storage.azure.com" || host.ends_with(".blob.core.windows.net") {
        Audience::Storage
    } else if host == "management.azure.com" || host == "management.core.windows.net" {
        Audience::Management
    } else {
        return Err(format!(
            "AADSTS500011: The resource principal named {resource} was not found in the tenant. Herald issues tokens for https://vault.azure.net, https://eventhubs.azure.net, https://storage.azure.com and https://management.azure.com (or its own vault and namespace hosts)."
        ));
    };
    Ok(aud)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> Signer {
        Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims {
            aud: Audience::KeyVault.as_str().into(),
            iss: "https://localhost:8443/t/v2.0".into(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            sub: "oid".into(),
            oid: "oid".into(),
            tid: "t".into(),
            appid: "app".into(),
            azp: "app".into(),
            idtyp: "app".into(),
            ver: "2.0".into(),
            uti: "u".into(),
        }
    }

    #[test]
    fn sign_and_verify() {
        let s = signer();
        let now = 1_800_000_000;
        let t = s.sign(&claims(now)).unwrap();
        let aud = Audience::KeyVault.as_str();
        assert_eq!(s.verify(&t, aud, "t", now).unwrap(), claims(now));
        assert_eq!(s.verify(&t, aud, "t", now + 3600), Err(TokenError::Expired));
        assert!(s.verify(&t, aud, "t", now + 3599).is_ok());
        assert_eq!(
            s.verify(&t, aud, "t", now - 4000),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            s.verify(&t, aud, "other", now),
            Err(TokenError::WrongTenant)
        );
        assert!(matches!(
            s.verify(&t, Audience::EventHubs.as_str(), "t", now),
            Err(TokenError::WrongAudience(_))
        ));
        // Another installation's key: same shape, unknown kid.
        assert_eq!(
            signer().verify(&t, aud, "t", now),
            Err(TokenError::UnknownKey)
        );
        // Tampered payload: the signature no longer matches.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut c = claims(now);
        c.oid = "someone-else".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            s.verify(&parts.join("."), aud, "t", now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify("x".repeat(MAX_TOKEN_LEN + 1).as_str(), aud, "t", now),
            Err(TokenError::TooLong)
        );
        assert_eq!(s.verify("a.b.c", aud, "t", now), Err(TokenError::Malformed));
        let jwks = s.jwks();
        assert_eq!(jwks["keys"][0]["kid"], s.kid());
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
    }

    #[test]
    fn scopes_map_to_audiences() {
        let hosts = ResourceHosts {
            vault_base: "vault.localhost".into(),
            hub_base: "servicebus.localhost".into(),
        };
        for (scope, aud) in [
            ("https://vault.azure.net/.default", Audience::KeyVault),
            ("https://vault.localhost:8443/.default", Audience::KeyVault),
            (
                "https://payments.vault.localhost/.default",
                Audience::KeyVault,
            ),
            ("https://eventhubs.azure.net/.default", Audience::EventHubs),
            (
                "https://ns.servicebus.localhost:5671/.default",
                Audience::EventHubs,
            ),
            ("https://storage.azure.com/.default", Audience::Storage),
            (
                "https://management.azure.com//.default",
                Audience::Management,
            ),
        ] {
            assert_eq!(audience_for_scope(scope, &hosts), Ok(aud), "{scope}");
        }
        for bad in [
            "",
            "https://vault.azure.net",
            "a/.default b/.default",
            "https://evil.example/.default",
        ] {
            let e = audience_for_scope(bad, &hosts).unwrap_err();
            assert!(e.starts_with("AADSTS"), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn any_bearer_text_is_refused_without_panicking(t in ".{0,300}") {
            let s = signer();
            prop_assert!(s.verify(&t, "https://vault.azure.net", "t", 0).is_err());
        }

        #[test]
        fn any_scope_parses_without_panicking(t in ".{0,200}") {
            let _ = audience_for_scope(&t, &ResourceHosts::default());
        }
    }
}
