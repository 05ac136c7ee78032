//! Herald's integration tests: real servers on real ports over real HTTPS,
//! one server per test so tests run in parallel.

// A test binary has no outside: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

mod authz_matrix;
mod automation;
mod automation_flow;
mod binary;
mod blob;
mod cli_conventions;
mod connections;
mod delivery;
mod durability;
mod helpers;
mod hub_crash;
mod hubs;
mod identity;
mod job_containment;
mod lifecycle;
mod multinode;
mod push_crash;
mod quickstart;
mod races;
mod router_api;
mod sealed_at_rest;
mod security;
mod tutorials;
mod vault_api;
