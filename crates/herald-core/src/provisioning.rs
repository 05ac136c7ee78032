//! An event subscription's `provisioningState`, in Event Grid's words.

use serde::{Deserialize, Serialize};

/// Where an event subscription is in its life: `Creating` while its
/// endpoint's handshake runs, `AwaitingManualAction` until someone opens
/// the validation URL, then `Succeeded` (events flow) or `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProvisioningState {
    /// The handshake with the endpoint is running.
    Creating,
    /// Validated (or needing no validation): events are delivered.
    Succeeded,
    /// Waiting for a GET on the subscription's validation URL.
    AwaitingManualAction,
    /// The handshake failed or timed out; nothing is delivered.
    Failed,
    /// Being changed (Event Grid's name; Herald's updates are immediate).
    Updating,
    /// Being deleted (Event Grid's name; Herald's deletes are immediate).
    Deleting,
    /// The operation was canceled (Event Grid's name).
    Canceled,
}

impl ProvisioningState {
    /// The state as Event Grid spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "Creating",
            Self::Succeeded => "Succeeded",
            Self::AwaitingManualAction => "AwaitingManualAction",
            Self::Failed => "Failed",
            Self::Updating => "Updating",
            Self::Deleting => "Deleting",
            Self::Canceled => "Canceled",
        }
    }

    /// The state of an Event Grid name, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Creating,
            Self::Succeeded,
            Self::AwaitingManualAction,
            Self::Failed,
            Self::Updating,
            Self::Deleting,
            Self::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for ProvisioningState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state that is not one of [`ProvisioningState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provisioning state '{0}'")]
pub struct UnknownState(pub String);

impl TryFrom<String> for ProvisioningState {
    type Error = UnknownState;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or(UnknownState(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            "Creating",
            "Succeeded",
            "AwaitingManualAction",
            "Failed",
            "Updating",
            "Deleting",
            "Canceled",
        ] {
            let state = ProvisioningState::parse(s).unwrap();
            assert_eq!(state.as_str(), s);
            assert_eq!(serde_json::to_value(state).unwrap(), serde_json::json!(s));
        }
        assert!(ProvisioningState::try_from("Deleted".to_owned()).is_err());
    }
}
