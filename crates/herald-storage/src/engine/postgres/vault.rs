//! The vault store on PostgreSQL: all of it is shared (vault/store.rs).

use super::PgStorage;

crate::vault::store::vault_store!(PgStorage);
