//! Event Hubs connection strings (spec §A3).
//!
//! ```text
//! Endpoint=sb://<host>/;SharedAccessKeyName=<rule>;SharedAccessKey=<key>[;EntityPath=<hub>]
//! ```
//!
//! Parsing follows the Azure SDKs: `;`-separated `Key=Value` parts split at
//! the first `=` (keys end in `=` padding), keys case-insensitive, repeated
//! keys refused, unknown keys ignored, `SharedAccessSignature=<token>` instead
//! of rule name + key, and `UseDevelopmentEmulator=true` for plaintext AMQP.
//! Formatting always produces Azure's exact grammar and key order, because
//! people paste Herald's strings into tools that compare or regex them.

use std::fmt;
use std::str::FromStr;

use crate::names::{HubName, NameError, PolicyName, shown};

/// How a connection string authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A rule name and one of its keys; clients sign their own SAS tokens.
    SharedAccessKey {
        /// The authorization rule (`SharedAccessKeyName`).
        key_name: PolicyName,
        /// The key text (`SharedAccessKey`), used as HMAC key bytes as-is.
        key: String,
    },
    /// A ready-made SAS token (`SharedAccessSignature`), used until it expires.
    SharedAccessSignature(String),
}

/// A parsed Event Hubs connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// The endpoint's host as written, with its port if it had one
    /// (`contoso.servicebus.windows.net`, `127.0.0.1:5672`). The scheme and
    /// trailing slash are not kept: Herald always writes `sb://{host}/`.
    pub host: String,
    /// Rule name + key, or a SAS token.
    pub credential: Credential,
    /// The hub, present for rules defined on the hub itself.
    pub entity_path: Option<HubName>,
    /// `UseDevelopmentEmulator=true`: plaintext AMQP on the endpoint's port
    /// (default 5672) instead of TLS on 5671.
    pub use_development_emulator: bool,
}

/// Why a connection string was refused; each variant names the part to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// Nothing but whitespace and separators.
    #[error(
        "The connection string is empty. Expected Endpoint=sb://<host>/;SharedAccessKeyName=<rule>;SharedAccessKey=<key>."
    )]
    Empty,
    /// A part without `=`.
    #[error("The connection string part '{0}' is not of the form Key=Value.")]
    MalformedPart(String),
    /// The same key twice (keys compare case-insensitively).
    #[error("The connection string has '{0}' more than once.")]
    DuplicateKey(String),
    /// A known key with an empty value.
    #[error("The connection string's '{0}' is empty.")]
    EmptyValue(&'static str),
    /// No `Endpoint`.
    #[error("The connection string has no Endpoint; add Endpoint=sb://<host>/.")]
    MissingEndpoint,
    /// An `Endpoint` that is not `scheme://host[:port][/]`.
    #[error("The connection string's Endpoint '{endpoint}' is invalid: {reason}.")]
    BadEndpoint {
        /// The endpoint as given (shortened when very long).
        endpoint: String,
        /// What exactly is wrong.
        reason: &'static str,
    },
    /// `SharedAccessKey` without `SharedAccessKeyName`.
    #[error("The connection string has a SharedAccessKey but no SharedAccessKeyName.")]
    MissingKeyName,
    /// `SharedAccessKeyName` without `SharedAccessKey`.
    #[error("The connection string has a SharedAccessKeyName but no SharedAccessKey.")]
    MissingKey,
    /// Neither a key nor a signature.
    #[error(
        "The connection string has no credential; add SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature."
    )]
    MissingCredential,
    /// Both a key and a signature, which would be ambiguous.
    #[error(
        "The connection string has both SharedAccessKey and SharedAccessSignature; keep only one."
    )]
    BothCredentials,
    /// `SharedAccessKeyName` is not a valid rule name.
    #[error("The connection string's SharedAccessKeyName is invalid: {0}")]
    BadKeyName(NameError),
    /// `EntityPath` is not a valid hub name.
    #[error("The connection string's EntityPath is invalid: {0}")]
    BadEntityPath(NameError),
}

impl ConnectionString {
    /// A key-based connection string for a namespace-level rule.
    pub fn new(host: impl Into<String>, key_name: PolicyName, key: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            credential: Credential::SharedAccessKey {
                key_name,
                key: key.into(),
            },
            entity_path: None,
            use_development_emulator: false,
        }
    }

    /// The same string with `EntityPath` set, as Azure emits for hub-level rules.
    pub fn with_entity_path(mut self, hub: HubName) -> Self {
        self.entity_path = Some(hub);
        self
    }

    /// Parses a connection string; see the module docs for the rules.
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let mut endpoint = None;
        let mut key_name = None;
        let mut key = None;
        let mut signature = None;
        let mut entity_path = None;
        let mut emulator = None;
        let mut any = false;

        for part in s.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            any = true;
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ConnectionStringError::MalformedPart(shown(part)))?;
            let (k, v) = (k.trim(), v.trim());
            let slot = match k.to_ascii_lowercase().as_str() {
                "endpoint" => &mut endpoint,
                "sharedaccesskeyname" => &mut key_name,
                "sharedaccesskey" => &mut key,
                "sharedaccesssignature" => &mut signature,
                "entitypath" => &mut entity_path,
                "usedevelopmentemulator" => &mut emulator,
                // Other SDK settings (TransportType, ...) do not concern Herald.
                _ => continue,
            };
            if slot.is_some() {
                return Err(ConnectionStringError::DuplicateKey(shown(k)));
            }
            *slot = Some(v);
        }
        if !any {
            return Err(ConnectionStringError::Empty);
        }

        let endpoint = endpoint.ok_or(ConnectionStringError::MissingEndpoint)?;
        let host = parse_endpoint(endpoint)?;

        fn non_empty<'s>(
            v: Option<&'s str>,
            name: &'static str,
        ) -> Result<Option<&'s str>, ConnectionStringError> {
            match v {
                Some("") => Err(ConnectionStringError::EmptyValue(name)),
                other => Ok(other),
            }
        }
        let key_name = non_empty(key_name, "SharedAccessKeyName")?;
        let key = non_empty(key, "SharedAccessKey")?;
        let signature = non_empty(signature, "SharedAccessSignature")?;
        let entity_path = non_empty(entity_path, "EntityPath")?;

        let credential = match (key_name, key, signature) {
            (Some(_), Some(_), Some(_)) | (None, Some(_), Some(_)) | (Some(_), None, Some(_)) => {
                return Err(ConnectionStringError::BothCredentials);
            }
            (Some(n), Some(k), None) => Credential::SharedAccessKey {
                key_name: PolicyName::new(n).map_err(ConnectionStringError::BadKeyName)?,
                key: k.to_owned(),
            },
            (None, Some(_), None) => return Err(ConnectionStringError::MissingKeyName),
            (Some(_), None, None) => return Err(ConnectionStringError::MissingKey),
            (None, None, Some(sig)) => Credential::SharedAccessSignature(sig.to_owned()),
            (None, None, None) => return Err(ConnectionStringError::MissingCredential),
        };

        let entity_path = entity_path
            .map(HubName::new)
            .transpose()
            .map_err(ConnectionStringError::BadEntityPath)?;

        Ok(Self {
            host,
            credential,
            entity_path,
            // The SDKs switch to plaintext only for the exact lower-case
            // text `true` (Python: `use_emulator == "true"`); anything else
            // means TLS, so Herald reads it the same way.
            use_development_emulator: emulator == Some("true"),
        })
    }

    /// The host without its port: the namespace's fully qualified name.
    pub fn fully_qualified_namespace(&self) -> &str {
        split_port(&self.host).0
    }

    /// The port written in the endpoint, if any.
    pub fn port(&self) -> Option<u16> {
        split_port(&self.host).1.and_then(|p| p.parse().ok())
    }

    /// The resource URI a client signs for this string: `sb://{host}/{hub}`
    /// with an entity path, else `sb://{host}/` (the whole namespace).
    pub fn resource_uri(&self) -> String {
        match &self.entity_path {
            Some(hub) => format!("sb://{}/{}", self.host, hub),
            None => format!("sb://{}/", self.host),
        }
    }
}

/// Splits `host:port` (and `[v6]:port`) at the port colon.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let after_bracket = host.rfind(']').map_or(0, |i| i + 1);
    match host[after_bracket..].rfind(':') {
        Some(i) => {
            let at = after_bracket + i;
            (&host[..at], Some(&host[at + 1..]))
        }
        None => (host, None),
    }
}

fn parse_endpoint(endpoint: &str) -> Result<String, ConnectionStringError> {
    let bad = |reason| ConnectionStringError::BadEndpoint {
        endpoint: shown(endpoint),
        reason,
    };
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| bad("it must look like sb://<host>/"))?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+')
    {
        return Err(bad("it must start with a scheme such as sb://"));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "@?#\\".contains(c))
    {
        return Err(bad("the host contains characters a host name cannot have"));
    }
    let (name, port) = split_port(host);
    if name.is_empty() {
        return Err(bad("it has no host"));
    }
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err())
    {
        return Err(bad("the port must be a number from 0 to 65535"));
    }
    if !path.bytes().all(|b| b == b'/') {
        return Err(bad(
            "it must not have a path; put the event hub name in EntityPath",
        ));
    }
    Ok(host.to_owned())
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;
    fn from_str(s: &str) -> Result<Self, ConnectionStringError> {
        Self::parse(s)
    }
}

impl fmt::Display for ConnectionString {
    /// Azure's grammar: `Endpoint=sb://{host}/;SharedAccessKeyName=..;SharedAccessKey=..[;EntityPath=..]`,
    /// then `;UseDevelopmentEmulator=true` when set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint=sb://{}/;", self.host)?;
        match &self.credential {
            Credential::SharedAccessKey { key_name, key } => {
                write!(f, "SharedAccessKeyName={key_name};SharedAccessKey={key}")?
            }
            Credential::SharedAccessSignature(token) => write!(f, "SharedAccessSignature={token}")?,
        }
        if let Some(hub) = &self.entity_path {
            write!(f, ";EntityPath={hub}")?;
        }
        if self.use_development_emulator {
            f.write_str(";UseDevelopmentEmulator=true")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "1f0rR3oYtD2kuTqBvRYxiMzDZ4TzP3Yq+6lF0eJ3ka4=";

    #[test]
    fn azure_grammar() {
        let s = format!(
            "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY}"
        );
        let cs = ConnectionString::parse(&s).unwrap();
        assert_eq!(cs.host, "contoso.servicebus.windows.net");
        assert_eq!(
            cs.credential,
            Credential::SharedAccessKey {
                key_name: PolicyName::ROOT,
                key: KEY.into()
            }
        );
        assert_eq!(cs.entity_path, None);
        assert!(!cs.use_development_emulator);
        assert_eq!(cs.to_string(), s);
        assert_eq!(cs.resource_uri(), "sb://contoso.servicebus.windows.net/");

        let hub = cs.with_entity_path(HubName::new("hub1").unwrap());
        assert_eq!(hub.to_string(), format!("{s};EntityPath=hub1"));
        assert_eq!(
            hub.resource_uri(),
            "sb://contoso.servicebus.windows.net/hub1"
        );
    }

    #[test]
    fn lenient_input() {
        let cs = ConnectionString::parse(
            " endpoint=SB://127.0.0.1:5673 ; sharedaccesskeyname=send;SHAREDACCESSKEY=k==;entitypath=Hub;Foo=bar;UseDevelopmentEmulator=true;",
        )
        .unwrap();
        assert_eq!(cs.host, "127.0.0.1:5673");
        assert_eq!(cs.fully_qualified_namespace(), "127.0.0.1");
        assert_eq!(cs.port(), Some(5673));
        assert!(cs.use_development_emulator);
        assert_eq!(
            cs.to_string(),
            "Endpoint=sb://127.0.0.1:5673/;SharedAccessKeyName=send;SharedAccessKey=k==;EntityPath=Hub;UseDevelopmentEmulator=true"
        );
        // Only the exact lower-case `true` enables plaintext, as in the SDK.
        let cs = ConnectionString::parse(
            "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=b;UseDevelopmentEmulator=True",
        )
        .unwrap();
        assert!(!cs.use_development_emulator);
    }

    #[test]
    fn signature_credential() {
        let tok = "SharedAccessSignature sr=sb%3A%2F%2Fh%2Fhub&sig=abc%3D&se=1&skn=r";
        let s = format!("Endpoint=sb://h/;SharedAccessSignature={tok};EntityPath=hub");
        let cs = ConnectionString::parse(&s).unwrap();
        assert_eq!(cs.credential, Credential::SharedAccessSignature(tok.into()));
        assert_eq!(cs.to_string(), s);
    }

    #[test]
    fn errors_name_the_part() {
        use ConnectionStringError as E;
        let cases: &[(&str, E)] = &[
            ("", E::Empty),
            (" ; ", E::Empty),
            ("Endpoint", E::MalformedPart("Endpoint".into())),
            (
                "SharedAccessKeyName=a;SharedAccessKey=b",
                E::MissingEndpoint,
            ),
            ("Endpoint=sb://h/;SharedAccessKey=b", E::MissingKeyName),
            ("Endpoint=sb://h/;SharedAccessKeyName=a", E::MissingKey),
            ("Endpoint=sb://h/", E::MissingCredential),
            (
                "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=b;SharedAccessSignature=x",
                E::BothCredentials,
            ),
            (
                "Endpoint=sb://h/;endpoint=sb://g/;SharedAccessKeyName=a;SharedAccessKey=b",
                E::DuplicateKey("endpoint".into()),
            ),
            (
                "Endpoint=sb://h/;SharedAccessKeyName=;SharedAccessKey=b",
                E::EmptyValue("SharedAccessKeyName"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                &ConnectionString::parse(input).unwrap_err(),
                want,
                "{input}"
            );
        }
        for bad in [
            "h.servicebus.windows.net",
            "sb:///",
            "sb://h/hub",
            "sb://h:x/",
            "sb://h:99999/",
            "://h/",
        ] {
            let s = format!("Endpoint={bad};SharedAccessKeyName=a;SharedAccessKey=b");
            let e = ConnectionString::parse(&s).unwrap_err();
            assert!(matches!(e, E::BadEndpoint { .. }), "{bad}: {e:?}");
        }
        let e =
            ConnectionString::parse("Endpoint=sb://h/hub;SharedAccessKeyName=a;SharedAccessKey=b")
                .unwrap_err()
                .to_string();
        assert!(e.contains("EntityPath"), "{e}");
        let e =
            ConnectionString::parse("Endpoint=sb://h/;SharedAccessKeyName=a b;SharedAccessKey=b")
                .unwrap_err();
        assert!(matches!(e, E::BadKeyName(_)));
        let e = ConnectionString::parse(
            "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=b;EntityPath=-x",
        )
        .unwrap_err();
        assert!(matches!(e, E::BadEntityPath(_)));
    }

    #[test]
    fn ipv6_host() {
        let cs = ConnectionString::parse(
            "Endpoint=sb://[::1]:5672/;SharedAccessKeyName=a;SharedAccessKey=b",
        )
        .unwrap();
        assert_eq!(cs.fully_qualified_namespace(), "[::1]");
        assert_eq!(cs.port(), Some(5672));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = ConnectionString::parse(&s);
        }

        #[test]
        fn never_panics_structured(parts in proptest::collection::vec("(Endpoint|SharedAccessKey|SharedAccessKeyName|EntityPath|x)?=?[a-z:/;=]{0,12}", 0..6)) {
            let _ = ConnectionString::parse(&parts.join(";"));
        }

        #[test]
        fn round_trip(
            host in "[a-z][a-z0-9.-]{0,30}(:[0-9]{1,4})?",
            name in "[A-Za-z0-9._-]{1,20}",
            key in "[A-Za-z0-9+/]{1,43}=",
            hub in proptest::option::of("[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?"),
            emulator in any::<bool>(),
            sig in proptest::option::of("SharedAccessSignature sr=[a-z%0-9]{1,10}&sig=[A-Za-z0-9%]{1,10}&se=[0-9]{1,10}&skn=[a-z]{1,5}"),
        ) {
            let credential = match sig {
                Some(t) => Credential::SharedAccessSignature(t),
                None => Credential::SharedAccessKey { key_name: PolicyName::new(name).unwrap(), key },
            };
            let cs = ConnectionString {
                host,
                credential,
                entity_path: hub.map(|h| HubName::new(h).unwrap()),
                use_development_emulator: emulator,
            };
            let text = cs.to_string();
            prop_assert_eq!(ConnectionString::parse(&text).unwrap(), cs);
        }
    }
}
