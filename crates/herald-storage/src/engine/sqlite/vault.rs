//! The vault store on SQLite: all of it is shared (vault/store.rs).

use super::SqliteStorage;

crate::vault::store::vault_store!(SqliteStorage);
