//! `herald migrate`: copies an embedded SQLite installation into an empty
//! PostgreSQL database, table by table, in one PostgreSQL transaction.
//!
//! Both schemas use the same table and column names, so rows are copied
//! generically: each value is read from SQLite as the type its PostgreSQL
//! column needs. Sealed values stay sealed: the copy never decrypts
//! anything, so the nodes need the same master key.

use crate::{PgStorage, Result, StorageError};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::path::Path;
use std::str::FromStr;

/// Rows copied per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Bool,
    Bytes,
    Text,
    Float,
    /// Anything else: bound as text and cast.
    Other,
}

struct Column {
    name: String,
    kind: Kind,
    udt: String,
}

/// The tables to copy, in creation order (so foreign keys are satisfied),
/// with their row counts; `progress(table, done, total)` is called as rows land.
pub async fn sqlite_to_postgres(
    sqlite_path: &Path,
    pg_url: &str,
    progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
) -> Result<Vec<TableCopy>> {
    if !sqlite_path.exists() {
        return Err(StorageError::Corrupt(format!(
            "no Herald database at {}",
            sqlite_path.display()
        )));
    }
    let src = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::from_str(&format!("sqlite://{}", sqlite_path.display()))?
                .read_only(true),
        )
        .await?;
    // Opening runs the PostgreSQL migrations.
    let dst = PgStorage::open(pg_url).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY rowid",
    )
    .fetch_all(&src)
    .await?;
    let pg_tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_all(&dst.pool)
    .await?;
    let mut plan = Vec::new();
    let mut total = 0u64;
    for t in &tables {
        if !pg_tables.contains(t) {
            return Err(StorageError::Corrupt(format!(
                "table '{t}' has no PostgreSQL counterpart; is this Herald version's schema complete?"
            )));
        }
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{t}\""))
            .fetch_one(&src)
            .await?;
        let existing: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{t}\""))
            .fetch_one(&dst.pool)
            .await?;
        if existing > 0 {
            return Err(StorageError::Corrupt(format!(
                "the target database is not empty (table '{t}' has {existing} rows); migrate into a fresh database"
            )));
        }
        total += n as u64;
        plan.push((t.clone(), n as u64));
    }

    let mut tx = dst.pool.begin().await?;
    let mut done = 0u64;
    let mut copied = Vec::new();
    for (table, expected) in plan {
        let src_cols: Vec<String> = sqlx::query(&format!("PRAGMA table_info(\"{table}\")"))
            .fetch_all(&src)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("name"))
            .collect::<std::result::Result<_, _>>()?;
        let pg_cols: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text, udt_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(&mut *tx)
        .await?;
        let cols: Vec<Column> = pg_cols
            .into_iter()
            .filter(|(name, _, _)| src_cols.contains(name))
            .map(|(name, ty, udt)| Column {
                kind: match ty.as_str() {
                    "bigint" | "integer" | "smallint" => Kind::Int,
                    "boolean" => Kind::Bool,
                    "bytea" => Kind::Bytes,
                    "text" | "character varying" | "character" => Kind::Text,
                    "double precision" | "real" => Kind::Float,
                    _ => Kind::Other,
                },
                name,
                udt,
            })
            .collect();
        if let Some(missing) = src_cols
            .iter()
            .find(|c| !cols.iter().any(|k| &k.name == *c))
        {
            return Err(StorageError::Corrupt(format!(
                "column '{table}.{missing}' has no PostgreSQL counterpart"
            )));
        }
        let select = cols
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut rows_done = 0u64;
        let mut offset = 0i64;
        // Pages keep memory flat; rowid order is stable in a read-only source.
        loop {
            let rows: Vec<SqliteRow> = sqlx::query(&format!(
                "SELECT {select} FROM \"{table}\" ORDER BY rowid LIMIT 500 OFFSET {offset}"
            ))
            .fetch_all(&src)
            .await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as i64;
            let mut qb: QueryBuilder<Postgres> =
                QueryBuilder::new(format!("INSERT INTO \"{table}\" ({select}) "));
            let mut bad = None;
            qb.push_values(rows.iter(), |mut b, row| {
                for (i, c) in cols.iter().enumerate() {
                    let r = match c.kind {
                        Kind::Int => row.try_get::<Option<i64>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Bool => row.try_get::<Option<i64>, _>(i).map(|v| {
                            b.push_bind(v.map(|n| n != 0));
                        }),
                        Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Text => row.try_get::<Option<String>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Float => row.try_get::<Option<f64>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Other => row.try_get::<Option<String>, _>(i).map(|v| {
                            b.push("CAST(")
                                .push_bind_unseparated(v)
                                .push_unseparated(format!(" AS {})", c.udt));
                        }),
                    };
                    if let Err(e) = r {
                        bad.get_or_insert(e);
                    }
                }
            });
            if let Some(e) = bad {
                return Err(e.into());
            }
            qb.build().execute(&mut *tx).await?;
            rows_done += rows.len() as u64;
            done += rows.len() as u64;
            progress(&table, done, total);
        }
        let landed: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\""))
            .fetch_one(&mut *tx)
            .await?;
        if landed as u64 != expected || rows_done != expected {
            return Err(StorageError::Corrupt(format!(
                "table '{table}': expected {expected} rows, copied {landed}"
            )));
        }
        copied.push(TableCopy {
            table,
            rows: expected,
        });
    }
    // Every sequence owned by a column (identity, serial, event_log's)
    // continues after the copied values.
    let owned: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT s.relname::text, t.relname::text, a.attname::text FROM pg_class s \
         JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass \
         JOIN pg_class t ON t.oid = d.refobjid \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
         JOIN pg_namespace n ON n.oid = s.relnamespace \
         WHERE s.relkind = 'S' AND n.nspname = current_schema()",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (seq, table, col) in owned {
        sqlx::query(&format!(
            "SELECT setval('\"{seq}\"', GREATEST((SELECT COALESCE(MAX(\"{col}\"), 0) FROM \"{table}\"), 1))"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(copied)
}
