//! The identity store on sqlite: all of it is shared (identity/store.rs).

use super::SqliteStorage;

crate::identity::store::identity_store!(SqliteStorage);
