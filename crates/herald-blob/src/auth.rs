//! Shared Key authorization for the Blob service (version 2009-09-19 and
//! later): the canonical string to sign, exactly as the azure-storage-blob
//! SDK's `SharedKeyCredentialPolicy` builds it, and its verification.
//!
//! The string to sign is
//!
//! ```text
//! VERB\n Content-Encoding\n Content-Language\n Content-Length\n Content-MD5\n
//! Content-Type\n Date\n If-Modified-Since\n If-Match\n If-None-Match\n
//! If-Unmodified-Since\n Range\n CanonicalizedHeaders CanonicalizedResource
//! ```
//!
//! (without the spaces), where a header that is absent or empty contributes
//! an empty line and a `Content-Length` of `0` counts as empty;
//! CanonicalizedHeaders is every `x-ms-*` header as `name:value\n`, in the
//! service's header order (which the SDK emulates with a two-level weight
//! table, ported here: hyphens are ignored at the first level, so
//! `x-ms-meta-ab` sorts before `x-ms-meta-a-c`); and CanonicalizedResource
//! is `/{account}{path}` with the path exactly as sent (still
//! percent-encoded), then `\n{name}:{values}` for each query parameter,
//! names lowercased and sorted, values percent-decoded and, when a name
//! repeats, sorted and comma-joined.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a Shared Key request was refused. Messages follow Azure's; none of
/// them carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `SharedKey {account}:{signature}`,
    /// a request without `x-ms-date` or `Date`, or a date that is
    /// unparsable or more than 15 minutes away from the server's clock.
    Malformed,
    /// The header names another account.
    WrongAccount,
    /// The signature is not the one any of the account's keys gives.
    Mismatch {
        /// What the server signed, for the client to compare with its own.
        string_to_sign: String,
    },
}

const AUTH_FAILED: &str = "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.";

impl AuthError {
    /// Azure's error code: `NoAuthenticationInformation` for a missing
    /// header, `AuthenticationFailed` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "NoAuthenticationInformation",
            _ => "AuthenticationFailed",
        }
    }

    /// The HTTP status Azure answers with: 401 for a missing header, 403
    /// otherwise.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing => 401,
            _ => 403,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str(
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            ),
            AuthError::Malformed => f.write_str(AUTH_FAILED),
            AuthError::WrongAccount => write!(f, "{AUTH_FAILED} The account name in the Authorization header does not match the account of this endpoint."),
            AuthError::Mismatch { string_to_sign } => write!(
                f,
                "{AUTH_FAILED} The MAC signature found in the HTTP request is not the same as any computed signature. \
                 Server used following string to sign: '{string_to_sign}'."
            ),
        }
    }
}

impl std::error::Error for AuthError {}

/// The standard headers of the string to sign, in order.
const SIGNED_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// All values of a header, comma-joined (one value in practice).
fn header_values(headers: &http::HeaderMap, name: &str) -> String {
    let mut out = String::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    out
}

/// The Blob service Shared Key string to sign for a request. `raw_path` is
/// the request path exactly as received, percent-encoding and any
/// path-style account prefix included (the SDK signs `/{account}` followed
/// by the URL's path); `raw_query` is the query string without `?`.
pub fn string_to_sign(
    account: &str,
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &http::HeaderMap,
) -> String {
    let mut out = String::with_capacity(256 + raw_path.len() + raw_query.map_or(0, str::len));
    out.push_str(method);
    out.push('\n');
    for name in SIGNED_HEADERS {
        let value = header_values(headers, name);
        if !(name == "content-length" && value == "0") {
            out.push_str(&value);
        }
        out.push('\n');
    }
    out.push_str(&canonicalized_headers(headers));
    out.push('/');
    out.push_str(account);
    out.push_str(raw_path);
    out.push_str(&canonicalized_query(raw_query.unwrap_or("")));
    out
}

/// `x-ms-*` headers as `name:value\n`, in the service's order.
fn canonicalized_headers(headers: &http::HeaderMap) -> String {
    let mut names: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|n| n.starts_with("x-ms-"))
        .collect();
    merge_sort(&mut names, &|a: &&str, b: &&str| {
        storage_header_cmp(a.as_bytes(), b.as_bytes()).then_with(|| a.cmp(b))
    });
    let mut out = String::new();
    for name in names {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.push_str(name);
        out.push(':');
        out.push_str(&joined);
        out.push('\n');
    }
    out
}

/// Query parameters as `\n{name}:{values}`: names percent-decoded and
/// lowercased, sorted; values percent-decoded (`+` stays `+`, as Python's
/// `unquote` leaves it), sorted and comma-joined when a name repeats.
fn canonicalized_query(raw_query: &str) -> String {
    let mut params: std::collections::BTreeMap<String, Vec<String>> =
        std::collections::BTreeMap::new();
    for piece in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = percent_encoding::percent_decode_str(name)
            .decode_utf8_lossy()
            .to_lowercase();
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        params.entry(name).or_default().push(value);
    }
    let mut out = String::new();
    for (name, mut values) in params {
        values.sort();
        out.push('\n');
        out.push_str(&name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

/// First-level weights of the service's header order (index: ASCII code);
/// 0 means "ignored at this level". Ported from the SDK's `table_lv0`.
#[rustfmt::skip]
const LV0: [u16; 128] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // space ! " # $ % & ' ( ) * + , - . /
    0, 0x71c, 0, 0x71f, 0x721, 0x723, 0x725, 0, 0, 0, 0x72d, 0x803, 0, 0, 0x733, 0,
    // 0-9 : ; < = > ?
    0xd03, 0xd1a, 0xd1c, 0xd1e, 0xd20, 0xd22, 0xd24, 0xd26, 0xd28, 0xd2a, 0, 0, 0, 0, 0, 0,
    // @ A-O
    0, 0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51, 0xe70, 0xe7c,
    // P-Z [ \ ] ^ _
    0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9, 0, 0, 0, 0x743, 0x744,
    // ` a-o
    0x748, 0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51, 0xe70, 0xe7c,
    // p-z { | } ~ DEL
    0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9, 0, 0x74c, 0, 0x750, 0,
];

/// Second-level weights (the SDK's `table_lv4`): only `'` and `-` count.
const fn lv4(b: u8) -> u16 {
    match b {
        b'\'' => 0x8012,
        b'-' => 0x8212,
        _ => 0,
    }
}

fn weight(level: usize, s: &[u8], i: usize) -> u16 {
    match s.get(i) {
        // Past the end: the sentinel weight 1.
        None => 1,
        Some(&b) if level == 0 => LV0.get(usize::from(b)).copied().unwrap_or(0),
        Some(&b) => lv4(b),
    }
}

/// The SDK's `compare` (its emulation of the service's header order),
/// ported step for step.
fn storage_header_cmp(lhs: &[u8], rhs: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut level, mut i, mut j) = (0usize, 0usize, 0usize);
    while level < 2 {
        if level == 1 && i != j {
            return if i > j {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let w1 = weight(level, lhs, i);
        let w2 = weight(level, rhs, j);
        if w1 == 1 && w2 == 1 {
            i = 0;
            j = 0;
            level += 1;
        } else if w1 == w2 {
            i += 1;
            j += 1;
        } else if w1 == 0 {
            i += 1;
        } else if w2 == 0 {
            j += 1;
        } else {
            return w1.cmp(&w2);
        }
    }
    Ordering::Equal
}

/// A stable merge sort that never panics, whatever the comparator does
/// (the standard sort may panic on a comparator that is not a total order,
/// and the SDK's header order is not obviously one).
fn merge_sort<T: Copy, F: Fn(&T, &T) -> std::cmp::Ordering>(v: &mut Vec<T>, cmp: &F) {
    if v.len() <= 1 {
        return;
    }
    let mut right = v.split_off(v.len() / 2);
    merge_sort(v, cmp);
    merge_sort(&mut right, cmp);
    let left = std::mem::take(v);
    let (mut a, mut b) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_right = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => cmp(y, x) == std::cmp::Ordering::Less,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => break,
        };
        let next = if take_right { b.next() } else { a.next() };
        v.extend(next);
    }
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `msg` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> Option<[u8; 32]> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).ok()?;
    mac.update(msg);
    Some(mac.finalize().into_bytes().into())
}

/// Whether `sig` equals the HMAC of `msg` under one of `keys`, compared in
/// constant time (every key is tried).
pub(crate) fn matches_any_key(keys: &[&[u8]], msg: &[u8], sig: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        if let Some(mac) = hmac_sha256(key, msg) {
            ok |= mac.as_slice().ct_eq(sig);
        }
    }
    ok.into()
}

/// The base64 HMAC-SHA256 signature of `string_to_sign` under `key` (the
/// raw, decoded key bytes), as Shared Key and SAS use it.
pub fn sign(key: &[u8], string_to_sign: &str) -> String {
    hmac_sha256(key, string_to_sign.as_bytes())
        .map(|m| STANDARD.encode(m))
        .unwrap_or_default()
}

/// Verifies `Authorization: SharedKey {account}:{signature}` against each
/// of the account's keys (raw decoded bytes). The request must carry
/// `x-ms-date` or `Date`; their freshness is [`check_date`]'s business.
pub fn verify_shared_key(
    account: &str,
    keys: &[&[u8]],
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &http::HeaderMap,
) -> Result<(), AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let credential = value
        .strip_prefix("SharedKey ")
        .ok_or(AuthError::Malformed)?;
    let (claimed, signature) = credential
        .trim()
        .split_once(':')
        .ok_or(AuthError::Malformed)?;
    if claimed.is_empty() || signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    if claimed != account {
        return Err(AuthError::WrongAccount);
    }
    let has_date = ["x-ms-date", "date"]
        .iter()
        .any(|h| headers.get(*h).is_some_and(|v| !v.is_empty()));
    if !has_date {
        return Err(AuthError::Malformed);
    }
    let sts = string_to_sign(account, method, raw_path, raw_query, headers);
    let ok = match STANDARD.decode(signature) {
        Ok(sig) if sig.len() == 32 => matches_any_key(keys, sts.as_bytes(), &sig),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::Mismatch {
            string_to_sign: sts,
        })
    }
}

/// How far a request's date may be from the server's clock, in seconds.
const MAX_CLOCK_SKEW: i64 = 15 * 60;

/// Checks that the request's `x-ms-date` (or, without it, `Date`) is an
/// RFC 1123 date within 15 minutes of `now_unix` (seconds), as Azure does.
pub fn check_date(headers: &http::HeaderMap, now_unix: i64) -> Result<(), AuthError> {
    let value = headers
        .get("x-ms-date")
        .or_else(|| headers.get(http::header::DATE))
        .ok_or(AuthError::Malformed)?;
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let when = crate::xml::parse_http_date(text).ok_or(AuthError::Malformed)?;
    if when.abs_diff(now_unix) > MAX_CLOCK_SKEW.unsigned_abs() {
        return Err(AuthError::Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;

    /// The key the vectors use: bytes 0..64 (base64
    /// `AAECAwQF...Pj8=`), as an account key would decode.
    fn key() -> Vec<u8> {
        (0u8..64).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn put_block_headers() -> HeaderMap {
        map(&[
            ("content-length", "11"),
            ("content-type", "text/plain; charset=utf-8"),
            ("x-ms-date", "Mon, 07 Dec 2026 20:00:00 GMT"),
            ("x-ms-version", "2026-10-06"),
            ("x-ms-meta-ab", "1"),
            ("x-ms-meta-a_b", "2"),
            ("x-ms-meta-a-c", "3"),
            ("x-ms-meta-a", "4"),
            ("x-ms-client-request-id", "abc"),
            ("if-match", "\"0x8D\""),
        ])
    }

    const PATH: &str = "/mycontainer/dir/a%20b%2Bc.txt";
    const QUERY: &str = "comp=block&blockid=YmxvY2stMDAx&timeout=30";

    /// The string azure-storage-blob 12.31.1's SharedKeyCredentialPolicy
    /// builds for this request (captured from the SDK), and its signature.
    const SDK_STS: &str = "PUT\n\n\n11\n\ntext/plain; charset=utf-8\n\n\n\"0x8D\"\n\n\n\n\
        x-ms-client-request-id:abc\nx-ms-date:Mon, 07 Dec 2026 20:00:00 GMT\nx-ms-meta-a:4\nx-ms-meta-a_b:2\n\
        x-ms-meta-ab:1\nx-ms-meta-a-c:3\nx-ms-version:2026-10-06\n/myaccount/mycontainer/dir/a%20b%2Bc.txt\n\
        blockid:YmxvY2stMDAx\ncomp:block\ntimeout:30";
    const SDK_SIG: &str = "weyJiiIEZ4GoA72kqPhL8Jfd4FzT8nP1GwBoKfUV8nE=";

    #[test]
    fn sdk_vector() {
        let h = put_block_headers();
        assert_eq!(
            string_to_sign("myaccount", "PUT", PATH, Some(QUERY), &h),
            SDK_STS
        );
        assert_eq!(sign(&key(), SDK_STS), SDK_SIG);
        let mut h = h;
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("SharedKey myaccount:{SDK_SIG}")).unwrap(),
        );
        let k = key();
        assert_eq!(
            verify_shared_key(
                "myaccount",
                &[b"other key", &k],
                "PUT",
                PATH,
                Some(QUERY),
                &h
            ),
            Ok(())
        );
    }

    #[test]
    fn hand_built_vector() {
        // The documented example: GET a container's metadata.
        let h = map(&[
            ("x-ms-date", "Fri, 26 Jun 2015 23:39:12 GMT"),
            ("x-ms-version", "2015-02-21"),
        ]);
        let sts = string_to_sign(
            "myaccount",
            "GET",
            "/mycontainer",
            Some("restype=container&comp=metadata&timeout=20"),
            &h,
        );
        assert_eq!(
            sts,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-version:2015-02-21\n\
             /myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20"
        );
    }

    #[test]
    fn standard_headers_and_query_rules() {
        let h = map(&[
            ("content-length", "0"),
            ("content-md5", "abc=="),
            ("range", "bytes=0-9"),
            ("if-none-match", "*"),
            ("x-ms-date", "d"),
            ("x-ms-empty", ""),
            ("x-ms-spaced", "  v  "),
        ]);
        let sts = string_to_sign("acct", "GET", "/", Some("B=2&a=%2Fx%20y+z&b=1&&flag"), &h);
        assert_eq!(
            sts,
            "GET\n\n\n\nabc==\n\n\n\n\n*\n\nbytes=0-9\nx-ms-date:d\nx-ms-empty:\nx-ms-spaced:v\n/acct/\na:/x y+z\nb:1,2\nflag:"
        );
        assert!(string_to_sign("acct", "GET", "", None, &HeaderMap::new()).ends_with("\n/acct"));
    }

    #[test]
    fn header_order_matches_sdk() {
        // azure-storage-blob's _storage_header_sort gives this order.
        let mut names = vec![
            "x-ms-meta-z",
            "x-ms-meta-a-c",
            "x-ms-meta-ab",
            "x-ms-meta-a1",
            "x-ms-meta-a_b",
            "x-ms-meta-a",
            "x-ms-meta-_z",
        ];
        merge_sort(&mut names, &|a: &&str, b: &&str| {
            storage_header_cmp(a.as_bytes(), b.as_bytes()).then_with(|| a.cmp(b))
        });
        assert_eq!(
            names,
            [
                "x-ms-meta-_z",
                "x-ms-meta-a",
                "x-ms-meta-a_b",
                "x-ms-meta-a1",
                "x-ms-meta-ab",
                "x-ms-meta-a-c",
                "x-ms-meta-z"
            ]
        );
    }

    fn signed(headers: &HeaderMap, key: &[u8]) -> HeaderMap {
        let mut h = headers.clone();
        let sig = sign(
            key,
            &string_to_sign("myaccount", "PUT", PATH, Some(QUERY), &h),
        );
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("SharedKey myaccount:{sig}")).unwrap(),
        );
        h
    }

    #[test]
    fn failures() {
        let k = key();
        let keys: [&[u8]; 1] = [&k];
        let good = signed(&put_block_headers(), &k);
        let v = |h: &HeaderMap| verify_shared_key("myaccount", &keys, "PUT", PATH, Some(QUERY), h);
        assert_eq!(v(&good), Ok(()));

        // Wrong key.
        let wrong = signed(&put_block_headers(), b"another key");
        assert!(
            matches!(v(&wrong), Err(AuthError::Mismatch { string_to_sign }) if string_to_sign == SDK_STS)
        );

        // A tampered header, query or path.
        let mut tampered = good.clone();
        tampered.insert("x-ms-meta-ab", HeaderValue::from_static("9"));
        assert!(matches!(v(&tampered), Err(AuthError::Mismatch { .. })));
        assert!(matches!(
            verify_shared_key(
                "myaccount",
                &keys,
                "PUT",
                PATH,
                Some("comp=block&blockid=other&timeout=30"),
                &good
            ),
            Err(AuthError::Mismatch { .. })
        ));
        assert!(matches!(
            verify_shared_key("myaccount", &keys, "GET", PATH, Some(QUERY), &good),
            Err(AuthError::Mismatch { .. })
        ));

        // Header shapes.
        assert_eq!(v(&put_block_headers()), Err(AuthError::Missing));
        for bad in [
            "SharedKey",
            "SharedKey myaccount",
            "Bearer x",
            "SharedKeyLite myaccount:abc",
            "SharedKey :abc",
            "SharedKey myaccount:",
        ] {
            let mut h = good.clone();
            h.insert("authorization", HeaderValue::from_str(bad).unwrap());
            assert_eq!(v(&h), Err(AuthError::Malformed), "{bad}");
        }
        let mut h = good.clone();
        h.insert(
            "authorization",
            HeaderValue::from_static("SharedKey someoneelse:abc="),
        );
        assert_eq!(v(&h), Err(AuthError::WrongAccount));
        let mut h = good.clone();
        h.insert(
            "authorization",
            HeaderValue::from_static("SharedKey myaccount:not-base64!"),
        );
        assert!(matches!(v(&h), Err(AuthError::Mismatch { .. })));

        // No date at all.
        let mut no_date = put_block_headers();
        no_date.remove("x-ms-date");
        assert_eq!(v(&signed(&no_date, &k)), Err(AuthError::Malformed));
        no_date.insert(
            "date",
            HeaderValue::from_static("Mon, 07 Dec 2026 20:00:00 GMT"),
        );
        assert_eq!(v(&signed(&no_date, &k)), Ok(()));

        // No keys.
        assert!(matches!(
            verify_shared_key("myaccount", &[], "PUT", PATH, Some(QUERY), &good),
            Err(AuthError::Mismatch { .. })
        ));
    }

    #[test]
    fn messages() {
        let m = AuthError::Mismatch {
            string_to_sign: "GET\n".into(),
        }
        .to_string();
        assert!(m.starts_with(AUTH_FAILED));
        assert!(m.contains("Server used following string to sign: 'GET\n'."));
        assert_eq!(AuthError::Malformed.code(), "AuthenticationFailed");
        assert_eq!(AuthError::Malformed.status(), 403);
        assert_eq!(AuthError::Missing.status(), 401);
    }

    #[test]
    fn dates() {
        // Mon, 07 Dec 2026 20:00:00 GMT
        let t = 1_796_673_600;
        let h = map(&[("x-ms-date", "Mon, 07 Dec 2026 20:00:00 GMT")]);
        assert_eq!(check_date(&h, t), Ok(()));
        assert_eq!(check_date(&h, t + 900), Ok(()));
        assert_eq!(check_date(&h, t - 900), Ok(()));
        assert_eq!(check_date(&h, t + 901), Err(AuthError::Malformed));
        assert_eq!(check_date(&h, t - 901), Err(AuthError::Malformed));
        // x-ms-date wins over Date.
        let both = map(&[
            ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("x-ms-date", "Mon, 07 Dec 2026 20:00:00 GMT"),
        ]);
        assert_eq!(check_date(&both, t), Ok(()));
        let only_date = map(&[("date", "Mon, 07 Dec 2026 20:00:00 GMT")]);
        assert_eq!(check_date(&only_date, t), Ok(()));
        assert_eq!(check_date(&HeaderMap::new(), t), Err(AuthError::Malformed));
        assert_eq!(
            check_date(&map(&[("x-ms-date", "yesterday")]), t),
            Err(AuthError::Malformed)
        );
        assert_eq!(check_date(&h, i64::MIN), Err(AuthError::Malformed));
        assert_eq!(check_date(&h, i64::MAX), Err(AuthError::Malformed));
    }

    proptest! {
        #[test]
        fn string_to_sign_never_panics(
            method in any::<String>(),
            path in any::<String>(),
            query in proptest::option::of(any::<String>()),
            headers in proptest::collection::vec(("[a-z0-9!#$%&'*+.^_`|~-]{1,20}", proptest::collection::vec(any::<u8>(), 0..30)), 0..16),
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                let name = if k.len() % 2 == 0 { format!("x-ms-{k}") } else { k };
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&v)) {
                    h.append(n, v);
                }
            }
            let _ = string_to_sign("acct", &method, &path, query.as_deref(), &h);
            let _ = verify_shared_key("acct", &[b"k"], &method, &path, query.as_deref(), &h);
            let _ = check_date(&h, 0);
        }

        #[test]
        fn sign_verify_round_trip(
            key in proptest::collection::vec(any::<u8>(), 0..80),
            meta in proptest::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,30}", 0..8),
            query in "[a-z=&%0-9A-F+]{0,40}",
            path in "/[a-z0-9%/._-]{0,40}",
        ) {
            let mut h = HeaderMap::new();
            h.insert("x-ms-date", HeaderValue::from_static("Mon, 07 Dec 2026 20:00:00 GMT"));
            for (k, v) in &meta {
                h.insert(HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let sig = sign(&key, &string_to_sign("acct", "PUT", &path, Some(&query), &h));
            h.insert("authorization", HeaderValue::from_str(&format!("SharedKey acct:{sig}")).unwrap());
            prop_assert_eq!(verify_shared_key("acct", &[&key], "PUT", &path, Some(&query), &h), Ok(()));
            let mut other = key.clone();
            other.push(1);
            prop_assert!(verify_shared_key("acct", &[&other], "PUT", &path, Some(&query), &h).is_err());
        }

        #[test]
        fn header_sort_is_a_sorted_permutation(names in proptest::collection::vec("[a-z0-9_'-]{0,8}", 0..20)) {
            let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
            merge_sort(&mut sorted, &|a: &&str, b: &&str| storage_header_cmp(a.as_bytes(), b.as_bytes()).then_with(|| a.cmp(b)));
            let mut a: Vec<&str> = sorted.clone();
            let mut b: Vec<&str> = names.iter().map(String::as_str).collect();
            a.sort_unstable();
            b.sort_unstable();
            prop_assert_eq!(a, b);
            let mut again = sorted.clone();
            merge_sort(&mut again, &|a: &&str, b: &&str| storage_header_cmp(a.as_bytes(), b.as_bytes()).then_with(|| a.cmp(b)));
            prop_assert_eq!(again, sorted);
        }
    }
}
