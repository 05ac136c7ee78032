//! The identity store on postgres: all of it is shared (identity/store.rs).

use super::PgStorage;

crate::identity::store::identity_store!(PgStorage);
