//! Herald's AMQP 1.0 edge for Event Hubs-compatible Hubs.
//!
//! A thin protocol layer over [`backend::HubsBackend`]: SASL, `$cbs`
//! put-token, `$management` READ, producer links (including
//! `EventDataBatch`) and consumer links (selector filters, epochs,
//! credit-based flow, runtime metrics), as the official `azure-eventhub`
//! SDKs expect them (spec §A9). fe2o3-amqp does the framing and the
//! connection/session/link state machines; TLS is terminated here with
//! rustls so clients that start TLS at once (all Azure SDKs) work.
//!
//! ```no_run
//! # async fn run(backend: std::sync::Arc<dyn herald_amqp::HubsBackend>) -> std::io::Result<()> {
//! use herald_amqp::{AmqpListener, ListenerConfig, Limits};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let config = ListenerConfig { addr: "127.0.0.1:5672".parse().unwrap(), tls: None, limits: Limits::default() };
//! let listener = AmqpListener::bind(config, backend, shutdown.clone()).await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(listener.serve());
//! # let _ = addr; Ok(()) }
//! ```

pub mod backend;
pub mod client;
pub mod position;

mod address;
mod codec;
mod consumer;
mod errors;
mod io;
mod listener;
mod nodes;
mod producer;
mod session;
mod state;

pub use backend::{
    AppendError, AppendReceipt, AuthError, Grant, HubProperties, HubsBackend, InboundEvent,
    OutboundEvent, PartitionProperties, PartitionTarget, PropertyValue, ReadError, Rights,
};
pub use listener::{AmqpListener, Limits, ListenerConfig};
pub use position::EventPosition;
