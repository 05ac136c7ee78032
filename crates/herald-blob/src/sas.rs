//! Shared access signatures for the Blob service: verification of service
//! SAS (`sr=c`, `sr=b`) and account SAS (`ss`, `srt`) signed with an account
//! key, and signing helpers that produce the same tokens as the
//! azure-storage-blob SDK.
//!
//! Strings to sign, for signed versions 2020-12-06 and later (the SDK
//! signs with its newest version, [`SDK_VERSION`]; the layout has not
//! changed since 2020-12-06 for account-key SAS):
//!
//! * service SAS: `sp, st, se, /blob/{account}/{container}[/{blob}], si,
//!   sip, spr, sv, sr, snapshot time, ses, rscc, rscd, rsce, rscl, rsct`
//!   joined with `\n`;
//! * account SAS: `{account}, sp, ss, srt, st, se, sip, spr, sv, ses`,
//!   each followed by `\n`.
//!
//! Values are the percent-decoded query values, absent ones empty; the
//! blob name in the canonical resource is the decoded name (what the SDK
//! signs is the name the caller gave, not its URL form).
//!
//! Not supported, and refused with a clear `AuthenticationFailed` message:
//! stored access policies (`si`), user delegation SAS (`skoid` and the
//! other `sk*` fields), snapshot, version and directory SAS (`sr=bs`,
//! `bv`, `d`), and signed versions before 2020-12-06. A SAS with an IP
//! range (`sip`) is refused with `AuthorizationSourceIPMismatch`: Herald
//! does not see the client address here, and refusing is safer than
//! silently widening the grant. An encryption scope (`ses`) is signed
//! over and otherwise ignored (Herald has no encryption scopes).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{NaiveDate, NaiveTime};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::auth::{matches_any_key, sign};

/// The signed version the current azure-storage-blob SDK (12.31) uses.
pub const SDK_VERSION: &str = "2026-10-06";

/// The oldest signed version whose layout Herald verifies.
pub const MIN_VERSION: &str = "2020-12-06";

/// The longest SAS query Herald parses, in bytes.
const MAX_QUERY: usize = 32 * 1024;

/// What an operation acts on, as account SAS `srt` letters name it:
/// `s` service, `c` container, `o` object (blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Service-level operations (list containers, service properties).
    Service,
    /// Container-level operations (create, delete, list blobs, properties).
    Container,
    /// Blob-level operations.
    Object,
}

impl Resource {
    fn srt_letter(self) -> char {
        match self {
            Resource::Service => 's',
            Resource::Container => 'c',
            Resource::Object => 'o',
        }
    }
}

/// What a request needs from a SAS: the one permission letter of its
/// operation (`r` read, `a` add, `c` create, `w` write, `d` delete, `x`
/// delete version, `y` permanent delete, `l` list, `t` tags, `f` filter,
/// `m` move, `e` execute, `i` set immutability policy, `u` update, `p`
/// process), what it acts on, and where. `container` and `blob` are the
/// decoded names (`container` is ignored for service-level requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed<'a> {
    /// The permission letter the operation requires.
    pub permission: char,
    /// The kind of resource the operation acts on.
    pub resource: Resource,
    /// The container the request addresses.
    pub container: &'a str,
    /// The blob the request addresses, for blob operations.
    pub blob: Option<&'a str>,
}

/// Why a SAS was refused. All answer 403; [`SasError::code`] gives Azure's
/// error code and `Display` its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasError {
    /// The token is malformed, unsupported, outside its validity window, or
    /// its signature does not match; the message says which.
    AuthenticationFailed(String),
    /// The token lacks the permission the operation needs.
    AuthorizationPermissionMismatch,
    /// The token does not cover this kind of resource.
    AuthorizationResourceTypeMismatch,
    /// The account SAS does not include the Blob service.
    AuthorizationServiceMismatch,
    /// The token allows HTTPS only and the request came over HTTP.
    AuthorizationProtocolMismatch,
    /// The token is restricted to an IP range, which Herald does not
    /// enforce, so it is refused.
    AuthorizationSourceIPMismatch,
}

impl SasError {
    /// Azure's error code.
    pub fn code(&self) -> &'static str {
        match self {
            SasError::AuthenticationFailed(_) => "AuthenticationFailed",
            SasError::AuthorizationPermissionMismatch => "AuthorizationPermissionMismatch",
            SasError::AuthorizationResourceTypeMismatch => "AuthorizationResourceTypeMismatch",
            SasError::AuthorizationServiceMismatch => "AuthorizationServiceMismatch",
            SasError::AuthorizationProtocolMismatch => "AuthorizationProtocolMismatch",
            SasError::AuthorizationSourceIPMismatch => "AuthorizationSourceIPMismatch",
        }
    }

    /// The HTTP status: 403 for every SAS failure.
    pub fn status(&self) -> u16 {
        403
    }
}

impl fmt::Display for SasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SasError::AuthenticationFailed(m) => f.write_str(m),
            SasError::AuthorizationPermissionMismatch => {
                f.write_str("This request is not authorized to perform this operation using this permission.")
            }
            SasError::AuthorizationResourceTypeMismatch => {
                f.write_str("This request is not authorized to perform this operation using this resource type.")
            }
            SasError::AuthorizationServiceMismatch => {
                f.write_str("This request is not authorized to perform this operation using this service.")
            }
            SasError::AuthorizationProtocolMismatch => {
                f.write_str("This request is not authorized to perform this operation using this protocol.")
            }
            SasError::AuthorizationSourceIPMismatch => f.write_str(
                "This request is not authorized to perform this operation using this source IP. \
                 Herald does not enforce signed IP ranges (sip), so tokens that carry one are refused.",
            ),
        }
    }
}

impl std::error::Error for SasError {}

fn failed(msg: impl Into<String>) -> SasError {
    SasError::AuthenticationFailed(msg.into())
}

/// The query parameters a SAS consists of; any other parameter belongs to
/// the operation and is left alone.
const SAS_PARAMS: [&str; 31] = [
    "sv", "ss", "srt", "sp", "st", "se", "sip", "spr", "sr", "si", "sig", "ses", "rscc", "rscd",
    "rsce", "rscl", "rsct", "skoid", "sktid", "skt", "ske", "sks", "skv", "skdutid", "sduoid",
    "saoid", "suoid", "scid", "sdd", "srh", "srq",
];

/// The SAS parameters of a query, percent-decoded.
#[derive(Default)]
struct Params {
    values: [Option<String>; SAS_PARAMS.len()],
}

impl Params {
    fn parse(query: &str) -> Result<Params, SasError> {
        if query.len() > MAX_QUERY {
            return Err(failed(
                "Signature fields not well formed: the query string is too long.",
            ));
        }
        let mut p = Params::default();
        for piece in query.split('&').filter(|s| !s.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = percent_decode_str(name).decode_utf8_lossy();
            let Some(slot) = SAS_PARAMS
                .iter()
                .position(|n| *n == name)
                .and_then(|i| p.values.get_mut(i))
            else {
                continue;
            };
            if slot.is_some() {
                return Err(failed(format!(
                    "Signature fields not well formed: '{name}' is given more than once."
                )));
            }
            let value = percent_decode_str(value).decode_utf8().map_err(|_| {
                failed(format!(
                    "Signature fields not well formed: '{name}' is not valid UTF-8."
                ))
            })?;
            *slot = Some(value.into_owned());
        }
        Ok(p)
    }

    /// A parameter's value; empty values count as absent (the SDK never
    /// emits empty parameters and signs absent ones as empty lines).
    fn get(&self, name: &str) -> Option<&str> {
        let i = SAS_PARAMS.iter().position(|n| *n == name)?;
        self.values.get(i)?.as_deref().filter(|v| !v.is_empty())
    }

    fn or_empty(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }
}

/// Whether a query carries a SAS (has both `sig` and `sv` parameters).
pub fn is_sas(query: &str) -> bool {
    let names = || {
        query
            .split('&')
            .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
    };
    names().any(|n| n == "sig") && names().any(|n| n == "sv")
}

/// Parses a SAS time: `YYYY-MM-DD`, or `YYYY-MM-DDThh:mm[:ss[.f{1,7}]]Z`
/// (UTC only, as Azure requires). Returns unix seconds (fractions are
/// dropped).
fn parse_sas_time(s: &str) -> Option<i64> {
    if s.len() > 40 || !s.is_ascii() {
        return None;
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (s, None),
    };
    let num = |t: &str, len: usize| -> Option<u32> {
        if t.len() == len && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let mut d = date.split('-');
    let (y, m, dd) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, dd)?;
    let time = match time {
        None => NaiveTime::MIN,
        Some(t) => {
            let (hms, frac) = match t.split_once('.') {
                Some((hms, f)) => (hms, Some(f)),
                None => (t, None),
            };
            if let Some(f) = frac
                && (!(1..=7).contains(&f.len()) || !f.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            let mut parts = hms.split(':');
            let h = num(parts.next()?, 2)?;
            let mi = num(parts.next()?, 2)?;
            let sec = match parts.next() {
                Some(sec) => num(sec, 2)?,
                None if frac.is_none() => 0,
                None => return None,
            };
            if parts.next().is_some() {
                return None;
            }
            NaiveTime::from_hms_opt(h, mi, sec)?
        }
    };
    Some(date.and_time(time).and_utc().timestamp())
}

/// Whether a signed version is a `YYYY-MM-DD` date not older than
/// [`MIN_VERSION`].
fn version_supported(sv: &str) -> bool {
    let shape = sv.len() == 10
        && sv.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shape && sv >= MIN_VERSION
}

/// Verifies a SAS in `query` (the raw query string, without `?`) for the
/// operation `needed`, against each of the account's keys (raw bytes), at
/// `now_unix` seconds, for a request that came over HTTPS or not.
///
/// Order of checks: the token's shape and supported features, the
/// signature, the validity window (`st` ≤ now ≤ `se`), the protocol
/// (`spr`), the IP restriction (`sip`, refused), the resource (`sr` or
/// `ss` and `srt`), and the permission (`sp`).
pub fn verify(
    account: &str,
    keys: &[&[u8]],
    query: &str,
    needed: &Needed<'_>,
    now_unix: i64,
    https: bool,
) -> Result<(), SasError> {
    let p = Params::parse(query)?;
    let sv = p
        .get("sv")
        .ok_or_else(|| failed("Signature fields not well formed: sv is mandatory."))?;
    let sig = p
        .get("sig")
        .ok_or_else(|| failed("Signature fields not well formed: sig is mandatory."))?;
    if p.get("si").is_some() {
        return Err(failed(
            "Stored access policies are not supported by Herald: sign the SAS with its permissions (sp) and expiry (se) instead of a signed identifier (si).",
        ));
    }
    if [
        "skoid", "sktid", "skt", "ske", "sks", "skv", "skdutid", "sduoid", "saoid", "suoid",
        "scid", "srh", "srq",
    ]
    .iter()
    .any(|n| p.get(n).is_some())
    {
        return Err(failed(
            "User delegation SAS is not supported by Herald: sign the SAS with an account key.",
        ));
    }
    if !version_supported(sv) {
        return Err(failed(format!(
            "The signed version (sv) '{sv}' is not supported. Herald verifies SAS with sv {MIN_VERSION} or later."
        )));
    }
    let sp = p
        .get("sp")
        .ok_or_else(|| failed("Signature fields not well formed: sp is mandatory."))?;
    let se_text = p
        .get("se")
        .ok_or_else(|| failed("Signature fields not well formed: se is mandatory."))?;
    let se = parse_sas_time(se_text).ok_or_else(|| {
        failed(format!(
            "Signature fields not well formed: se '{se_text}' is not a valid ISO 8601 UTC time."
        ))
    })?;
    let st = match p.get("st") {
        Some(t) => Some(parse_sas_time(t).ok_or_else(|| {
            failed(format!(
                "Signature fields not well formed: st '{t}' is not a valid ISO 8601 UTC time."
            ))
        })?),
        None => None,
    };
    let https_only = match p.get("spr") {
        None | Some("https,http") | Some("http,https") => false,
        Some("https") => true,
        Some(other) => {
            return Err(failed(format!(
                "Signature fields not well formed: spr '{other}' is not valid."
            )));
        }
    };

    enum Kind<'q> {
        Service { sr: &'q str },
        Account { ss: &'q str, srt: &'q str },
    }
    let kind = match (p.get("sr"), p.get("ss"), p.get("srt")) {
        (Some(sr), None, None) => Kind::Service { sr },
        (None, Some(ss), Some(srt)) => Kind::Account { ss, srt },
        _ => {
            return Err(failed(
                "Signature fields not well formed: a service SAS has sr, an account SAS has ss and srt.",
            ));
        }
    };

    let sts = match &kind {
        Kind::Service { sr } => {
            let path = match *sr {
                "c" => {
                    if needed.resource == Resource::Service {
                        return Err(SasError::AuthorizationResourceTypeMismatch);
                    }
                    format!("/{}", needed.container)
                }
                "b" => match (needed.resource, needed.blob) {
                    (Resource::Object, Some(blob)) => format!("/{}/{}", needed.container, blob),
                    _ => return Err(SasError::AuthorizationResourceTypeMismatch),
                },
                "bs" | "bv" | "d" => {
                    return Err(failed(format!(
                        "Signed resource (sr) '{sr}' is not supported by Herald: use sr=b or sr=c."
                    )));
                }
                other => {
                    return Err(failed(format!(
                        "Signature fields not well formed: sr '{other}' is not valid."
                    )));
                }
            };
            service_string_to_sign(account, &path, &p, sr)
        }
        Kind::Account { .. } => account_string_to_sign(account, &p),
    };

    let sig_ok = match STANDARD.decode(sig) {
        Ok(bytes) if bytes.len() == 32 => matches_any_key(keys, sts.as_bytes(), &bytes),
        _ => false,
    };
    if !sig_ok {
        return Err(failed(format!(
            "Signature did not match. String to sign used was {sts}"
        )));
    }

    if let Some(st) = st
        && se <= st
    {
        return Err(failed(format!(
            "Signed expiry time [{}] must be after signed start time [{}]",
            crate::xml::http_date(se.saturating_mul(1000)),
            crate::xml::http_date(st.saturating_mul(1000)),
        )));
    }
    if st.is_some_and(|st| now_unix < st) || now_unix > se {
        return Err(failed(format!(
            "Signature not valid in the specified time frame: Start [{}] - Expiry [{}] - Current [{}]",
            st.map(|s| crate::xml::http_date(s.saturating_mul(1000)))
                .unwrap_or_default(),
            crate::xml::http_date(se.saturating_mul(1000)),
            crate::xml::http_date(now_unix.saturating_mul(1000)),
        )));
    }
    if https_only && !https {
        return Err(SasError::AuthorizationProtocolMismatch);
    }
    if p.get("sip").is_some() {
        return Err(SasError::AuthorizationSourceIPMismatch);
    }
    if let Kind::Account { ss, srt } = kind {
        if !ss.contains('b') {
            return Err(SasError::AuthorizationServiceMismatch);
        }
        if !srt.contains(needed.resource.srt_letter()) {
            return Err(SasError::AuthorizationResourceTypeMismatch);
        }
    }
    if !sp.contains(needed.permission) {
        return Err(SasError::AuthorizationPermissionMismatch);
    }
    Ok(())
}

/// The service SAS string to sign; `path` is `/{container}[/{blob}]`.
fn service_string_to_sign(account: &str, path: &str, p: &Params, sr: &str) -> String {
    let resource = format!("/blob/{account}{path}");
    [
        p.or_empty("sp"),
        p.or_empty("st"),
        p.or_empty("se"),
        resource.as_str(),
        p.or_empty("si"),
        p.or_empty("sip"),
        p.or_empty("spr"),
        p.or_empty("sv"),
        sr,
        // signedSnapshotTime: only for sr=bs / bv, which are refused.
        "",
        p.or_empty("ses"),
        p.or_empty("rscc"),
        p.or_empty("rscd"),
        p.or_empty("rsce"),
        p.or_empty("rscl"),
        p.or_empty("rsct"),
    ]
    .join("\n")
}

/// The account SAS string to sign.
fn account_string_to_sign(account: &str, p: &Params) -> String {
    let mut out = String::new();
    for field in [
        account,
        p.or_empty("sp"),
        p.or_empty("ss"),
        p.or_empty("srt"),
        p.or_empty("st"),
        p.or_empty("se"),
        p.or_empty("sip"),
        p.or_empty("spr"),
        p.or_empty("sv"),
        p.or_empty("ses"),
    ] {
        out.push_str(field);
        out.push('\n');
    }
    out
}

/// What Python's `urllib.parse.quote` leaves alone: letters, digits,
/// `_.-~` and `/`.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');

/// Appends `name=value` (value quoted as the SDK quotes it) when the value
/// is present and not empty.
fn push_param(out: &mut String, name: &str, value: Option<&str>) {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return;
    };
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(name);
    out.push('=');
    out.extend(utf8_percent_encode(value, QUOTE));
}

/// The fields of a service SAS (`sr=c` for a container, `sr=b` for a blob),
/// signed with an account key. Times are ISO 8601 UTC strings such as
/// `2026-12-07T20:00:00Z`; `None` or empty fields are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceSas<'a> {
    /// Permission letters, e.g. `racwdl`.
    pub permissions: &'a str,
    /// When the token becomes valid.
    pub start: Option<&'a str>,
    /// When the token expires.
    pub expiry: &'a str,
    /// The container.
    pub container: &'a str,
    /// The blob: `Some` signs a blob SAS (`sr=b`), `None` a container SAS.
    pub blob: Option<&'a str>,
    /// An IP or IP range (`sip`); Herald refuses such tokens on verification.
    pub ip: Option<&'a str>,
    /// `https` or `https,http`.
    pub protocol: Option<&'a str>,
    /// The signed version; empty means [`SDK_VERSION`].
    pub version: &'a str,
    /// An encryption scope (`ses`).
    pub encryption_scope: Option<&'a str>,
    /// Response `Cache-Control` override (`rscc`).
    pub cache_control: Option<&'a str>,
    /// Response `Content-Disposition` override (`rscd`).
    pub content_disposition: Option<&'a str>,
    /// Response `Content-Encoding` override (`rsce`).
    pub content_encoding: Option<&'a str>,
    /// Response `Content-Language` override (`rscl`).
    pub content_language: Option<&'a str>,
    /// Response `Content-Type` override (`rsct`).
    pub content_type: Option<&'a str>,
}

/// Signs a service SAS with `key` (the raw account key) and returns the
/// query string, parameters in the order azure-storage-blob's
/// `generate_blob_sas` / `generate_container_sas` emit them.
pub fn sign_service_sas(account: &str, key: &[u8], sas: &ServiceSas<'_>) -> String {
    let version = if sas.version.is_empty() {
        SDK_VERSION
    } else {
        sas.version
    };
    let sr = if sas.blob.is_some() { "b" } else { "c" };
    let mut q = String::new();
    push_param(&mut q, "st", sas.start);
    push_param(&mut q, "se", Some(sas.expiry));
    push_param(&mut q, "sp", Some(sas.permissions));
    push_param(&mut q, "sip", sas.ip);
    push_param(&mut q, "spr", sas.protocol);
    push_param(&mut q, "sv", Some(version));
    push_param(&mut q, "sr", Some(sr));
    push_param(&mut q, "rscc", sas.cache_control);
    push_param(&mut q, "rscd", sas.content_disposition);
    push_param(&mut q, "rsce", sas.content_encoding);
    push_param(&mut q, "rscl", sas.content_language);
    push_param(&mut q, "rsct", sas.content_type);
    push_param(&mut q, "ses", sas.encryption_scope);
    let path = match sas.blob {
        Some(blob) => format!("/{}/{}", sas.container, blob),
        None => format!("/{}", sas.container),
    };
    // Sign what a verifier will read back from the query.
    let params = Params::parse(&q).unwrap_or_default();
    let sig = sign(key, &service_string_to_sign(account, &path, &params, sr));
    push_param(&mut q, "sig", Some(&sig));
    q
}

/// The fields of an account SAS, signed with an account key. Times are ISO
/// 8601 UTC strings; `None` or empty fields are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountSas<'a> {
    /// Services (`ss`), e.g. `b`.
    pub services: &'a str,
    /// Resource types (`srt`), e.g. `sco`.
    pub resource_types: &'a str,
    /// Permission letters, e.g. `rwdlacup`.
    pub permissions: &'a str,
    /// When the token becomes valid.
    pub start: Option<&'a str>,
    /// When the token expires.
    pub expiry: &'a str,
    /// An IP or IP range (`sip`); Herald refuses such tokens on verification.
    pub ip: Option<&'a str>,
    /// `https` or `https,http`.
    pub protocol: Option<&'a str>,
    /// The signed version; empty means [`SDK_VERSION`].
    pub version: &'a str,
    /// An encryption scope (`ses`).
    pub encryption_scope: Option<&'a str>,
}

/// Signs an account SAS with `key` (the raw account key) and returns the
/// query string, parameters in the order azure-storage-blob's
/// `generate_account_sas` emits them.
pub fn sign_account_sas(account: &str, key: &[u8], sas: &AccountSas<'_>) -> String {
    let version = if sas.version.is_empty() {
        SDK_VERSION
    } else {
        sas.version
    };
    let mut q = String::new();
    push_param(&mut q, "st", sas.start);
    push_param(&mut q, "se", Some(sas.expiry));
    push_param(&mut q, "sp", Some(sas.permissions));
    push_param(&mut q, "sip", sas.ip);
    push_param(&mut q, "spr", sas.protocol);
    push_param(&mut q, "sv", Some(version));
    push_param(&mut q, "ss", Some(sas.services));
    push_param(&mut q, "srt", Some(sas.resource_types));
    push_param(&mut q, "ses", sas.encryption_scope);
    let params = Params::parse(&q).unwrap_or_default();
    let sig = sign(key, &account_string_to_sign(account, &params));
    push_param(&mut q, "sig", Some(&sig));
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> Vec<u8> {
        (0u8..64).collect()
    }

    /// 2026-12-07T20:00:00Z
    const T0: i64 = 1_796_673_600;
    const DAY: i64 = 86_400;

    fn blob<'a>(permission: char, container: &'a str, name: &'a str) -> Needed<'a> {
        Needed {
            permission,
            resource: Resource::Object,
            container,
            blob: Some(name),
        }
    }

    fn container(permission: char, name: &str) -> Needed<'_> {
        Needed {
            permission,
            resource: Resource::Container,
            container: name,
            blob: None,
        }
    }

    // Tokens produced by azure-storage-blob 12.31.1 with the key bytes 0..64:
    //   generate_blob_sas("myaccount", "mycontainer", "dir/a b+c.txt", account_key=KEY,
    //       permission=BlobSasPermissions(read=True, write=True), expiry="2026-12-08T20:00:00Z",
    //       start="2026-12-07T20:00:00Z", protocol="https", cache_control="no-cache",
    //       content_disposition='attachment; filename="x.txt"', encryption_scope="scope1")
    const SDK_BLOB: &str = "st=2026-12-07T20%3A00%3A00Z&se=2026-12-08T20%3A00%3A00Z&sp=rw&spr=https&sv=2026-10-06&sr=b&rscc=no-cache&rscd=attachment%3B%20filename%3D%22x.txt%22&ses=scope1&sig=eIu6zq0J6DEPWqPrlL9cfJjbK56GzQmUP%2BXXb12Rf1U%3D";
    //   generate_container_sas("myaccount", "mycontainer", account_key=KEY,
    //       permission=ContainerSasPermissions(read=True, list=True), expiry="2026-12-08T20:00:00Z")
    const SDK_CONTAINER: &str = "se=2026-12-08T20%3A00%3A00Z&sp=rl&sv=2026-10-06&sr=c&sig=NYbtLEI/pMAwt/myvsTFf5jykvBRRsnmrqKq5pmNodQ%3D";
    //   generate_account_sas("myaccount", KEY, ResourceTypes(service=True, container=True, object=True),
    //       AccountSasPermissions(read=True, write=True, list=True, create=True),
    //       expiry="2026-12-08T20:00:00Z", start="2026-12-07T20:00:00.1234567Z", protocol="https,http")
    const SDK_ACCOUNT: &str = "st=2026-12-07T20%3A00%3A00.1234567Z&se=2026-12-08T20%3A00%3A00Z&sp=rwlc&spr=https%2Chttp&sv=2026-10-06&ss=b&srt=sco&sig=oftAzrqCpAlT1Q7vqBtxEg%2B2mvAHRJDB4ACRDW6mzmc%3D";

    #[test]
    fn sdk_tokens_verify() {
        let k = key();
        let keys: [&[u8]; 2] = [b"secondary", &k];
        let now = T0 + 3600;
        assert_eq!(
            verify(
                "myaccount",
                &keys,
                SDK_BLOB,
                &blob('r', "mycontainer", "dir/a b+c.txt"),
                now,
                true
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                "myaccount",
                &keys,
                SDK_CONTAINER,
                &container('l', "mycontainer"),
                now,
                false
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                "myaccount",
                &keys,
                SDK_CONTAINER,
                &blob('r', "mycontainer", "any/blob"),
                now,
                true
            ),
            Ok(())
        );
        let svc = Needed {
            permission: 'l',
            resource: Resource::Service,
            container: "",
            blob: None,
        };
        assert_eq!(
            verify("myaccount", &keys, SDK_ACCOUNT, &svc, now, false),
            Ok(())
        );
        assert_eq!(
            verify(
                "myaccount",
                &keys,
                SDK_ACCOUNT,
                &blob('c', "x", "y"),
                now,
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn signing_reproduces_sdk_tokens() {
        let k = key();
        let b = sign_service_sas(
            "myaccount",
            &k,
            &ServiceSas {
                permissions: "rw",
                start: Some("2026-12-07T20:00:00Z"),
                expiry: "2026-12-08T20:00:00Z",
                container: "mycontainer",
                blob: Some("dir/a b+c.txt"),
                protocol: Some("https"),
                cache_control: Some("no-cache"),
                content_disposition: Some("attachment; filename=\"x.txt\""),
                encryption_scope: Some("scope1"),
                ..ServiceSas::default()
            },
        );
        assert_eq!(b, SDK_BLOB);
        let c = sign_service_sas(
            "myaccount",
            &k,
            &ServiceSas {
                permissions: "rl",
                expiry: "2026-12-08T20:00:00Z",
                container: "mycontainer",
                ..ServiceSas::default()
            },
        );
        assert_eq!(c, SDK_CONTAINER);
        let a = sign_account_sas(
            "myaccount",
            &k,
            &AccountSas {
                services: "b",
                resource_types: "sco",
                permissions: "rwlc",
                start: Some("2026-12-07T20:00:00.1234567Z"),
                expiry: "2026-12-08T20:00:00Z",
                protocol: Some("https,http"),
                ..AccountSas::default()
            },
        );
        assert_eq!(a, SDK_ACCOUNT);
    }

    #[test]
    fn hand_built_vector() {
        // The documented field order, computed by hand.
        let sts = "r\n\n2026-12-08T20:00:00Z\n/blob/myaccount/mycontainer/x.bin\n\n\n\n2026-10-06\nb\n\n\n\n\n\n\n";
        let sig = sign(&key(), sts);
        // azure-storage-blob 12.31.1 gives this signature for the same blob SAS.
        assert_eq!(sig, "e+mMKNWbN60GL9peYkpZ1qZYTfJGN3uFU/fJHYon3B8=");
        let q = format!(
            "se=2026-12-08T20%3A00%3A00Z&sp=r&sv=2026-10-06&sr=b&sig={}",
            utf8_percent_encode(&sig, QUOTE)
        );
        let k = key();
        assert_eq!(
            verify(
                "myaccount",
                &[&k],
                &q,
                &blob('r', "mycontainer", "x.bin"),
                T0,
                true
            ),
            Ok(())
        );
        let account_sts = "myaccount\nrwlc\nb\nsco\n2026-12-07T20:00:00.1234567Z\n2026-12-08T20:00:00Z\n\nhttps,http\n2026-10-06\n\n";
        assert_eq!(
            sign(&key(), account_sts),
            "oftAzrqCpAlT1Q7vqBtxEg+2mvAHRJDB4ACRDW6mzmc="
        );
    }

    #[test]
    fn refusals() {
        let k = key();
        let keys: [&[u8]; 1] = [&k];
        let now = T0 + 3600;
        let v = |q: &str, n: &Needed<'_>, now: i64, https: bool| {
            verify("myaccount", &keys, q, n, now, https)
        };
        let rb = blob('r', "mycontainer", "dir/a b+c.txt");

        // Wrong key, other account, other blob, other container: the signature.
        let other: [&[u8]; 1] = [b"nope"];
        let e = verify("myaccount", &other, SDK_BLOB, &rb, now, true).unwrap_err();
        assert_eq!(e.code(), "AuthenticationFailed");
        assert!(e.to_string().starts_with(
            "Signature did not match. String to sign used was rw\n2026-12-07T20:00:00Z\n"
        ));
        assert!(v(SDK_BLOB, &blob('r', "mycontainer", "other"), now, true).is_err());
        assert!(verify("otheraccount", &keys, SDK_BLOB, &rb, now, true).is_err());
        assert!(v(SDK_CONTAINER, &container('l', "othercontainer"), now, true).is_err());

        // Tampered fields.
        let tampered = SDK_BLOB.replace("sp=rw", "sp=rwd");
        assert!(matches!(
            v(&tampered, &rb, now, true),
            Err(SasError::AuthenticationFailed(_))
        ));
        let tampered = SDK_CONTAINER.replace("2026-12-08", "2027-12-08");
        assert!(matches!(
            v(&tampered, &container('l', "mycontainer"), now, true),
            Err(SasError::AuthenticationFailed(_))
        ));

        // Time window.
        let e = v(SDK_BLOB, &rb, T0 - 1, true).unwrap_err();
        assert!(e.to_string().starts_with("Signature not valid in the specified time frame: Start [Mon, 07 Dec 2026 20:00:00 GMT] - Expiry [Tue, 08 Dec 2026 20:00:00 GMT] - Current ["));
        assert_eq!(v(SDK_BLOB, &rb, T0, true), Ok(()));
        assert_eq!(v(SDK_BLOB, &rb, T0 + DAY, true), Ok(()));
        assert!(v(SDK_BLOB, &rb, T0 + DAY + 1, true).is_err());
        let backwards = sign_service_sas(
            "myaccount",
            &k,
            &ServiceSas {
                permissions: "r",
                start: Some("2026-12-09"),
                expiry: "2026-12-08",
                container: "c1c",
                blob: Some("b"),
                ..ServiceSas::default()
            },
        );
        let e = v(&backwards, &blob('r', "c1c", "b"), now, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Signed expiry time [Tue, 08 Dec 2026 00:00:00 GMT] must be after signed start time [Wed, 09 Dec 2026 00:00:00 GMT]"
        );

        // Protocol.
        assert_eq!(
            v(SDK_BLOB, &rb, now, false),
            Err(SasError::AuthorizationProtocolMismatch)
        );

        // Permissions and resources.
        assert_eq!(
            v(
                SDK_BLOB,
                &blob('d', "mycontainer", "dir/a b+c.txt"),
                now,
                true
            ),
            Err(SasError::AuthorizationPermissionMismatch)
        );
        assert_eq!(
            v(SDK_BLOB, &container('r', "mycontainer"), now, true),
            Err(SasError::AuthorizationResourceTypeMismatch)
        );
        let svc = Needed {
            permission: 'l',
            resource: Resource::Service,
            container: "",
            blob: None,
        };
        assert_eq!(
            v(SDK_CONTAINER, &svc, now, true),
            Err(SasError::AuthorizationResourceTypeMismatch)
        );
        assert_eq!(
            v(SDK_CONTAINER, &container('w', "mycontainer"), now, true),
            Err(SasError::AuthorizationPermissionMismatch)
        );
        let only_objects = sign_account_sas(
            "myaccount",
            &k,
            &AccountSas {
                services: "b",
                resource_types: "o",
                permissions: "rl",
                expiry: "2026-12-08",
                ..AccountSas::default()
            },
        );
        assert_eq!(
            v(&only_objects, &svc, now, true),
            Err(SasError::AuthorizationResourceTypeMismatch)
        );
        assert_eq!(v(&only_objects, &blob('r', "a", "b"), now, true), Ok(()));
        let files_only = sign_account_sas(
            "myaccount",
            &k,
            &AccountSas {
                services: "fq",
                resource_types: "sco",
                permissions: "rl",
                expiry: "2026-12-08",
                ..AccountSas::default()
            },
        );
        assert_eq!(
            v(&files_only, &blob('r', "a", "b"), now, true),
            Err(SasError::AuthorizationServiceMismatch)
        );

        // IP ranges are refused once the token is otherwise good.
        let with_ip = sign_service_sas(
            "myaccount",
            &k,
            &ServiceSas {
                permissions: "r",
                expiry: "2026-12-08",
                container: "c1c",
                ip: Some("10.0.0.1"),
                ..ServiceSas::default()
            },
        );
        assert_eq!(
            v(&with_ip, &container('r', "c1c"), now, true),
            Err(SasError::AuthorizationSourceIPMismatch)
        );

        // Unsupported and malformed tokens.
        for (q, needle) in [
            (
                "sv=2026-10-06&si=policy&sr=c&sig=AAAA",
                "Stored access policies",
            ),
            (
                "sv=2026-10-06&skoid=x&sr=c&sp=r&se=2026-12-08&sig=AAAA",
                "User delegation",
            ),
            (
                "sv=2019-12-12&sr=c&sp=r&se=2026-12-08&sig=AAAA",
                "not supported",
            ),
            (
                "sv=latest&sr=c&sp=r&se=2026-12-08&sig=AAAA",
                "not supported",
            ),
            (
                "sv=2026-10-06&sr=bs&sp=r&se=2026-12-08&sig=AAAA",
                "sr=b or sr=c",
            ),
            ("sv=2026-10-06&sr=q&sp=r&se=2026-12-08&sig=AAAA", "sr 'q'"),
            (
                "sv=2026-10-06&sr=c&sp=r&se=tomorrow&sig=AAAA",
                "se 'tomorrow'",
            ),
            (
                "sv=2026-10-06&sr=c&sp=r&se=2026-12-08&st=x&sig=AAAA",
                "st 'x'",
            ),
            ("sv=2026-10-06&sr=c&sp=r&sig=AAAA", "se is mandatory"),
            (
                "sv=2026-10-06&sr=c&se=2026-12-08&sig=AAAA",
                "sp is mandatory",
            ),
            ("sv=2026-10-06&sr=c&sp=r&se=2026-12-08", "sig is mandatory"),
            ("sr=c&sp=r&se=2026-12-08&sig=AAAA", "sv is mandatory"),
            ("sv=2026-10-06&sp=r&se=2026-12-08&sig=AAAA", "ss and srt"),
            (
                "sv=2026-10-06&sr=c&ss=b&srt=o&sp=r&se=2026-12-08&sig=AAAA",
                "ss and srt",
            ),
            (
                "sv=2026-10-06&sr=c&sp=r&sp=w&se=2026-12-08&sig=AAAA",
                "more than once",
            ),
            (
                "sv=2026-10-06&sr=c&sp=r&se=2026-12-08&spr=ftp&sig=AAAA",
                "spr 'ftp'",
            ),
            ("sv=2026-10-06&sr=c&sp=%FF&se=2026-12-08&sig=AAAA", "UTF-8"),
            (
                "sv=2026-10-06&sr=c&sp=r&se=2026-12-08&sig=AAAA",
                "Signature did not match",
            ),
        ] {
            let e = v(q, &container('r', "c1c"), now, true).unwrap_err();
            assert!(e.to_string().contains(needle), "{q}: {e}");
            assert_eq!(e.status(), 403);
        }
        assert!(
            v(
                &"a".repeat(MAX_QUERY + 1),
                &container('r', "c1c"),
                now,
                true
            )
            .is_err()
        );
    }

    #[test]
    fn detection() {
        assert!(is_sas(SDK_BLOB));
        assert!(is_sas("comp=list&sv=x&sig=y"));
        assert!(!is_sas("comp=list&sv=x"));
        assert!(!is_sas("nosig=1&sv=2"));
        assert!(!is_sas(""));
    }

    #[test]
    fn times() {
        assert_eq!(parse_sas_time("2026-12-07T20:00:00Z"), Some(T0));
        assert_eq!(parse_sas_time("2026-12-07T20:00Z"), Some(T0));
        assert_eq!(parse_sas_time("2026-12-07T20:00:00.1Z"), Some(T0));
        assert_eq!(parse_sas_time("2026-12-07T20:00:00.1234567Z"), Some(T0));
        assert_eq!(parse_sas_time("2026-12-07"), Some(T0 - 20 * 3600));
        for bad in [
            "",
            "2026-12-07T20:00:00",
            "2026-12-07T20:00:00+01:00",
            "2026-12-07T20:00:00.12345678Z",
            "2026-12-07T20:00:00.Z",
            "2026-12-07T20:00.5Z",
            "2026-13-07",
            "2026-02-30",
            "2026-12-07T24:00:00Z",
            "26-12-07",
            "2026-12-07-01",
            "2026-12-07T20:00:00:00Z",
            "２０２６-12-07",
        ] {
            assert_eq!(parse_sas_time(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics(q in any::<String>(), perm in any::<char>(), now in any::<i64>(), https in any::<bool>()) {
            let n = Needed { permission: perm, resource: Resource::Object, container: "c", blob: Some("b") };
            let _ = verify("acct", &[b"k"], &q, &n, now, https);
            let _ = is_sas(&q);
            let _ = parse_sas_time(&q);
        }

        #[test]
        fn verify_never_panics_on_sas_shaped_queries(
            parts in proptest::collection::vec((proptest::sample::select(SAS_PARAMS.to_vec()), "[a-z0-9%:.TZ,-]{0,24}"), 0..12),
            now in any::<i64>(),
        ) {
            let q = parts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
            let n = Needed { permission: 'r', resource: Resource::Container, container: "c", blob: None };
            let _ = verify("acct", &[b"k"], &q, &n, now, true);
        }

        #[test]
        fn service_sas_round_trip(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            perms in "[racwdxyltfmei]{1,8}",
            name in "[^\u{0}-\u{1f}]{1,30}",
            cache in proptest::option::of("[ -~]{1,20}"),
            start in 0i64..4_000_000_000,
            len in 1i64..1_000_000,
            https_only in any::<bool>(),
        ) {
            let fmt = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default();
            let (st, se) = (fmt(start), fmt(start + len));
            let q = sign_service_sas("acct", &key, &ServiceSas {
                permissions: &perms,
                start: Some(&st),
                expiry: &se,
                container: "box",
                blob: Some(&name),
                protocol: Some(if https_only { "https" } else { "https,http" }),
                cache_control: cache.as_deref(),
                ..ServiceSas::default()
            });
            prop_assert!(is_sas(&q));
            let first = perms.chars().next().unwrap_or('r');
            let n = blob(first, "box", &name);
            prop_assert_eq!(verify("acct", &[&key], &q, &n, start + len / 2, true), Ok(()));
            prop_assert_eq!(verify("acct", &[&key], &q, &n, start + len / 2, false).is_ok(), !https_only);
            prop_assert!(verify("acct", &[&key], &q, &n, start + len + 1, true).is_err());
            prop_assert!(verify("acct", &[b"other"], &q, &n, start + len / 2, true).is_err());
        }

        #[test]
        fn account_sas_round_trip(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            perms in "[rwdxylacuptfi]{1,8}",
            srt in "[sco]{1,3}",
            exp in 1i64..4_000_000_000,
        ) {
            let se = chrono::DateTime::from_timestamp(exp, 0).map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_default();
            let q = sign_account_sas("acct", &key, &AccountSas { services: "bf", resource_types: &srt, permissions: &perms, expiry: &se, ..AccountSas::default() });
            for (letter, resource) in [('s', Resource::Service), ('c', Resource::Container), ('o', Resource::Object)] {
                let n = Needed { permission: perms.chars().last().unwrap_or('r'), resource, container: "box", blob: Some("b") };
                let got = verify("acct", &[&key], &q, &n, exp - 1, true);
                if srt.contains(letter) {
                    prop_assert_eq!(got, Ok(()));
                } else {
                    prop_assert_eq!(got, Err(SasError::AuthorizationResourceTypeMismatch));
                }
            }
        }
    }
}
