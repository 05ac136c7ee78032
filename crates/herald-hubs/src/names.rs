//! Validated names: namespaces, event hubs, consumer groups, authorization
//! rules, and partition counts and ids.
//!
//! Azure resolves hub, consumer group and rule names case-insensitively (a
//! sender using `MyHub` reaches `myhub`), so every name type here compares,
//! hashes and orders by its lower-cased form while keeping the spelling it
//! was created with for display. [`key`](HubName::key) gives that lower-cased
//! form for storage lookups. Validation admits ASCII only, so lower-casing is
//! a byte-wise operation and never changes a name's length.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// The kind of name that failed validation; it picks the rule shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// An Event Hubs namespace (the first label of its host name).
    Namespace,
    /// An event hub.
    EventHub,
    /// A consumer group.
    ConsumerGroup,
    /// A shared access (authorization) rule.
    Policy,
}

impl NameKind {
    /// The rule for this kind of name, written for the person who typed it.
    pub fn rule(self) -> &'static str {
        match self {
            NameKind::Namespace => {
                "A namespace name is 6 to 50 characters of letters, digits and hyphens; it must start with a letter and end with a letter or digit."
            }
            NameKind::EventHub => {
                "An event hub name is 1 to 256 characters of letters, digits, '.', '-' and '_'; it must start and end with a letter or digit."
            }
            NameKind::ConsumerGroup => {
                "A consumer group name is 1 to 50 characters of letters, digits, '.', '-' and '_', or the reserved '$Default'."
            }
            NameKind::Policy => {
                "An authorization rule name is 1 to 256 characters of letters, digits, '.', '-' and '_'."
            }
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Namespace => "namespace",
            NameKind::EventHub => "event hub",
            NameKind::ConsumerGroup => "consumer group",
            NameKind::Policy => "authorization rule",
        })
    }
}

/// Why a name, partition count or partition id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A namespace, hub, consumer group or rule name breaks its rule.
    #[error("The {kind} name '{name}' is invalid: {reason}. {}", .kind.rule())]
    Invalid {
        /// Which kind of name it was.
        kind: NameKind,
        /// The offending name (shortened when very long).
        name: String,
        /// What exactly is wrong.
        reason: String,
    },
    /// A partition count outside 1..=1024.
    #[error(
        "The partition count '{value}' is invalid: an event hub has 1 to {max} partitions.",
        max = PartitionCount::MAX
    )]
    PartitionCount {
        /// The offending value as given.
        value: String,
    },
    /// A partition id that is not one of the hub's ids.
    #[error("The partition id '{id}' is invalid: {reason}.")]
    PartitionId {
        /// The offending id (shortened when very long).
        id: String,
        /// What exactly is wrong.
        reason: String,
    },
}

/// Shortens user input echoed in an error so a megabyte of garbage does not
/// end up in a log line or a response body.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

fn invalid(kind: NameKind, name: &str, reason: impl Into<String>) -> NameError {
    NameError::Invalid {
        kind,
        name: shown(name),
        reason: reason.into(),
    }
}

/// One kind's rule: length bounds, extra characters besides ASCII letters
/// and digits, and what the first and last characters must be. The four
/// name kinds differ only in these parameters.
struct Rule {
    kind: NameKind,
    min: usize,
    max: usize,
    extra: &'static [u8],
    /// Whether the first and last characters must be letters or digits
    /// (namespaces additionally start with a letter, checked by `letter_first`).
    alnum_ends: bool,
    letter_first: bool,
}

impl Rule {
    fn check(&self, name: &str) -> Result<(), NameError> {
        let kind = self.kind;
        if name.is_empty() {
            return Err(invalid(kind, name, "it is empty"));
        }
        if let Some(c) = name.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || (c.is_ascii() && self.extra.contains(&(*c as u8))))
        }) {
            return Err(invalid(
                kind,
                name,
                format!("it contains {c:?}, which is not allowed"),
            ));
        }
        // Only ASCII remains, so the byte length is the character count.
        let len = name.len();
        if len < self.min {
            return Err(invalid(
                kind,
                name,
                format!("it is {len} characters long, the minimum is {}", self.min),
            ));
        }
        if len > self.max {
            return Err(invalid(
                kind,
                name,
                format!("it is {len} characters long, the maximum is {}", self.max),
            ));
        }
        let bytes = name.as_bytes();
        if self.letter_first && !bytes[0].is_ascii_alphabetic() {
            return Err(invalid(kind, name, "it must start with a letter"));
        }
        if self.alnum_ends {
            if !bytes[0].is_ascii_alphanumeric() {
                return Err(invalid(kind, name, "it must start with a letter or digit"));
            }
            if !bytes[len - 1].is_ascii_alphanumeric() {
                return Err(invalid(kind, name, "it must end with a letter or digit"));
            }
        }
        Ok(())
    }
}

fn validate_namespace(name: &str) -> Result<(), NameError> {
    Rule {
        kind: NameKind::Namespace,
        min: 6,
        max: 50,
        extra: b"-",
        alnum_ends: true,
        letter_first: true,
    }
    .check(name)
}

fn validate_hub(name: &str) -> Result<(), NameError> {
    Rule {
        kind: NameKind::EventHub,
        min: 1,
        max: 256,
        extra: b".-_",
        alnum_ends: true,
        letter_first: false,
    }
    .check(name)
}

fn validate_consumer_group(name: &str) -> Result<(), NameError> {
    if name.eq_ignore_ascii_case(ConsumerGroupName::DEFAULT.as_str()) {
        return Ok(());
    }
    if name.starts_with('$') {
        return Err(invalid(
            NameKind::ConsumerGroup,
            name,
            "names starting with '$' are reserved; only '$Default' exists",
        ));
    }
    Rule {
        kind: NameKind::ConsumerGroup,
        min: 1,
        max: 50,
        extra: b".-_",
        alnum_ends: false,
        letter_first: false,
    }
    .check(name)
}

fn validate_policy(name: &str) -> Result<(), NameError> {
    Rule {
        kind: NameKind::Policy,
        min: 1,
        max: 256,
        extra: b".-_",
        alnum_ends: false,
        letter_first: false,
    }
    .check(name)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $validate:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $ty(Cow<'static, str>);

        impl $ty {
            /// Validates `name` and wraps it, keeping its spelling.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                $validate(&name)?;
                Ok(Self(Cow::Owned(name)))
            }

            /// The name as it was created.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The lower-cased form, for case-insensitive lookups in storage.
            pub fn key(&self) -> String {
                self.0.to_ascii_lowercase()
            }
        }

        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.0.eq_ignore_ascii_case(&other.0)
            }
        }

        impl Eq for $ty {}

        impl Hash for $ty {
            fn hash<H: Hasher>(&self, state: &mut H) {
                // Must agree with `eq`: hash the lower-cased bytes.
                for b in self.0.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
                state.write_u8(0xff);
            }
        }

        impl PartialOrd for $ty {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $ty {
            fn cmp(&self, other: &Self) -> Ordering {
                self.0
                    .bytes()
                    .map(|b| b.to_ascii_lowercase())
                    .cmp(other.0.bytes().map(|b| b.to_ascii_lowercase()))
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0.into_owned()
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// An Event Hubs namespace name: the first label of `<ns>.servicebus.windows.net`.
    /// 6–50 letters, digits and hyphens, starting with a letter and ending with
    /// a letter or digit.
    NamespaceName,
    validate_namespace
);

name_type!(
    /// An event hub name: 1–256 letters, digits, `.`, `-`, `_`, starting and
    /// ending with a letter or digit.
    HubName,
    validate_hub
);

name_type!(
    /// A consumer group name: 1–50 letters, digits, `.`, `-`, `_`, or the
    /// reserved [`ConsumerGroupName::DEFAULT`] that every hub has.
    ConsumerGroupName,
    validate_consumer_group
);

name_type!(
    /// A shared access (authorization) rule name, the `skn` of a SAS token:
    /// 1–256 letters, digits, `.`, `-`, `_`.
    PolicyName,
    validate_policy
);

impl ConsumerGroupName {
    /// `$Default`, the consumer group every hub has and nobody can delete.
    pub const DEFAULT: ConsumerGroupName = ConsumerGroupName(Cow::Borrowed("$Default"));

    /// Whether this is `$Default` (in any casing).
    pub fn is_default(&self) -> bool {
        self.0.eq_ignore_ascii_case("$Default")
    }
}

impl PolicyName {
    /// `RootManageSharedAccessKey`, the namespace rule Azure creates with
    /// every namespace (Manage, Send, Listen).
    pub const ROOT: PolicyName = PolicyName(Cow::Borrowed("RootManageSharedAccessKey"));
}

/// The number of partitions of an event hub, 1..=1024 (Dedicated tier's
/// maximum, Herald's default limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionCount(u16);

impl PartitionCount {
    /// The largest partition count Herald accepts.
    pub const MAX: u16 = 1024;

    /// Validates a partition count.
    pub fn new(count: u32) -> Result<Self, NameError> {
        match u16::try_from(count) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(NameError::PartitionCount {
                value: count.to_string(),
            }),
        }
    }

    /// The count as a number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The partition with this index, if it exists.
    pub fn id(self, index: u16) -> Option<PartitionId> {
        (index < self.0).then_some(PartitionId(index))
    }

    /// Every partition id, `0` to `count - 1`.
    pub fn ids(self) -> impl ExactSizeIterator<Item = PartitionId> + Clone {
        (0..self.0).map(PartitionId)
    }

    /// Parses a partition id against this count; see [`PartitionId::parse`].
    pub fn parse_id(self, text: &str) -> Result<PartitionId, NameError> {
        PartitionId::parse(text, self)
    }
}

impl fmt::Display for PartitionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for PartitionCount {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::PartitionCount { value: shown(s) };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u32 = s.parse().map_err(|_| bad())?;
        Self::new(n)
    }
}

impl serde::Serialize for PartitionCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for PartitionCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        let n = u32::try_from(n).map_err(|_| {
            serde::de::Error::custom(NameError::PartitionCount {
                value: n.to_string(),
            })
        })?;
        Self::new(n).map_err(serde::de::Error::custom)
    }
}

/// A partition of an event hub, written on the wire as decimal text
/// (`"0"`, `"1"`, … `"count-1"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(u16);

impl PartitionId {
    /// Parses the decimal text of a partition id and checks it exists in a
    /// hub with `count` partitions. Leading zeros, signs and spaces are
    /// refused: partition ids are identities and Azure only ever writes
    /// `"0"`, `"1"`, …, so `"01"` names no partition.
    pub fn parse(text: &str, count: PartitionCount) -> Result<Self, NameError> {
        let bad = |reason: String| NameError::PartitionId {
            id: shown(text),
            reason,
        };
        let range = || format!("this event hub has partitions '0' to '{}'", count.get() - 1);
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!(
                "partition ids are decimal numbers; {}",
                range()
            )));
        }
        if text.len() > 1 && text.starts_with('0') {
            return Err(bad(format!("write it without leading zeros; {}", range())));
        }
        match text.parse::<u16>() {
            Ok(n) if n < count.get() => Ok(Self(n)),
            _ => Err(bad(range())),
        }
    }

    /// An id the caller has computed as `index < count` (a remainder);
    /// clamps to the last partition rather than panicking if that ever
    /// did not hold.
    pub(crate) fn from_index_below(index: u16, count: PartitionCount) -> Self {
        Self(index.min(count.get() - 1))
    }

    /// The partition's index, 0-based.
    pub fn index(self) -> u16 {
        self.0
    }

    /// The partition's index as a `usize`, for indexing per-partition arrays.
    pub fn as_usize(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl serde::Serialize for PartitionId {
    // Azure's JSON and AMQP management replies carry partition ids as strings.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn namespace_rules() {
        assert!(NamespaceName::new("contoso").is_ok());
        assert!(NamespaceName::new("a-b-c1").is_ok());
        assert!(NamespaceName::new("a".repeat(50)).is_ok());
        for bad in [
            "short",
            "1abcdef",
            "abcdef-",
            "abc_def",
            "",
            "abcdéf",
            &"a".repeat(51),
        ] {
            assert!(NamespaceName::new(bad).is_err(), "{bad}");
        }
        let err = NamespaceName::new("abcdef-").unwrap_err().to_string();
        assert!(err.contains("end with a letter or digit"), "{err}");
        let err = NamespaceName::new("ab").unwrap_err().to_string();
        assert!(err.contains("minimum is 6"), "{err}");
    }

    #[test]
    fn hub_rules() {
        for ok in ["h", "1", "my.hub-1_x", &"a".repeat(256)] {
            assert!(HubName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hub",
            "hub_",
            "hub/x",
            "hub x",
            "$hub",
            &"a".repeat(257),
        ] {
            assert!(HubName::new(bad).is_err(), "{bad}");
        }
        let err = HubName::new("a/b").unwrap_err().to_string();
        assert!(err.contains("'/'"), "{err}");
        assert!(err.contains("event hub name"), "{err}");
    }

    #[test]
    fn consumer_group_rules() {
        assert!(ConsumerGroupName::new("$Default").unwrap().is_default());
        assert!(ConsumerGroupName::new("$default").unwrap().is_default());
        assert_eq!(
            ConsumerGroupName::new("$DEFAULT").unwrap(),
            ConsumerGroupName::DEFAULT
        );
        assert!(ConsumerGroupName::new("_x.").is_ok());
        assert!(ConsumerGroupName::new("$other").is_err());
        assert!(ConsumerGroupName::new("a".repeat(51)).is_err());
        assert_eq!(ConsumerGroupName::DEFAULT.key(), "$default");
    }

    #[test]
    fn policy_rules() {
        assert!(PolicyName::new("RootManageSharedAccessKey").is_ok());
        assert!(PolicyName::new("send-only.v2_").is_ok());
        assert!(PolicyName::new("a b").is_err());
        assert!(PolicyName::new("").is_err());
        assert_eq!(PolicyName::ROOT.as_str(), "RootManageSharedAccessKey");
    }

    #[test]
    fn case_insensitive_identity() {
        let a = HubName::new("MyHub").unwrap();
        let b = HubName::new("myhub").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.key(), "myhub");
        assert_eq!(a.as_str(), "MyHub");
        assert_eq!(a.cmp(&b), Ordering::Equal);
        let set: HashSet<_> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn serde_validates() {
        let h: HubName = serde_json::from_str("\"hub1\"").unwrap();
        assert_eq!(serde_json::to_string(&h).unwrap(), "\"hub1\"");
        assert!(serde_json::from_str::<HubName>("\"-x\"").is_err());
        let c: PartitionCount = serde_json::from_str("4").unwrap();
        assert_eq!(c.get(), 4);
        assert!(serde_json::from_str::<PartitionCount>("0").is_err());
        assert!(serde_json::from_str::<PartitionCount>("1025").is_err());
        assert!(serde_json::from_str::<PartitionCount>("99999999999").is_err());
        assert_eq!(serde_json::to_string(&c.id(3).unwrap()).unwrap(), "\"3\"");
    }

    #[test]
    fn partition_count_and_ids() {
        assert!(PartitionCount::new(0).is_err());
        assert!(PartitionCount::new(1025).is_err());
        let c = PartitionCount::new(32).unwrap();
        assert_eq!(c.ids().len(), 32);
        assert_eq!(c.ids().last().unwrap().to_string(), "31");
        assert_eq!(PartitionId::parse("0", c).unwrap().index(), 0);
        assert_eq!(c.parse_id("31").unwrap().as_usize(), 31);
        for bad in ["32", "-1", "01", "", " 1", "+1", "1.0", "99999999"] {
            assert!(PartitionId::parse(bad, c).is_err(), "{bad}");
        }
        let err = PartitionId::parse("32", c).unwrap_err().to_string();
        assert!(err.contains("'0' to '31'"), "{err}");
        assert_eq!("1024".parse::<PartitionCount>().unwrap().get(), 1024);
        assert!("x".parse::<PartitionCount>().is_err());
    }

    #[test]
    fn long_names_are_shortened_in_errors() {
        let err = HubName::new("-".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 600, "{}", err.len());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,300}") {
            let _ = NamespaceName::new(s.as_str());
            let _ = HubName::new(s.as_str());
            let _ = ConsumerGroupName::new(s.as_str());
            let _ = PolicyName::new(s.as_str());
            let _ = s.parse::<PartitionCount>();
            let _ = PartitionId::parse(&s, PartitionCount::new(1024).unwrap());
        }

        #[test]
        fn valid_hub_names_round_trip(s in "[A-Za-z0-9]([A-Za-z0-9._-]{0,254}[A-Za-z0-9])?") {
            let h = HubName::new(s.as_str()).unwrap();
            prop_assert_eq!(h.to_string(), s.clone());
            let back: HubName = h.to_string().parse().unwrap();
            prop_assert_eq!(back.as_str(), s.as_str());
            prop_assert_eq!(h.key(), s.to_ascii_lowercase());
        }

        #[test]
        fn partition_ids_round_trip(count in 1u32..=1024, idx in 0u16..1024) {
            let c = PartitionCount::new(count).unwrap();
            if let Some(id) = c.id(idx) {
                prop_assert_eq!(PartitionId::parse(&id.to_string(), c).unwrap(), id);
            } else {
                prop_assert!(PartitionId::parse(&idx.to_string(), c).is_err());
            }
        }
    }
}
