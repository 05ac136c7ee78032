//! Publisher authentication: access keys and SAS tokens (spec §2.3).
//!
//! A SAS token is verified over its exact text as received: generators
//! disagree on how they spell the resource and the expiry, so re-encoding
//! either before checking the signature would reject valid tokens.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What the publisher presented.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An access key (`aeg-sas-key` header).
    Key(String),
    /// A SAS token (`aeg-sas-token` header or `Authorization: SharedAccessSignature ...`).
    Sas(String),
}

/// Why a publisher's credential was refused (HTTP 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credential was sent.
    #[error("The request has no access key or SAS token. Send 'aeg-sas-key' or 'aeg-sas-token'.")]
    Missing,
    /// The access key matches neither of the topic's keys.
    #[error("The access key is not valid for this topic.")]
    BadKey,
    /// The SAS token cannot be parsed; the text says which part is wrong.
    #[error("The SAS token is malformed: {0}")]
    Malformed(&'static str),
    /// The SAS signature was made with neither of the topic's keys.
    #[error("The SAS token signature is not valid for this topic.")]
    BadSignature,
    /// The SAS token's expiry has passed.
    #[error("The SAS token has expired.")]
    Expired,
    /// The SAS token names a resource other than this topic's publish URL.
    #[error("The SAS token was issued for another resource.")]
    WrongResource,
}

/// Checks a credential against the topic's two keys (either may be used,
/// so keys can be rotated without downtime).
pub fn verify(
    cred: &Credential,
    keys: [&str; 2],
    publish_paths: &[String],
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    match cred {
        Credential::Key(k) => {
            let ok = keys
                .iter()
                .filter(|key| !key.is_empty())
                .fold(false, |acc, key| {
                    acc | bool::from(key.as_bytes().ct_eq(k.as_bytes()))
                });
            if ok { Ok(()) } else { Err(AuthError::BadKey) }
        }
        Credential::Sas(token) => verify_sas(token, keys, publish_paths, now),
    }
}

fn verify_sas(
    token: &str,
    keys: [&str; 2],
    publish_paths: &[String],
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let at = token
        .rfind("&s=")
        .ok_or(AuthError::Malformed("no signature (&s=)"))?;
    let (signed, sig) = (&token[..at], &token[at + 3..]);
    let sig = percent_decode_str(sig)
        .decode_utf8()
        .map_err(|_| AuthError::Malformed("signature is not UTF-8"))?;
    let sig = STANDARD
        .decode(sig.as_bytes())
        .map_err(|_| AuthError::Malformed("signature is not base64"))?;
    let mut valid = false;
    for key in keys.iter().filter(|k| !k.is_empty()) {
        let Ok(raw) = STANDARD.decode(key) else {
            continue;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&raw) else {
            continue;
        };
        mac.update(signed.as_bytes());
        valid |= bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&sig));
    }
    if !valid {
        return Err(AuthError::BadSignature);
    }
    let mut resource = None;
    let mut expiry = None;
    for part in signed.split('&') {
        if let Some(r) = part.strip_prefix("r=") {
            resource = Some(decode(r)?);
        } else if let Some(e) = part.strip_prefix("e=") {
            expiry = Some(decode(e)?);
        }
    }
    let resource = resource.ok_or(AuthError::Malformed("no resource (r=)"))?;
    let expiry = expiry.ok_or(AuthError::Malformed("no expiry (e=)"))?;
    let path = resource_path(&resource);
    let host = resource_host(&resource);
    // Entries of the form "//{label}." name a host-style endpoint
    // (`https://{topic}.{region}.../api/events`): the first host label is the topic.
    let ok = publish_paths.iter().any(|p| match p.strip_prefix("//") {
        Some(label) => path == "/api/events" && host.starts_with(label),
        None => path.ends_with(p.as_str()),
    });
    if !ok {
        return Err(AuthError::WrongResource);
    }
    let expires = parse_expiry(&expiry).ok_or(AuthError::Malformed("unreadable expiry (e=)"))?;
    if expires <= now {
        return Err(AuthError::Expired);
    }
    Ok(())
}

fn decode(v: &str) -> Result<String, AuthError> {
    // Form encoding writes spaces as '+', percent-encoding as %20; accept both.
    percent_decode_str(&v.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| AuthError::Malformed("value is not UTF-8"))
}

/// The resource's host, lower-cased.
fn resource_host(resource: &str) -> String {
    let after_scheme = resource
        .split_once("://")
        .map_or(resource, |(_, rest)| rest);
    after_scheme
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The resource's path without scheme, host or query.
fn resource_path(resource: &str) -> String {
    let no_query = resource.split('?').next().unwrap_or_default();
    let after_scheme = no_query
        .split_once("://")
        .map_or(no_query, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(i) => after_scheme[i..].trim_end_matches('/').to_owned(),
        None => String::new(),
    }
}

/// The expiry spellings generators use: en-US `M/d/yyyy h:mm:ss tt`,
/// RFC 3339, and Python's `YYYY-MM-DD HH:MM:SS[.ffffff][±hh:mm]`. No offset means UTC.
pub fn parse_expiry(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%:z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(raw, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, fmt) {
            return Utc.from_local_datetime(&t).single();
        }
    }
    None
}

/// Builds a SAS token in the docs/Java format: `r` and `e` URL-encoded, the
/// expiry as en-US text, signed with `key` (base64).
pub fn generate_sas(
    resource: &str,
    key: &str,
    expires: DateTime<Utc>,
) -> Result<String, AuthError> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let e = expires.format("%-m/%-d/%Y %-I:%M:%S %p").to_string();
    let signed = format!("r={}&e={}", enc(resource), enc(&e));
    let raw = STANDARD.decode(key).map_err(|_| AuthError::BadKey)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&raw).map_err(|_| AuthError::BadKey)?;
    mac.update(signed.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!("{signed}&s={}", enc(&sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdGluZy0wMTIzNDU2Nzg5";

    fn paths() -> Vec<String> {
        vec!["/topics/t1/api/events".into()]
    }

    #[test]
    fn keys_either_slot() {
        let now = Utc::now();
        assert!(verify(&Credential::Key("b".into()), ["a", "b"], &paths(), now).is_ok());
        assert_eq!(
            verify(&Credential::Key("c".into()), ["a", "b"], &paths(), now),
            Err(AuthError::BadKey)
        );
        assert_eq!(
            verify(&Credential::Key("".into()), ["", ""], &paths(), now),
            Err(AuthError::BadKey)
        );
    }

    #[test]
    fn generated_tokens_verify_and_expire() {
        let now = Utc::now();
        let tok = generate_sas(
            "https://h:8443/topics/t1/api/events?api-version=2018-01-01",
            KEY,
            now + chrono::Duration::hours(1),
        )
        .unwrap();
        assert!(verify(&Credential::Sas(tok.clone()), ["other", KEY], &paths(), now).is_ok());
        assert_eq!(
            verify(
                &Credential::Sas(tok),
                [KEY, ""],
                &["/topics/t2/api/events".into()],
                now
            ),
            Err(AuthError::WrongResource)
        );
        let old = generate_sas(
            "https://h/topics/t1/api/events",
            KEY,
            now - chrono::Duration::seconds(5),
        )
        .unwrap();
        assert_eq!(
            verify(&Credential::Sas(old), [KEY, ""], &paths(), now),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn python_sdk_style_token() {
        // azure-eventgrid's generate_sas: r = endpoint + "?apiVersion=2018-01-01", e = str(datetime).
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let signed = format!(
            "r={}&e={}",
            enc("https://localhost:8443/topics/t1/api/events?apiVersion=2018-01-01"),
            enc("2999-01-05 15:04:05+00:00")
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&STANDARD.decode(KEY).unwrap()).unwrap();
        mac.update(signed.as_bytes());
        let tok = format!(
            "{signed}&s={}",
            enc(&STANDARD.encode(mac.finalize().into_bytes()))
        );
        assert!(
            verify(
                &Credential::Sas(tok.clone()),
                [KEY, ""],
                &paths(),
                Utc::now()
            )
            .is_ok()
        );
        let tampered = tok.replace("2999", "2998");
        assert_eq!(
            verify(&Credential::Sas(tampered), [KEY, ""], &paths(), Utc::now()),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn expiry_formats() {
        for raw in [
            "6/15/2017 6:20:15 PM",
            "6/15/2017 6:20:15 pm",
            "2017-06-15T18:20:15Z",
            "2017-06-15 18:20:15+00:00",
            "2017-06-15 18:20:15.123456+00:00",
            "2017-06-15 18:20:15",
            "2017-06-15T18:20:15",
            "2017-06-15T18:20:15.000000",
        ] {
            let t = parse_expiry(raw).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(t.timestamp(), 1497550815, "{raw}");
        }
        assert!(parse_expiry("tomorrow").is_none());
    }

    #[test]
    fn malformed_tokens_never_panic() {
        for t in ["", "&s=", "r=a&e=b", "r=%ff&e=1&s=%%%", "s=abc", "&s=Zm9v"] {
            assert!(
                verify(&Credential::Sas(t.into()), [KEY, ""], &paths(), Utc::now()).is_err(),
                "{t}"
            );
        }
    }
}
