//! The shared engine: PostgreSQL, for several Herald nodes on one database.
//!
//! Every mutation is one transaction. Queues are claimed with
//! `FOR UPDATE SKIP LOCKED`, so nodes never wait on each other's rows;
//! `LISTEN/NOTIFY` carries wake-up hints between nodes (polling stays the
//! fallback); singleton duties run under session advisory locks, which the
//! database releases when the holder's connection dies.

mod automation;
mod blob;
mod hubs;
mod identity;
mod router;
mod vault;

use super::{BoxFuture, Conn, Engine};
use crate::*;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// The channel all wake-up hints travel on; payloads say what changed
/// (`job:<group>`, `topic:<id>`).
pub(crate) const NOTIFY_CHANNEL: &str = "herald_wake";

pub struct PgStorage {
    pub(crate) pool: PgPool,
    pub(crate) url: String,
    wakeups: broadcast::Sender<String>,
    /// Per-topic group committers of the event log (postgres_router.rs).
    pub(crate) appenders: std::sync::Mutex<
        std::collections::HashMap<String, tokio::sync::mpsc::Sender<router::AppendJob>>,
    >,
}

impl PgStorage {
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        // Nodes starting together would race on migrations: one at a time.
        let mut lock = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock(7255123001)")
            .execute(&mut *lock)
            .await?;
        let migrated = sqlx::migrate!("./migrations/postgres").run(&pool).await;
        sqlx::query("SELECT pg_advisory_unlock(7255123001)")
            .execute(&mut *lock)
            .await?;
        drop(lock);
        migrated?;
        let (wakeups, _) = broadcast::channel(1024);
        let storage = Self {
            pool,
            url: url.to_owned(),
            wakeups,
            appenders: std::sync::Mutex::default(),
        };
        storage.spawn_listener();
        Ok(storage)
    }

    /// Forwards NOTIFY payloads to subscribers; reconnects on failure.
    fn spawn_listener(&self) {
        let url = self.url.clone();
        let tx = self.wakeups.clone();
        tokio::spawn(async move {
            loop {
                match PgListener::connect(&url).await {
                    Ok(mut l) => {
                        if l.listen(NOTIFY_CHANNEL).await.is_ok() {
                            while let Ok(n) = l.recv().await {
                                let _ = tx.send(n.payload().to_owned());
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// Sends a wake-up hint inside the caller's transaction, so it is delivered
/// only if the change commits.
pub(crate) async fn notify(tx: &mut PgConnection, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Holds a session advisory lock on its own connection; dropping it (or the
/// node dying) closes the connection and frees the lock.
struct AdvisoryGuard {
    _conn: PgConnection,
}

impl Engine for PgStorage {
    type Db = sqlx::Postgres;

    /// `clock_timestamp()`, not `now()`: a long transaction must not stamp
    /// its rows with the time it began.
    const UNIX_NOW: &'static str = "floor(extract(epoch FROM clock_timestamp()))::BIGINT";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const TRUE: &'static str = "TRUE";
    const FALSE: &'static str = "FALSE";
    const MAX_BINDS: usize = 65_535;
    const BYTE_ORDER: &'static str = " COLLATE \"C\"";
    const INSTR: &'static str = "strpos";

    fn advisory_lock<'c>(
        tx: &'c mut Conn<Self>,
        space: &'static str,
        key: &'c str,
    ) -> BoxFuture<'c, Result<()>> {
        Box::pin(async move {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                .bind(space)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    }

    fn row_lock(clause: &'static str) -> &'static str {
        clause
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn<Self>) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        // Dropping the transaction on an error rolls it back.
        let mut tx = self.pool.begin().await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    fn notify<'c>(tx: &'c mut Conn<Self>, payload: String) -> BoxFuture<'c, Result<()>> {
        Box::pin(async move { notify(tx, &payload).await })
    }

    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
}

impl Storage for PgStorage {
    fn engine(&self) -> &'static str {
        "postgres"
    }
}

#[async_trait]
impl Coordination for PgStorage {
    async fn try_singleton(&self, name: &str) -> Result<Option<SingletonGuard>> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1)::bigint)")
            .bind(format!("herald:{name}"))
            .fetch_one(&mut conn)
            .await?;
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(SingletonGuard(Box::new(AdvisoryGuard {
            _conn: conn,
        }))))
    }

    fn wakeups(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.wakeups.subscribe())
    }
}
