//! Names the Blob service accepts: storage accounts, containers, blobs,
//! block ids and metadata names, with Azure's rules and Azure-style
//! messages. Every parser is bounded and returns an error, never panics.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A name that breaks one of the Blob service's naming rules; the message
/// says which rule, in Azure's words where Azure has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub String);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NameError {}

fn err(msg: impl Into<String>) -> NameError {
    NameError(msg.into())
}

/// A storage account name: 3 to 24 characters, lowercase letters and digits
/// only.
pub fn parse_account(s: &str) -> Result<&str, NameError> {
    if !(3..=24).contains(&s.len()) {
        return Err(err(
            "The specified resource name length is not within the permissible limits. \
             Storage account names must be between 3 and 24 characters in length.",
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(err(
            "The specifed resource name contains invalid characters. \
             Storage account names may contain numbers and lowercase letters only.",
        ));
    }
    Ok(s)
}

/// A container name: 3 to 63 characters of lowercase letters, digits and
/// hyphens, starting and ending with a letter or digit, with no two
/// consecutive hyphens.
pub fn parse_container(s: &str) -> Result<&str, NameError> {
    if !(3..=63).contains(&s.len()) {
        return Err(err(
            "The specified resource name length is not within the permissible limits. \
             Container names must be from 3 through 63 characters long.",
        ));
    }
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(|&b| alnum(b) || b == b'-') {
        return Err(err(
            "The specifed resource name contains invalid characters. \
             Container names may contain only lowercase letters, numbers, and the hyphen (-) character.",
        ));
    }
    let first_last_ok =
        bytes.first().is_some_and(|&b| alnum(b)) && bytes.last().is_some_and(|&b| alnum(b));
    if !first_last_ok {
        return Err(err(
            "The specifed resource name contains invalid characters. \
             Container names must start and end with a letter or number.",
        ));
    }
    if s.contains("--") {
        return Err(err(
            "The specifed resource name contains invalid characters. \
             Consecutive hyphens are not permitted in container names.",
        ));
    }
    Ok(s)
}

/// The longest blob name, in characters.
const MAX_BLOB_NAME_CHARS: usize = 1024;

/// A blob name: 1 to 1024 characters, no control characters (U+0000 to
/// U+001F, U+007F); otherwise anything, slashes included, as in Azure.
///
/// Herald keeps blob content under generated ids and never uses the name as
/// a filesystem path, so path traversal is impossible by construction. As a
/// second line of defence names with a path segment that is exactly `.` or
/// `..` are refused anyway (segments split on `/` and on `\`, which Azure
/// treats as `/` in URLs).
pub fn parse_blob_name(s: &str) -> Result<&str, NameError> {
    // Bound the work before counting characters: 1024 chars are at most
    // 4096 bytes of UTF-8.
    if s.is_empty() || s.len() > MAX_BLOB_NAME_CHARS * 4 || s.chars().count() > MAX_BLOB_NAME_CHARS
    {
        return Err(err(
            "The specified resource name length is not within the permissible limits. \
             A blob name must be at least one character long and cannot be more than 1,024 characters long.",
        ));
    }
    if s.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}') {
        return Err(err(
            "The specifed resource name contains invalid characters. \
             Blob names must not contain control characters (U+0000 to U+001F, U+007F).",
        ));
    }
    if s.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Err(err(
            "The specifed resource name contains invalid characters. \
             Herald does not accept blob names with a path segment that is exactly '.' or '..'.",
        ));
    }
    Ok(s)
}

/// The longest block id, in bytes before encoding.
const MAX_BLOCK_ID_BYTES: usize = 64;

/// A block id: a standard-base64 string whose decoded value is 1 to 64
/// bytes. Returns the decoded bytes.
pub fn parse_block_id(s: &str) -> Result<Vec<u8>, NameError> {
    let invalid = || {
        err("The specified blob or block content is invalid. \
             A block id must be a valid Base64 string whose value is at most 64 bytes in size before encoding.")
    };
    // 64 bytes encode to 88 characters; anything longer cannot be valid.
    if s.is_empty() || s.len() > MAX_BLOCK_ID_BYTES.div_ceil(3) * 4 {
        return Err(invalid());
    }
    let bytes = STANDARD.decode(s).map_err(|_| invalid())?;
    if bytes.is_empty() || bytes.len() > MAX_BLOCK_ID_BYTES {
        return Err(invalid());
    }
    Ok(bytes)
}

/// The longest metadata name, in characters.
const MAX_METADATA_NAME: usize = 256;

/// A metadata name: a C# identifier (an ASCII letter or underscore, then
/// letters, digits and underscores), at most 256 characters.
pub fn parse_metadata_name(s: &str) -> Result<(), NameError> {
    let bytes = s.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_METADATA_NAME
        && bytes
            .first()
            .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(err(format!(
            "The metadata specified is invalid. It has characters that are not permitted. \
             Metadata names must be valid C# identifiers (a letter or underscore, then letters, digits and underscores) \
             of at most {MAX_METADATA_NAME} characters."
        )))
    }
}

/// The largest total size of a resource's metadata (names and values), in
/// bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// The metadata headers prefix.
const META_PREFIX: &str = "x-ms-meta-";

/// Collects the `x-ms-meta-{name}` headers of a request as `(name, value)`
/// pairs sorted by name. Names must pass [`parse_metadata_name`], values
/// must be visible ASCII or spaces, a name may appear once, and names and
/// values together may not exceed 8 KiB, as in Azure.
///
/// HTTP header names arrive lowercased (the `http` crate normalizes them),
/// so metadata names come back lowercase.
pub fn parse_metadata_headers(
    headers: &http::HeaderMap,
) -> Result<Vec<(String, String)>, NameError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut total = 0usize;
    for name in headers.keys() {
        let Some(meta) = name.as_str().strip_prefix(META_PREFIX) else {
            continue;
        };
        parse_metadata_name(meta)?;
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(err(format!(
                "The metadata specified is invalid. The metadata name '{meta}' is given more than once."
            )));
        };
        let bytes = value.as_bytes();
        if !bytes.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
            return Err(err(format!(
                "The metadata specified is invalid. The value of metadata '{meta}' must be visible ASCII characters or spaces."
            )));
        }
        total = total.saturating_add(meta.len()).saturating_add(bytes.len());
        if total > MAX_METADATA_BYTES {
            return Err(err(
                "The size of the specified metadata exceeds the maximum size permitted. \
                 Metadata names and values together may not exceed 8 KiB.",
            ));
        }
        // Only visible ASCII and spaces: the bytes are valid UTF-8.
        out.push((meta.to_owned(), String::from_utf8_lossy(bytes).into_owned()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;

    #[test]
    fn accounts() {
        assert!(parse_account("abc").is_ok());
        assert!(parse_account("devstoreaccount1").is_ok());
        assert!(parse_account(&"a".repeat(24)).is_ok());
        assert!(parse_account("ab").is_err());
        assert!(parse_account(&"a".repeat(25)).is_err());
        assert!(parse_account("Abc").is_err());
        assert!(parse_account("ab-c").is_err());
        assert!(parse_account("ábc").is_err());
    }

    #[test]
    fn containers() {
        for ok in ["abc", "a-b-c", "0ab", "my-container-1", &"a".repeat(63)] {
            assert_eq!(parse_container(ok), Ok(ok), "{ok}");
        }
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "a--b",
            "ABC",
            "a_b",
            "a.b",
            "$root",
            &"a".repeat(64),
            "",
        ] {
            assert!(parse_container(bad).is_err(), "{bad}");
        }
        let e = parse_container("a--b").unwrap_err();
        assert!(e.to_string().contains("Consecutive hyphens"));
    }

    #[test]
    fn blob_names() {
        for ok in [
            "a",
            "dir/sub/file.txt",
            "a b+c",
            "..a",
            "a..",
            "/lead",
            "trail/",
            "ü/日本語",
            ".hidden",
            "a\u{80}",
        ] {
            assert_eq!(parse_blob_name(ok), Ok(ok), "{ok}");
        }
        assert!(parse_blob_name(&"é".repeat(1024)).is_ok());
        for bad in [
            "", "a\nb", "a\u{0}", "a\u{7f}", "a\tb", ".", "..", "a/../b", "a/./b", "../x", "x/..",
            "a\\..\\b",
        ] {
            assert!(parse_blob_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_blob_name(&"a".repeat(1025)).is_err());
        assert!(parse_blob_name(&"é".repeat(1025)).is_err());
    }

    #[test]
    fn block_ids() {
        assert_eq!(parse_block_id("YmxvY2stMDAx").unwrap(), b"block-001");
        assert_eq!(parse_block_id("AA==").unwrap(), vec![0]);
        let max = STANDARD.encode([7u8; 64]);
        assert_eq!(parse_block_id(&max).unwrap().len(), 64);
        let over = STANDARD.encode([7u8; 65]);
        assert!(parse_block_id(&over).is_err());
        for bad in ["", "AA", "A===", "not base64!", "YmxvY2stMDAx\n", "Ym-_"] {
            assert!(parse_block_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_names() {
        for ok in ["a", "_", "_a1", "Name_2", &"a".repeat(256)] {
            assert!(parse_metadata_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "ä", &"a".repeat(257)] {
            assert!(parse_metadata_name(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn metadata_headers() {
        let h = map(&[
            ("x-ms-meta-zeta", "last"),
            ("content-type", "text/plain"),
            ("x-ms-meta-alpha", "first value"),
            ("x-ms-meta-_x", ""),
            ("x-ms-version", "2026-10-06"),
        ]);
        assert_eq!(
            parse_metadata_headers(&h).unwrap(),
            vec![
                ("_x".to_owned(), String::new()),
                ("alpha".to_owned(), "first value".to_owned()),
                ("zeta".to_owned(), "last".to_owned()),
            ]
        );
        assert!(parse_metadata_headers(&map(&[("x-ms-meta-a-b", "v")])).is_err());
        assert!(parse_metadata_headers(&map(&[("x-ms-meta-", "v")])).is_err());
        assert!(
            parse_metadata_headers(&map(&[("x-ms-meta-a", "1"), ("x-ms-meta-a", "2")])).is_err()
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-ms-meta-a",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(parse_metadata_headers(&h).is_err());
        let big = "v".repeat(4000);
        assert!(
            parse_metadata_headers(&map(&[("x-ms-meta-a", &big), ("x-ms-meta-b", &big)])).is_ok()
        );
        assert!(
            parse_metadata_headers(&map(&[
                ("x-ms-meta-a", &big),
                ("x-ms-meta-b", &big),
                ("x-ms-meta-c", &big)
            ]))
            .is_err()
        );
        // Exactly 8 KiB is allowed, one byte more is not.
        let exact = "v".repeat(MAX_METADATA_BYTES - 1);
        assert!(parse_metadata_headers(&map(&[("x-ms-meta-a", &exact)])).is_ok());
        let over = "v".repeat(MAX_METADATA_BYTES);
        assert!(parse_metadata_headers(&map(&[("x-ms-meta-a", &over)])).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in any::<String>()) {
            let _ = parse_account(&s);
            let _ = parse_container(&s);
            let _ = parse_blob_name(&s);
            let _ = parse_block_id(&s);
            let _ = parse_metadata_name(&s);
        }

        #[test]
        fn valid_accounts_accepted(s in "[a-z0-9]{3,24}") {
            prop_assert_eq!(parse_account(&s), Ok(s.as_str()));
        }

        #[test]
        fn valid_containers_accepted(s in "[a-z0-9](-?[a-z0-9]){2,31}") {
            prop_assert_eq!(parse_container(&s), Ok(s.as_str()));
        }

        #[test]
        fn accepted_containers_follow_rules(s in "[a-z0-9-]{0,70}") {
            if parse_container(&s).is_ok() {
                prop_assert!((3..=63).contains(&s.len()));
                prop_assert!(!s.starts_with('-') && !s.ends_with('-') && !s.contains("--"));
            }
        }

        #[test]
        fn accepted_blob_names_follow_rules(s in any::<String>()) {
            if parse_blob_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.chars().count() <= 1024);
                let has_control = s.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}');
                prop_assert!(!has_control);
                prop_assert!(!s.split(['/', '\\']).any(|p| p == "." || p == ".."));
            }
        }

        #[test]
        fn block_id_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..=64)) {
            let encoded = STANDARD.encode(&bytes);
            prop_assert_eq!(parse_block_id(&encoded), Ok(bytes));
        }

        #[test]
        fn valid_metadata_names_accepted(s in "[A-Za-z_][A-Za-z0-9_]{0,255}") {
            prop_assert!(parse_metadata_name(&s).is_ok());
        }

        #[test]
        fn metadata_headers_never_panic(pairs in proptest::collection::vec((any::<String>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..12)) {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                let name = format!("x-ms-meta-{k}");
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&v)) {
                    h.append(n, v);
                }
            }
            if let Ok(list) = parse_metadata_headers(&h) {
                let mut sorted = list.clone();
                sorted.sort();
                prop_assert_eq!(&list, &sorted);
                prop_assert!(list.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= MAX_METADATA_BYTES);
            }
        }

        #[test]
        fn metadata_headers_round_trip(pairs in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,20}", "[ -~]{0,40}", 0..10)) {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                h.insert(HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let got = parse_metadata_headers(&h).unwrap();
            let want: Vec<(String, String)> = pairs.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
