#![warn(missing_docs)]
//! Herald's event router (Event Grid): topics and their keys, the publish
//! API's schemas, event subscriptions with filters, and pull delivery.

pub mod auth;
pub mod dead_letter;
mod duties;
pub mod filter;
pub mod schema;
mod service;
pub mod subscription;

pub use service::*;
