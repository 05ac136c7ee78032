#![warn(missing_docs)]
//! Herald's Automation service: runbooks started by token webhooks, run as
//! jobs by workers in a sandbox, with their streams kept per job.

pub mod exec;
pub mod model;
pub mod sandbox;
pub mod service;
pub mod transitions;
pub mod worker;

pub use service::{AutomationError, AutomationService, AutomationSettings};
