//! The blob store on sqlite: all of it is shared (blob/store.rs).

use super::SqliteStorage;

crate::blob::store::blob_store!(SqliteStorage);
