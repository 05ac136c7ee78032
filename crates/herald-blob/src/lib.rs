//! Herald's Blob domain: storage accounts, containers and block blobs as
//! the Azure Storage SDKs speak to them. The HTTP edge lives in
//! `herald-server`; this crate holds the rules (names, Shared Key and SAS
//! verification, the XML bodies) and the service over the storage seam.

pub mod auth;
pub mod names;
pub mod sas;
pub mod service;
pub mod xml;
