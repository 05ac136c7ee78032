//! Identifiers that appear on the wire.

use rand::RngCore;
use std::fmt;

/// A secret version: 32 lower-case hex characters, as Key Vault issues them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretVersion(String);

impl SecretVersion {
    /// A new random version id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Versions arrive in URLs; anything but 32 hex chars cannot exist.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(raw.to_ascii_lowercase()))
    }

    /// The version as 32 lower-case hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fresh bearer token: a readable prefix plus 32 random bytes, hex encoded.
/// High entropy means a plain SHA-256 is a sound at-rest hash for it.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = SecretVersion::generate();
        assert_eq!(v.as_str().len(), 32);
        assert_eq!(SecretVersion::parse(v.as_str()), Some(v));
        assert!(SecretVersion::parse("versions").is_none());
        assert!(new_token("hrd").starts_with("hrd_"));
    }
}
