//! The hubs store on sqlite: all of it is shared (hubs/store.rs).

use super::SqliteStorage;

crate::hubs::store::hub_store!(SqliteStorage);
