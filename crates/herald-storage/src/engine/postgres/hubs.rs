//! The hubs store on postgres: all of it is shared (hubs/store.rs).

use super::PgStorage;

crate::hubs::store::hub_store!(PgStorage);
