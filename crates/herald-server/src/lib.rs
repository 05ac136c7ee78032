//! Herald's HTTPS server. Handlers are thin: they parse the wire into domain
//! types, call a service crate, and render the Azure-shaped response.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
mod metrics_setup;
mod server;
pub mod state;
pub mod tls;

pub use config::Config;
pub use server::{Server, StartInfo};
