//! The Blob service's XML bodies and dates: the error body, Put Block List
//! parsing, and the Get Block List, List Containers and List Blobs
//! responses, in the shapes azure-storage-blob's generated models
//! deserialize. Parsing uses quick-xml with no DTD and only the XML
//! predefined entities; output is escaped, and characters XML 1.0 cannot
//! carry are replaced (or, in blob names, percent-encoded with
//! `Encoded="true"`, as Azure does).

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::names::parse_metadata_name;

const DECL: &str = r#"<?xml version="1.0" encoding="utf-8"?>"#;

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in unix milliseconds:
/// the range the date formats can show.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = 253_402_300_799_999;

fn datetime(unix_ms: i64) -> DateTime<chrono::Utc> {
    DateTime::from_timestamp_millis(unix_ms.clamp(MIN_MS, MAX_MS)).unwrap_or(DateTime::UNIX_EPOCH)
}

/// An RFC 1123 date, `Mon, 07 Dec 2026 20:00:00 GMT`, from unix
/// milliseconds (clamped to years 1 to 9999).
pub fn http_date(unix_ms: i64) -> String {
    datetime(unix_ms)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Parses an RFC 1123 (RFC 2822) date such as `Mon, 07 Dec 2026 20:00:00
/// GMT` into unix seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    if s.len() > 64 {
        return None;
    }
    DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|d| d.timestamp())
}

/// ISO 8601 with seven fractional digits, as Azure writes times in error
/// messages: `2026-12-07T20:00:00.1230000Z`.
fn iso8601_7(unix_ms: i64) -> String {
    let d = datetime(unix_ms);
    format!(
        "{}.{:07}Z",
        d.format("%Y-%m-%dT%H:%M:%S"),
        unix_ms.clamp(MIN_MS, MAX_MS).rem_euclid(1000) * 10_000
    )
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Replaces characters XML 1.0 cannot carry with U+FFFD and keeps `\r`
/// (and, in attributes, `\t` and `\n`) from being normalized away by
/// writing them as character references. Returns the text to escape and
/// whether references were inserted (then `&` must not be escaped again).
fn sanitize(s: &str, attribute: bool) -> Cow<'_, str> {
    let special = |c: char| !is_xml_char(c) || c == '\r' || (attribute && matches!(c, '\t' | '\n'));
    if !s.chars().any(special) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
            .collect(),
    )
}

/// Escapes element text.
fn push_text(out: &mut String, s: &str) {
    let clean = sanitize(s, false);
    let escaped = quick_xml::escape::partial_escape(clean.as_ref());
    out.push_str(&escaped.replace('\r', "&#13;"));
}

/// Escapes an attribute value (for double quotes).
fn push_attr(out: &mut String, s: &str) {
    let clean = sanitize(s, true);
    let escaped = quick_xml::escape::escape(clean.as_ref());
    out.push_str(
        &escaped
            .replace('\r', "&#13;")
            .replace('\n', "&#10;")
            .replace('\t', "&#9;"),
    );
}

/// `<name>text</name>`, or `<name />` for an empty text.
fn push_elem(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    if text.is_empty() {
        out.push_str(" />");
        return;
    }
    out.push('>');
    push_text(out, text);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn push_opt_elem(out: &mut String, name: &str, text: Option<&str>) {
    if let Some(text) = text {
        push_elem(out, name, text);
    }
}

/// The error body Azure sends with every failure.
pub fn error_xml(code: &str, message: &str, request_id: &str, now_ms: i64) -> String {
    let mut out = String::with_capacity(160 + message.len());
    out.push_str(DECL);
    out.push_str("<Error><Code>");
    push_text(&mut out, code);
    out.push_str("</Code><Message>");
    push_text(&mut out, message);
    out.push_str("\nRequestId:");
    push_text(&mut out, request_id);
    out.push_str("\nTime:");
    out.push_str(&iso8601_7(now_ms));
    out.push_str("</Message></Error>");
    out
}

/// A body that is not the XML the operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError(pub String);

impl XmlError {
    /// Azure's error code, `InvalidXmlDocument`.
    pub fn code(&self) -> &'static str {
        "InvalidXmlDocument"
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XmlError {}

fn invalid(detail: impl fmt::Display) -> XmlError {
    XmlError(format!(
        "XML specified is not syntactically valid. {detail}"
    ))
}

/// One entry of a Put Block List body: which list to take the block from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRef {
    /// `<Committed>`: the block must be in the committed list.
    Committed(String),
    /// `<Uncommitted>`: the block must be in the uncommitted list.
    Uncommitted(String),
    /// `<Latest>`: the uncommitted block if there is one, else the committed.
    Latest(String),
}

/// The most entries a Put Block List body may have.
pub const MAX_BLOCK_LIST_ENTRIES: usize = 100_000;

/// The longest block id text Herald reads (a valid id is at most 88
/// characters of base64).
const MAX_BLOCK_ID_TEXT: usize = 1024;

#[derive(Clone, Copy)]
enum Kind {
    Committed,
    Uncommitted,
    Latest,
}

impl Kind {
    fn of(name: &[u8]) -> Option<Kind> {
        match name {
            b"Committed" => Some(Kind::Committed),
            b"Uncommitted" => Some(Kind::Uncommitted),
            b"Latest" => Some(Kind::Latest),
            _ => None,
        }
    }

    fn with(self, id: String) -> BlockRef {
        match self {
            Kind::Committed => BlockRef::Committed(id),
            Kind::Uncommitted => BlockRef::Uncommitted(id),
            Kind::Latest => BlockRef::Latest(id),
        }
    }
}

enum State {
    Prolog,
    Root,
    Entry(Kind, String),
    Epilog,
}

fn check_attributes(e: &quick_xml::events::BytesStart<'_>) -> Result<(), XmlError> {
    for a in e.attributes() {
        a.map_err(|err| invalid(format!("Malformed attribute: {err}.")))?;
    }
    Ok(())
}

fn whitespace_only(text: &str) -> Result<(), XmlError> {
    if text.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r')) {
        Ok(())
    } else {
        Err(invalid(
            "Text is only allowed inside <Committed>, <Uncommitted> and <Latest>.",
        ))
    }
}

fn push_id(id: &mut String, piece: &str) -> Result<(), XmlError> {
    if id.len() + piece.len() > MAX_BLOCK_ID_TEXT {
        return Err(invalid("A block id is too long."));
    }
    id.push_str(piece);
    Ok(())
}

fn push_entry(out: &mut Vec<BlockRef>, kind: Kind, id: &str) -> Result<(), XmlError> {
    if out.len() >= MAX_BLOCK_LIST_ENTRIES {
        return Err(invalid(format!(
            "A block list may have at most {MAX_BLOCK_LIST_ENTRIES} entries."
        )));
    }
    out.push(
        kind.with(
            id.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
                .to_owned(),
        ),
    );
    Ok(())
}

/// Parses a Put Block List body: `<BlockList>` with `<Committed>`,
/// `<Uncommitted>` and `<Latest>` entries in any order and mix (at most
/// [`MAX_BLOCK_LIST_ENTRIES`]). Ids are returned as written, surrounding
/// whitespace trimmed; validating them is the caller's business. Any
/// other element, text outside entries, a DTD, an entity other than the
/// predefined ones, or malformed XML is an [`XmlError`].
pub fn parse_block_list(body: &[u8]) -> Result<Vec<BlockRef>, XmlError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    let mut out = Vec::new();
    let mut state = State::Prolog;
    loop {
        let event = reader.read_event().map_err(|e| invalid(format!("{e}.")))?;
        state = match (state, event) {
            (_, Event::DocType(_)) => return Err(invalid("DTDs are not allowed.")),
            (State::Entry(..) | State::Root | State::Epilog, Event::Decl(_)) => {
                return Err(invalid("An XML declaration may only start the document."));
            }
            (s, Event::Comment(_) | Event::PI(_)) => s,
            (State::Prolog, Event::Decl(_)) => State::Prolog,
            (State::Prolog, Event::Start(e)) if e.name().as_ref() == b"BlockList" => {
                check_attributes(&e)?;
                State::Root
            }
            (State::Prolog, Event::Empty(e)) if e.name().as_ref() == b"BlockList" => {
                check_attributes(&e)?;
                State::Epilog
            }
            (State::Root, Event::Start(e)) => {
                let kind =
                    Kind::of(e.name().as_ref()).ok_or_else(|| unexpected(e.name().as_ref()))?;
                check_attributes(&e)?;
                State::Entry(kind, String::new())
            }
            (State::Root, Event::Empty(e)) => {
                let kind =
                    Kind::of(e.name().as_ref()).ok_or_else(|| unexpected(e.name().as_ref()))?;
                check_attributes(&e)?;
                push_entry(&mut out, kind, "")?;
                State::Root
            }
            (State::Root, Event::End(_)) => State::Epilog,
            (State::Entry(kind, id), Event::End(_)) => {
                push_entry(&mut out, kind, &id)?;
                State::Root
            }
            (State::Entry(kind, mut id), Event::Text(t)) => {
                let text = t.decode().map_err(|e| invalid(format!("{e}.")))?;
                push_id(&mut id, &text)?;
                State::Entry(kind, id)
            }
            (State::Entry(kind, mut id), Event::CData(t)) => {
                let text = t.decode().map_err(|e| invalid(format!("{e}.")))?;
                push_id(&mut id, &text)?;
                State::Entry(kind, id)
            }
            (State::Entry(kind, mut id), Event::GeneralRef(r)) => {
                let ch = resolve_reference(&r)?;
                push_id(&mut id, ch.encode_utf8(&mut [0u8; 4]))?;
                State::Entry(kind, id)
            }
            (s @ (State::Prolog | State::Root | State::Epilog), Event::Text(t)) => {
                let text = t.decode().map_err(|e| invalid(format!("{e}.")))?;
                whitespace_only(&text)?;
                s
            }
            (State::Epilog, Event::Eof) => return Ok(out),
            (_, Event::Eof) => return Err(invalid("Unexpected end of the document.")),
            (_, Event::Start(e) | Event::Empty(e)) => return Err(unexpected(e.name().as_ref())),
            (_, _) => return Err(invalid("Unexpected content.")),
        };
    }
}

fn unexpected(name: &[u8]) -> XmlError {
    invalid(format!(
        "Unexpected element <{}>.",
        String::from_utf8_lossy(name)
    ))
}

/// A character reference or one of the five predefined entities.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, XmlError> {
    if let Some(ch) = r.resolve_char_ref().map_err(|e| invalid(format!("{e}.")))? {
        return if is_xml_char(ch) {
            Ok(ch)
        } else {
            Err(invalid(
                "A character reference names a character XML does not allow.",
            ))
        };
    }
    let name = r.decode().map_err(|e| invalid(format!("{e}.")))?;
    match quick_xml::escape::resolve_xml_entity(&name).and_then(|s| s.chars().next()) {
        Some(ch) => Ok(ch),
        None => Err(invalid(format!("The entity '&{name};' is not defined."))),
    }
}

/// The Get Block List body: committed and uncommitted blocks as `(id,
/// size)` pairs, ids as the client gave them (base64).
pub fn block_list_xml(committed: &[(String, u64)], uncommitted: &[(String, u64)]) -> String {
    let mut out = String::with_capacity(128 + (committed.len() + uncommitted.len()) * 64);
    out.push_str(DECL);
    out.push_str("<BlockList>");
    for (wrapper, blocks) in [
        ("CommittedBlocks", committed),
        ("UncommittedBlocks", uncommitted),
    ] {
        if blocks.is_empty() {
            out.push('<');
            out.push_str(wrapper);
            out.push_str(" />");
            continue;
        }
        out.push('<');
        out.push_str(wrapper);
        out.push('>');
        for (id, size) in blocks {
            out.push_str("<Block>");
            push_elem(&mut out, "Name", id);
            push_elem(&mut out, "Size", &size.to_string());
            out.push_str("</Block>");
        }
        out.push_str("</");
        out.push_str(wrapper);
        out.push('>');
    }
    out.push_str("</BlockList>");
    out
}

/// A container in a List Containers response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerItem {
    /// The container's name.
    pub name: String,
    /// When the container or its properties last changed, unix ms.
    pub last_modified_ms: i64,
    /// The ETag, quoted as Azure sends it (`"0x8D..."`).
    pub etag: String,
    /// Metadata as `(name, value)` pairs.
    pub metadata: Vec<(String, String)>,
}

/// `<Metadata>` with one element per valid name (names that are not valid
/// metadata names, hence maybe not valid XML names, are left out).
fn push_metadata(out: &mut String, metadata: &[(String, String)]) {
    let valid: Vec<&(String, String)> = metadata
        .iter()
        .filter(|(k, _)| parse_metadata_name(k).is_ok())
        .collect();
    if valid.is_empty() {
        out.push_str("<Metadata />");
        return;
    }
    out.push_str("<Metadata>");
    for (k, v) in valid {
        push_elem(out, k, v);
    }
    out.push_str("</Metadata>");
}

fn push_enumeration_head(
    out: &mut String,
    service_endpoint: &str,
    container: Option<&str>,
    prefix: Option<&str>,
    marker: Option<&str>,
    max_results: Option<u32>,
) {
    out.push_str(DECL);
    out.push_str("<EnumerationResults ServiceEndpoint=\"");
    push_attr(out, service_endpoint);
    out.push('"');
    if let Some(c) = container {
        out.push_str(" ContainerName=\"");
        push_attr(out, c);
        out.push('"');
    }
    out.push('>');
    push_opt_elem(out, "Prefix", prefix);
    push_opt_elem(out, "Marker", marker);
    if let Some(n) = max_results {
        push_elem(out, "MaxResults", &n.to_string());
    }
}

fn push_next_marker(out: &mut String, next_marker: Option<&str>) {
    push_elem(out, "NextMarker", next_marker.unwrap_or(""));
    out.push_str("</EnumerationResults>");
}

/// The List Containers body (`EnumerationResults` with `Containers`).
/// `Prefix`, `Marker` and `MaxResults` appear when given, `NextMarker`
/// always (empty at the end), `Metadata` when `include_metadata`.
pub fn list_containers_xml(
    service_endpoint: &str,
    prefix: Option<&str>,
    marker: Option<&str>,
    max_results: Option<u32>,
    items: &[ContainerItem],
    next_marker: Option<&str>,
    include_metadata: bool,
) -> String {
    let mut out = String::with_capacity(256 + items.len() * 384);
    push_enumeration_head(
        &mut out,
        service_endpoint,
        None,
        prefix,
        marker,
        max_results,
    );
    out.push_str("<Containers>");
    for item in items {
        out.push_str("<Container>");
        push_elem(&mut out, "Name", &item.name);
        out.push_str("<Properties>");
        push_elem(&mut out, "Last-Modified", &http_date(item.last_modified_ms));
        push_elem(&mut out, "Etag", &item.etag);
        out.push_str(
            "<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>\
             <HasImmutabilityPolicy>false</HasImmutabilityPolicy><HasLegalHold>false</HasLegalHold>",
        );
        out.push_str("</Properties>");
        if include_metadata {
            push_metadata(&mut out, &item.metadata);
        }
        out.push_str("</Container>");
    }
    out.push_str("</Containers>");
    push_next_marker(&mut out, next_marker);
    out
}

/// A blob in a List Blobs response (always a hot, unleased block blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    /// The blob's name.
    pub name: String,
    /// When the blob was created, unix ms.
    pub created_ms: i64,
    /// When the blob last changed, unix ms.
    pub last_modified_ms: i64,
    /// The ETag, quoted as Azure sends it.
    pub etag: String,
    /// The content length in bytes.
    pub size: u64,
    /// The content type.
    pub content_type: String,
    /// The content encoding.
    pub content_encoding: Option<String>,
    /// The content language.
    pub content_language: Option<String>,
    /// The content MD5, base64.
    pub content_md5: Option<String>,
    /// The cache control.
    pub cache_control: Option<String>,
    /// The content disposition.
    pub content_disposition: Option<String>,
    /// Metadata as `(name, value)` pairs.
    pub metadata: Vec<(String, String)>,
}

/// One entry of a List Blobs response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEntry {
    /// A blob.
    Blob(BlobItem),
    /// A virtual directory (`BlobPrefix`) when listing with a delimiter.
    Prefix(String),
}

/// What stays unencoded in an `Encoded="true"` name.
const NAME_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');

/// `<Name>`, percent-encoded with `Encoded="true"` when the name holds
/// characters XML would lose or cannot carry (controls, U+FFFE, U+FFFF).
fn push_blob_name(out: &mut String, name: &str) {
    if name
        .chars()
        .all(|c| c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    {
        push_elem(out, "Name", name);
    } else {
        out.push_str("<Name Encoded=\"true\">");
        out.extend(utf8_percent_encode(name, NAME_SAFE));
        out.push_str("</Name>");
    }
}

/// The List Blobs body (`EnumerationResults` with `Blobs`, holding `Blob`
/// and, with a delimiter, `BlobPrefix` entries in the order given).
#[allow(clippy::too_many_arguments)]
pub fn list_blobs_xml(
    service_endpoint: &str,
    container: &str,
    prefix: Option<&str>,
    marker: Option<&str>,
    max_results: Option<u32>,
    delimiter: Option<&str>,
    entries: &[ListEntry],
    next_marker: Option<&str>,
    include_metadata: bool,
) -> String {
    let mut out = String::with_capacity(256 + entries.len() * 768);
    push_enumeration_head(
        &mut out,
        service_endpoint,
        Some(container),
        prefix,
        marker,
        max_results,
    );
    push_opt_elem(&mut out, "Delimiter", delimiter);
    out.push_str("<Blobs>");
    for entry in entries {
        match entry {
            ListEntry::Prefix(p) => {
                out.push_str("<BlobPrefix>");
                push_blob_name(&mut out, p);
                out.push_str("</BlobPrefix>");
            }
            ListEntry::Blob(b) => {
                out.push_str("<Blob>");
                push_blob_name(&mut out, &b.name);
                out.push_str("<Properties>");
                push_elem(&mut out, "Creation-Time", &http_date(b.created_ms));
                push_elem(&mut out, "Last-Modified", &http_date(b.last_modified_ms));
                push_elem(&mut out, "Etag", &b.etag);
                push_elem(&mut out, "Content-Length", &b.size.to_string());
                push_elem(&mut out, "Content-Type", &b.content_type);
                push_elem(
                    &mut out,
                    "Content-Encoding",
                    b.content_encoding.as_deref().unwrap_or(""),
                );
                push_elem(
                    &mut out,
                    "Content-Language",
                    b.content_language.as_deref().unwrap_or(""),
                );
                push_elem(
                    &mut out,
                    "Content-MD5",
                    b.content_md5.as_deref().unwrap_or(""),
                );
                push_elem(
                    &mut out,
                    "Cache-Control",
                    b.cache_control.as_deref().unwrap_or(""),
                );
                push_elem(
                    &mut out,
                    "Content-Disposition",
                    b.content_disposition.as_deref().unwrap_or(""),
                );
                out.push_str(
                    "<BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier>\
                     <AccessTierInferred>true</AccessTierInferred><LeaseStatus>unlocked</LeaseStatus>\
                     <LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted>",
                );
                out.push_str("</Properties>");
                if include_metadata {
                    push_metadata(&mut out, &b.metadata);
                }
                out.push_str("</Blob>");
            }
        }
    }
    out.push_str("</Blobs>");
    push_next_marker(&mut out, next_marker);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-07T20:00:00Z
    const T0_MS: i64 = 1_796_673_600_000;

    #[test]
    fn dates() {
        assert_eq!(http_date(T0_MS), "Mon, 07 Dec 2026 20:00:00 GMT");
        assert_eq!(http_date(T0_MS + 999), "Mon, 07 Dec 2026 20:00:00 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(http_date(i64::MIN), "Mon, 01 Jan 0001 00:00:00 GMT");
        assert_eq!(
            parse_http_date("Mon, 07 Dec 2026 20:00:00 GMT"),
            Some(T0_MS / 1000)
        );
        assert_eq!(
            parse_http_date("Mon, 07 Dec 2026 21:00:00 +0100"),
            Some(T0_MS / 1000)
        );
        assert_eq!(parse_http_date("Tue, 07 Dec 2026 20:00:00 GMT"), None);
        assert_eq!(parse_http_date("2026-12-07T20:00:00Z"), None);
        assert_eq!(parse_http_date(""), None);
        assert_eq!(parse_http_date(&"x".repeat(100)), None);
        assert_eq!(iso8601_7(T0_MS + 123), "2026-12-07T20:00:00.1230000Z");
        assert_eq!(iso8601_7(-1), "1969-12-31T23:59:59.9990000Z");
    }

    #[test]
    fn error_body() {
        assert_eq!(
            error_xml(
                "ContainerNotFound",
                "The specified container does not exist.",
                "rid-1",
                T0_MS + 5
            ),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ContainerNotFound</Code>\
             <Message>The specified container does not exist.\nRequestId:rid-1\nTime:2026-12-07T20:00:00.0050000Z</Message></Error>"
        );
        let x = error_xml("C", "a < b & \"c\" \r \u{1}", "<id>", 0);
        assert!(
            x.contains("<Message>a &lt; b &amp; \"c\" &#13; \u{FFFD}\nRequestId:&lt;id&gt;\n"),
            "{x}"
        );
    }

    #[test]
    fn block_lists() {
        // What azure-storage-blob 12.31.1 sends.
        let sdk = b"<?xml version='1.0' encoding='utf8'?>\n<BlockList><Committed>Y29tbWl0</Committed><Uncommitted>dW5j</Uncommitted><Latest>bGF0ZXN0</Latest><Latest>bA==</Latest></BlockList>";
        assert_eq!(
            parse_block_list(sdk).unwrap(),
            vec![
                BlockRef::Committed("Y29tbWl0".into()),
                BlockRef::Uncommitted("dW5j".into()),
                BlockRef::Latest("bGF0ZXN0".into()),
                BlockRef::Latest("bA==".into()),
            ]
        );
        let pretty = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<!-- c -->\n<BlockList xmlns:x=\"y\">\n  <Latest> QQ== </Latest>\n  <Committed>&#x51;&#81;&amp;<![CDATA[<>]]></Committed>\n  <Uncommitted/>\n</BlockList>\n";
        assert_eq!(
            parse_block_list(pretty.as_bytes()).unwrap(),
            vec![
                BlockRef::Latest("QQ==".into()),
                BlockRef::Committed("QQ&<>".into()),
                BlockRef::Uncommitted(String::new())
            ]
        );
        assert_eq!(
            parse_block_list(b"<BlockList><Latest><!-- x -->a<?pi?></Latest></BlockList>").unwrap(),
            vec![BlockRef::Latest("a".into())]
        );
        assert_eq!(parse_block_list(b"<BlockList/>").unwrap(), vec![]);
        assert_eq!(
            parse_block_list(b"<BlockList></BlockList>").unwrap(),
            vec![]
        );
        for bad in [
            &b""[..],
            b"   ",
            b"<BlockList>",
            b"<BlockList><Latest>a</Latest>",
            b"<BlockList><Latest>a</Committed></BlockList>",
            b"<BlockList><Block>a</Block></BlockList>",
            b"<Blocks><Latest>a</Latest></Blocks>",
            b"<BlockList>text<Latest>a</Latest></BlockList>",
            b"<BlockList><Latest><Latest>a</Latest></Latest></BlockList>",
            b"<BlockList></BlockList><BlockList></BlockList>",
            b"<BlockList></BlockList>trailing",
            b"<!DOCTYPE x [<!ENTITY e \"QQ==\">]><BlockList><Latest>&e;</Latest></BlockList>",
            b"<BlockList><Latest>&e;</Latest></BlockList>",
            b"<BlockList><Latest>&#0;</Latest></BlockList>",
            b"<BlockList><Latest>a &amp b</Latest></BlockList>",
            b"<BlockList><Latest a=>x</Latest></BlockList>",
            b"<BlockList><Latest>\xff</Latest></BlockList>",
            b"<BlockList><?xml version=\"1.0\"?></BlockList>",
        ] {
            let e = parse_block_list(bad).unwrap_err();
            assert_eq!(e.code(), "InvalidXmlDocument");
            assert!(
                e.to_string()
                    .starts_with("XML specified is not syntactically valid."),
                "{e}"
            );
        }
        let long = format!(
            "<BlockList><Latest>{}</Latest></BlockList>",
            "A".repeat(MAX_BLOCK_ID_TEXT + 1)
        );
        assert!(parse_block_list(long.as_bytes()).is_err());
    }

    #[test]
    fn block_list_limit() {
        let many = |n: usize| {
            format!(
                "<BlockList>{}</BlockList>",
                "<Latest>QQ==</Latest>".repeat(n)
            )
        };
        assert_eq!(
            parse_block_list(many(MAX_BLOCK_LIST_ENTRIES).as_bytes())
                .unwrap()
                .len(),
            MAX_BLOCK_LIST_ENTRIES
        );
        assert!(parse_block_list(many(MAX_BLOCK_LIST_ENTRIES + 1).as_bytes()).is_err());
    }

    #[test]
    fn get_block_list_body() {
        assert_eq!(
            block_list_xml(&[("QQ==".into(), 5)], &[]),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><CommittedBlocks><Block><Name>QQ==</Name><Size>5</Size></Block></CommittedBlocks><UncommittedBlocks /></BlockList>"
        );
        assert_eq!(
            block_list_xml(&[], &[("a".into(), 0), ("b".into(), 1)]),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><CommittedBlocks /><UncommittedBlocks><Block><Name>a</Name><Size>0</Size></Block><Block><Name>b</Name><Size>1</Size></Block></UncommittedBlocks></BlockList>"
        );
    }

    #[test]
    fn containers_body() {
        let items = [
            ContainerItem {
                name: "alpha".into(),
                last_modified_ms: T0_MS,
                etag: "\"0x8D1\"".into(),
                metadata: vec![
                    ("k".into(), "v & w".into()),
                    ("bad-name".into(), "x".into()),
                ],
            },
            ContainerItem {
                name: "beta".into(),
                last_modified_ms: 0,
                etag: "\"0x8D2\"".into(),
                metadata: vec![],
            },
        ];
        let x = list_containers_xml(
            "https://acct.blob.core.windows.net/",
            Some("a"),
            None,
            Some(2),
            &items,
            Some("beta"),
            true,
        );
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"https://acct.blob.core.windows.net/\">\
             <Prefix>a</Prefix><MaxResults>2</MaxResults><Containers>\
             <Container><Name>alpha</Name><Properties><Last-Modified>Mon, 07 Dec 2026 20:00:00 GMT</Last-Modified><Etag>\"0x8D1\"</Etag>\
             <LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><HasImmutabilityPolicy>false</HasImmutabilityPolicy>\
             <HasLegalHold>false</HasLegalHold></Properties><Metadata><k>v &amp; w</k></Metadata></Container>\
             <Container><Name>beta</Name><Properties><Last-Modified>Thu, 01 Jan 1970 00:00:00 GMT</Last-Modified><Etag>\"0x8D2\"</Etag>\
             <LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><HasImmutabilityPolicy>false</HasImmutabilityPolicy>\
             <HasLegalHold>false</HasLegalHold></Properties><Metadata /></Container>\
             </Containers><NextMarker>beta</NextMarker></EnumerationResults>"
        );
        let x = list_containers_xml(
            "http://h/a\"b",
            None,
            Some("m"),
            None,
            &items[1..],
            None,
            false,
        );
        assert!(
            x.contains("ServiceEndpoint=\"http://h/a&quot;b\"><Marker>m</Marker><Containers>"),
            "{x}"
        );
        assert!(
            x.ends_with(
                "</Properties></Container></Containers><NextMarker /></EnumerationResults>"
            ),
            "{x}"
        );
    }

    fn blob(name: &str) -> BlobItem {
        BlobItem {
            name: name.into(),
            created_ms: 0,
            last_modified_ms: T0_MS,
            etag: "\"0x1\"".into(),
            size: 11,
            content_type: "text/plain".into(),
            content_encoding: None,
            content_language: Some("en".into()),
            content_md5: Some("XUFAKrxLKna5cZ2REBfFkg==".into()),
            cache_control: None,
            content_disposition: None,
            metadata: vec![("a".into(), "1".into())],
        }
    }

    #[test]
    fn blobs_body() {
        let entries = [
            ListEntry::Blob(blob("dir/a<b>.txt")),
            ListEntry::Prefix("dir/sub/".into()),
            ListEntry::Blob(blob("x\ry")),
        ];
        let x = list_blobs_xml(
            "https://acct.blob.core.windows.net/",
            "box",
            Some("dir/"),
            None,
            Some(10),
            Some("/"),
            &entries,
            None,
            true,
        );
        let want = "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"https://acct.blob.core.windows.net/\" ContainerName=\"box\">\
             <Prefix>dir/</Prefix><MaxResults>10</MaxResults><Delimiter>/</Delimiter><Blobs>\
             <Blob><Name>dir/a&lt;b&gt;.txt</Name><Properties><Creation-Time>Thu, 01 Jan 1970 00:00:00 GMT</Creation-Time>\
             <Last-Modified>Mon, 07 Dec 2026 20:00:00 GMT</Last-Modified><Etag>\"0x1\"</Etag><Content-Length>11</Content-Length>\
             <Content-Type>text/plain</Content-Type><Content-Encoding /><Content-Language>en</Content-Language>\
             <Content-MD5>XUFAKrxLKna5cZ2REBfFkg==</Content-MD5><Cache-Control /><Content-Disposition />\
             <BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred>\
             <LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted>\
             </Properties><Metadata><a>1</a></Metadata></Blob>\
             <BlobPrefix><Name>dir/sub/</Name></BlobPrefix>\
             <Blob><Name Encoded=\"true\">x%0Dy</Name><Properties>";
        assert!(x.starts_with(want), "{x}");
        assert!(x.ends_with("</Metadata></Blob></Blobs><NextMarker /></EnumerationResults>"));
        let plain = list_blobs_xml(
            "e",
            "c",
            None,
            None,
            None,
            None,
            &entries[..1],
            Some("n"),
            false,
        );
        assert!(
            !plain.contains("<Metadata")
                && !plain.contains("<Prefix")
                && !plain.contains("<Delimiter")
        );
        assert!(plain.ends_with("</Blobs><NextMarker>n</NextMarker></EnumerationResults>"));
    }

    /// Test-side serializer for Put Block List bodies.
    fn block_list_body(entries: &[BlockRef]) -> String {
        let mut out = String::from(DECL);
        out.push_str("<BlockList>");
        for e in entries {
            let (tag, id) = match e {
                BlockRef::Committed(id) => ("Committed", id),
                BlockRef::Uncommitted(id) => ("Uncommitted", id),
                BlockRef::Latest(id) => ("Latest", id),
            };
            out.push_str(&format!("<{tag}>"));
            push_text(&mut out, id);
            out.push_str(&format!("</{tag}>"));
        }
        out.push_str("</BlockList>");
        out
    }

    /// The names (decoded when `Encoded="true"`) and metadata of a list
    /// body, read back with quick-xml; fails on malformed XML.
    type ReadBack = (Vec<String>, Vec<(String, String)>);

    fn read_back(xml: &str) -> Result<ReadBack, String> {
        let mut reader = Reader::from_str(xml);
        let mut names = Vec::new();
        let mut meta = Vec::new();
        let mut path: Vec<String> = Vec::new();
        let mut encoded = false;
        let mut text = String::new();
        loop {
            match reader.read_event().map_err(|e| e.to_string())? {
                Event::Start(e) => {
                    encoded = e
                        .attributes()
                        .any(|a| a.is_ok_and(|a| a.key.as_ref() == b"Encoded"));
                    path.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                    text.clear();
                }
                Event::Empty(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    if path.last().is_some_and(|p| p == "Metadata") {
                        meta.push((name, String::new()));
                    } else if name == "Name" {
                        names.push(String::new());
                    }
                }
                Event::Text(t) => text.push_str(&t.xml10_content().map_err(|e| e.to_string())?),
                Event::GeneralRef(r) => {
                    let ch = resolve_reference(&r).map_err(|e| e.to_string())?;
                    text.push(ch);
                }
                Event::End(_) => {
                    let name = path.pop().unwrap_or_default();
                    if path.last().is_some_and(|p| p == "Metadata") {
                        meta.push((name, text.clone()));
                    } else if name == "Name" {
                        names.push(if encoded {
                            percent_encoding::percent_decode_str(&text)
                                .decode_utf8_lossy()
                                .into_owned()
                        } else {
                            text.clone()
                        });
                    }
                    text.clear();
                }
                Event::Eof => return Ok((names, meta)),
                _ => {}
            }
        }
    }

    proptest! {
        #[test]
        fn parse_block_list_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_block_list(&body);
        }

        #[test]
        fn parse_block_list_never_panics_on_xmlish(parts in proptest::collection::vec(proptest::sample::select(vec![
            "<BlockList>", "</BlockList>", "<Latest>", "</Latest>", "<Committed>", "</Committed>", "<Uncommitted/>",
            "QQ==", "&amp;", "&#65;", "&#xFFFF;", "&bogus;", "<![CDATA[x]]>", "<!--c-->", "<?pi x?>", "<?xml version=\"1.0\"?>",
            " ", "\n", "<", ">", "&", "\"", "<!DOCTYPE a>", "<a b='c'>", "</a>", "<Latest x=\"1\" x=\"2\">",
        ]), 0..30)) {
            let body = parts.concat();
            let _ = parse_block_list(body.as_bytes());
        }

        #[test]
        fn block_list_round_trip(entries in proptest::collection::vec(
            ("[A-Za-z0-9+/=<>&'\" ]{0,30}", 0u8..3).prop_map(|(id, k)| {
                let id = id.trim().to_owned();
                match k { 0 => BlockRef::Committed(id), 1 => BlockRef::Uncommitted(id), _ => BlockRef::Latest(id) }
            }),
            0..50,
        )) {
            let body = block_list_body(&entries);
            prop_assert_eq!(parse_block_list(body.as_bytes()), Ok(entries));
        }

        #[test]
        fn http_date_round_trip(secs in -62_135_596_800i64..253_402_300_799) {
            prop_assert_eq!(parse_http_date(&http_date(secs * 1000)), Some(secs));
        }

        #[test]
        fn date_helpers_never_panic(ms in any::<i64>(), s in any::<String>()) {
            let _ = http_date(ms);
            let _ = iso8601_7(ms);
            let _ = parse_http_date(&s);
            let _ = error_xml(&s, &s, &s, ms);
        }

        #[test]
        fn error_xml_is_well_formed(code in any::<String>(), msg in any::<String>(), id in any::<String>()) {
            let x = error_xml(&code, &msg, &id, 0);
            prop_assert!(read_back(&x).is_ok(), "{}", x);
        }

        #[test]
        fn list_bodies_round_trip_names(
            names in proptest::collection::vec(any::<String>(), 0..8),
            meta in proptest::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,8}", "[ -~]{0,20}"), 0..4),
            endpoint in any::<String>(),
            prefix in proptest::option::of(any::<String>()),
        ) {
            let entries: Vec<ListEntry> = names.iter().enumerate().map(|(i, n)| {
                if i % 3 == 2 { ListEntry::Prefix(n.clone()) } else {
                    let mut b = blob(n);
                    b.metadata = meta.clone();
                    b.content_type = n.clone();
                    ListEntry::Blob(b)
                }
            }).collect();
            let x = list_blobs_xml(&endpoint, &endpoint, prefix.as_deref(), None, None, None, &entries, None, true);
            let (got, got_meta) = read_back(&x).map_err(|e| TestCaseError::fail(format!("{e}: {x}")))?;
            prop_assert_eq!(&got, &names);
            let blobs = entries.iter().filter(|e| matches!(e, ListEntry::Blob(_))).count();
            prop_assert_eq!(got_meta.len(), blobs * meta.len());

            let items: Vec<ContainerItem> = names.iter().map(|n| ContainerItem {
                name: n.clone(), last_modified_ms: 0, etag: n.clone(), metadata: meta.clone(),
            }).collect();
            let x = list_containers_xml(&endpoint, prefix.as_deref(), prefix.as_deref(), Some(5), &items, prefix.as_deref(), true);
            let (got, got_meta) = read_back(&x).map_err(|e| TestCaseError::fail(format!("{e}: {x}")))?;
            // Container names are not encoded: characters XML cannot carry come back as U+FFFD.
            let want: Vec<String> = names.iter().map(|n| n.chars().map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' }).collect()).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(got_meta.len(), items.len() * meta.len());
        }
    }
}
