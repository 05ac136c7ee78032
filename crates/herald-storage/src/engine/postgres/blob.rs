//! The blob store on postgres: all of it is shared (blob/store.rs).

use super::PgStorage;

crate::blob::store::blob_store!(PgStorage);
