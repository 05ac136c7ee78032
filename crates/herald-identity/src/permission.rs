//! Key Vault secret permissions, as access policies grant them.

use std::fmt;

/// One secret permission of a Key Vault access policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretPermission {
    /// Read a secret's value (GET a version).
    Get,
    /// List secrets, versions and deleted secrets.
    List,
    /// Create versions and update attributes.
    Set,
    /// Soft-delete a secret.
    Delete,
    /// Recover a soft-deleted secret.
    Recover,
    /// Download a backup.
    Backup,
    /// Restore a backup.
    Restore,
    /// Purge a soft-deleted secret for good.
    Purge,
}

impl SecretPermission {
    /// Every permission, in Key Vault's order.
    pub const ALL: [Self; 8] = [
        Self::Get,
        Self::List,
        Self::Set,
        Self::Delete,
        Self::Recover,
        Self::Backup,
        Self::Restore,
        Self::Purge,
    ];

    /// The lower-case name Key Vault and `az` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Set => "set",
            Self::Delete => "delete",
            Self::Recover => "recover",
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Purge => "purge",
        }
    }

    /// Parses a name case-insensitively (ARM accepts `Get` and `get`).
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(raw.trim()))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for SecretPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of secret permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SecretPermissions(u8);

impl SecretPermissions {
    /// Whether `p` is granted.
    pub fn contains(self, p: SecretPermission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Whether nothing is granted.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses names such as `["get", "List"]`; `all` grants every permission.
    /// Unknown names are refused with the list of valid ones.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut set = Self::default();
        for n in names {
            let n = n.as_ref();
            if n.trim().eq_ignore_ascii_case("all") {
                return Ok(Self::ALL_SET);
            }
            let p = SecretPermission::parse(n).ok_or_else(|| {
                format!(
                    "'{n}' is not a secret permission; use any of: all, {}",
                    Self::ALL_SET.names().join(", ")
                )
            })?;
            set.0 |= p.bit();
        }
        Ok(set)
    }

    /// Every permission granted.
    pub const ALL_SET: Self = Self(0xff);

    /// The granted names in Key Vault's order.
    pub fn names(self) -> Vec<&'static str> {
        SecretPermission::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .map(SecretPermission::as_str)
            .collect()
    }

    /// The stored form: a JSON array of names.
    pub fn to_json(self) -> String {
        serde_json::to_string(&self.names()).unwrap_or_else(|_| "[]".into())
    }

    /// Reads the stored form; names this version does not know are ignored.
    pub fn from_json(text: &str) -> Self {
        let names: Vec<String> = serde_json::from_str(text).unwrap_or_default();
        let mut set = Self::default();
        for n in names {
            if let Some(p) = SecretPermission::parse(&n) {
                set.0 |= p.bit();
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_store() {
        let set = SecretPermissions::parse(&["Get", "list"]).unwrap();
        assert!(set.contains(SecretPermission::Get) && set.contains(SecretPermission::List));
        assert!(!set.contains(SecretPermission::Set));
        assert_eq!(set.to_json(), r#"["get","list"]"#);
        assert_eq!(SecretPermissions::from_json(&set.to_json()), set);
        assert_eq!(SecretPermissions::parse(&["all"]).unwrap().names().len(), 8);
        let err = SecretPermissions::parse(&["read"]).unwrap_err();
        assert!(err.contains("'read' is not a secret permission"), "{err}");
        assert!(SecretPermissions::from_json("not json").is_empty());
    }

    proptest! {
        #[test]
        fn any_stored_text_reads_without_panicking(s in ".{0,64}") {
            let _ = SecretPermissions::from_json(&s);
            let _ = SecretPermissions::parse(&[s]);
        }
    }
}
