#![warn(missing_docs)]
//! Herald's Hubs domain: Event Hubs–compatible partitioned streams.
//!
//! This crate is the pure logic shared by the storage layer and the protocol
//! edges (REST, AMQP, Kafka): validated names, access rights, connection
//! strings, SAS tokens, partition assignment, the neutral event model with
//! its segment codec, REST send parsing and event positions. It performs no
//! I/O, so every rule here is testable without a database or a socket.
//!
//! The wire facts come from the Hubs spec, Part A (`eventhubs-and-graph.md`).

pub mod connection_string;
pub mod event;
pub mod names;
pub mod partition;
pub mod position;
pub mod rest;
pub mod rights;
pub mod sas;
mod service;

pub use service::*;

pub use connection_string::{ConnectionString, ConnectionStringError, Credential};
pub use event::{
    CodecError, NewEvent, OffsetError, PropertyValue, SEGMENT_VERSION, SegmentHeader, StoredEvent,
    decode_segment, decode_segment_bytes, decode_segment_from, encode_append, encode_segment,
    offset_of, parse_offset, read_segment_header, stamp_append,
};
pub use names::{
    ConsumerGroupName, HubName, NameError, NameKind, NamespaceName, PartitionCount, PartitionId,
    PolicyName,
};
pub use partition::{RoundRobin, hash_code, hashlittle2, partition_for_key};
pub use position::{EventPosition, PositionError, StartAt};
pub use rest::{
    BATCH_CONTENT_TYPE, BrokerProperties, MAX_PUBLICATION_BYTES, RestError, check_publication_size,
    is_standard_header, parse_batch, parse_broker_properties, single_event,
    user_properties_from_headers,
};
pub use rights::{Right, Rights, RightsError};
pub use sas::{
    SasError, SasGrant, SasRule, SasToken, generate_key, quote_plus, resource_covers, sign,
};
