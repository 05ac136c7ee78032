//! The embedded engine: SQLite in WAL mode.
//!
//! SQLite allows one writer at a time, so writes go through a one-connection
//! pool (no `SQLITE_BUSY` upgrade deadlocks) while reads use a wider pool
//! that sees every committed write thanks to WAL snapshots.

mod automation;
mod blob;
mod hubs;
mod identity;
mod router;
mod vault;
mod writer;

use super::{BoxFuture, Conn, Engine};
use crate::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;
use writer::Writer;

pub struct SqliteStorage {
    pub(crate) reader: SqlitePool,
    pub(crate) writer: Writer,
    /// Dropping the storage stops its checkpoint task.
    _checkpoints: tokio::sync::oneshot::Sender<()>,
}

impl SqliteStorage {
    pub async fn open(path: &str, durability: Durability) -> Result<Self> {
        let sync = match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        };
        let base = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-16000")
            .pragma("temp_store", "memory");
        // Checkpoints (which fsync the database file) run on their own
        // connection in the background, never inside a commit on the write path.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(base.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(checkpoint_loop(checkpointer, stopped));
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;
        let writer = Writer::spawn(writer.acquire().await?);
        Ok(Self {
            reader,
            writer,
            _checkpoints: stop,
        })
    }
}

/// Copies the WAL back into the database every second. PASSIVE never
/// blocks writers or readers; the periodic TRUNCATE keeps the WAL small.
async fn checkpoint_loop(pool: SqlitePool, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut stopped => {
                pool.close().await;
                return;
            }
            _ = tick.tick() => {}
        }
        n += 1;
        let mode = if n.is_multiple_of(60) {
            "TRUNCATE"
        } else {
            "PASSIVE"
        };
        if let Err(e) = sqlx::query(&format!("PRAGMA wal_checkpoint({mode})"))
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        }
    }
}

impl Engine for SqliteStorage {
    type Db = sqlx::Sqlite;

    const UNIX_NOW: &'static str = "unixepoch()";
    const FOR_UPDATE: &'static str = "";
    const TRUE: &'static str = "1";
    const FALSE: &'static str = "0";
    const MAX_BINDS: usize = 32_766;
    const BYTE_ORDER: &'static str = "";
    const INSTR: &'static str = "instr";

    fn advisory_lock<'c>(
        _tx: &'c mut Conn<Self>,
        _space: &'static str,
        _key: &'c str,
    ) -> BoxFuture<'c, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn row_lock(_clause: &'static str) -> &'static str {
        ""
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn<Self>) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.writer.write(work).await
    }

    fn notify<'c>(_tx: &'c mut Conn<Self>, _payload: String) -> BoxFuture<'c, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    const SKIP_LOCKED: &'static str = "";
}

impl Storage for SqliteStorage {
    fn engine(&self) -> &'static str {
        "sqlite"
    }
}

/// One node owns the embedded database, so every singleton duty is ours
/// and in-process signals are all the wake-ups there are.
#[async_trait]
impl Coordination for SqliteStorage {
    async fn try_singleton(&self, _name: &str) -> Result<Option<SingletonGuard>> {
        Ok(Some(SingletonGuard(Box::new(()))))
    }

    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}
