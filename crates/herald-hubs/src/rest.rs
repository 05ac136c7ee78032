//! REST send API parsing (spec §A5).
//!
//! * Single event: the body is the payload; `BrokerProperties` (a JSON
//!   object) may carry `PartitionKey`; every other non-standard header
//!   becomes a user property ([`user_properties_from_headers`]).
//! * Batch (`Content-Type: application/vnd.microsoft.servicebus.json`): a
//!   JSON array of `{"Body", "UserProperties", "BrokerProperties",
//!   "IsBodyBase64"}` objects ([`parse_batch`]); headers are ignored.
//!
//! Field names in the JSON are matched case-insensitively and unknown
//! fields are ignored, so Service Bus–style payloads with extra broker
//! properties (`MessageId`, `Label`, ...) are accepted. The 1 MB limit
//! applies to the whole request ([`MAX_PUBLICATION_BYTES`]).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::{NewEvent, PropertyValue};

/// The largest request body accepted, for one event or a whole batch (1 MB,
/// the Standard/Premium/Dedicated limit).
pub const MAX_PUBLICATION_BYTES: usize = 1_048_576;

/// The content type of a batch send.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// Why a REST send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// The request body exceeds [`MAX_PUBLICATION_BYTES`].
    #[error(
        "The request body is {size} bytes; the limit for one event or one batch is {MAX_PUBLICATION_BYTES} bytes (1 MB)."
    )]
    TooLarge {
        /// The body's size.
        size: usize,
    },
    /// The `BrokerProperties` header is not a JSON object of the expected shape.
    #[error(
        "The BrokerProperties header is invalid: {0}. Send a JSON object such as {{\"PartitionKey\": \"device-7\"}}."
    )]
    BadBrokerProperties(String),
    /// The batch body is not a JSON array.
    #[error("The batch body is not a JSON array of events: {0}.")]
    BadBatch(String),
    /// One batch item is wrong; `index` is 0-based.
    #[error("Event {index} of the batch is invalid: {reason}.")]
    BadBatchEvent {
        /// Position in the array, 0-based.
        index: usize,
        /// What exactly is wrong.
        reason: String,
    },
    /// The batch array has no events.
    #[error("The batch is empty; send at least one event.")]
    EmptyBatch,
}

impl RestError {
    /// The HTTP status for this error: 403 for an oversize request (the
    /// spec's default, per the Service Bus doc), 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            RestError::TooLarge { .. } => 403,
            _ => 400,
        }
    }
}

/// Refuses a request body larger than [`MAX_PUBLICATION_BYTES`]. Edges
/// should call it with `Content-Length` before reading the body, too.
pub fn check_publication_size(size: usize) -> Result<(), RestError> {
    if size > MAX_PUBLICATION_BYTES {
        Err(RestError::TooLarge { size })
    } else {
        Ok(())
    }
}

/// The broker properties Herald uses; others are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerProperties {
    /// `PartitionKey`: events with the same key share a partition.
    pub partition_key: Option<String>,
}

impl<'de> Deserialize<'de> for BrokerProperties {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BrokerProperties;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BrokerProperties, A::Error> {
                let mut out = BrokerProperties::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key.eq_ignore_ascii_case("PartitionKey") {
                        out.partition_key = map
                            .next_value::<Option<String>>()
                            .map_err(|_| de::Error::custom("PartitionKey must be a string"))?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the `BrokerProperties` header of a single-event send.
pub fn parse_broker_properties(header: &str) -> Result<BrokerProperties, RestError> {
    serde_json::from_str(header).map_err(|e| RestError::BadBrokerProperties(e.to_string()))
}

/// User properties in arrival order; a repeated name keeps its last value.
struct OrderedProperties(Vec<(String, PropertyValue)>);

fn set_property(
    props: &mut Vec<(String, PropertyValue)>,
    name: String,
    value: PropertyValue,
    ci: bool,
) {
    let same = |n: &String| {
        if ci {
            n.eq_ignore_ascii_case(&name)
        } else {
            *n == name
        }
    };
    match props.iter_mut().find(|(n, _)| same(n)) {
        Some(slot) => slot.1 = value,
        None => props.push((name, value)),
    }
}

impl<'de> Deserialize<'de> for OrderedProperties {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedProperties;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of property names to values")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedProperties, A::Error> {
                let mut props = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<PropertyValue>().map_err(|_| {
                        de::Error::custom(format!(
                            "user property '{}' must be a string, number, boolean or null",
                            crate::names::shown(&name)
                        ))
                    })?;
                    set_property(&mut props, name, value, false);
                }
                Ok(OrderedProperties(props))
            }
        }
        d.deserialize_map(V)
    }
}

/// One batch item as sent, before the body is interpreted.
struct BatchItem<'a> {
    body: Option<&'a RawValue>,
    base64: bool,
    properties: Vec<(String, PropertyValue)>,
    broker: BrokerProperties,
}

impl<'de: 'a, 'a> Deserialize<'de> for BatchItem<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = BatchItem<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with a Body")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BatchItem<'a>, A::Error> {
                let mut item = BatchItem {
                    body: None,
                    base64: false,
                    properties: Vec::new(),
                    broker: BrokerProperties::default(),
                };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.to_ascii_lowercase().as_str() {
                        "body" => item.body = Some(map.next_value::<&'a RawValue>()?),
                        "isbodybase64" => {
                            item.base64 = map
                                .next_value::<Option<bool>>()
                                .map_err(|_| {
                                    de::Error::custom("IsBodyBase64 must be true or false")
                                })?
                                .unwrap_or(false)
                        }
                        "userproperties" => {
                            item.properties = map
                                .next_value::<Option<OrderedProperties>>()?
                                .map_or_else(Vec::new, |p| p.0)
                        }
                        "brokerproperties" => {
                            item.broker = map
                                .next_value::<Option<BrokerProperties>>()?
                                .unwrap_or_default()
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(item)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Parses a batch body (`application/vnd.microsoft.servicebus.json`).
///
/// `Body` may be a JSON string (its text is the payload, or its base64
/// decoding when `IsBodyBase64` is true) or any other JSON value, whose
/// JSON text is then the payload. `UserProperties` values must be strings,
/// numbers, booleans or null; integers become `Long`, other numbers
/// `Double`. `BrokerProperties.PartitionKey` sets the partition key.
pub fn parse_batch(body: &[u8]) -> Result<Vec<NewEvent>, RestError> {
    check_publication_size(body.len())?;
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| RestError::BadBatch(e.to_string()))?;
    if items.is_empty() {
        return Err(RestError::EmptyBatch);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let bad = |reason: String| RestError::BadBatchEvent { index, reason };
            let item: BatchItem<'_> =
                serde_json::from_str(raw.get()).map_err(|e| bad(e.to_string()))?;
            let raw_body = item.body.ok_or_else(|| bad("it has no Body".into()))?;
            let text = raw_body.get();
            let body =
                if text.starts_with('"') {
                    let s: String = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                    if item.base64 {
                        Bytes::from(STANDARD.decode(s.trim()).map_err(|_| {
                            bad("IsBodyBase64 is true but Body is not base64".into())
                        })?)
                    } else {
                        Bytes::from(s)
                    }
                } else if text == "null" {
                    return Err(bad("Body is null".into()));
                } else if item.base64 {
                    return Err(bad("IsBodyBase64 is true but Body is not a string".into()));
                } else {
                    Bytes::copy_from_slice(text.as_bytes())
                };
            Ok(NewEvent {
                body,
                partition_key: item.broker.partition_key,
                properties: item.properties,
                amqp: None,
            })
        })
        .collect()
}

/// Header names (lower case) that are HTTP or platform machinery, never
/// user properties.
const STANDARD_HEADERS: &[&str] = &[
    // Request and representation headers (RFC 9110, 9111, 9112, 6265).
    "accept",
    "accept-charset",
    "accept-datetime",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cache-control",
    "connection",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "dnt",
    "early-data",
    "expect",
    "forwarded",
    "from",
    "host",
    "http2-settings",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "max-forwards",
    "origin",
    "pragma",
    // Not "priority" (RFC 9218): Service Bus documents `Priority: "High"`
    // as a user property, and no common sender sets the HTTP one.
    "range",
    "referer",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "upgrade-insecure-requests",
    "user-agent",
    "via",
    "warning",
    // Distributed tracing (W3C Trace Context, Baggage; Azure's older ids).
    "traceparent",
    "tracestate",
    "baggage",
    "request-id",
    "correlation-context",
    "diagnostic-id",
    // Event Hubs / Service Bus REST machinery.
    "brokerproperties",
    "servicebusauthorization",
    // Proxies and load balancers.
    "x-real-ip",
    "x-request-id",
    "x-correlation-id",
    "x-http-method-override",
];

/// Header name prefixes (lower case) that are machinery: Azure's own
/// `x-ms-*` (e.g. `x-ms-retrypolicy`), proxies' `x-forwarded-*`, browsers'
/// `sec-*`, `proxy-*`, CORS `access-control-*`, and HTTP/2 pseudo-headers.
const STANDARD_PREFIXES: &[&str] = &[
    "x-ms-",
    "x-forwarded-",
    "sec-",
    "proxy-",
    "access-control-",
    ":",
];

/// Whether a header is HTTP/platform machinery rather than a user
/// property: the names in `STANDARD_HEADERS` and the prefixes in
/// `STANDARD_PREFIXES` (see the source for the full list), case-insensitive.
pub fn is_standard_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    STANDARD_HEADERS.contains(&lower.as_str())
        || STANDARD_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// The user properties of a single-event send: every header that is not
/// [standard](is_standard_header), as a string property under the name as
/// received (HTTP/2 delivers names in lower case). A value wrapped in
/// double quotes is unwrapped (the Service Bus convention `Priority: "High"`);
/// other values are kept as text. A repeated header keeps its last value.
pub fn user_properties_from_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, PropertyValue)> {
    let mut props = Vec::new();
    for (name, value) in headers {
        if name.is_empty() || is_standard_header(name) {
            continue;
        }
        let v = value.trim();
        let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            &v[1..v.len() - 1]
        } else {
            v
        };
        set_property(
            &mut props,
            name.to_owned(),
            PropertyValue::String(v.to_owned()),
            true,
        );
    }
    props
}

/// Builds the event of a single-event send from its body and headers:
/// checks the size, reads `BrokerProperties` and collects user properties.
pub fn single_event<'a>(
    body: Bytes,
    headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<NewEvent, RestError> {
    check_publication_size(body.len())?;
    let broker = match headers
        .clone()
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("BrokerProperties"))
    {
        Some((_, v)) => parse_broker_properties(v)?,
        None => BrokerProperties::default(),
    };
    Ok(NewEvent {
        body,
        partition_key: broker.partition_key,
        properties: user_properties_from_headers(headers),
        amqp: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn broker_properties() {
        let b = parse_broker_properties(
            r#"{"PartitionKey": "32119834-65f3-48c1-b366-619df2e4c400", "Label": "x"}"#,
        )
        .unwrap();
        assert_eq!(
            b.partition_key.as_deref(),
            Some("32119834-65f3-48c1-b366-619df2e4c400")
        );
        assert_eq!(
            parse_broker_properties("{}").unwrap(),
            BrokerProperties::default()
        );
        assert_eq!(
            parse_broker_properties(r#"{"partitionkey":null}"#)
                .unwrap()
                .partition_key,
            None
        );
        for bad in ["", "[]", "{", r#"{"PartitionKey": 5}"#, "\"x\""] {
            let e = parse_broker_properties(bad).unwrap_err();
            assert!(matches!(e, RestError::BadBrokerProperties(_)), "{bad}");
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn spec_batch() {
        let body = br#"[{"Body":"Message1","UserProperties":{"Alert":"Strong Wind"}},
 {"Body":"Message2","BrokerProperties":{"PartitionKey":"device-7"}}]"#;
        let events = parse_batch(body).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].body, "Message1");
        assert_eq!(
            events[0].properties,
            [("Alert".to_string(), PropertyValue::from("Strong Wind"))]
        );
        assert_eq!(events[0].partition_key, None);
        assert_eq!(events[1].body, "Message2");
        assert_eq!(events[1].partition_key.as_deref(), Some("device-7"));
    }

    #[test]
    fn batch_body_forms_and_properties() {
        let body = br#"[
            {"body": "aGk=", "isBodyBase64": true, "MessageId": "m1"},
            {"Body": {"temp": 21.5}, "UserProperties": {"z": 1, "a": -2, "f": 1.5, "b": false, "n": null, "z": 3}},
            {"Body": "caf\u00e9", "UserProperties": null, "BrokerProperties": null}
        ]"#;
        let e = parse_batch(body).unwrap();
        assert_eq!(e[0].body, "hi");
        assert_eq!(e[1].body, r#"{"temp": 21.5}"#);
        assert_eq!(
            e[1].properties,
            [
                ("z".to_string(), PropertyValue::Long(3)),
                ("a".to_string(), PropertyValue::Long(-2)),
                ("f".to_string(), PropertyValue::Double(1.5)),
                ("b".to_string(), PropertyValue::Bool(false)),
                ("n".to_string(), PropertyValue::Null),
            ]
        );
        assert_eq!(e[2].body, "café");
    }

    #[test]
    fn batch_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"{}", "not a JSON array"),
            (b"not json", "not a JSON array"),
            (b"[]", "empty"),
            (b"[1]", "Event 0"),
            (
                br#"[{"Body":"a"},{"UserProperties":{}}]"#,
                "Event 1 of the batch is invalid: it has no Body",
            ),
            (br#"[{"Body":null}]"#, "Body is null"),
            (br#"[{"Body":"%%","IsBodyBase64":true}]"#, "not base64"),
            (br#"[{"Body":5,"IsBodyBase64":true}]"#, "not a string"),
            (br#"[{"Body":"a","IsBodyBase64":"yes"}]"#, "IsBodyBase64"),
            (
                br#"[{"Body":"a","UserProperties":{"x":[1]}}]"#,
                "user property 'x'",
            ),
            (
                br#"[{"Body":"a","BrokerProperties":{"PartitionKey":1}}]"#,
                "PartitionKey must be a string",
            ),
        ];
        for (body, needle) in cases {
            let e = parse_batch(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{}: {e}", String::from_utf8_lossy(body));
        }
        let big = vec![b' '; MAX_PUBLICATION_BYTES + 1];
        let e = parse_batch(&big).unwrap_err();
        assert_eq!(
            e,
            RestError::TooLarge {
                size: MAX_PUBLICATION_BYTES + 1
            }
        );
        assert_eq!(e.status(), 403);
        assert!(check_publication_size(MAX_PUBLICATION_BYTES).is_ok());
    }

    #[test]
    fn header_properties() {
        let headers = [
            (
                "Content-Type",
                "application/atom+xml;type=entry;charset=utf-8",
            ),
            ("Authorization", "SharedAccessSignature sr=..."),
            ("Host", "ns.servicebus.windows.net"),
            ("BrokerProperties", r#"{"PartitionKey":"k1"}"#),
            ("x-ms-retrypolicy", "NoRetry"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("traceparent", "00-abc-def-01"),
            (":authority", "ns"),
            ("Alert", "Strong Wind"),
            ("Priority", "\"High\""),
            ("alert", "Calm"),
        ];
        let props = user_properties_from_headers(headers.iter().copied());
        assert_eq!(
            props,
            [
                ("Alert".to_string(), PropertyValue::from("Calm")),
                ("Priority".to_string(), PropertyValue::from("High")),
            ]
        );
        let ev = single_event(Bytes::from_static(b"payload"), headers.iter().copied()).unwrap();
        assert_eq!(ev.partition_key.as_deref(), Some("k1"));
        assert_eq!(ev.body, "payload");
        assert_eq!(ev.properties, props);
        assert!(single_event(Bytes::new(), [("brokerproperties", "nope")]).is_err());
        assert!(is_standard_header("Content-Length"));
        assert!(!is_standard_header("Alert"));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,200}") {
            let _ = parse_broker_properties(&s);
            let _ = parse_batch(s.as_bytes());
            let _ = user_properties_from_headers([(s.as_str(), s.as_str())]);
        }

        #[test]
        fn bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_batch(&b);
        }

        #[test]
        fn batch_round_trip(items in proptest::collection::vec((".{0,20}", proptest::option::of("[a-z0-9-]{1,10}"), proptest::collection::vec(("[a-zA-Z]{1,6}", any::<i64>()), 0..3)), 1..5)) {
            let json: Vec<serde_json::Value> = items.iter().map(|(body, key, props)| {
                let mut m = serde_json::Map::new();
                m.insert("Body".into(), body.clone().into());
                let up: serde_json::Map<_, _> = props.iter().map(|(k, v)| (k.clone(), (*v).into())).collect();
                m.insert("UserProperties".into(), up.into());
                if let Some(k) = key {
                    m.insert("BrokerProperties".into(), serde_json::json!({"PartitionKey": k}));
                }
                m.into()
            }).collect();
            let body = serde_json::to_vec(&json).unwrap();
            let events = parse_batch(&body).unwrap();
            prop_assert_eq!(events.len(), items.len());
            for (e, (body, key, props)) in events.iter().zip(&items) {
                prop_assert_eq!(&e.body[..], body.as_bytes());
                prop_assert_eq!(&e.partition_key, key);
                let mut want: Vec<(String, PropertyValue)> = Vec::new();
                // serde_json's map sorts keys and keeps the last duplicate.
                let mut sorted: std::collections::BTreeMap<&String, i64> = Default::default();
                for (k, v) in props { sorted.insert(k, *v); }
                for (k, v) in sorted { want.push((k.clone(), PropertyValue::Long(v))); }
                prop_assert_eq!(&e.properties, &want);
            }
        }
    }
}
