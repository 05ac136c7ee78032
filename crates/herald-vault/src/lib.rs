#![warn(missing_docs)]
//! Herald's Key Vault: versioned secrets, encrypted at rest, with soft
//! delete and the lifecycle events Azure Key Vault publishes.

pub mod lifecycle;
mod service;

pub use service::*;
