//! Herald's Key Vault: versioned secrets, encrypted at rest, with soft
//! delete and the lifecycle events Azure Key Vault publishes.

pub mod lifecycle;
pub mod seal;
mod service;

pub use seal::MasterKey;
pub use service::*;
