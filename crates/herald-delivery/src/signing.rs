//! Standard Webhooks signatures (https://www.standardwebhooks.com): the
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` headers that
//! the `standardwebhooks` libraries verify.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";
/// The spec asks for 24–64 byte keys; shorter ones are too weak.
const KEY_LEN: std::ops::RangeInclusive<usize> = 24..=64;

/// A parsed `whsec_` secret. Holds the keyed HMAC state, never prints it.
#[derive(Clone)]
pub struct SigningSecret {
    mac: HmacSha256,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl SigningSecret {
    /// A new secret: `whsec_` + base64 of 32 random bytes from the OS.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        format!("{PREFIX}{}", STANDARD.encode(key))
    }

    /// Accepts `whsec_<base64>` (standard alphabet, padded, as the Python
    /// library decodes it) of a 24–64 byte key. Errors never echo the secret.
    pub fn parse(s: &str) -> Result<Self, String> {
        let encoded = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("a signing secret must start with {PREFIX:?}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("a signing secret must be {PREFIX:?} followed by base64"))?;
        if !KEY_LEN.contains(&key.len()) {
            return Err(format!(
                "a signing secret must decode to {}–{} bytes, not {}",
                KEY_LEN.start(),
                KEY_LEN.end(),
                key.len()
            ));
        }
        let mac = HmacSha256::new_from_slice(&key)
            .map_err(|_| "a signing secret has an unusable length".to_string())?;
        Ok(Self { mac })
    }

    /// HMAC-SHA256 over `{id}.{timestamp}.{body}`.
    fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Headers for one delivery: `webhook-id`, `webhook-timestamp` (unix
/// seconds) and `webhook-signature` (`v1,<base64>` per secret, separated by
/// spaces while several secrets are active during rotation). `msg_id` should
/// stay the same across retries so receivers can deduplicate. No secrets → no
/// headers.
pub fn signature_headers(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    if secrets.is_empty() {
        return Vec::new();
    }
    let signatures: Vec<String> = secrets
        .iter()
        .map(|s| {
            let tag = s.sign(msg_id, timestamp, body).finalize().into_bytes();
            format!("v1,{}", STANDARD.encode(tag))
        })
        .collect();
    vec![
        ("webhook-id".to_string(), msg_id.to_string()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
        ("webhook-signature".to_string(), signatures.join(" ")),
    ]
}

/// True when any `v1` signature in the header matches (constant-time
/// compare). Freshness of `timestamp` is the caller's check.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
) -> bool {
    let expected = secret.sign(msg_id, timestamp, body);
    signature_header.split_ascii_whitespace().any(|entry| {
        let Some(("v1", encoded)) = entry.split_once(',') else {
            return false;
        };
        STANDARD
            .decode(encoded)
            .is_ok_and(|tag| expected.clone().verify_slice(&tag).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn standard_webhooks_test_vector() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        let headers = signature_headers(std::slice::from_ref(&secret), MSG_ID, TIMESTAMP, BODY);
        assert_eq!(headers.len(), 3);
        assert_eq!(header(&headers, "webhook-id"), MSG_ID);
        assert_eq!(header(&headers, "webhook-timestamp"), "1614265330");
        assert_eq!(header(&headers, "webhook-signature"), EXPECTED);
        assert!(verify(&secret, MSG_ID, TIMESTAMP, BODY, EXPECTED));
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let old = SigningSecret::parse(SECRET).unwrap();
        let new = SigningSecret::parse(&SigningSecret::generate()).unwrap();
        let headers = signature_headers(&[old.clone(), new.clone()], MSG_ID, TIMESTAMP, BODY);
        let sig = header(&headers, "webhook-signature");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], EXPECTED);
        assert!(parts[1].starts_with("v1,"));
        assert!(verify(&old, MSG_ID, TIMESTAMP, BODY, sig));
        assert!(verify(&new, MSG_ID, TIMESTAMP, BODY, sig));
        let other = SigningSecret::parse(&SigningSecret::generate()).unwrap();
        assert!(!verify(&other, MSG_ID, TIMESTAMP, BODY, sig));
    }

    #[test]
    fn tampering_fails_verification() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert!(!verify(
            &secret,
            MSG_ID,
            TIMESTAMP,
            br#"{"test": 2432232315}"#,
            EXPECTED
        ));
        assert!(!verify(&secret, MSG_ID, TIMESTAMP + 1, BODY, EXPECTED));
        assert!(!verify(&secret, "msg_other", TIMESTAMP, BODY, EXPECTED));
        for bad in [
            "",
            "v1,",
            "v1,!!!",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,g0hM9SsE",
            "v1a,v1,,",
        ] {
            assert!(!verify(&secret, MSG_ID, TIMESTAMP, BODY, bad), "{bad:?}");
        }
        // A valid entry anywhere in the list is enough.
        let mixed = format!("v1,AAAA {EXPECTED}");
        assert!(verify(&secret, MSG_ID, TIMESTAMP, BODY, &mixed));
    }

    #[test]
    fn parse_and_generate() {
        let generated = SigningSecret::generate();
        assert!(generated.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&generated[6..]).unwrap().len(), 32);
        assert_ne!(generated, SigningSecret::generate());
        assert!(SigningSecret::parse(&generated).is_ok());

        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
        ] {
            let err = SigningSecret::parse(bad).unwrap_err();
            if let Some(tail) = bad.get(6..).filter(|t| !t.is_empty()) {
                assert!(!err.contains(tail), "{err}");
            }
        }
        let debug = format!("{:?}", SigningSecret::parse(SECRET).unwrap());
        assert_eq!(debug, "SigningSecret(<redacted>)");
        assert!(signature_headers(&[], MSG_ID, TIMESTAMP, BODY).is_empty());
    }
}
