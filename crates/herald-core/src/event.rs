//! The Event Grid envelope and the system events Herald's services emit.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where ARM-shaped resource ids are rooted: `/subscriptions/{sub}/resourceGroups/{rg}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmScope {
    /// The ARM subscription id in resource ids (a fixed placeholder by default).
    pub subscription_id: String,
    /// The resource group in resource ids (`herald` by default).
    pub resource_group: String,
}

impl Default for ArmScope {
    fn default() -> Self {
        Self {
            subscription_id: "00000000-0000-0000-0000-000000000000".into(),
            resource_group: "herald".into(),
        }
    }
}

impl ArmScope {
    /// The ARM resource id of a vault: the `topic` of its Key Vault events.
    pub fn vault_topic(&self, vault: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{vault}",
            self.subscription_id, self.resource_group
        )
    }
}

/// An event in the Event Grid schema, as stored in the event log and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventGridEvent {
    /// Unique id of the event; subscribers use it to spot duplicates.
    pub id: String,
    /// Full resource path of the event source (for vault events, the vault's ARM id).
    pub topic: String,
    /// Publisher-defined path of the event's subject (for secret events, the secret name).
    pub subject: String,
    /// The registered event type, e.g. `Microsoft.KeyVault.SecretNearExpiry`.
    pub event_type: String,
    /// When the event happened, UTC with seven fractional digits.
    pub event_time: String,
    /// The event's payload, specific to its type.
    pub data: Value,
    /// Schema version of `data`, set by the publisher.
    pub data_version: String,
    /// Schema version of the envelope itself (always `1`).
    pub metadata_version: String,
}

/// Event Grid stamps UTC with seven fractional digits (`2019-07-25T01:08:33.1036736Z`).
pub fn event_time(at: DateTime<Utc>) -> String {
    let base = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let ticks = at.timestamp_subsec_nanos() / 100;
    format!("{}.{ticks:07}Z", base.trim_end_matches('Z'))
}

/// The three secret lifecycle facts a vault reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretEventKind {
    /// A new version of a secret was created.
    NewVersionCreated,
    /// A secret's current version is within the vault's near-expiry window of `exp`.
    NearExpiry,
    /// A secret's current version has passed its `exp`.
    Expired,
}

impl SecretEventKind {
    /// The Event Grid event type string for this kind.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::NewVersionCreated => "Microsoft.KeyVault.SecretNewVersionCreated",
            Self::NearExpiry => "Microsoft.KeyVault.SecretNearExpiry",
            Self::Expired => "Microsoft.KeyVault.SecretExpired",
        }
    }
}

/// What a Key Vault event says about one secret version.
pub struct SecretEventSubject<'a> {
    /// The vault name.
    pub vault: &'a str,
    /// Versioned object URL, `https://{vault-host}/secrets/{name}/{version}`.
    pub object_url: &'a str,
    /// The secret name.
    pub name: &'a str,
    /// The secret version (32 hex characters).
    pub version: &'a str,
    /// Not-before time of the version, unix seconds.
    pub nbf: Option<i64>,
    /// Expiry time of the version, unix seconds.
    pub exp: Option<i64>,
}

/// Builds a Key Vault secret event with the exact PascalCase `data` keys.
pub fn secret_event(
    scope: &ArmScope,
    kind: SecretEventKind,
    s: &SecretEventSubject<'_>,
    at: DateTime<Utc>,
) -> EventGridEvent {
    EventGridEvent {
        id: uuid::Uuid::new_v4().to_string(),
        topic: scope.vault_topic(s.vault),
        subject: s.name.to_owned(),
        event_type: kind.event_type().to_owned(),
        event_time: event_time(at),
        data: json!({
            "Id": s.object_url,
            "VaultName": s.vault,
            "ObjectType": "Secret",
            "ObjectName": s.name,
            "Version": s.version,
            "NBF": s.nbf,
            "EXP": s.exp,
        }),
        data_version: "1".into(),
        metadata_version: "1".into(),
    }
}

/// `Microsoft.KeyVault.VaultAccessPolicyChanged`: a vault's access policies
/// changed. The data names the vault itself (`ObjectType` `Vault`).
pub fn vault_access_policy_event(
    scope: &ArmScope,
    vault: &str,
    vault_url: &str,
    at: DateTime<Utc>,
) -> EventGridEvent {
    EventGridEvent {
        id: uuid::Uuid::new_v4().to_string(),
        topic: scope.vault_topic(vault),
        subject: vault.to_owned(),
        event_type: "Microsoft.KeyVault.VaultAccessPolicyChanged".into(),
        event_time: event_time(at),
        data: json!({
            "Id": vault_url,
            "VaultName": vault,
            "ObjectType": "Vault",
            "ObjectName": vault,
            "Version": null,
            "NBF": null,
            "EXP": null,
        }),
        data_version: "1".into(),
        metadata_version: "1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn event_time_has_seven_digits() {
        let at = Utc.timestamp_opt(1_564_016_913, 103_673_600).unwrap();
        assert_eq!(event_time(at), "2019-07-25T01:08:33.1036736Z");
    }

    #[test]
    fn secret_event_shape() {
        let scope = ArmScope::default();
        let e = secret_event(
            &scope,
            SecretEventKind::NearExpiry,
            &SecretEventSubject {
                vault: "kv",
                object_url: "https://kv.vault.localhost:8443/secrets/n/v",
                name: "n",
                version: "v",
                nbf: None,
                exp: Some(5),
            },
            Utc::now(),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["eventType"], "Microsoft.KeyVault.SecretNearExpiry");
        assert_eq!(v["data"]["EXP"], 5);
        assert!(v["data"]["NBF"].is_null());
        assert_eq!(v["dataVersion"], "1");
        assert_eq!(
            v["topic"],
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/herald/providers/Microsoft.KeyVault/vaults/kv"
        );
    }
}

/// Re-spells a secret event for the name as stored. Key Vault names are
/// case-insensitive and keep the case of first creation, which only the
/// storage transaction knows for sure.
pub fn respell_secret_event(event: &mut EventGridEvent, stored_name: &str) {
    if event.subject == stored_name {
        return;
    }
    let requested = std::mem::replace(&mut event.subject, stored_name.to_owned());
    if let Some(obj) = event.data.as_object_mut() {
        obj.insert("ObjectName".into(), Value::String(stored_name.to_owned()));
        if let Some(Value::String(id)) = obj.get_mut("Id") {
            *id = id.replacen(
                &format!("/secrets/{requested}/"),
                &format!("/secrets/{stored_name}/"),
                1,
            );
        }
    }
}

#[cfg(test)]
mod respell_tests {
    use super::*;

    #[test]
    fn respells_subject_name_and_id() {
        let mut e = EventGridEvent {
            id: "1".into(),
            topic: "t".into(),
            subject: "mysecret".into(),
            event_type: "x".into(),
            event_time: "t".into(),
            data: json!({"Id": "https://h/secrets/mysecret/v", "ObjectName": "mysecret"}),
            data_version: "1".into(),
            metadata_version: "1".into(),
        };
        respell_secret_event(&mut e, "MySecret");
        assert_eq!(e.subject, "MySecret");
        assert_eq!(e.data["ObjectName"], "MySecret");
        assert_eq!(e.data["Id"], "https://h/secrets/MySecret/v");
    }
}
