//! Herald's HTTP edge: the HTTPS listener and the API. Handlers are thin:
//! they parse the wire into domain types, call a service crate, and render
//! the Azure-shaped response. Wiring and background duties live in
//! herald-node, the composition root.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod https;
pub mod metrics_setup;
pub mod state;
pub mod tls;

pub use config::Config;
