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

/// Declares an opaque string id: it reads as `&str` (`Deref`, `as_str`),
/// prints and serializes as its text, and is only made from a stored or
/// generated string, so ids of different kinds cannot be mixed up.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A job's id: a GUID, as Azure Automation gives jobs (time-ordered).
    JobId
);

impl JobId {
    /// A new time-ordered job id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

string_id!(
    /// A runbook's id: a time-ordered UUID.
    RunbookId
);

impl RunbookId {
    /// A new time-ordered runbook id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

string_id!(
    /// An Automation webhook's id: a time-ordered UUID.
    WebhookId
);

impl WebhookId {
    /// A new time-ordered webhook id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

string_id!(
    /// A topic's id (`tpc_` and a time-ordered UUID), custom or a vault's
    /// system topic.
    TopicId
);

impl TopicId {
    /// A new topic id.
    pub fn generate() -> Self {
        Self(format!("tpc_{}", uuid::Uuid::now_v7().simple()))
    }
}

string_id!(
    /// An event subscription's id (`sub_` and a time-ordered UUID, or the
    /// id a copied subscription keeps).
    SubscriptionId
);

impl SubscriptionId {
    /// A new event subscription id.
    pub fn generate() -> Self {
        Self(format!("sub_{}", uuid::Uuid::now_v7().simple()))
    }
}

string_id!(
    /// A vault's id (`vlt_` and a time-ordered UUID).
    VaultId
);

impl VaultId {
    /// A new vault id.
    pub fn generate() -> Self {
        Self(format!("vlt_{}", uuid::Uuid::now_v7().simple()))
    }
}

string_id!(
    /// A hubs namespace's id (`ehn_` and a time-ordered UUID).
    NamespaceId
);

impl NamespaceId {
    /// A new namespace id.
    pub fn generate() -> Self {
        Self(format!("ehn_{}", uuid::Uuid::now_v7().simple()))
    }
}

string_id!(
    /// An event hub's id (`ehb_` and a time-ordered UUID).
    HubId
);

impl HubId {
    /// A new event hub id.
    pub fn generate() -> Self {
        Self(format!("ehb_{}", uuid::Uuid::now_v7().simple()))
    }
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
