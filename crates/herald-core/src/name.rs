//! Validated names, parsed once at the edge so the rest of the code can trust them.

use std::fmt;

/// A name that failed validation at the edge, with the name as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// A secret name outside 1–127 of `[0-9a-zA-Z-]`.
    #[error("The request URI contains an invalid name: {0}")]
    InvalidSecretName(String),
    #[error(
        "Invalid vault name '{0}': use 3-24 characters, letters, digits and hyphens, starting with a letter and not ending with a hyphen."
    )]
    /// A vault name that is not a valid 3–24 character DNS label.
    InvalidVaultName(String),
}

/// A Key Vault secret name: 1–127 of `[0-9a-zA-Z-]`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretName(String);

impl SecretName {
    /// Validates a secret name as Key Vault does; the caller's spelling is kept.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let ok = (1..=127).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::InvalidSecretName(raw.to_owned()))
        }
    }

    /// The name as the caller spelled it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lookup key: Key Vault names are case-insensitive.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A vault name: 3–24 chars, letters/digits/hyphens, starts with a letter.
/// Stored lower-case because it is also a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VaultName(String);

impl VaultName {
    /// Validates a vault name and lower-cases it.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let b = raw.as_bytes();
        let ok = (3..=24).contains(&b.len())
            && b[0].is_ascii_alphabetic()
            && b[b.len() - 1] != b'-'
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && !raw.contains("--");
        if ok {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(NameError::InvalidVaultName(raw.to_owned()))
        }
    }

    /// The name, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VaultName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        assert!(SecretName::parse("db-Password-1").is_ok());
        assert!(SecretName::parse(&"a".repeat(127)).is_ok());
        for bad in ["", "a_b", "a.b", "a b", "ä", &"a".repeat(128)] {
            assert!(SecretName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SecretName::parse("AbC").unwrap().key(), "abc");
    }

    #[test]
    fn vault_names() {
        assert_eq!(VaultName::parse("Payments").unwrap().as_str(), "payments");
        for bad in ["ab", "1abc", "abc-", "a--b", "a_bc", &"a".repeat(25)] {
            assert!(VaultName::parse(bad).is_err(), "{bad}");
        }
    }
}
