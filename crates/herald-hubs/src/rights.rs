//! Access rights of a shared access (authorization) rule: `Manage`, `Send`,
//! `Listen`.
//!
//! Azure writes them as a JSON array of names (`"rights": ["Manage", "Send",
//! "Listen"]`). Herald reads names case-insensitively, in any order and
//! tolerates repeats, and always writes the canonical casing in the order
//! Manage, Send, Listen (the order the spec lists them).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::str::FromStr;

/// One access right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Right {
    /// Manage the entity (rules, hubs, consumer groups); implies Send and Listen.
    Manage,
    /// Publish events.
    Send,
    /// Receive events.
    Listen,
}

impl Right {
    /// Every right, in canonical order.
    pub const ALL: [Right; 3] = [Right::Manage, Right::Send, Right::Listen];

    /// Azure's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Manage => "Manage",
            Right::Send => "Send",
            Right::Listen => "Listen",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Right::Manage => 1,
            Right::Send => 2,
            Right::Listen => 4,
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Right {
    type Err = RightsError;
    fn from_str(s: &str) -> Result<Self, RightsError> {
        let t = s.trim();
        Right::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| RightsError::Unknown(crate::names::shown(s)))
    }
}

/// Why a set of rights was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RightsError {
    /// A name other than Manage, Send or Listen.
    #[error("'{0}' is not an access right; the rights are 'Manage', 'Send' and 'Listen'.")]
    Unknown(String),
    /// An empty list.
    #[error("An authorization rule needs at least one right: 'Manage', 'Send' or 'Listen'.")]
    Empty,
    /// Manage without both Send and Listen, which Azure refuses.
    #[error("The 'Manage' right requires 'Send' and 'Listen' as well; list all three.")]
    ManageNeedsSendAndListen,
}

/// A set of [`Right`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// No rights.
    pub const EMPTY: Rights = Rights(0);
    /// Manage alone (only meaningful as a query; valid rules carry Send and Listen with it).
    pub const MANAGE: Rights = Rights(1);
    /// Send.
    pub const SEND: Rights = Rights(2);
    /// Listen.
    pub const LISTEN: Rights = Rights(4);
    /// Manage, Send and Listen: what `RootManageSharedAccessKey` has.
    pub const ALL: Rights = Rights(7);

    /// Builds a valid rule's rights from names: at least one, each known,
    /// Manage only together with Send and Listen.
    pub fn from_names<I, S>(names: I) -> Result<Rights, RightsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut r = Rights::EMPTY;
        for n in names {
            r |= Rights::from(n.as_ref().parse::<Right>()?);
        }
        r.validate()?;
        Ok(r)
    }

    /// Parses a comma-separated list such as `"Send, Listen"` (CLI form).
    pub fn parse_list(s: &str) -> Result<Rights, RightsError> {
        Rights::from_names(s.split(',').filter(|p| !p.trim().is_empty()))
    }

    /// Checks the rules Azure applies to an authorization rule's rights.
    pub fn validate(self) -> Result<(), RightsError> {
        if self.is_empty() {
            return Err(RightsError::Empty);
        }
        if self.contains(Rights::MANAGE) && !self.contains(Rights::SEND | Rights::LISTEN) {
            return Err(RightsError::ManageNeedsSendAndListen);
        }
        Ok(())
    }

    /// Whether these rights permit `right`. Manage permits everything, as in Azure.
    pub fn allows(self, right: Right) -> bool {
        self.0 & (right.bit() | Right::Manage.bit()) != 0
    }

    /// Whether every right in `other` is in this set (literally, without
    /// Manage's implication).
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The rights in canonical order (Manage, Send, Listen).
    pub fn iter(self) -> impl Iterator<Item = Right> {
        Right::ALL
            .into_iter()
            .filter(move |r| self.0 & r.bit() != 0)
    }
}

impl From<Right> for Rights {
    fn from(r: Right) -> Rights {
        Rights(r.bit())
    }
}

impl BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl BitOrAssign for Rights {
    fn bitor_assign(&mut self, rhs: Rights) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for Rights {
    /// Comma-separated, canonical order: `Manage, Send, Listen`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

impl serde::Serialize for Rights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.iter().count()))?;
        for r in self.iter() {
            seq.serialize_element(r.as_str())?;
        }
        seq.end()
    }
}

impl<'de> serde::Deserialize<'de> for Rights {
    /// Accepts Azure's array form and validates it like [`Rights::from_names`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        Rights::from_names(names).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_form() {
        let r: Rights = serde_json::from_str(r#"["listen","SEND"]"#).unwrap();
        assert_eq!(r, Rights::SEND | Rights::LISTEN);
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"["Send","Listen"]"#);
        let all: Rights = serde_json::from_str(r#"["Listen","Manage","Send","Send"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"["Manage","Send","Listen"]"#
        );
    }

    #[test]
    fn invalid_sets() {
        let e = serde_json::from_str::<Rights>(r#"["Manage"]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("requires 'Send' and 'Listen'"), "{e}");
        assert_eq!(
            Rights::from_names(["Manage", "Send"]),
            Err(RightsError::ManageNeedsSendAndListen)
        );
        assert_eq!(
            Rights::from_names(Vec::<&str>::new()),
            Err(RightsError::Empty)
        );
        assert_eq!(
            Rights::from_names(["Read"]),
            Err(RightsError::Unknown("Read".into()))
        );
        assert!(serde_json::from_str::<Rights>(r#""Send""#).is_err());
    }

    #[test]
    fn allows() {
        assert!(Rights::SEND.allows(Right::Send));
        assert!(!Rights::SEND.allows(Right::Listen));
        assert!(!Rights::SEND.allows(Right::Manage));
        assert!(Rights::ALL.allows(Right::Listen));
        assert!(Rights::MANAGE.allows(Right::Send));
        assert!(!Rights::EMPTY.allows(Right::Send));
    }

    #[test]
    fn list_form() {
        assert_eq!(
            Rights::parse_list("Send, listen").unwrap(),
            Rights::SEND | Rights::LISTEN
        );
        assert_eq!(Rights::ALL.to_string(), "Manage, Send, Listen");
        assert_eq!(format!("{:?}", Rights::LISTEN), "[Listen]");
    }

    proptest! {
        #[test]
        fn never_panics(names in proptest::collection::vec(".{0,12}", 0..5)) {
            let _ = Rights::from_names(&names);
        }

        #[test]
        fn round_trip(bits in 0u8..8) {
            let r = Rights(bits);
            let json = serde_json::to_string(&r).unwrap();
            match r.validate() {
                Ok(()) => prop_assert_eq!(serde_json::from_str::<Rights>(&json).unwrap(), r),
                Err(_) => prop_assert!(serde_json::from_str::<Rights>(&json).is_err()),
            }
            if r.validate().is_ok() {
                prop_assert_eq!(Rights::parse_list(&r.to_string()).unwrap(), r);
            }
        }
    }
}
