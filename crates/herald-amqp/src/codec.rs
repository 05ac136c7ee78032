//! Event <-> AMQP message conversion.
//!
//! Inbound, the encoded message is kept byte for byte (minus
//! delivery-annotations) so a consumer later gets the sender's sections
//! unchanged; a small section scanner finds the body and the
//! application-properties without decoding the rest. Outbound, the stored
//! message is decoded into fe2o3 types, Herald's annotations are stamped on
//! it, and fe2o3 encodes it into the transfer.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::{
    messaging::{
        ApplicationProperties, Batch, Body, Data, DeliveryAnnotations, Message, MessageAnnotations,
        annotations::OwnedKey, message::__private::Serializable, message::DecodeIntoMessage,
    },
    primitives::{Binary, SimpleValue, Symbol, Timestamp, Value},
};
use serde::Serialize;

use crate::backend::{InboundEvent, OutboundEvent, PropertyValue};

/// Annotation keys Herald stamps or reads.
pub(crate) const PARTITION_KEY: &str = "x-opt-partition-key";
pub(crate) const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
pub(crate) const OFFSET: &str = "x-opt-offset";
pub(crate) const ENQUEUED_TIME: &str = "x-opt-enqueued-time";

/// Section descriptor codes (AMQP 1.0 part 3.2).
const HEADER: u64 = 0x70;
const DELIVERY_ANNOTATIONS: u64 = 0x71;
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const APPLICATION_PROPERTIES: u64 = 0x74;
const DATA: u64 = 0x75;
const AMQP_SEQUENCE: u64 = 0x76;
const AMQP_VALUE: u64 = 0x77;
const FOOTER: u64 = 0x78;

/// Error while scanning an encoded message.
#[derive(Debug, thiserror::Error)]
#[error("malformed AMQP message: {0}")]
pub(crate) struct CodecError(pub(crate) String);

fn err<T>(msg: &str) -> Result<T, CodecError> {
    Err(CodecError(msg.to_string()))
}

/// Length in bytes of the encoded value starting at `buf[pos]`.
fn value_len(buf: &[u8], pos: usize, depth: u32) -> Result<usize, CodecError> {
    if depth > 32 {
        return err("nesting too deep");
    }
    let code = *buf.get(pos).ok_or(CodecError("truncated value".into()))?;
    let rd = |off: usize, n: usize| -> Result<usize, CodecError> {
        let s = buf
            .get(pos + off..pos + off + n)
            .ok_or(CodecError("truncated size".into()))?;
        Ok(s.iter().fold(0usize, |a, b| (a << 8) | *b as usize))
    };
    let len = if code == 0x00 {
        let d = value_len(buf, pos + 1, depth + 1)?;
        let v = value_len(buf, pos + 1 + d, depth + 1)?;
        1 + d + v
    } else {
        match code >> 4 {
            0x4 => 1,
            0x5 => 2,
            0x6 => 3,
            0x7 => 5,
            0x8 => 9,
            0x9 => 17,
            0xa | 0xc | 0xe => 2 + rd(1, 1)?,
            0xb | 0xd | 0xf => 5 + rd(1, 4)?,
            _ => return err("unknown constructor"),
        }
    };
    if pos + len > buf.len() {
        return err("value runs past the end");
    }
    Ok(len)
}

/// The section code of a descriptor at `pos` and its encoded length.
fn descriptor_code(buf: &[u8], pos: usize) -> Result<(Option<u64>, usize), CodecError> {
    let len = value_len(buf, pos, 0)?;
    let code = match buf[pos] {
        0x53 => Some(buf[pos + 1] as u64),
        0x80 => Some(u64::from_be_bytes(
            buf[pos + 1..pos + 9]
                .try_into()
                .map_err(|_| CodecError("ulong".into()))?,
        )),
        0xa3 | 0xb3 => {
            let hdr = if buf[pos] == 0xa3 { 2 } else { 5 };
            let name = &buf[pos + hdr..pos + len];
            match name {
                b"amqp:header:list" => Some(HEADER),
                b"amqp:delivery-annotations:map" => Some(DELIVERY_ANNOTATIONS),
                b"amqp:message-annotations:map" => Some(MESSAGE_ANNOTATIONS),
                b"amqp:properties:list" => Some(0x73),
                b"amqp:application-properties:map" => Some(APPLICATION_PROPERTIES),
                b"amqp:data:binary" => Some(DATA),
                b"amqp:amqp-sequence:list" => Some(AMQP_SEQUENCE),
                b"amqp:amqp-value:*" => Some(AMQP_VALUE),
                b"amqp:footer:map" => Some(FOOTER),
                _ => None,
            }
        }
        _ => None,
    };
    Ok((code, len))
}

/// One section: its code and the byte range of the whole described value.
#[derive(Debug, Clone)]
struct Section {
    code: u64,
    range: Range<usize>,
    /// Range of the section's value (after the descriptor).
    value: Range<usize>,
}

fn scan(buf: &[u8]) -> Result<Vec<Section>, CodecError> {
    let mut out = Vec::with_capacity(4);
    let mut pos = 0;
    while pos < buf.len() {
        if buf[pos] != 0x00 {
            return err("section is not a described type");
        }
        let (code, dlen) = descriptor_code(buf, pos + 1)?;
        let code = code.ok_or(CodecError("unknown section descriptor".into()))?;
        let vstart = pos + 1 + dlen;
        let vlen = value_len(buf, vstart, 0)?;
        out.push(Section {
            code,
            range: pos..vstart + vlen,
            value: vstart..vstart + vlen,
        });
        pos = vstart + vlen;
    }
    Ok(out)
}

/// Payload range of a binary value (the content of a data section).
fn binary_payload(buf: &[u8], v: &Range<usize>) -> Result<Range<usize>, CodecError> {
    match buf[v.start] {
        0xa0 => Ok(v.start + 2..v.end),
        0xb0 => Ok(v.start + 5..v.end),
        _ => err("data section is not binary"),
    }
}

fn simple_to_property(v: SimpleValue) -> PropertyValue {
    match v {
        SimpleValue::Null => PropertyValue::Null,
        SimpleValue::Bool(b) => PropertyValue::Bool(b),
        SimpleValue::Ubyte(n) => PropertyValue::Long(n as i64),
        SimpleValue::Ushort(n) => PropertyValue::Long(n as i64),
        SimpleValue::Uint(n) => PropertyValue::Long(n as i64),
        SimpleValue::Ulong(n) => PropertyValue::Long(n as i64),
        SimpleValue::Byte(n) => PropertyValue::Long(n as i64),
        SimpleValue::Short(n) => PropertyValue::Long(n as i64),
        SimpleValue::Int(n) => PropertyValue::Int(n),
        SimpleValue::Long(n) => PropertyValue::Long(n),
        SimpleValue::Float(f) => PropertyValue::Double(f.into_inner() as f64),
        SimpleValue::Double(f) => PropertyValue::Double(f.into_inner()),
        SimpleValue::Char(c) => PropertyValue::String(c.to_string()),
        SimpleValue::Timestamp(t) => PropertyValue::Timestamp(t.milliseconds()),
        SimpleValue::Uuid(u) => PropertyValue::Uuid(uuid::Uuid::from_bytes(u.into_inner())),
        SimpleValue::Binary(b) => PropertyValue::Binary(Bytes::from(b.into_vec())),
        SimpleValue::String(s) => PropertyValue::String(s),
        SimpleValue::Symbol(s) => PropertyValue::String(s.0),
        other => PropertyValue::String(format!("{other:?}")),
    }
}

fn property_to_simple(v: &PropertyValue) -> SimpleValue {
    match v {
        PropertyValue::String(s) => SimpleValue::String(s.clone()),
        PropertyValue::Long(n) => SimpleValue::Long(*n),
        PropertyValue::Int(n) => SimpleValue::Int(*n),
        PropertyValue::Double(f) => SimpleValue::Double((*f).into()),
        PropertyValue::Bool(b) => SimpleValue::Bool(*b),
        PropertyValue::Binary(b) => SimpleValue::Binary(Binary::from(b.to_vec())),
        PropertyValue::Timestamp(ms) => SimpleValue::Timestamp(Timestamp::from_milliseconds(*ms)),
        PropertyValue::Uuid(u) => SimpleValue::Uuid((*u.as_bytes()).into()),
        PropertyValue::Null => SimpleValue::Null,
    }
}

fn annotation_string(ann: &MessageAnnotations, key: &str) -> Option<String> {
    match ann.0.get(&OwnedKey::Symbol(Symbol::from(key))) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Symbol(s)) => Some(s.0.clone()),
        _ => None,
    }
}

/// The partition key in a decoded message's annotations.
pub(crate) fn partition_key_of<B>(msg: &Message<B>) -> Option<String> {
    msg.message_annotations
        .as_ref()
        .and_then(|a| annotation_string(a, PARTITION_KEY))
}

/// Build an event from one complete encoded message (a batch item, or a
/// re-encoded single message). `outer_key` wins over the message's own key.
pub(crate) fn event_from_encoded(
    raw: Bytes,
    outer_key: Option<&str>,
) -> Result<InboundEvent, CodecError> {
    let sections = scan(&raw)?;
    let mut body_ranges = Vec::new();
    let mut body_sections = Vec::new();
    let mut properties = Vec::new();
    let mut inner_key = None;
    let mut has_da = false;
    for s in &sections {
        match s.code {
            DATA => body_ranges.push(binary_payload(&raw, &s.value)?),
            AMQP_SEQUENCE | AMQP_VALUE => body_sections.push(s.range.clone()),
            APPLICATION_PROPERTIES => {
                let ap: ApplicationProperties = serde_amqp::from_slice(&raw[s.range.clone()])
                    .map_err(|e| CodecError(format!("application-properties: {e}")))?;
                properties =
                    ap.0.into_inner()
                        .into_iter()
                        .map(|(k, v)| (k, simple_to_property(v)))
                        .collect();
            }
            MESSAGE_ANNOTATIONS if outer_key.is_none() => {
                let ma: MessageAnnotations = serde_amqp::from_slice(&raw[s.range.clone()])
                    .map_err(|e| CodecError(format!("message-annotations: {e}")))?;
                inner_key = annotation_string(&ma, PARTITION_KEY);
            }
            DELIVERY_ANNOTATIONS => has_da = true,
            _ => {}
        }
    }
    let body = match (body_ranges.len(), body_sections.len()) {
        (1, _) => raw.slice(body_ranges[0].clone()),
        (0, 0) => Bytes::new(),
        (0, _) => concat(&raw, &body_sections),
        _ => concat(&raw, &body_ranges),
    };
    // What is kept verbatim for delivery: every section but
    // delivery-annotations (per hop) and a lone data section, whose
    // payload is the event body already; `outbound_message` puts it back.
    // Storing it once halves what a 1 KB event costs on disk.
    let lone_data = body_ranges.len() == 1 && body_sections.is_empty();
    let amqp = if has_da || lone_data {
        let keep: Vec<Range<usize>> = sections
            .iter()
            .filter(|s| s.code != DELIVERY_ANNOTATIONS && !(lone_data && s.code == DATA))
            .map(|s| s.range.clone())
            .collect();
        concat(&raw, &keep)
    } else {
        raw
    };
    Ok(InboundEvent {
        body,
        partition_key: outer_key.map(str::to_string).or(inner_key),
        properties,
        amqp: Some(amqp),
    })
}

fn concat(raw: &Bytes, ranges: &[Range<usize>]) -> Bytes {
    let mut b = BytesMut::with_capacity(ranges.iter().map(|r| r.len()).sum());
    for r in ranges {
        b.extend_from_slice(&raw[r.clone()]);
    }
    b.freeze()
}

/// Encode a decoded message (delivery-annotations dropped) for storage.
pub(crate) fn encode_message(mut msg: Message<Body<Value>>) -> Result<Bytes, CodecError> {
    use bytes::BufMut;
    msg.delivery_annotations = None;
    let mut buf = BytesMut::new();
    let mut ser = serde_amqp::ser::Serializer::from((&mut buf).writer());
    Serializable(&msg)
        .serialize(&mut ser)
        .map_err(|e| CodecError(format!("encode: {e}")))?;
    Ok(buf.freeze())
}

/// Runtime metrics stamped as delivery-annotations (A9.7).
#[derive(Debug, Clone)]
pub(crate) struct RuntimeInfo {
    pub(crate) last_sequence_number: i64,
    pub(crate) last_offset: String,
    pub(crate) last_enqueued_time_ms: i64,
    pub(crate) retrieval_time_ms: i64,
}

/// The message a consumer receives for a stored event.
pub(crate) fn outbound_message(
    ev: &OutboundEvent,
    runtime: Option<&RuntimeInfo>,
) -> Result<Message<Body<Value>>, CodecError> {
    let mut msg: Message<Body<Value>> = match &ev.event.amqp {
        Some(raw) => <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(
            serde_amqp::read::SliceReader::new(raw),
        )
        .map_err(|e| CodecError(format!("stored message: {e}")))
        .map(|mut m| {
            // A lone data section was stored as the body (see
            // `event_from_encoded`); older rows still carry theirs.
            if m.body.is_empty() {
                m.body = Body::Data(Batch::new(vec![Data(Binary::from(ev.event.body.to_vec()))]));
            }
            m
        })?,
        None => {
            let ap = if ev.event.properties.is_empty() {
                None
            } else {
                let mut m = fe2o3_amqp_types::primitives::OrderedMap::with_capacity(
                    ev.event.properties.len(),
                );
                for (k, v) in &ev.event.properties {
                    m.insert(k.clone(), property_to_simple(v));
                }
                Some(ApplicationProperties(m))
            };
            Message {
                header: None,
                delivery_annotations: None,
                message_annotations: None,
                properties: None,
                application_properties: ap,
                body: Body::Data(Batch::new(vec![Data(Binary::from(ev.event.body.to_vec()))])),
                footer: None,
            }
        }
    };
    let ma = msg
        .message_annotations
        .get_or_insert_with(|| MessageAnnotations(Default::default()));
    let sym = |k: &str| OwnedKey::Symbol(Symbol::from(k));
    ma.0.insert(sym(SEQUENCE_NUMBER), Value::Long(ev.sequence_number));
    ma.0.insert(sym(OFFSET), Value::String(ev.sequence_number.to_string()));
    ma.0.insert(
        sym(ENQUEUED_TIME),
        Value::Timestamp(Timestamp::from_milliseconds(ev.enqueued_time_ms)),
    );
    match &ev.event.partition_key {
        Some(k) => {
            ma.0.insert(sym(PARTITION_KEY), Value::String(k.clone()));
        }
        None => {
            ma.0.swap_remove(&sym(PARTITION_KEY));
        }
    }
    msg.delivery_annotations = runtime.map(|r| {
        let mut da = fe2o3_amqp_types::primitives::OrderedMap::with_capacity(4);
        da.insert(
            sym("last_enqueued_sequence_number"),
            Value::Long(r.last_sequence_number),
        );
        da.insert(
            sym("last_enqueued_offset"),
            Value::String(r.last_offset.clone()),
        );
        da.insert(
            sym("last_enqueued_time_utc"),
            Value::Timestamp(Timestamp::from_milliseconds(r.last_enqueued_time_ms)),
        );
        da.insert(
            sym("runtime_info_retrieval_time_utc"),
            Value::Timestamp(Timestamp::from_milliseconds(r.retrieval_time_ms)),
        );
        DeliveryAnnotations(da)
    });
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::{AmqpValue, Properties};

    fn sample() -> Message<Body<Value>> {
        let mut ma = MessageAnnotations(Default::default());
        ma.0.insert(
            OwnedKey::Symbol(Symbol::from(PARTITION_KEY)),
            Value::String("k1".into()),
        );
        ma.0.insert(OwnedKey::Symbol(Symbol::from("x-custom")), Value::Int(3));
        let mut ap = fe2o3_amqp_types::primitives::OrderedMap::new();
        ap.insert("color".to_string(), SimpleValue::String("red".into()));
        ap.insert("n".to_string(), SimpleValue::Int(7));
        Message {
            header: None,
            delivery_annotations: Some(DeliveryAnnotations(Default::default())),
            message_annotations: Some(ma),
            properties: Some(Properties {
                message_id: Some("m1".to_string().into()),
                ..Default::default()
            }),
            application_properties: Some(ApplicationProperties(ap)),
            body: Body::Data(Batch::new(vec![Data(Binary::from(b"hello".to_vec()))])),
            footer: None,
        }
    }

    #[test]
    fn round_trip_keeps_sections() {
        let raw = encode_message(sample()).unwrap();
        let ev = event_from_encoded(raw, None).unwrap();
        assert_eq!(&ev.body[..], b"hello");
        assert_eq!(ev.partition_key.as_deref(), Some("k1"));
        assert_eq!(
            ev.properties[0],
            ("color".to_string(), PropertyValue::String("red".into()))
        );
        assert_eq!(ev.properties[1], ("n".to_string(), PropertyValue::Int(7)));
        // The body is stored once: the kept sections do not repeat it.
        let kept = ev.amqp.clone().unwrap();
        assert!(!kept.windows(5).any(|w| w == b"hello"));
        let out = OutboundEvent {
            event: ev,
            sequence_number: 41,
            enqueued_time_ms: 1000,
        };
        let msg = outbound_message(&out, None).unwrap();
        let ma = msg.message_annotations.unwrap();
        assert_eq!(
            ma.0.get(&OwnedKey::Symbol(Symbol::from(OFFSET))),
            Some(&Value::String("41".into()))
        );
        assert_eq!(
            ma.0.get(&OwnedKey::Symbol(Symbol::from("x-custom"))),
            Some(&Value::Int(3))
        );
        assert_eq!(
            msg.properties.unwrap().message_id,
            Some("m1".to_string().into())
        );
        assert!(msg.delivery_annotations.is_none());
        match msg.body {
            Body::Data(b) => assert_eq!(b.first().map(|d| &d.0[..]), Some(&b"hello"[..])),
            other => panic!("body {other:?}"),
        }
    }

    #[test]
    fn a_value_body_is_kept_verbatim() {
        let mut m = sample();
        m.body = Body::Value(AmqpValue(Value::String("as a value".into())));
        let ev = event_from_encoded(encode_message(m).unwrap(), None).unwrap();
        let out = OutboundEvent {
            event: ev,
            sequence_number: 0,
            enqueued_time_ms: 0,
        };
        match outbound_message(&out, None).unwrap().body {
            Body::Value(AmqpValue(Value::String(s))) => assert_eq!(s, "as a value"),
            other => panic!("body {other:?}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(
            event_from_encoded(Bytes::from_static(&[0x00, 0x53, 0x75, 0xb0, 0xff]), None).is_err()
        );
        assert!(event_from_encoded(Bytes::from_static(&[0x41]), None).is_err());
    }
}
