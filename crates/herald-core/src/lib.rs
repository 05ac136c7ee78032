#![warn(missing_docs)]
//! Herald's domain types. Everything here is pure: no I/O, no clocks read
//! implicitly, so the rules can be tested in isolation and reused by every
//! service crate and both storage engines.

pub mod duty;
pub mod event;
pub mod id;
pub mod job;
pub mod name;
pub mod provisioning;
pub mod seal;
pub mod vault;

pub use event::{ArmScope, EventGridEvent};
pub use id::{SecretVersion, new_token};
pub use name::{NameError, SecretName, VaultName};
pub use provisioning::ProvisioningState;
