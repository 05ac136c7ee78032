//! Publish bodies and schema conversion (spec `eventgrid.md` §1, §2.2, §2.4,
//! §3.1–§3.3 and §4).
//!
//! [`parse_publish`] turns a publish request body into [`PublishedEvent`]s,
//! one stored JSON text per event: an Event Grid envelope for Event Grid and
//! custom input, a structured CloudEvent for CloudEvents input. [`render`]
//! (or [`render_raw`], which keeps `data` byte-exact) turns a stored text into
//! what a subscription with a given delivery schema receives.
//!
//! `data` is never parsed into a tree on the way in: it is carried as
//! [`RawValue`] so its key order and number text survive unchanged.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, Utc};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::filter::EnvelopeKind;

/// The publish size limit in bytes, per event and per request (spec §1:
/// "1 MB" read as 1,048,576 bytes).
pub const MAX_EVENT_BYTES: usize = 1_048_576;

/// Error detail codes carried by [`PublishError::BadRequest`].
pub mod codes {
    /// The body is not UTF-8 or not JSON, or is not shaped as the schema
    /// requires (array of objects).
    pub const INPUT_JSON_INVALID: &str = "InputJsonInvalid";
    /// A required property or attribute is missing.
    pub const MISSING_REQUIRED_PROPERTY: &str = "MissingRequiredProperty";
    /// A property or attribute has the wrong type or an unacceptable value.
    pub const INVALID_PROPERTY_VALUE: &str = "InvalidPropertyValue";
    /// An Event Grid event names a `topic` other than the one published to.
    pub const TOPIC_MISMATCH: &str = "TopicMismatch";
    /// The Content-Type belongs to another input schema than the topic's.
    pub const INPUT_SCHEMA_MISMATCH: &str = "InputSchemaMismatch";
    /// A CloudEvents binary-mode `ce-*` header is malformed.
    pub const INVALID_HEADER: &str = "InvalidHeader";
}

/// A topic's `inputSchema`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputSchemaKind {
    /// Event Grid events: `[{"id", "eventType", "subject", "eventTime", "data", ...}]`.
    EventGridSchema,
    /// CloudEvents 1.0, structured, batched or binary mode.
    CloudEventSchemaV1_0,
    /// Any JSON objects, mapped onto the Event Grid envelope by an `inputSchemaMapping`.
    CustomEventSchema,
}

/// A subscription's `eventDeliverySchema`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliverySchema {
    /// Deliver Event Grid envelopes.
    EventGridSchema,
    /// Deliver CloudEvents 1.0.
    CloudEventSchemaV1_0,
    /// Deliver each event as it was published (custom topics only).
    CustomInputSchema,
}

/// One mapped envelope field: `{"sourceField": "...", "defaultValue": "..."}`.
/// `id`, `topic` and `eventTime` accept only `sourceField` (see
/// [`InputSchemaMapping::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingField {
    /// The input field (a dotted path) the envelope field is taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_field: Option<String>,
    /// The value used when the input has no such field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

/// `inputSchemaMapping.properties`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingProperties {
    /// Where the event `id` comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<MappingField>,
    /// Where the event `topic` comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<MappingField>,
    /// Where `eventTime` comes from (the publish time when unmapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<MappingField>,
    /// Where `eventType` comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<MappingField>,
    /// Where `subject` comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<MappingField>,
    /// Where `dataVersion` comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<MappingField>,
}

/// Azure's inputSchemaMapping JSON:
/// `{"inputSchemaMappingType":"Json","properties":{"id":{"sourceField":..},"topic":{..},"eventTime":{..},"eventType":{"sourceField":..,"defaultValue":..},"subject":{..},"dataVersion":{..}}}`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputSchemaMapping {
    /// Always `"Json"` in Azure; kept as sent so the JSON round-trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema_mapping_type: Option<String>,
    /// The envelope fields' mappings.
    #[serde(default)]
    pub properties: MappingProperties,
}

impl InputSchemaMapping {
    /// Checks the rules of spec §4: `id`, `topic` and `eventTime` accept only
    /// `sourceField`; a configured `sourceField` is not empty; the mapping
    /// type, if given, is `Json`.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.input_schema_mapping_type
            && !t.eq_ignore_ascii_case("Json")
        {
            return Err("inputSchemaMapping.inputSchemaMappingType must be 'Json'.".into());
        }
        let p = &self.properties;
        let fields = [
            ("id", &p.id, false),
            ("topic", &p.topic, false),
            ("eventTime", &p.event_time, false),
            ("eventType", &p.event_type, true),
            ("subject", &p.subject, true),
            ("dataVersion", &p.data_version, true),
        ];
        for (name, field, default_allowed) in fields {
            let Some(field) = field else { continue };
            if !default_allowed && field.default_value.is_some() {
                return Err(format!(
                    "inputSchemaMapping.properties.{name} accepts only sourceField, not defaultValue."
                ));
            }
            if field.source_field.as_deref() == Some("") {
                return Err(format!(
                    "inputSchemaMapping.properties.{name}.sourceField must not be empty."
                ));
            }
        }
        Ok(())
    }
}

/// Whether a topic with `input` schema can feed a subscription delivering
/// `output` (spec §4 table).
pub fn compatible(input: &InputSchemaKind, output: DeliverySchema) -> bool {
    use DeliverySchema as D;
    use InputSchemaKind as I;
    match input {
        I::EventGridSchema => matches!(output, D::EventGridSchema | D::CloudEventSchemaV1_0),
        I::CloudEventSchemaV1_0 => output == D::CloudEventSchemaV1_0,
        I::CustomEventSchema => true,
    }
}

/// Which envelope [`PublishedEvent::body`] uses: Event Grid for
/// `EventGridSchema` and `CustomEventSchema` inputs, CloudEvents for
/// `CloudEventSchemaV1_0`.
pub fn stored_envelope(input: &InputSchemaKind) -> EnvelopeKind {
    match input {
        InputSchemaKind::EventGridSchema | InputSchemaKind::CustomEventSchema => {
            EnvelopeKind::EventGrid
        }
        InputSchemaKind::CloudEventSchemaV1_0 => EnvelopeKind::CloudEvents,
    }
}

/// One accepted event, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    /// The event id.
    pub id: String,
    /// The event type (`eventType`, or CloudEvents `type`).
    pub event_type: String,
    /// `""` for a CloudEvent without `subject`.
    pub subject: String,
    /// The stored JSON text: EventGrid input → the Event Grid envelope as
    /// delivered (topic and metadataVersion "1" stamped, dataVersion "" if
    /// absent, unknown top-level members dropped, `data` kept byte-exact);
    /// CloudEvents input → the structured CloudEvent JSON (extensions kept
    /// verbatim, data or data_base64 kept, never both; binary mode turned
    /// into structured); Custom input → an Event Grid envelope built from the
    /// mapping with `data` = the whole original object (byte-exact).
    pub body: String,
}

/// Why a publish request was refused. Messages name at most an event index
/// and a property name; they never echo values from the request.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// HTTP 400. `code` is one of [`codes`].
    #[error("{message}")]
    BadRequest {
        /// The error detail code, one of [`codes`].
        code: &'static str,
        /// What is wrong, naming the event index and property.
        message: String,
    },
    /// HTTP 413.
    #[error("{0}")]
    TooLarge(String),
    /// HTTP 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl PublishError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::TooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn missing(index: usize, name: &str) -> Self {
        Self::bad(
            codes::MISSING_REQUIRED_PROPERTY,
            format!(
                "Event at index {index} is missing the required property '{}'.",
                shown(name)
            ),
        )
    }

    fn invalid(index: usize, name: &str, why: &str) -> Self {
        Self::bad(
            codes::INVALID_PROPERTY_VALUE,
            format!(
                "Event at index {index} has an invalid value for property '{}': {why}.",
                shown(name)
            ),
        )
    }
}

/// Parses a publish request body for a topic.
///
/// * `content_type`: the raw Content-Type header (media types compare
///   case-insensitively, parameters ignored).
/// * `ce_headers`: all request headers whose name starts with `ce-`
///   (lower-cased name, raw value), for CloudEvents binary mode.
/// * `topic_id`: the topic's ARM resource id. An Event Grid `topic` must
///   equal it if present; it is stamped when absent.
/// * `now`: the publish time, used for unmapped custom `eventTime`.
pub fn parse_publish(
    input: &InputSchemaKind,
    mapping: Option<&InputSchemaMapping>,
    content_type: Option<&str>,
    ce_headers: &[(String, String)],
    body: &[u8],
    topic_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<PublishedEvent>, PublishError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(PublishError::TooLarge(format!(
            "The request body is larger than the {MAX_EVENT_BYTES}-byte limit."
        )));
    }
    let media = media_type(content_type);
    let events = match input {
        InputSchemaKind::EventGridSchema => {
            reject_cloudevents_media(media.as_deref(), "EventGridSchema")?;
            parse_eventgrid(body_text(body)?, topic_id)
        }
        InputSchemaKind::CustomEventSchema => {
            reject_cloudevents_media(media.as_deref(), "CustomEventSchema")?;
            let default_mapping = InputSchemaMapping::default();
            parse_custom(
                body_text(body)?,
                mapping.unwrap_or(&default_mapping),
                topic_id,
                now,
            )
        }
        InputSchemaKind::CloudEventSchemaV1_0 => {
            parse_cloudevents(media.as_deref(), content_type, ce_headers, body)
        }
    }?;
    // Stored as text columns, where NUL has no place (PostgreSQL refuses it).
    if let Some(i) = events.iter().position(|e| {
        e.id.contains('\0') || e.event_type.contains('\0') || e.subject.contains('\0')
    }) {
        return Err(PublishError::bad(
            "InputJsonInvalid",
            format!("Event at index {i}: id, type and subject must not contain NUL characters."),
        ));
    }
    Ok(events)
}

/// Renders one stored event (a [`PublishedEvent::body`] of a topic with
/// `input` schema) for a subscription's delivery schema:
///
/// * EG→EG, Custom→EG, CE→CE: the stored JSON;
/// * EG→CE, Custom→CE: the spec §4 table (`topic`→`source`,
///   `eventType`→`type`, `eventTime`→`time`, `subject`, `id`, `data`,
///   `specversion` `"1.0"`; `dataVersion` becomes the extension
///   `dataversion` only when `emit_dataversion`);
/// * Custom→Custom: the original object.
///
/// Other combinations are errors (see [`compatible`]). The returned
/// [`serde_json::Value`] does not keep `data`'s key order or number text;
/// delivery code that must be byte-exact uses [`render_raw`].
pub fn render(
    stored: &str,
    input: &InputSchemaKind,
    output: DeliverySchema,
    emit_dataversion: bool,
) -> Result<serde_json::Value, String> {
    let text = render_raw(stored, input, output, emit_dataversion)?;
    serde_json::from_str(&text).map_err(|e| format!("rendered event is not JSON: {e}"))
}

/// [`render`] as JSON text, keeping `data` byte-exact (key order and number
/// text as published).
pub fn render_raw(
    stored: &str,
    input: &InputSchemaKind,
    output: DeliverySchema,
    emit_dataversion: bool,
) -> Result<String, String> {
    render_raw_cow(stored, input, output, emit_dataversion).map(std::borrow::Cow::into_owned)
}

/// [`render_raw`] that borrows the stored text when the schemas match, as
/// they do for most deliveries.
pub fn render_raw_cow<'a>(
    stored: &'a str,
    input: &InputSchemaKind,
    output: DeliverySchema,
    emit_dataversion: bool,
) -> Result<std::borrow::Cow<'a, str>, String> {
    use DeliverySchema as D;
    use InputSchemaKind as I;
    use std::borrow::Cow;
    match (input, output) {
        (I::EventGridSchema | I::CustomEventSchema, D::EventGridSchema)
        | (I::CloudEventSchemaV1_0, D::CloudEventSchemaV1_0) => Ok(Cow::Borrowed(stored)),
        (I::EventGridSchema | I::CustomEventSchema, D::CloudEventSchemaV1_0) => {
            eventgrid_to_cloudevent(stored, emit_dataversion).map(Cow::Owned)
        }
        (I::CustomEventSchema, D::CustomInputSchema) => {
            let m = stored_members(stored)?;
            Ok(Cow::Owned(
                m.get("data").map_or("null", |d| d.get()).to_owned(),
            ))
        }
        (I::EventGridSchema | I::CloudEventSchemaV1_0, _) => Err(format!(
            "Events published in {input:?} cannot be delivered in {output:?}."
        )),
    }
}

// ---------------------------------------------------------------------------
// Event Grid schema

fn parse_eventgrid(text: &str, topic_id: &str) -> Result<Vec<PublishedEvent>, PublishError> {
    let items = match top_level(text)? {
        TopLevel::Array(items) => items,
        TopLevel::Object(_) | TopLevel::Other => {
            return Err(PublishError::bad(
                codes::INPUT_JSON_INVALID,
                "The request body must be a JSON array of events, even for a single event.",
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| eventgrid_event(i, raw, topic_id))
        .collect()
}

fn eventgrid_event(
    index: usize,
    raw: &RawValue,
    topic_id: &str,
) -> Result<PublishedEvent, PublishError> {
    let m = event_object(index, raw)?;
    let id = m.required_nonempty(index, "id")?;
    let subject = m.required(index, "subject")?;
    let event_type = m.required_nonempty(index, "eventType")?;
    let event_time = m.required(index, "eventTime")?;
    if !is_rfc3339(&event_time) {
        return Err(PublishError::invalid(
            index,
            "eventTime",
            "must be an RFC 3339 date-time",
        ));
    }
    let data_version = m.optional(index, "dataVersion")?.unwrap_or_default();
    if let Some(v) = m.optional_raw("metadataVersion")
        && serde_json::from_str::<String>(v.get()).ok().as_deref() != Some("1")
    {
        return Err(PublishError::invalid(
            index,
            "metadataVersion",
            "must be \"1\"",
        ));
    }
    if let Some(topic) = m.optional(index, "topic")?
        && !topic.eq_ignore_ascii_case(topic_id)
    {
        return Err(PublishError::bad(
            codes::TOPIC_MISMATCH,
            format!(
                "Event at index {index} has a 'topic' that does not match the resource ID of the topic it was published to."
            ),
        ));
    }
    let data = m.get("data").map_or("null", RawValue::get);
    let body = eventgrid_envelope(EnvelopeParts {
        id: &id,
        topic: topic_id,
        subject: &subject,
        event_type: &event_type,
        event_time: &event_time,
        data,
        data_version: &data_version,
    });
    Ok(PublishedEvent {
        id,
        event_type,
        subject,
        body,
    })
}

struct EnvelopeParts<'a> {
    id: &'a str,
    topic: &'a str,
    subject: &'a str,
    event_type: &'a str,
    event_time: &'a str,
    /// Raw JSON text.
    data: &'a str,
    data_version: &'a str,
}

/// The Event Grid envelope in Azure's delivery order (spec §11).
fn eventgrid_envelope(p: EnvelopeParts<'_>) -> String {
    let mut w = ObjWriter::with_capacity(p.data.len() + 256);
    w.string("id", p.id);
    w.string("topic", p.topic);
    w.string("subject", p.subject);
    w.string("eventType", p.event_type);
    w.string("eventTime", p.event_time);
    w.raw("data", p.data);
    w.string("dataVersion", p.data_version);
    w.string("metadataVersion", "1");
    w.finish()
}

// ---------------------------------------------------------------------------
// Custom input schema

fn parse_custom(
    text: &str,
    mapping: &InputSchemaMapping,
    topic_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<PublishedEvent>, PublishError> {
    let items = match top_level(text)? {
        TopLevel::Array(items) => items,
        TopLevel::Object(one) => vec![one],
        TopLevel::Other => {
            return Err(PublishError::bad(
                codes::INPUT_JSON_INVALID,
                "The request body must be a JSON array of objects or a single JSON object.",
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| custom_event(i, raw, mapping, topic_id, now))
        .collect()
}

fn custom_event(
    index: usize,
    raw: &RawValue,
    mapping: &InputSchemaMapping,
    topic_id: &str,
    now: DateTime<Utc>,
) -> Result<PublishedEvent, PublishError> {
    let m = event_object(index, raw)?;
    let p = &mapping.properties;
    let id = mapped(&m, index, &p.id)?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let event_time = match mapped(&m, index, &p.event_time)? {
        Some(t) if is_rfc3339(&t) => t,
        Some(_) => {
            return Err(PublishError::invalid(
                index,
                source_name(&p.event_time, "eventTime"),
                "must be an RFC 3339 date-time",
            ));
        }
        None => herald_core::event::event_time(now),
    };
    let event_type = match mapped_or_default(&m, index, &p.event_type)? {
        Some(t) if !t.is_empty() => t,
        _ => {
            return Err(PublishError::missing(
                index,
                source_name(&p.event_type, "eventType"),
            ));
        }
    };
    let subject = mapped_or_default(&m, index, &p.subject)?.unwrap_or_default();
    let data_version = mapped_or_default(&m, index, &p.data_version)?.unwrap_or_default();
    // A mapped `topic` is not used: the envelope always names the topic
    // published to (spec §4, "topic = the topic's resource ID").
    let body = eventgrid_envelope(EnvelopeParts {
        id: &id,
        topic: topic_id,
        subject: &subject,
        event_type: &event_type,
        event_time: &event_time,
        data: raw.get(),
        data_version: &data_version,
    });
    Ok(PublishedEvent {
        id,
        event_type,
        subject,
        body,
    })
}

fn source_name<'a>(field: &'a Option<MappingField>, envelope_name: &'a str) -> &'a str {
    field
        .as_ref()
        .and_then(|f| f.source_field.as_deref())
        .unwrap_or(envelope_name)
}

/// The mapped source field's value as text, or `None` when no source field
/// is configured or the payload lacks it (or holds `null`).
fn mapped(
    m: &Members<'_>,
    index: usize,
    field: &Option<MappingField>,
) -> Result<Option<String>, PublishError> {
    let Some(source) = field.as_ref().and_then(|f| f.source_field.as_deref()) else {
        return Ok(None);
    };
    let Some(raw) = lookup_path(m, source) else {
        return Ok(None);
    };
    match raw.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| PublishError::invalid(index, source, "must be a string")),
        Some(b'n') => Ok(None),
        Some(b'{' | b'[') | None => Err(PublishError::invalid(
            index,
            source,
            "must be a string, number or boolean",
        )),
        // Numbers and booleans map as their JSON text.
        Some(_) => Ok(Some(raw.get().to_owned())),
    }
}

fn mapped_or_default(
    m: &Members<'_>,
    index: usize,
    field: &Option<MappingField>,
) -> Result<Option<String>, PublishError> {
    Ok(mapped(m, index, field)?.or_else(|| field.as_ref().and_then(|f| f.default_value.clone())))
}

/// A top-level member named `path`; failing that, a dotted path into nested
/// objects (`"a.b"` → `{"a":{"b":…}}`).
fn lookup_path<'a>(m: &Members<'a>, path: &str) -> Option<&'a RawValue> {
    if let Some(v) = m.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = m.get(parts.next()?)?;
    for part in parts {
        if !current.get().starts_with('{') {
            return None;
        }
        let nested: Members<'a> = serde_json::from_str(current.get()).ok()?;
        current = nested.get(part)?;
    }
    Some(current)
}

// ---------------------------------------------------------------------------
// CloudEvents 1.0

/// Context attributes defined by the CloudEvents spec, plus the two data
/// members of the JSON format. Anything else at the top level is an
/// extension.
const CE_KNOWN: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

fn parse_cloudevents(
    media: Option<&str>,
    content_type: Option<&str>,
    ce_headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<PublishedEvent>, PublishError> {
    // Spec §3.2: `application/cloudevents-batch…` is batched, otherwise
    // `application/cloudevents…` is structured, anything else binary.
    if let Some(mt) = media
        && mt.starts_with("application/cloudevents")
    {
        if mt != "application/cloudevents+json" && mt != "application/cloudevents-batch+json" {
            return Err(PublishError::UnsupportedMediaType(
                "Only the JSON event format is supported: application/cloudevents+json or application/cloudevents-batch+json.".into(),
            ));
        }
        return cloudevents_json(body);
    }
    let has_binary_headers = ce_headers.iter().any(|(name, _)| {
        matches!(
            name.to_ascii_lowercase().as_str(),
            "ce-specversion" | "ce-id" | "ce-source" | "ce-type"
        )
    });
    // Some clients post a JSON array of structured CloudEvents as plain
    // `application/json` (or with curl's and PowerShell's form default).
    let jsonish = match media {
        None => true,
        Some(mt) => {
            is_json_media(mt)
                || mt == "text/json"
                || mt == "text/plain"
                || mt == "application/x-www-form-urlencoded"
        }
    };
    if !has_binary_headers && jsonish {
        return cloudevents_json(body);
    }
    cloudevent_binary(content_type, media, ce_headers, body).map(|e| vec![e])
}

fn cloudevents_json(body: &[u8]) -> Result<Vec<PublishedEvent>, PublishError> {
    let items = match top_level(body_text(body)?)? {
        TopLevel::Array(items) => items,
        TopLevel::Object(one) => vec![one],
        TopLevel::Other => {
            return Err(PublishError::bad(
                codes::INPUT_JSON_INVALID,
                "The request body must be a CloudEvent JSON object or a JSON array of CloudEvents.",
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| cloudevent_structured(i, raw))
        .collect()
}

fn cloudevent_structured(index: usize, raw: &RawValue) -> Result<PublishedEvent, PublishError> {
    let m = event_object(index, raw)?;
    let specversion = m.required(index, "specversion")?;
    if specversion != "1.0" {
        return Err(PublishError::invalid(
            index,
            "specversion",
            "must be \"1.0\"",
        ));
    }
    let id = m.required_nonempty(index, "id")?;
    m.required_nonempty(index, "source")?;
    let event_type = m.required_nonempty(index, "type")?;
    m.optional(index, "datacontenttype")?;
    m.optional(index, "dataschema")?;
    let subject = m.optional(index, "subject")?.unwrap_or_default();
    if let Some(time) = m.optional(index, "time")?
        && !is_rfc3339(&time)
    {
        return Err(PublishError::invalid(
            index,
            "time",
            "must be an RFC 3339 timestamp",
        ));
    }
    if let Some(b64) = m.optional(index, "data_base64")? {
        if m.get("data").is_some() {
            return Err(PublishError::invalid(
                index,
                "data_base64",
                "an event must not carry both 'data' and 'data_base64'",
            ));
        }
        if base64_lenient().decode(b64.trim()).is_err() {
            return Err(PublishError::invalid(
                index,
                "data_base64",
                "must be base64",
            ));
        }
    }
    let mut w = ObjWriter::with_capacity(raw.get().len());
    for (name, value) in &m.list {
        let known = CE_KNOWN.contains(&name.as_str());
        if !known && !is_extension_name(name) {
            return Err(PublishError::invalid(
                index,
                name,
                "extension attribute names use only the characters a-z and 0-9",
            ));
        }
        let first = value.get().as_bytes().first().copied();
        if !known && matches!(first, Some(b'{' | b'[')) {
            return Err(PublishError::invalid(
                index,
                name,
                "an extension attribute must be a string, number or boolean",
            ));
        }
        // A null attribute is the same as an absent one (JSON format §2.4);
        // `data: null` is data and stays.
        if name != "data" && value.get() == "null" {
            continue;
        }
        w.raw(name, value.get());
    }
    Ok(PublishedEvent {
        id,
        event_type,
        subject,
        body: w.finish(),
    })
}

fn cloudevent_binary(
    content_type: Option<&str>,
    media: Option<&str>,
    ce_headers: &[(String, String)],
    body: &[u8],
) -> Result<PublishedEvent, PublishError> {
    const INDEX: usize = 0;
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut header_bytes = 0usize;
    for (name, value) in ce_headers {
        let lower = name.to_ascii_lowercase();
        let Some(attr) = lower.strip_prefix("ce-") else {
            continue;
        };
        header_bytes += name.len() + value.len();
        if !is_extension_name(attr) || attr == "data" {
            return Err(PublishError::bad(
                codes::INVALID_HEADER,
                format!(
                    "Header '{}' does not name a CloudEvents attribute; attribute names use only the characters a-z and 0-9.",
                    shown(&lower)
                ),
            ));
        }
        let Some(decoded) = decode_header_value(value) else {
            return Err(PublishError::bad(
                codes::INVALID_HEADER,
                format!(
                    "The value of header '{}' is not valid UTF-8 after percent-decoding.",
                    shown(&lower)
                ),
            ));
        };
        if attrs.iter().any(|(a, _)| a == attr) {
            return Err(PublishError::bad(
                codes::INVALID_HEADER,
                format!("Header '{}' appears more than once.", shown(&lower)),
            ));
        }
        attrs.push((attr.to_owned(), decoded));
    }
    if body.len() + header_bytes > MAX_EVENT_BYTES {
        return Err(PublishError::TooLarge(format!(
            "Event at index {INDEX} is larger than the {MAX_EVENT_BYTES}-byte limit."
        )));
    }
    let get = |name: &str| {
        attrs
            .iter()
            .find(|(a, _)| a == name)
            .map(|(_, v)| v.as_str())
    };
    let required = |name: &str| match get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(PublishError::bad(
            codes::MISSING_REQUIRED_PROPERTY,
            format!(
                "Event at index {INDEX} is missing the required property '{name}' (binary mode: header 'ce-{name}')."
            ),
        )),
    };
    if required("specversion")? != "1.0" {
        return Err(PublishError::invalid(
            INDEX,
            "specversion",
            "must be \"1.0\"",
        ));
    }
    let id = required("id")?.to_owned();
    required("source")?;
    let event_type = required("type")?.to_owned();
    if let Some(time) = get("time")
        && !is_rfc3339(time)
    {
        return Err(PublishError::invalid(
            INDEX,
            "time",
            "must be an RFC 3339 timestamp",
        ));
    }
    // In binary mode `datacontenttype` travels as Content-Type (§3.2); a
    // stray `ce-datacontenttype` is used only when Content-Type is absent.
    let datacontenttype = content_type
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .or_else(|| get("datacontenttype"));
    let data_media = match media {
        Some(mt) => Some(mt.to_owned()),
        None => media_type(datacontenttype),
    };

    let mut w = ObjWriter::with_capacity(body.len() * 4 / 3 + 512);
    for name in ["specversion", "id", "source", "type"] {
        if let Some(v) = get(name) {
            w.string(name, v);
        }
    }
    if let Some(dct) = datacontenttype {
        w.string("datacontenttype", dct);
    }
    for name in ["dataschema", "subject", "time"] {
        if let Some(v) = get(name) {
            w.string(name, v);
        }
    }
    for (name, value) in &attrs {
        if !CE_KNOWN.contains(&name.as_str()) {
            w.string(name, value);
        }
    }
    if !body.is_empty() {
        if data_media.as_deref().is_some_and(is_json_media) {
            let text = std::str::from_utf8(strip_bom(body)).map_err(|_| {
                PublishError::bad(
                    codes::INPUT_JSON_INVALID,
                    "The request body is JSON by its Content-Type but is not valid UTF-8.",
                )
            })?;
            let data: &RawValue = serde_json::from_str(trim_json_ws(text)).map_err(|e| {
                json_syntax_error("The request body is JSON by its Content-Type but", &e)
            })?;
            w.raw("data", data.get());
        } else {
            w.string(
                "data_base64",
                &base64::engine::general_purpose::STANDARD.encode(body),
            );
        }
    }
    Ok(PublishedEvent {
        id,
        event_type,
        subject: get("subject").unwrap_or_default().to_owned(),
        body: w.finish(),
    })
}

/// Spec §3.3: unquote an RFC 7230 quoted-string, then percent-decode once;
/// `None` when the result is not UTF-8.
fn decode_header_value(value: &str) -> Option<String> {
    let value = value.trim_matches([' ', '\t']);
    let unquoted: std::borrow::Cow<'_, str> =
        match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(inner) if value.len() >= 2 => {
                let mut out = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        if let Some(next) = chars.next() {
                            out.push(next);
                        }
                    } else {
                        out.push(c);
                    }
                }
                out.into()
            }
            _ => value.into(),
        };
    percent_encoding::percent_decode_str(&unquoted)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn base64_lenient() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

// ---------------------------------------------------------------------------
// Conversion for delivery

fn stored_members(stored: &str) -> Result<Members<'_>, String> {
    serde_json::from_str(stored).map_err(|e| format!("stored event is not a JSON object: {e}"))
}

fn eventgrid_to_cloudevent(stored: &str, emit_dataversion: bool) -> Result<String, String> {
    let m = stored_members(stored)?;
    let text = |name: &str| -> Result<Option<String>, String> {
        match m.get(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| format!("stored event has a non-string '{name}'")),
        }
    };
    let mut w = ObjWriter::with_capacity(stored.len() + 64);
    w.string("id", &text("id")?.unwrap_or_default());
    w.string("source", &text("topic")?.unwrap_or_default());
    w.string("specversion", "1.0");
    w.string("type", &text("eventType")?.unwrap_or_default());
    // CloudEvents requires a non-empty `subject` when present, and Event
    // Grid allows `""`; an empty subject is left out.
    if let Some(subject) = text("subject")?.filter(|s| !s.is_empty()) {
        w.string("subject", &subject);
    }
    if let Some(time) = text("eventTime")? {
        w.string("time", &time);
    }
    if emit_dataversion && let Some(dv) = text("dataVersion")?.filter(|s| !s.is_empty()) {
        w.string("dataversion", &dv);
    }
    if let Some(data) = m.get("data").filter(|d| d.get() != "null") {
        w.raw("data", data.get());
    }
    Ok(w.finish())
}

// ---------------------------------------------------------------------------
// JSON plumbing

enum TopLevel<'a> {
    Array(Vec<&'a RawValue>),
    Object(&'a RawValue),
    Other,
}

fn body_text(body: &[u8]) -> Result<&str, PublishError> {
    let text = std::str::from_utf8(strip_bom(body)).map_err(|_| {
        PublishError::bad(
            codes::INPUT_JSON_INVALID,
            "The request body is not valid UTF-8.",
        )
    })?;
    Ok(trim_json_ws(text))
}

fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

fn trim_json_ws(text: &str) -> &str {
    text.trim_matches([' ', '\t', '\n', '\r'])
}

fn top_level(text: &str) -> Result<TopLevel<'_>, PublishError> {
    if text.is_empty() {
        return Err(PublishError::bad(
            codes::INPUT_JSON_INVALID,
            "The request body is empty.",
        ));
    }
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| json_syntax_error("The request body", &e))?;
    match raw.get().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(raw.get())
            .map(TopLevel::Array)
            .map_err(|e| json_syntax_error("The request body", &e)),
        Some(b'{') => Ok(TopLevel::Object(raw)),
        _ => Ok(TopLevel::Other),
    }
}

fn json_syntax_error(what: &str, e: &serde_json::Error) -> PublishError {
    PublishError::bad(
        codes::INPUT_JSON_INVALID,
        format!(
            "{what} is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        ),
    )
}

/// One event of a publish body: size-checked and known to be an object.
fn event_object<'a>(index: usize, raw: &'a RawValue) -> Result<Members<'a>, PublishError> {
    if raw.get().len() > MAX_EVENT_BYTES {
        return Err(PublishError::TooLarge(format!(
            "Event at index {index} is larger than the {MAX_EVENT_BYTES}-byte limit."
        )));
    }
    if !raw.get().starts_with('{') {
        return Err(PublishError::bad(
            codes::INPUT_JSON_INVALID,
            format!("Event at index {index} is not a JSON object."),
        ));
    }
    serde_json::from_str(raw.get()).map_err(|_| {
        PublishError::bad(
            codes::INPUT_JSON_INVALID,
            format!("Event at index {index} is not a valid JSON object."),
        )
    })
}

/// A JSON object's members in document order with their values unparsed.
/// A repeated name keeps its first position and its last value, as most
/// JSON readers (and Azure's) do.
struct Members<'a> {
    list: Vec<(String, &'a RawValue)>,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut list: Vec<(String, &'de RawValue)> = Vec::new();
                let mut seen: HashMap<String, usize> = HashMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value: &'de RawValue = map.next_value()?;
                    match seen.get(&name) {
                        Some(&i) => list[i].1 = value,
                        None => {
                            seen.insert(name.clone(), list.len());
                            list.push((name, value));
                        }
                    }
                }
                Ok(Members { list })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// Present and not `null`.
    fn optional_raw(&self, name: &str) -> Option<&'a RawValue> {
        self.get(name).filter(|v| v.get() != "null")
    }

    /// A string member; `null` counts as absent.
    fn optional(&self, index: usize, name: &str) -> Result<Option<String>, PublishError> {
        match self.optional_raw(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| PublishError::invalid(index, name, "must be a string")),
        }
    }

    fn required(&self, index: usize, name: &str) -> Result<String, PublishError> {
        self.optional(index, name)?
            .ok_or_else(|| PublishError::missing(index, name))
    }

    fn required_nonempty(&self, index: usize, name: &str) -> Result<String, PublishError> {
        let v = self.required(index, name)?;
        if v.is_empty() {
            return Err(PublishError::missing(index, name));
        }
        Ok(v)
    }
}

/// Writes a JSON object member by member, values given as JSON text.
struct ObjWriter {
    out: String,
}

impl ObjWriter {
    fn with_capacity(n: usize) -> Self {
        let mut out = String::with_capacity(n);
        out.push('{');
        Self { out }
    }

    fn raw(&mut self, name: &str, json: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        push_json_string(&mut self.out, name);
        self.out.push(':');
        self.out.push_str(json);
    }

    fn string(&mut self, name: &str, value: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        push_json_string(&mut self.out, name);
        self.out.push(':');
        push_json_string(&mut self.out, value);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

// ---------------------------------------------------------------------------
// Small helpers

/// The media type of a Content-Type value: lower-cased, parameters dropped.
fn media_type(content_type: Option<&str>) -> Option<String> {
    let mt = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    (!mt.is_empty()).then_some(mt)
}

/// `application/json` or any `+json` structured-syntax suffix.
fn is_json_media(mt: &str) -> bool {
    mt == "application/json" || mt.ends_with("+json")
}

fn reject_cloudevents_media(media: Option<&str>, schema: &str) -> Result<(), PublishError> {
    match media {
        Some(mt) if mt.starts_with("application/cloudevents") => Err(PublishError::bad(
            codes::INPUT_SCHEMA_MISMATCH,
            format!(
                "This topic's input schema is {schema}; CloudEvents content types are accepted only by topics with input schema CloudEventSchemaV1_0."
            ),
        )),
        _ => Ok(()),
    }
}

fn is_rfc3339(s: &str) -> bool {
    DateTime::parse_from_rfc3339(s).is_ok()
}

/// A property or header name for an error message: at most 64 characters,
/// control characters replaced.
fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    const TOPIC: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/herald/providers/Microsoft.EventGrid/topics/orders";
    const EG: InputSchemaKind = InputSchemaKind::EventGridSchema;
    const CE: InputSchemaKind = InputSchemaKind::CloudEventSchemaV1_0;
    const CUSTOM: InputSchemaKind = InputSchemaKind::CustomEventSchema;

    /// 2020-08-13T18:11:29.4121391Z
    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_597_342_289, 412_139_100).unwrap()
    }

    fn eg(body: &str) -> Result<Vec<PublishedEvent>, PublishError> {
        parse_publish(
            &EG,
            None,
            Some("application/json"),
            &[],
            body.as_bytes(),
            TOPIC,
            now(),
        )
    }

    fn ce(
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<PublishedEvent>, PublishError> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        parse_publish(&CE, None, content_type, &headers, body, TOPIC, now())
    }

    fn custom(
        mapping: Option<&InputSchemaMapping>,
        body: &str,
    ) -> Result<Vec<PublishedEvent>, PublishError> {
        parse_publish(
            &CUSTOM,
            mapping,
            Some("application/json"),
            &[],
            body.as_bytes(),
            TOPIC,
            now(),
        )
    }

    /// The code and message of a 400, panicking on anything else.
    fn bad_request(r: Result<Vec<PublishedEvent>, PublishError>) -> (&'static str, String) {
        match r {
            Err(PublishError::BadRequest { code, message }) => (code, message),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    /// What a snapshot shows per event: the stored text exactly as stored
    /// (key order and number text visible) and what the subscription gets.
    fn view(events: &[PublishedEvent], input: &InputSchemaKind, output: DeliverySchema) -> Value {
        events
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "eventType": e.event_type,
                    "subject": e.subject,
                    "stored": e.body,
                    "delivered": render(&e.body, input, output, false).unwrap(),
                    "deliveredText": render_raw(&e.body, input, output, false).unwrap(),
                })
            })
            .collect()
    }

    fn example_mapping() -> InputSchemaMapping {
        serde_json::from_value(json!({
            "inputSchemaMappingType": "Json",
            "properties": {
                "id":          {"sourceField": "myId"},
                "topic":       {"sourceField": "myTopic"},
                "eventTime":   {"sourceField": "myTime"},
                "eventType":   {"sourceField": "myEventType", "defaultValue": "recordInserted"},
                "subject":     {"sourceField": "mySubject",   "defaultValue": "subjectDefault"},
                "dataVersion": {"sourceField": "myVersion",   "defaultValue": "1.0"}
            }
        }))
        .unwrap()
    }

    // ---- Event Grid input -------------------------------------------------

    #[test]
    fn eventgrid_to_eventgrid() {
        // Spec §1 example, with an unknown member, pretty-printed data whose
        // key order and number text must survive, and a second event
        // without dataVersion and data.
        let body = r#"[{
  "id": "1807", "eventType": "recordInserted", "subject": "myapp/vehicles/motorcycles",
  "eventTime": "2017-08-10T21:03:07+00:00", "data": {"make": "Ducati", "model": "Monster", "price": 1.50, "big": 12345678901234567890},
  "dataVersion": "1.0", "extra": {"dropped": true}
}, {"id":"1808","eventType":"recordDeleted","subject":"","eventTime":"2017-08-10T21:04:07.1234567Z","metadataVersion":"1","topic":"/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/resourceGroups/herald/providers/Microsoft.EventGrid/topics/orders"}]"#;
        let events = eg(body).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].body,
            format!(
                r#"{{"id":"1807","topic":"{TOPIC}","subject":"myapp/vehicles/motorcycles","eventType":"recordInserted","eventTime":"2017-08-10T21:03:07+00:00","data":{{"make": "Ducati", "model": "Monster", "price": 1.50, "big": 12345678901234567890}},"dataVersion":"1.0","metadataVersion":"1"}}"#
            )
        );
        assert_eq!(
            render_raw(&events[0].body, &EG, DeliverySchema::EventGridSchema, false).unwrap(),
            events[0].body
        );
        insta::assert_json_snapshot!(
            "eventgrid_to_eventgrid",
            view(&events, &EG, DeliverySchema::EventGridSchema)
        );
    }

    fn key_vault_eventgrid() -> &'static str {
        r#"[{
  "id": "00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
  "topic": "/subscriptions/{subscription-id}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
  "subject": "newsecret",
  "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
  "eventTime": "2019-07-25T01:08:33.1036736Z",
  "data": {
    "Id": "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
    "VaultName": "sample-kv", "ObjectType": "Secret", "ObjectName": "newsecret",
    "Version": "ee059b2bb5bc48398a53b168c6cdcb10", "NBF": 1559081980, "EXP": 1559082102
  },
  "dataVersion": "1",
  "metadataVersion": "1"
}]"#
    }

    const KV_TOPIC: &str = "/subscriptions/{subscription-id}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv";

    #[test]
    fn eventgrid_to_cloudevents_key_vault_pair() {
        let events = parse_publish(
            &EG,
            None,
            Some("application/json"),
            &[],
            key_vault_eventgrid().as_bytes(),
            KV_TOPIC,
            now(),
        )
        .unwrap();
        let rendered = render(
            &events[0].body,
            &EG,
            DeliverySchema::CloudEventSchemaV1_0,
            false,
        )
        .unwrap();
        // Spec §11, the CloudEvents half of the pair, exactly.
        let expected = json!({
          "id": "00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
          "source": "/subscriptions/{subscription-id}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
          "specversion": "1.0",
          "type": "Microsoft.KeyVault.SecretNewVersionCreated",
          "subject": "newsecret",
          "time": "2019-07-25T01:08:33.1036736Z",
          "data": {
            "Id": "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "VaultName": "sample-kv", "ObjectType": "Secret", "ObjectName": "newsecret",
            "Version": "ee059b2bb5bc48398a53b168c6cdcb10", "NBF": 1559081980, "EXP": 1559082102
          }
        });
        assert_eq!(rendered, expected);
        // And the Event Grid half round-trips as delivered.
        let eg_expected: Value = serde_json::from_str(key_vault_eventgrid()).unwrap();
        assert_eq!(
            render(&events[0].body, &EG, DeliverySchema::EventGridSchema, false).unwrap(),
            eg_expected[0]
        );
        // The option that keeps dataVersion as the `dataversion` extension.
        let with_dv = render(
            &events[0].body,
            &EG,
            DeliverySchema::CloudEventSchemaV1_0,
            true,
        )
        .unwrap();
        assert_eq!(with_dv["dataversion"], "1");
        assert!(with_dv.get("dataVersion").is_none());
        insta::assert_json_snapshot!(
            "eventgrid_to_cloudevents_key_vault",
            view(&events, &EG, DeliverySchema::CloudEventSchemaV1_0)
        );
    }

    #[test]
    fn eventgrid_to_cloudevents_edge_cases() {
        // Empty subject and absent data are left out of the CloudEvent.
        let events =
            eg(r#"[{"id":"a","subject":"","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#)
                .unwrap();
        assert!(events[0].body.contains(r#""data":null"#));
        let ce = render(
            &events[0].body,
            &EG,
            DeliverySchema::CloudEventSchemaV1_0,
            true,
        )
        .unwrap();
        assert_eq!(
            ce,
            json!({"id":"a","source":TOPIC,"specversion":"1.0","type":"t","time":"2020-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn eventgrid_uses_core_event_shape() {
        // What Herald's own system events look like parses back unchanged.
        let events = eg(
            r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","data":{"a":1}}]"#,
        )
        .unwrap();
        let parsed: herald_core::event::EventGridEvent =
            serde_json::from_str(&events[0].body).unwrap();
        assert_eq!(parsed.topic, TOPIC);
        assert_eq!(parsed.metadata_version, "1");
        assert_eq!(parsed.data_version, "");
    }

    #[test]
    fn eventgrid_body_must_be_an_array() {
        let (code, msg) = bad_request(eg(
            r#"{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}"#,
        ));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
        assert!(msg.contains("JSON array"), "{msg}");
        bad_request(eg("42"));
        bad_request(eg(r#""text""#));
    }

    #[test]
    fn eventgrid_required_fields_name_index_and_field() {
        let ok = r#"{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}"#;
        for field in ["id", "subject", "eventType", "eventTime"] {
            let mut missing: Value = serde_json::from_str(ok).unwrap();
            missing.as_object_mut().unwrap().remove(field);
            let body = format!("[{ok},{ok},{ok},{missing}]");
            let (code, msg) = bad_request(eg(&body));
            assert_eq!(code, codes::MISSING_REQUIRED_PROPERTY);
            assert_eq!(
                msg,
                format!("Event at index 3 is missing the required property '{field}'.")
            );
            // null is the same as missing.
            let mut null: Value = serde_json::from_str(ok).unwrap();
            null[field] = Value::Null;
            let (_, msg) = bad_request(eg(&format!("[{null}]")));
            assert!(msg.contains(&format!(
                "index 0 is missing the required property '{field}'"
            )));
        }
        // Empty id and eventType count as missing; an empty subject is fine.
        let (_, msg) = bad_request(eg(
            r#"[{"id":"","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#,
        ));
        assert!(msg.contains("'id'"), "{msg}");
        let (_, msg) = bad_request(eg(
            r#"[{"id":"1","subject":"s","eventType":"","eventTime":"2020-01-01T00:00:00Z"}]"#,
        ));
        assert!(msg.contains("'eventType'"), "{msg}");
        eg(r#"[{"id":"1","subject":"","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#)
            .unwrap();
    }

    #[test]
    fn eventgrid_wrong_types_and_values() {
        let cases = [
            (
                r#"[{"id":1,"subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#,
                "id",
            ),
            (
                r#"[{"id":"1","subject":["s"],"eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#,
                "subject",
            ),
            (
                r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"yesterday"}]"#,
                "eventTime",
            ),
            (
                r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00"}]"#,
                "eventTime",
            ),
            (
                r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","dataVersion":2}]"#,
                "dataVersion",
            ),
        ];
        for (body, field) in cases {
            let (code, msg) = bad_request(eg(body));
            assert_eq!(code, codes::INVALID_PROPERTY_VALUE, "{body}");
            assert!(
                msg.starts_with(&format!(
                    "Event at index 0 has an invalid value for property '{field}'"
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn eventgrid_metadata_version() {
        let base = r#""id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z""#;
        eg(&format!(r#"[{{{base},"metadataVersion":"1"}}]"#)).unwrap();
        eg(&format!(r#"[{{{base},"metadataVersion":null}}]"#)).unwrap();
        for bad in [r#""2""#, "1", r#""1.0""#, r#""""#] {
            let (code, msg) = bad_request(eg(&format!(
                r#"[{{{base}}},{{{base},"metadataVersion":{bad}}}]"#
            )));
            assert_eq!(code, codes::INVALID_PROPERTY_VALUE);
            assert_eq!(
                msg,
                "Event at index 1 has an invalid value for property 'metadataVersion': must be \"1\"."
            );
        }
    }

    #[test]
    fn eventgrid_topic_must_match() {
        let base = r#""id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z""#;
        let events = eg(&format!(r#"[{{{base},"topic":"{TOPIC}"}}]"#)).unwrap();
        assert!(events[0].body.contains(TOPIC));
        let (code, msg) = bad_request(eg(&format!(
            r#"[{{{base}}},{{{base},"topic":"/subscriptions/x/resourceGroups/y/providers/Microsoft.EventGrid/topics/other"}}]"#
        )));
        assert_eq!(code, codes::TOPIC_MISMATCH);
        assert!(msg.starts_with("Event at index 1 has a 'topic'"), "{msg}");
        assert!(!msg.contains("other"), "{msg}");
        let (code, _) = bad_request(eg(&format!(r#"[{{{base},"topic":5}}]"#)));
        assert_eq!(code, codes::INVALID_PROPERTY_VALUE);
    }

    #[test]
    fn bad_json_and_shapes() {
        for body in ["", "   ", "[", "[{]", "nope", "[1,]"] {
            let (code, msg) = bad_request(eg(body));
            assert_eq!(code, codes::INPUT_JSON_INVALID, "{body:?}");
            assert!(!msg.contains("nope"), "{msg}");
        }
        let (_, msg) = bad_request(eg(
            r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}, 5]"#,
        ));
        assert_eq!(msg, "Event at index 1 is not a JSON object.");
        let (code, _) = bad_request(parse_publish(&EG, None, None, &[], b"[\xff]", TOPIC, now()));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
        // An empty array is accepted and yields nothing.
        assert!(eg("[]").unwrap().is_empty());
        // A UTF-8 byte order mark is tolerated.
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(
            br#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#,
        );
        parse_publish(&EG, None, None, &[], &with_bom, TOPIC, now()).unwrap();
    }

    #[test]
    fn error_messages_never_echo_values() {
        let secret = "s3cr3t-value";
        let bodies = [
            format!(
                r#"[{{"id":{{"x":"{secret}"}},"subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}}]"#
            ),
            format!(r#"[{{"id":"1","subject":"s","eventType":"t","eventTime":"{secret}"}}]"#),
            format!(
                r#"[{{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","metadataVersion":"{secret}"}}]"#
            ),
            format!(
                r#"[{{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","topic":"{secret}"}}]"#
            ),
            format!(r#"["{secret}"]"#),
            format!(r#"[{secret}]"#),
        ];
        for body in &bodies {
            let err = eg(body).unwrap_err().to_string();
            assert!(!err.contains(secret), "{err}");
        }
    }

    #[test]
    fn cloudevents_content_type_on_eventgrid_topic_is_wrong_schema() {
        let (code, _) = bad_request(parse_publish(
            &EG,
            None,
            Some("Application/CloudEvents-Batch+JSON; charset=utf-8"),
            &[],
            b"[]",
            TOPIC,
            now(),
        ));
        assert_eq!(code, codes::INPUT_SCHEMA_MISMATCH);
        // Other content types are not checked: the docs' curl and PowerShell
        // samples post JSON as application/x-www-form-urlencoded.
        for ct in [
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
            None,
            Some("APPLICATION/JSON; Charset=UTF-8"),
        ] {
            parse_publish(&EG, None, ct, &[], b"[]", TOPIC, now()).unwrap();
        }
    }

    // ---- Size limits ------------------------------------------------------

    #[test]
    fn oversize_body_and_event() {
        let pad = "x".repeat(MAX_EVENT_BYTES);
        let body = format!(
            r#"[{{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","data":"{pad}"}}]"#
        );
        for input in [&EG, &CE, &CUSTOM] {
            let r = parse_publish(input, None, None, &[], body.as_bytes(), TOPIC, now());
            assert!(matches!(r, Err(PublishError::TooLarge(_))), "{input:?}");
        }
        // Exactly at the limit is allowed through the body check.
        let fill = MAX_EVENT_BYTES
            - r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","data":""}]"#.len();
        let body = format!(
            r#"[{{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","data":"{}"}}]"#,
            "x".repeat(fill)
        );
        assert_eq!(body.len(), MAX_EVENT_BYTES);
        assert_eq!(eg(&body).unwrap().len(), 1);
        // Sizes are bytes, not characters.
        let body = format!(
            r#"[{{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z","data":"{}"}}]"#,
            "é".repeat(MAX_EVENT_BYTES / 2)
        );
        assert!(matches!(eg(&body), Err(PublishError::TooLarge(_))));
        // Per event: a binary-mode event whose body fits but whose headers
        // push it over.
        let data = vec![b'a'; MAX_EVENT_BYTES - 10];
        let long = "b".repeat(64);
        let r = ce(
            Some("application/octet-stream"),
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-long", &long),
            ],
            &data,
        );
        match r {
            Err(PublishError::TooLarge(m)) => assert!(m.contains("index 0"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The per-event check itself.
        let big = format!("\"{}\"", "z".repeat(MAX_EVENT_BYTES));
        let raw: &RawValue = serde_json::from_str(&big).unwrap();
        match event_object(7, raw) {
            Err(PublishError::TooLarge(m)) => {
                assert_eq!(m, "Event at index 7 is larger than the 1048576-byte limit.")
            }
            _ => panic!("expected TooLarge"),
        }
    }

    // ---- CloudEvents input ------------------------------------------------

    #[test]
    fn cloudevents_structured_and_batch() {
        let single = br#"{
  "specversion": "1.0", "id": "A234-1234-1234", "source": "/mycontext",
  "type": "com.example.someevent", "time": "2018-04-05T17:31:00Z",
  "comexampleextension1": "value", "comexampleothervalue": 5, "flag": true,
  "subject": null,
  "datacontenttype": "application/json", "data": {"z": 1, "a": 1.0}
}"#;
        let events = ce(
            Some("application/cloudevents+json; charset=utf-8"),
            &[],
            single,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "A234-1234-1234");
        assert_eq!(events[0].event_type, "com.example.someevent");
        assert_eq!(events[0].subject, "");
        assert_eq!(
            events[0].body,
            r#"{"specversion":"1.0","id":"A234-1234-1234","source":"/mycontext","type":"com.example.someevent","time":"2018-04-05T17:31:00Z","comexampleextension1":"value","comexampleothervalue":5,"flag":true,"datacontenttype":"application/json","data":{"z": 1, "a": 1.0}}"#
        );
        insta::assert_json_snapshot!(
            "cloudevents_structured",
            view(&events, &CE, DeliverySchema::CloudEventSchemaV1_0)
        );

        let batch = br#"[
  {"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"blob/1","data_base64":"AAECAw==","datacontenttype":"application/octet-stream"},
  {"specversion":"1.0","id":"2","source":"/s","type":"t","myext":"x"}
]"#;
        let events = ce(
            Some("application/cloudevents-batch+json; charset=UTF-8"),
            &[],
            batch,
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].subject, "blob/1");
        insta::assert_json_snapshot!(
            "cloudevents_batch_data_base64",
            view(&events, &CE, DeliverySchema::CloudEventSchemaV1_0)
        );

        // Plain application/json arrays of CloudEvents are accepted too.
        let events = ce(Some("application/json"), &[], batch).unwrap();
        assert_eq!(events.len(), 2);
        let events = ce(None, &[], single).unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn cloudevents_media_types_are_case_insensitive() {
        let one = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let many = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}]"#;
        for ct in [
            "application/cloudevents+json",
            "APPLICATION/CLOUDEVENTS+JSON",
            "Application/CloudEvents+Json ; Charset=\"utf-8\"",
        ] {
            assert_eq!(ce(Some(ct), &[], one).unwrap().len(), 1, "{ct}");
        }
        for ct in [
            "application/cloudevents-batch+json",
            "Application/CloudEvents-Batch+JSON;charset=UTF-8",
        ] {
            assert_eq!(ce(Some(ct), &[], many).unwrap().len(), 1, "{ct}");
        }
        // Binary mode recognises a JSON content type in any case.
        let events = ce(
            Some("Application/JSON; charset=utf-8"),
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ],
            br#"{"k":1}"#,
        )
        .unwrap();
        assert!(events[0].body.ends_with(r#""data":{"k":1}}"#));
        // Another event format is not supported.
        assert!(matches!(
            ce(Some("application/cloudevents+xml"), &[], b"<e/>"),
            Err(PublishError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn cloudevents_required_attributes() {
        let full = json!({"specversion":"1.0","id":"1","source":"/s","type":"t"});
        for attr in ["specversion", "id", "source", "type"] {
            let mut e = full.clone();
            e.as_object_mut().unwrap().remove(attr);
            let body = json!([full, full, e]).to_string();
            let (code, msg) = bad_request(ce(
                Some("application/cloudevents-batch+json"),
                &[],
                body.as_bytes(),
            ));
            assert_eq!(code, codes::MISSING_REQUIRED_PROPERTY);
            assert_eq!(
                msg,
                format!("Event at index 2 is missing the required property '{attr}'.")
            );
            let mut empty = full.clone();
            empty[attr] = json!("");
            let (_, msg) = bad_request(ce(
                Some("application/cloudevents+json"),
                &[],
                empty.to_string().as_bytes(),
            ));
            assert!(msg.contains(&format!("'{attr}'")), "{msg}");
        }
        let mut v = full.clone();
        v["specversion"] = json!("0.3");
        let (code, msg) = bad_request(ce(
            Some("application/cloudevents+json"),
            &[],
            v.to_string().as_bytes(),
        ));
        assert_eq!(code, codes::INVALID_PROPERTY_VALUE);
        assert_eq!(
            msg,
            "Event at index 0 has an invalid value for property 'specversion': must be \"1.0\"."
        );
    }

    #[test]
    fn cloudevents_invalid_attributes() {
        let base = r#""specversion":"1.0","id":"1","source":"/s","type":"t""#;
        let cases = [
            (format!(r#"{{{base},"Bad_Name":"x"}}"#), "Bad_Name"),
            (format!(r#"{{{base},"comExample":"x"}}"#), "comExample"),
            (format!(r#"{{{base},"ext":{{"o":1}}}}"#), "ext"),
            (format!(r#"{{{base},"time":"not a time"}}"#), "time"),
            (format!(r#"{{{base},"subject":7}}"#), "subject"),
            (
                format!(r#"{{{base},"data":1,"data_base64":"AA=="}}"#),
                "data_base64",
            ),
            (format!(r#"{{{base},"data_base64":"!!!"}}"#), "data_base64"),
            (
                r#"{"specversion":1.0,"id":"1","source":"/s","type":"t"}"#.to_owned(),
                "specversion",
            ),
        ];
        for (body, field) in cases {
            let (code, msg) = bad_request(ce(
                Some("application/cloudevents+json"),
                &[],
                body.as_bytes(),
            ));
            assert_eq!(code, codes::INVALID_PROPERTY_VALUE, "{body}");
            assert!(
                msg.starts_with(&format!(
                    "Event at index 0 has an invalid value for property '{field}'"
                )),
                "{msg}"
            );
        }
        // Unpadded base64 is accepted.
        ce(
            Some("application/cloudevents+json"),
            &[],
            format!(r#"{{{base},"data_base64":"AAECAw"}}"#).as_bytes(),
        )
        .unwrap();
        // Not JSON / not an object.
        let (code, _) = bad_request(ce(Some("application/cloudevents+json"), &[], b"{"));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
        let (_, msg) = bad_request(ce(
            Some("application/cloudevents-batch+json"),
            &[],
            br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},"x"]"#,
        ));
        assert_eq!(msg, "Event at index 1 is not a JSON object.");
        let (code, _) = bad_request(ce(Some("application/cloudevents+json"), &[], b"true"));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
    }

    // ---- CloudEvents binary mode -------------------------------------------

    #[test]
    fn binary_mode_to_structured() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", "A234-1234-1234"),
            ("ce-source", "/mycontext/subcontext"),
            ("ce-type", "com.example.someevent"),
            ("ce-time", "2018-04-05T17:31:00Z"),
            ("ce-subject", "caf%C3%A9%20menu"),
            ("ce-comexampleextension1", "\"quoted \\\"value\\\"\""),
            (
                "ce-traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ];
        let json_events = ce(
            Some("application/json; charset=utf-8"),
            &headers,
            br#"{"z": 1, "a": [1.10, 2]}"#,
        )
        .unwrap();
        assert_eq!(json_events[0].subject, "café menu");
        assert_eq!(
            json_events[0].body,
            r#"{"specversion":"1.0","id":"A234-1234-1234","source":"/mycontext/subcontext","type":"com.example.someevent","datacontenttype":"application/json; charset=utf-8","subject":"café menu","time":"2018-04-05T17:31:00Z","comexampleextension1":"quoted \"value\"","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","data":{"z": 1, "a": [1.10, 2]}}"#
        );
        let cloudevents_json = ce(
            Some("application/vnd.example+json"),
            &headers[..4],
            b" [1, 2] \n",
        )
        .unwrap();
        let binary = ce(
            Some("application/octet-stream"),
            &headers[..4],
            &[0, 1, 2, 0xff],
        )
        .unwrap();
        let text = ce(Some("text/plain"), &headers[..4], b"hello").unwrap();
        let no_body = ce(None, &headers[..4], b"").unwrap();
        let all: Vec<PublishedEvent> = [json_events, cloudevents_json, binary, text, no_body]
            .into_iter()
            .flatten()
            .collect();
        insta::assert_json_snapshot!(
            "binary_mode_to_structured",
            view(&all, &CE, DeliverySchema::CloudEventSchemaV1_0)
        );
    }

    #[test]
    fn binary_mode_errors() {
        let required = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ];
        for skip in 0..required.len() {
            let headers: Vec<(&str, &str)> = required
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, h)| *h)
                .collect();
            let (code, msg) = bad_request(ce(Some("text/plain"), &headers, b"x"));
            assert_eq!(code, codes::MISSING_REQUIRED_PROPERTY);
            let attr = &required[skip].0[3..];
            assert_eq!(
                msg,
                format!(
                    "Event at index 0 is missing the required property '{attr}' (binary mode: header 'ce-{attr}')."
                )
            );
        }
        // No ce- headers and a non-JSON body: binary mode without attributes.
        let (_, msg) = bad_request(ce(Some("application/octet-stream"), &[], b"\x00"));
        assert!(msg.contains("'specversion'"), "{msg}");
        let with = |extra: (&'static str, &'static str)| {
            let mut h = required.to_vec();
            h.push(extra);
            h
        };
        // Invalid UTF-8 after percent-decoding (spec §3.3's example).
        let (code, msg) = bad_request(ce(
            Some("text/plain"),
            &with(("ce-subject", "%C0%A0")),
            b"x",
        ));
        assert_eq!(code, codes::INVALID_HEADER);
        assert_eq!(
            msg,
            "The value of header 'ce-subject' is not valid UTF-8 after percent-decoding."
        );
        // Lower-case hex decodes.
        let ok = ce(
            Some("text/plain"),
            &with(("ce-subject", "a%2fb%c3%a9")),
            b"x",
        )
        .unwrap();
        assert_eq!(ok[0].subject, "a/bé");
        // Bad attribute names, including the reserved `data`.
        for name in ["ce-bad_name", "ce-", "ce-data", "ce-data_base64"] {
            let mut h: Vec<(String, String)> = required
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            h.push((name.to_owned(), "x".to_owned()));
            let (code, _) = bad_request(parse_publish(
                &CE,
                None,
                Some("text/plain"),
                &h,
                b"x",
                TOPIC,
                now(),
            ));
            assert_eq!(code, codes::INVALID_HEADER, "{name}");
        }
        // Duplicates.
        let (code, _) = bad_request(ce(Some("text/plain"), &with(("ce-id", "2")), b"x"));
        assert_eq!(code, codes::INVALID_HEADER);
        // Wrong specversion, bad time, bad JSON data.
        let mut h = required.to_vec();
        h[0] = ("ce-specversion", "0.3");
        let (code, _) = bad_request(ce(Some("text/plain"), &h, b"x"));
        assert_eq!(code, codes::INVALID_PROPERTY_VALUE);
        let (code, _) = bad_request(ce(Some("text/plain"), &with(("ce-time", "soon")), b"x"));
        assert_eq!(code, codes::INVALID_PROPERTY_VALUE);
        let (code, _) = bad_request(ce(Some("application/json"), &required, b"{nope"));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
    }

    #[test]
    fn header_value_decoding() {
        assert_eq!(decode_header_value("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode_header_value("%25").as_deref(), Some("%"));
        assert_eq!(decode_header_value("%2525").as_deref(), Some("%25"));
        assert_eq!(decode_header_value("\"a\\\\b\"").as_deref(), Some("a\\b"));
        assert_eq!(decode_header_value("\"%22\"").as_deref(), Some("\""));
        assert_eq!(decode_header_value("\"").as_deref(), Some("\""));
        assert_eq!(decode_header_value("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(decode_header_value("%C0%A0"), None);
        assert_eq!(decode_header_value("%FF"), None);
    }

    // ---- Custom input -----------------------------------------------------

    #[test]
    fn custom_mapping_example_to_all_schemas() {
        // Spec §4: eventType mapped from myEventType, subject defaulted.
        let mapping: InputSchemaMapping = serde_json::from_value(json!({
            "inputSchemaMappingType": "Json",
            "properties": {
                "eventType":   {"sourceField": "myEventType"},
                "subject":     {"defaultValue": "subjectDefault"},
                "dataVersion": {"defaultValue": "1.0"}
            }
        }))
        .unwrap();
        mapping.validate().unwrap();
        let events = custom(
            Some(&mapping),
            r#"[{"prop1":"my property","prop2":5,"myEventType":"fooEventType"}]"#,
        )
        .unwrap();
        let e = &events[0];
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(e.event_type, "fooEventType");
        assert_eq!(e.subject, "subjectDefault");
        // Replace the generated id so the snapshot is stable.
        let stable = PublishedEvent {
            id: "8bc07e6f-0885-4729-90e4-7c3f052bd754".into(),
            body: e
                .body
                .replace(&e.id, "8bc07e6f-0885-4729-90e4-7c3f052bd754"),
            ..e.clone()
        };
        let as_eg = render(
            &stable.body,
            &CUSTOM,
            DeliverySchema::EventGridSchema,
            false,
        )
        .unwrap();
        assert_eq!(
            as_eg,
            json!({"id": "8bc07e6f-0885-4729-90e4-7c3f052bd754", "eventTime": "2020-08-13T18:11:29.4121391Z",
             "eventType": "fooEventType", "dataVersion": "1.0", "metadataVersion": "1",
             "topic": TOPIC,
             "subject": "subjectDefault", "data": {"prop1": "my property", "prop2": 5, "myEventType": "fooEventType"}})
        );
        assert_eq!(
            render_raw(
                &stable.body,
                &CUSTOM,
                DeliverySchema::CustomInputSchema,
                false
            )
            .unwrap(),
            r#"{"prop1":"my property","prop2":5,"myEventType":"fooEventType"}"#
        );
        let events = [stable];
        insta::assert_json_snapshot!(
            "custom_example_to_eventgrid",
            view(&events, &CUSTOM, DeliverySchema::EventGridSchema)
        );
        insta::assert_json_snapshot!(
            "custom_example_to_cloudevents",
            view(&events, &CUSTOM, DeliverySchema::CloudEventSchemaV1_0)
        );
        insta::assert_json_snapshot!(
            "custom_example_to_custom",
            view(&events, &CUSTOM, DeliverySchema::CustomInputSchema)
        );
    }

    #[test]
    fn custom_defaults_when_source_fields_missing() {
        let mapping = example_mapping();
        mapping.validate().unwrap();
        let body = r#"[
  {"myId": "evt-1", "myTime": "2021-03-04T05:06:07.891+01:00", "myTopic": "ignored", "payload": {"n": 1e3}},
  {"myId": "evt-2", "myTime": "2021-03-04T05:06:08Z", "myEventType": "orderShipped", "mySubject": "orders/2", "myVersion": "2.0"},
  {"myId": 3, "myTime": null, "myEventType": "x", "mySubject": null, "myVersion": true}
]"#;
        let events = custom(Some(&mapping), body).unwrap();
        assert_eq!(events[0].event_type, "recordInserted");
        assert_eq!(events[0].subject, "subjectDefault");
        assert_eq!(events[1].subject, "orders/2");
        assert_eq!(events[2].id, "3");
        assert!(
            events[2]
                .body
                .contains(r#""eventTime":"2020-08-13T18:11:29.4121391Z""#)
        );
        assert!(events[2].body.contains(r#""dataVersion":"true""#));
        assert!(events[0].body.contains(r#""data":{"myId": "evt-1", "myTime": "2021-03-04T05:06:07.891+01:00", "myTopic": "ignored", "payload": {"n": 1e3}}"#));
        insta::assert_json_snapshot!(
            "custom_defaults_applied",
            view(&events, &CUSTOM, DeliverySchema::EventGridSchema)
        );
    }

    #[test]
    fn custom_single_object_nested_paths_and_no_mapping() {
        let mapping: InputSchemaMapping = serde_json::from_value(json!({
            "properties": {"eventType": {"sourceField": "meta.kind"}, "id": {"sourceField": "meta.id"}}
        }))
        .unwrap();
        let events = custom(Some(&mapping), r#"{"meta":{"kind":"k1","id":"i1"},"v":1}"#).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "k1");
        assert_eq!(events[0].id, "i1");
        // Top-level names with dots win over paths.
        let events = custom(
            Some(&mapping),
            r#"{"meta.kind":"flat","meta":{"kind":"nested","id":"i"}}"#,
        )
        .unwrap();
        assert_eq!(events[0].event_type, "flat");
        // Without a mapping there is no event type to use.
        let (code, msg) = bad_request(custom(None, r#"[{"a":1}]"#));
        assert_eq!(code, codes::MISSING_REQUIRED_PROPERTY);
        assert_eq!(
            msg,
            "Event at index 0 is missing the required property 'eventType'."
        );
    }

    #[test]
    fn custom_errors() {
        let mapping = example_mapping();
        let no_default: InputSchemaMapping = serde_json::from_value(json!({
            "properties": {"eventType": {"sourceField": "myEventType"}}
        }))
        .unwrap();
        let (code, msg) = bad_request(custom(
            Some(&no_default),
            r#"[{"myEventType":"a"},{"myEventType":"b"},{"other":1}]"#,
        ));
        assert_eq!(code, codes::MISSING_REQUIRED_PROPERTY);
        assert_eq!(
            msg,
            "Event at index 2 is missing the required property 'myEventType'."
        );
        let (code, msg) = bad_request(custom(Some(&mapping), r#"[{"myTime":"noon"}]"#));
        assert_eq!(code, codes::INVALID_PROPERTY_VALUE);
        assert!(msg.starts_with("Event at index 0 has an invalid value for property 'myTime'"));
        let (_, msg) = bad_request(custom(Some(&mapping), r#"[{},{"myEventType":{"a":1}}]"#));
        assert!(
            msg.starts_with("Event at index 1 has an invalid value for property 'myEventType'")
        );
        let (code, msg) = bad_request(custom(Some(&mapping), r#"[{}, 3]"#));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
        assert_eq!(msg, "Event at index 1 is not a JSON object.");
        let (code, _) = bad_request(custom(Some(&mapping), "17"));
        assert_eq!(code, codes::INPUT_JSON_INVALID);
        let (code, _) = bad_request(parse_publish(
            &CUSTOM,
            Some(&mapping),
            Some("application/cloudevents+json"),
            &[],
            b"{}",
            TOPIC,
            now(),
        ));
        assert_eq!(code, codes::INPUT_SCHEMA_MISMATCH);
    }

    // ---- Mapping, compatibility, envelopes ---------------------------------

    #[test]
    fn mapping_round_trips_azure_json() {
        let azure = json!({
            "inputSchemaMappingType": "Json",
            "properties": {
                "id":          {"sourceField": "myId"},
                "topic":       {"sourceField": "myTopic"},
                "eventTime":   {"sourceField": "myTime"},
                "eventType":   {"sourceField": "myEventType", "defaultValue": "recordInserted"},
                "subject":     {"sourceField": "mySubject",   "defaultValue": "subjectDefault"},
                "dataVersion": {"sourceField": "myVersion",   "defaultValue": "1.0"}
            }
        });
        let m: InputSchemaMapping = serde_json::from_value(azure.clone()).unwrap();
        assert_eq!(serde_json::to_value(&m).unwrap(), azure);
        assert_eq!(
            m.properties
                .event_type
                .as_ref()
                .unwrap()
                .default_value
                .as_deref(),
            Some("recordInserted")
        );
        let partial = json!({"inputSchemaMappingType": "Json", "properties": {"subject": {"defaultValue": "d"}}});
        let m: InputSchemaMapping = serde_json::from_value(partial.clone()).unwrap();
        assert_eq!(serde_json::to_value(&m).unwrap(), partial);
        assert_eq!(
            serde_json::to_value(InputSchemaMapping::default()).unwrap(),
            json!({"properties": {}})
        );
    }

    #[test]
    fn mapping_validation() {
        example_mapping().validate().unwrap();
        InputSchemaMapping::default().validate().unwrap();
        for field in ["id", "topic", "eventTime"] {
            let m: InputSchemaMapping = serde_json::from_value(json!({
                "properties": {field: {"sourceField": "x", "defaultValue": "y"}}
            }))
            .unwrap();
            let err = m.validate().unwrap_err();
            assert!(err.contains(field) && err.contains("sourceField"), "{err}");
        }
        let m: InputSchemaMapping = serde_json::from_value(json!({
            "inputSchemaMappingType": "Xml", "properties": {}
        }))
        .unwrap();
        assert!(m.validate().is_err());
        let m: InputSchemaMapping = serde_json::from_value(json!({
            "properties": {"subject": {"sourceField": ""}}
        }))
        .unwrap();
        assert!(m.validate().is_err());
    }

    #[test]
    fn compatibility_table() {
        use DeliverySchema as D;
        let table = [
            (EG, D::EventGridSchema, true),
            (EG, D::CloudEventSchemaV1_0, true),
            (EG, D::CustomInputSchema, false),
            (CE, D::EventGridSchema, false),
            (CE, D::CloudEventSchemaV1_0, true),
            (CE, D::CustomInputSchema, false),
            (CUSTOM, D::EventGridSchema, true),
            (CUSTOM, D::CloudEventSchemaV1_0, true),
            (CUSTOM, D::CustomInputSchema, true),
        ];
        let stored_eg =
            eg(r#"[{"id":"1","subject":"s","eventType":"t","eventTime":"2020-01-01T00:00:00Z"}]"#)
                .unwrap()
                .remove(0)
                .body;
        let stored_ce = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        for (input, output, ok) in table {
            assert_eq!(compatible(&input, output), ok, "{input:?} → {output:?}");
            let stored = if input == CE { stored_ce } else { &stored_eg };
            assert_eq!(
                render(stored, &input, output, false).is_ok(),
                ok,
                "{input:?} → {output:?}"
            );
        }
    }

    #[test]
    fn schema_names_serialize_as_azure_spells_them() {
        assert_eq!(
            serde_json::to_value([EG, CE, CUSTOM]).unwrap(),
            json!([
                "EventGridSchema",
                "CloudEventSchemaV1_0",
                "CustomEventSchema"
            ])
        );
        assert_eq!(
            serde_json::to_value([
                DeliverySchema::EventGridSchema,
                DeliverySchema::CloudEventSchemaV1_0,
                DeliverySchema::CustomInputSchema
            ])
            .unwrap(),
            json!([
                "EventGridSchema",
                "CloudEventSchemaV1_0",
                "CustomInputSchema"
            ])
        );
    }

    #[test]
    fn stored_envelopes() {
        assert_eq!(stored_envelope(&EG), EnvelopeKind::EventGrid);
        assert_eq!(stored_envelope(&CUSTOM), EnvelopeKind::EventGrid);
        assert_eq!(stored_envelope(&CE), EnvelopeKind::CloudEvents);
    }

    #[test]
    fn error_statuses() {
        assert_eq!(PublishError::bad("x", "m").status(), 400);
        assert_eq!(PublishError::TooLarge("m".into()).status(), 413);
        assert_eq!(PublishError::UnsupportedMediaType("m".into()).status(), 415);
    }

    // ---- Never panics -------------------------------------------------------

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn json_like() -> impl Strategy<Value = Value> {
            let names = prop::sample::select(vec![
                "id",
                "subject",
                "eventType",
                "eventTime",
                "data",
                "dataVersion",
                "metadataVersion",
                "topic",
                "specversion",
                "source",
                "type",
                "time",
                "data_base64",
                "datacontenttype",
                "ext",
                "Bad_Ext",
                "myId",
                "myEventType",
                "myTime",
                "meta",
            ]);
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                prop::sample::select(vec![
                    "1",
                    "1.0",
                    "",
                    "2020-01-01T00:00:00Z",
                    "AAEC",
                    "t",
                    "%C0%A0",
                    TOPIC,
                ])
                .prop_map(Value::from),
                ".{0,8}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::vec((names.clone(), inner), 0..8).prop_map(|kv| {
                        Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    }),
                ]
            })
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                json_like().prop_map(|v| v.to_string().into_bytes()),
                // An array of events, as every schema accepts.
                prop::collection::vec(json_like(), 0..4)
                    .prop_map(|v| Value::from(v).to_string().into_bytes()),
            ]
        }

        fn content_type() -> impl Strategy<Value = Option<String>> {
            prop::option::of(prop_oneof![
                prop::sample::select(vec![
                    "application/json",
                    "Application/CloudEvents+JSON; charset=utf-8",
                    "application/cloudevents-batch+json",
                    "application/cloudevents+xml",
                    "text/plain",
                    "application/octet-stream",
                    ";",
                    "",
                ])
                .prop_map(str::to_owned),
                ".{0,20}",
            ])
        }

        fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "ce-specversion",
                        "ce-id",
                        "ce-source",
                        "ce-type",
                        "ce-time",
                        "ce-subject",
                        "ce-x",
                        "ce-",
                        "ce-Bad",
                        "ce-data",
                    ])
                    .prop_map(str::to_owned),
                    prop_oneof![
                        prop::sample::select(vec!["1.0", "\"", "%", "%C0%A0", "\"a\\", ""])
                            .prop_map(str::to_owned),
                        ".{0,12}",
                    ],
                ),
                0..6,
            )
        }

        proptest! {
            #[test]
            fn parse_publish_never_panics(
                body in body(),
                ct in content_type(),
                headers in headers(),
                which in 0usize..3,
                out in 0usize..3,
            ) {
                let input = [EG, CE, CUSTOM][which].clone();
                let output = [
                    DeliverySchema::EventGridSchema,
                    DeliverySchema::CloudEventSchemaV1_0,
                    DeliverySchema::CustomInputSchema,
                ][out];
                let mapping = example_mapping();
                let r = parse_publish(
                    &input,
                    Some(&mapping),
                    ct.as_deref(),
                    &headers,
                    &body,
                    TOPIC,
                    now(),
                );
                if let Ok(events) = r {
                    for e in events {
                        // Every stored body is JSON; rendering never panics.
                        prop_assert!(serde_json::from_str::<Value>(&e.body).is_ok());
                        let _ = render(&e.body, &input, output, which == 1);
                    }
                }
            }
        }
    }
}
