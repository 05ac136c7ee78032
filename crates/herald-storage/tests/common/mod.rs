//! Engines for backend scenarios: each scenario is written once and run on
//! SQLite and, when a PostgreSQL URL is set, on PostgreSQL. Under CI=true a
//! missing PostgreSQL is a failure, not a skip.

#![allow(dead_code)]

use herald_storage::{Durability, PgStorage, SqliteStorage};
use sqlx::Connection;

/// The server PostgreSQL tests use: HERALD_TEST_DATABASE_URL, or under
/// CI=true the local CI service.
pub fn pg_url() -> Option<String> {
    if let Ok(u) = std::env::var("HERALD_TEST_DATABASE_URL") {
        return Some(u);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        return Some("postgres://postgres@127.0.0.1:5432/test".to_owned());
    }
    // Only PostgreSQL tests call this, and they are `#[ignore]`d unless
    // asked for: asked for without a server is a failure, never an `ok`.
    panic!(
        "this test needs PostgreSQL: set HERALD_TEST_DATABASE_URL=postgres://USER@HOST/DB \
         (or run without --include-ignored to skip it)"
    )
}

pub async fn sqlite() -> (tempfile::TempDir, SqliteStorage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.db");
    let s = SqliteStorage::open(path.to_str().expect("utf-8 path"), Durability::Normal)
        .await
        .expect("open sqlite");
    (dir, s)
}

/// A fresh database on the test server, so tests never share state.
pub async fn fresh_pg_url() -> Option<String> {
    let admin = pg_url()?;
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required here (CI=true or HERALD_TEST_DATABASE_URL set): {e}"));
    let name = format!("herald_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

pub async fn postgres() -> Option<PgStorage> {
    let url = fresh_pg_url().await?;
    Some(PgStorage::open(&url).await.expect("open postgres"))
}
