//! The vault store on PostgreSQL: all of it is shared (vault/store.rs).

use super::PgStorage;
use crate::{Result, TopicRecord};
use sqlx::Row;
use sqlx::postgres::PgRow;

crate::vault::store::vault_store!(PgStorage);

// The router's store reads topics through these until it has its own.
pub(crate) const TOPIC_COLS: &str =
    "id, kind, name, arm_id, created, input_schema, input_mapping, key1, key2";

pub(crate) fn topic_from_row(r: &PgRow) -> Result<TopicRecord> {
    Ok(TopicRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        arm_id: r.try_get("arm_id")?,
        created: r.try_get("created")?,
        input_schema: r.try_get("input_schema")?,
        input_mapping: r.try_get("input_mapping")?,
        key1: r.try_get::<Option<Vec<u8>>, _>("key1")?.unwrap_or_default(),
        key2: r.try_get::<Option<Vec<u8>>, _>("key2")?.unwrap_or_default(),
    })
}
