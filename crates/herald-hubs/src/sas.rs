//! Shared access signature (SAS) tokens (spec §A4).
//!
//! ```text
//! SharedAccessSignature sr=<quote_plus(uri)>&sig=<quote_plus(base64 hmac)>&se=<unix>&skn=<rule>
//! string_to_sign = <sr as sent> + "\n" + <se as sent>
//! ```
//!
//! Verification signs the `sr` and `se` texts exactly as they appear in the
//! token: generators disagree on how they percent-encode the URI (upper or
//! lower hex, `+` or `%20`), and re-encoding before checking would reject
//! valid tokens. Only the *meaning* of `sr` (decoded, normalised) is used to
//! decide which resources the token covers.
//!
//! Verification is two-step so async callers can fetch rules between the
//! steps: [`SasToken::parse`], look up [`SasToken::key_name`] on the hub and
//! then on the namespace, then [`SasToken::verify`] with those rules in that
//! order. [`verify`] does both for callers that already hold the rules.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::names::shown;
use crate::rights::{Right, Rights};

/// A new key for an authorization rule: 32 bytes from the OS CSPRNG in
/// standard base64 (44 characters), the look of Azure's keys.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// Python's `urllib.parse.quote_plus(s)` (safe set empty): ASCII letters,
/// digits and `_.-~` stay, space becomes `+`, every other byte of the UTF-8
/// text becomes `%XX` with upper-case hex. SDKs build `sr` and `sig` this way.
pub fn quote_plus(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

/// Python's `unquote_plus`: `+` is a space, then `%XX` escapes are decoded.
/// Fails if the result is not UTF-8.
fn unquote_plus(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_decode(spaced.as_bytes())
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// base64(HMAC-SHA256(key text bytes, message)).
fn signature(key: &str, message: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
    mac.update(message);
    Some(STANDARD.encode(mac.finalize().into_bytes()))
}

/// Signs a token exactly as the spec's Python recipe (and the SDKs) do:
/// `sr = quote_plus(uri)`, `sig = quote_plus(base64(hmac))`, `skn` as given.
pub fn sign(resource_uri: &str, key_name: &str, key: &str, expiry_unix: i64) -> String {
    let sr = quote_plus(resource_uri);
    let se = expiry_unix.to_string();
    let message = format!("{sr}\n{se}");
    // HMAC accepts keys of any length, so this never falls back in practice.
    let sig = signature(key, message.as_bytes()).unwrap_or_default();
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={se}&skn={key_name}",
        quote_plus(&sig)
    )
}

/// Why a SAS token was refused. Every variant maps to HTTP 401 / CBS 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The token cannot be parsed; the text says which part is wrong.
    #[error("The SAS token is malformed: {0}.")]
    Malformed(String),
    /// No authorization rule with the token's `skn` on the entity or its namespace.
    #[error(
        "The SAS token's key name '{0}' matches no authorization rule on this entity or its namespace."
    )]
    UnknownKeyName(String),
    /// Neither key of the rule produced the token's signature.
    #[error(
        "The SAS token's signature does not match either key of authorization rule '{0}'; the key may have been regenerated."
    )]
    BadSignature(String),
    /// `se` is not in the future.
    #[error(
        "The SAS token expired at {expired_at} (Unix seconds); the time is now {now}. Generate a new token."
    )]
    Expired {
        /// The token's `se`.
        expired_at: i64,
        /// The time of the check.
        now: i64,
    },
    /// `sr` does not cover the requested entity.
    #[error("The SAS token was issued for '{granted}', which does not cover '{requested}'.")]
    WrongResource {
        /// The token's decoded `sr`.
        granted: String,
        /// The entity the request needed.
        requested: String,
    },
    /// The token is valid but its rule lacks the right (Azure's wording).
    #[error(
        "Unauthorized access. '{right}' claim(s) are required to perform this operation. Resource: '{resource}'."
    )]
    MissingClaim {
        /// The right the operation needs.
        right: Right,
        /// The entity, as the caller wants it named.
        resource: String,
    },
}

/// One authorization rule the token may have been signed with.
#[derive(Debug, Clone, Copy)]
pub struct SasRule<'a> {
    /// The rule's name (compared case-insensitively with `skn`).
    pub key_name: &'a str,
    /// The primary key text; an empty key never matches.
    pub primary_key: &'a str,
    /// The secondary key text; an empty key never matches.
    pub secondary_key: &'a str,
    /// What the rule permits.
    pub rights: Rights,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasGrant {
    /// The matching rule's rights.
    pub rights: Rights,
    /// The token's expiry (`se`), Unix seconds; CBS grants end then.
    pub expires_at_unix: i64,
    /// The rule that signed it, as spelled in the token.
    pub key_name: String,
    /// The decoded `sr`: the token covers this resource and everything under it.
    pub resource: String,
}

impl SasGrant {
    /// Checks that the grant carries `right`, answering Azure's
    /// `MissingClaim` text naming `resource` otherwise.
    pub fn require(&self, right: Right, resource: &str) -> Result<(), SasError> {
        if self.rights.allows(right) {
            Ok(())
        } else {
            Err(SasError::MissingClaim {
                right,
                resource: resource.to_owned(),
            })
        }
    }

    /// Whether the grant covers `entity_uri` (see [`resource_covers`]).
    pub fn covers(&self, entity_uri: &str) -> bool {
        resource_covers(&self.resource, entity_uri)
    }
}

/// A parsed SAS token.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    sr_raw: String,
    resource: String,
    sig: String,
    se_raw: String,
    expiry: i64,
    key_name: String,
}

impl fmt::Debug for SasToken {
    // The signature is a bearer credential; keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasToken {
    /// Parses `[SharedAccessSignature ]sr=..&sig=..&se=..&skn=..`, fields in
    /// any order. Unknown fields are ignored; a missing or repeated field is
    /// an error.
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let bad = |m: String| SasError::Malformed(m);
        let mut t = token.trim();
        const PREFIX: &str = "SharedAccessSignature";
        if t.len() >= PREFIX.len()
            && t.is_char_boundary(PREFIX.len())
            && t[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        {
            let rest = &t[PREFIX.len()..];
            if rest.starts_with(char::is_whitespace) {
                t = rest.trim_start();
            }
        }
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in t.split('&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').ok_or_else(|| {
                bad(format!(
                    "the part '{}' is not of the form name=value",
                    shown(part)
                ))
            })?;
            let slot = match k.to_ascii_lowercase().as_str() {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.is_some() {
                return Err(bad(format!("'{}' appears more than once", shown(k))));
            }
            *slot = Some(v);
        }
        let sr_raw = sr.ok_or_else(|| bad("it has no 'sr' (the resource URI)".into()))?;
        let sig = sig.ok_or_else(|| bad("it has no 'sig' (the signature)".into()))?;
        let se_raw = se.ok_or_else(|| bad("it has no 'se' (the expiry)".into()))?;
        let skn = skn.ok_or_else(|| bad("it has no 'skn' (the key name)".into()))?;

        if sr_raw.is_empty() {
            return Err(bad("'sr' is empty".into()));
        }
        let resource =
            unquote_plus(sr_raw).ok_or_else(|| bad("'sr' does not decode to UTF-8 text".into()))?;
        // `sig` is base64, which never contains a space, so a literal `+`
        // from a sender that forgot to encode it is kept as `+`.
        let sig = percent_decode(sig.as_bytes())
            .decode_utf8()
            .map_err(|_| bad("'sig' does not decode to base64 text".into()))?
            .into_owned();
        if sig.is_empty() {
            return Err(bad("'sig' is empty".into()));
        }
        if se_raw.is_empty() || !se_raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!(
                "'se' must be the expiry in Unix seconds, not '{}'",
                shown(se_raw)
            )));
        }
        let expiry = se_raw
            .parse::<i64>()
            .map_err(|_| bad("'se' is too large".into()))?;
        let key_name = unquote_plus(skn)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("'skn' is empty or not UTF-8 text".into()))?;

        Ok(Self {
            sr_raw: sr_raw.to_owned(),
            resource,
            sig,
            se_raw: se_raw.to_owned(),
            expiry,
            key_name,
        })
    }

    /// The rule name (`skn`), decoded: look it up on the hub, then the namespace.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The decoded resource URI (`sr`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The `sr` text exactly as sent (what was signed).
    pub fn raw_resource(&self) -> &str {
        &self.sr_raw
    }

    /// The expiry (`se`), Unix seconds.
    pub fn expiry_unix(&self) -> i64 {
        self.expiry
    }

    /// Verifies the token against candidate rules, given in lookup order
    /// (the hub's rules, then the namespace's). Rules whose name differs from
    /// `skn` are skipped, so callers may pass all rules of both scopes or
    /// only the matching ones. Checks, in order: a rule exists, a key signs
    /// it (primary, then secondary), `se > now`, `sr` covers
    /// `requested_entity_uri`. The caller then checks the right it needs
    /// with [`SasGrant::require`].
    pub fn verify<'a>(
        &self,
        now_unix: i64,
        requested_entity_uri: &str,
        rules: impl IntoIterator<Item = SasRule<'a>>,
    ) -> Result<SasGrant, SasError> {
        let message = format!("{}\n{}", self.sr_raw, self.se_raw);
        let mut found = false;
        let mut rights = None;
        for rule in rules {
            if !rule.key_name.eq_ignore_ascii_case(&self.key_name) {
                continue;
            }
            found = true;
            let matches = |key: &str| {
                !key.is_empty()
                    && signature(key, message.as_bytes())
                        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(self.sig.as_bytes())))
            };
            if matches(rule.primary_key) || matches(rule.secondary_key) {
                rights = Some(rule.rights);
                break;
            }
        }
        let rights = match (found, rights) {
            (false, _) => return Err(SasError::UnknownKeyName(shown(&self.key_name))),
            (true, None) => return Err(SasError::BadSignature(shown(&self.key_name))),
            (true, Some(r)) => r,
        };
        if self.expiry <= now_unix {
            return Err(SasError::Expired {
                expired_at: self.expiry,
                now: now_unix,
            });
        }
        if !resource_covers(&self.resource, requested_entity_uri) {
            return Err(SasError::WrongResource {
                granted: shown(&self.resource),
                requested: shown(requested_entity_uri),
            });
        }
        Ok(SasGrant {
            rights,
            expires_at_unix: self.expiry,
            key_name: self.key_name.clone(),
            resource: self.resource.clone(),
        })
    }
}

/// Parses and verifies in one call; see [`SasToken::verify`].
pub fn verify<'a>(
    token: &str,
    now_unix: i64,
    requested_entity_uri: &str,
    rules: impl IntoIterator<Item = SasRule<'a>>,
) -> Result<SasGrant, SasError> {
    SasToken::parse(token)?.verify(now_unix, requested_entity_uri, rules)
}

/// Splits a resource URI into its lower-cased host (port dropped) and its
/// lower-cased non-empty path segments. The scheme (`sb`, `amqps`, `amqp`,
/// `https`, `http`) is dropped because clients sign whichever they were
/// built with, and the port because the SDKs put the endpoint's port in the
/// audience while a port never names a different namespace.
fn normalise(uri: &str) -> (String, Vec<String>) {
    let mut rest = uri.trim();
    for scheme in ["sb://", "amqps://", "amqp://", "https://", "http://"] {
        if rest.len() >= scheme.len()
            && rest.is_char_boundary(scheme.len())
            && rest[..scheme.len()].eq_ignore_ascii_case(scheme)
        {
            rest = &rest[scheme.len()..];
            break;
        }
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let after_bracket = host.rfind(']').map_or(0, |i| i + 1);
    let host = match host[after_bracket..].rfind(':') {
        Some(i) => &host[..after_bracket + i],
        None => host,
    };
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_lowercase)
        .collect();
    (host.to_lowercase(), segments)
}

/// Whether a token for `granted` covers `requested`: same host (any scheme
/// or port, any case) and `granted`'s path is a prefix of `requested`'s on
/// segment boundaries, case-insensitively. `sb://ns/hub` covers
/// `sb://ns/hub/consumergroups/x` but not `sb://ns/hub2`.
pub fn resource_covers(granted: &str, requested: &str) -> bool {
    let (gh, gs) = normalise(granted);
    let (rh, rs) = normalise(requested);
    !gh.is_empty() && gh == rh && rs.len() >= gs.len() && gs.iter().zip(&rs).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "1f0rR3oYtD2kuTqBvRYxiMzDZ4TzP3Yq+6lF0eJ3ka4=";
    const URI: &str = "sb://contoso.servicebus.windows.net/hub1";
    const EXPIRY: i64 = 1_893_456_000;
    /// Computed with the spec's Python recipe (quote_plus, hmac, base64)
    /// for URI, "RootManageSharedAccessKey", KEY and se = EXPIRY.
    const PYTHON_TOKEN: &str = "SharedAccessSignature sr=sb%3A%2F%2Fcontoso.servicebus.windows.net%2Fhub1&sig=dxwM3IpRiCdzHhPajVc8heraGyTNysqqRRc0YyR5u8M%3D&se=1893456000&skn=RootManageSharedAccessKey";
    /// Same recipe for a URI with a space, non-ASCII and punctuation.
    const PYTHON_TOKEN_2: &str = "SharedAccessSignature sr=https%3A%2F%2Fns.servicebus.windows.net%2Fa+b%2F%C3%A9~_.-%2A%21%27%28%29&sig=kJFgmL8oJRKuiMYR8Pf339OKDTsCCvq4w5wiSbYW%2Bf8%3D&se=1700000000&skn=send";

    fn root() -> SasRule<'static> {
        SasRule {
            key_name: "RootManageSharedAccessKey",
            primary_key: KEY,
            secondary_key: "other",
            rights: Rights::ALL,
        }
    }

    #[test]
    fn matches_python_recipe() {
        assert_eq!(
            sign(URI, "RootManageSharedAccessKey", KEY, EXPIRY),
            PYTHON_TOKEN
        );
        assert_eq!(
            sign(
                "https://ns.servicebus.windows.net/a b/é~_.-*!'()",
                "send",
                "key",
                1_700_000_000
            ),
            PYTHON_TOKEN_2
        );
        assert_eq!(
            quote_plus("a b/é~_.-*!'()+&=%"),
            "a+b%2F%C3%A9~_.-%2A%21%27%28%29%2B%26%3D%25"
        );
    }

    #[test]
    fn verifies_python_token() {
        let g = verify(PYTHON_TOKEN, EXPIRY - 1, URI, [root()]).unwrap();
        assert_eq!(g.rights, Rights::ALL);
        assert_eq!(g.expires_at_unix, EXPIRY);
        assert_eq!(g.resource, URI);
        assert!(g.require(Right::Listen, URI).is_ok());
        let t = SasToken::parse(PYTHON_TOKEN_2).unwrap();
        assert_eq!(
            t.resource(),
            "https://ns.servicebus.windows.net/a b/é~_.-*!'()"
        );
        let rule = SasRule {
            key_name: "send",
            primary_key: "key",
            secondary_key: "",
            rights: Rights::SEND,
        };
        let g = t
            .verify(
                0,
                "sb://NS.servicebus.windows.net/A B/É~_.-*!'()/partitions/0",
                [rule],
            )
            .unwrap();
        let e = g
            .require(Right::Listen, "sb://ns/x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Unauthorized access. 'Listen' claim(s) are required to perform this operation. Resource: 'sb://ns/x'."
        );
    }

    #[test]
    fn secondary_key_and_lookup_order() {
        let tok = sign(URI, "r", "second", EXPIRY);
        let hub_rule = SasRule {
            key_name: "r",
            primary_key: "first",
            secondary_key: "second",
            rights: Rights::LISTEN,
        };
        let ns_rule = SasRule {
            key_name: "R",
            primary_key: "second",
            secondary_key: "",
            rights: Rights::ALL,
        };
        // The hub's rule is looked up first and matches on its secondary key.
        let g = verify(&tok, 0, URI, [hub_rule, ns_rule]).unwrap();
        assert_eq!(g.rights, Rights::LISTEN);
        // A namespace rule of the same name is tried when the hub's key fails.
        let tok = sign(URI, "r", "nskey", EXPIRY);
        let ns_rule = SasRule {
            primary_key: "nskey",
            ..ns_rule
        };
        assert_eq!(
            verify(&tok, 0, URI, [hub_rule, ns_rule]).unwrap().rights,
            Rights::ALL
        );
    }

    #[test]
    fn failures() {
        assert_eq!(
            verify(PYTHON_TOKEN, 0, URI, []),
            Err(SasError::UnknownKeyName("RootManageSharedAccessKey".into()))
        );
        let wrong = SasRule {
            primary_key: "nope",
            secondary_key: "",
            ..root()
        };
        assert_eq!(
            verify(PYTHON_TOKEN, 0, URI, [wrong]),
            Err(SasError::BadSignature("RootManageSharedAccessKey".into()))
        );
        assert_eq!(
            verify(PYTHON_TOKEN, EXPIRY, URI, [root()]),
            Err(SasError::Expired {
                expired_at: EXPIRY,
                now: EXPIRY
            })
        );
        assert!(matches!(
            verify(
                PYTHON_TOKEN,
                0,
                "sb://contoso.servicebus.windows.net/hub2",
                [root()]
            ),
            Err(SasError::WrongResource { .. })
        ));
        // Tampering with the signed text breaks the signature.
        let tampered = PYTHON_TOKEN.replace("se=1893456000", "se=1893456001");
        assert!(matches!(
            verify(&tampered, 0, URI, [root()]),
            Err(SasError::BadSignature(_))
        ));
        // An empty key never matches, even against a token signed with "".
        let tok = sign(URI, "e", "", EXPIRY);
        let empty = SasRule {
            key_name: "e",
            primary_key: "",
            secondary_key: "",
            rights: Rights::ALL,
        };
        assert!(matches!(
            verify(&tok, 0, URI, [empty]),
            Err(SasError::BadSignature(_))
        ));
    }

    #[test]
    fn raw_sr_is_signed() {
        // A generator using lower-case hex: the token is checked over its own text.
        let sr = "sb%3a%2f%2fcontoso.servicebus.windows.net%2fhub1";
        let sig = signature(KEY, format!("{sr}\n{EXPIRY}").as_bytes()).unwrap();
        let tok = format!("skn=RootManageSharedAccessKey&se={EXPIRY}&sig={sig}&sr={sr}");
        assert!(verify(&tok, 0, URI, [root()]).is_ok());
    }

    #[test]
    fn parse_errors() {
        for (tok, needle) in [
            ("sr=a&sig=b&se=1", "no 'skn'"),
            ("sr=a&sig=b&skn=c", "no 'se'"),
            ("sr=a&se=1&skn=c", "no 'sig'"),
            ("sig=b&se=1&skn=c", "no 'sr'"),
            ("sr=a&sr=a&sig=b&se=1&skn=c", "more than once"),
            ("sr=a&sig=b&se=-1&skn=c", "Unix seconds"),
            ("sr=a&sig=b&se=99999999999999999999&skn=c", "too large"),
            ("sr=%FF&sig=b&se=1&skn=c", "UTF-8"),
            ("sr=a&sig=b&se=1&skn=c&junk", "name=value"),
        ] {
            let e = SasToken::parse(tok).unwrap_err().to_string();
            assert!(e.contains(needle), "{tok}: {e}");
        }
        let t = SasToken::parse("sharedaccesssignature   sr=a&sig=b&se=1&skn=c&x=y").unwrap();
        assert_eq!((t.resource(), t.expiry_unix(), t.key_name()), ("a", 1, "c"));
        assert!(!format!("{t:?}").contains("sig"));
    }

    #[test]
    fn coverage() {
        let ns = "sb://ns.servicebus.windows.net/";
        let hub = "https://NS.servicebus.windows.net/Hub/";
        assert!(resource_covers(ns, "sb://ns.servicebus.windows.net/hub"));
        assert!(resource_covers(
            hub,
            "sb://ns.servicebus.windows.net/hub/consumergroups/x"
        ));
        assert!(resource_covers(
            hub,
            "amqps://ns.servicebus.windows.net/hub/ConsumerGroups/$Default/Partitions/0"
        ));
        assert!(resource_covers(hub, "sb://ns.servicebus.windows.net/hub"));
        assert!(resource_covers(
            "sb://localhost:5673/hub1",
            "amqps://localhost/hub1"
        ));
        assert!(resource_covers(
            "ns.servicebus.windows.net/hub",
            "sb://ns.servicebus.windows.net/hub"
        ));
        assert!(!resource_covers(hub, "sb://ns.servicebus.windows.net/hub2"));
        assert!(!resource_covers(hub, "sb://ns.servicebus.windows.net/"));
        assert!(!resource_covers(
            hub,
            "sb://other.servicebus.windows.net/hub"
        ));
        assert!(!resource_covers("sb:///hub", "sb:///hub"));
    }

    #[test]
    fn keys_look_like_azure() {
        let k = generate_key();
        assert_eq!(k.len(), 44);
        assert_eq!(STANDARD.decode(&k).unwrap().len(), 32);
        assert_ne!(k, generate_key());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = SasToken::parse(&s);
            let _ = resource_covers(&s, &s);
            let _ = verify(&s, 0, &s, [root()]);
        }

        #[test]
        fn parse_never_panics_structured(parts in proptest::collection::vec("(sr|sig|se|skn|x)=[a-zA-Z0-9%+/=é]{0,10}", 0..6)) {
            let _ = SasToken::parse(&parts.join("&"));
        }

        #[test]
        fn sign_then_verify(
            path in "[A-Za-z0-9 ._~/é-]{0,30}",
            name in "[A-Za-z0-9._-]{1,20}",
            key in "[ -~]{1,44}",
            se in 1i64..=i64::MAX,
        ) {
            let uri = format!("sb://ns.example.com/{path}");
            let tok = sign(&uri, &name, &key, se);
            let parsed = SasToken::parse(&tok).unwrap();
            prop_assert_eq!(parsed.resource(), uri.as_str());
            prop_assert_eq!(parsed.key_name(), name.as_str());
            prop_assert_eq!(parsed.expiry_unix(), se);
            let rule = SasRule { key_name: &name, primary_key: "x", secondary_key: &key, rights: Rights::SEND };
            let g = parsed.verify(se - 1, &uri, [rule]).unwrap();
            prop_assert_eq!(g.rights, Rights::SEND);
        }
    }
}
