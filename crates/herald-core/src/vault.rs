//! Vault settings and the rules Key Vault derives from them.

use serde::{Deserialize, Serialize};

/// Shortest soft-delete retention a vault may have, in days.
pub const MIN_RETENTION_DAYS: i64 = 7;
/// Longest (and default) soft-delete retention, in days.
pub const MAX_RETENTION_DAYS: i64 = 90;
/// Key Vault fires SecretNearExpiry 30 days before `exp`.
pub const DEFAULT_NEAR_EXPIRY_SECS: i64 = 30 * 24 * 3600;

/// Per-vault settings. Soft delete is always on; retention and purge
/// protection are fixed at creation, as in Azure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultSettings {
    /// How long deleted secrets stay recoverable, in days.
    pub retention_days: i64,
    /// Whether deleted secrets may not be purged before retention ends (cannot be turned off).
    pub purge_protection: bool,
    /// How many seconds before `exp` SecretNearExpiry fires.
    pub near_expiry_secs: i64,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            retention_days: MAX_RETENTION_DAYS,
            purge_protection: false,
            near_expiry_secs: DEFAULT_NEAR_EXPIRY_SECS,
        }
    }
}

impl VaultSettings {
    /// `DeletionRecoveryLevel` as derived in the spec's §7 table.
    pub fn recovery_level(&self) -> &'static str {
        let customized = self.retention_days < MAX_RETENTION_DAYS;
        match (customized, self.purge_protection) {
            (false, false) => "Recoverable+Purgeable",
            (false, true) => "Recoverable",
            (true, false) => "CustomizedRecoverable+Purgeable",
            (true, true) => "CustomizedRecoverable",
        }
    }

    /// Checks the settings are within Key Vault's limits; the error is the API message.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&self.retention_days) {
            return Err(format!(
                "softDeleteRetentionInDays must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS}, got {}.",
                self.retention_days
            ));
        }
        if self.near_expiry_secs < 0 {
            return Err("nearExpiryWindowInSeconds must not be negative.".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_levels() {
        let mut s = VaultSettings::default();
        assert_eq!(s.recovery_level(), "Recoverable+Purgeable");
        s.purge_protection = true;
        assert_eq!(s.recovery_level(), "Recoverable");
        s.retention_days = 7;
        assert_eq!(s.recovery_level(), "CustomizedRecoverable");
        s.purge_protection = false;
        assert_eq!(s.recovery_level(), "CustomizedRecoverable+Purgeable");
        s.retention_days = 6;
        assert!(s.validate().is_err());
    }
}
