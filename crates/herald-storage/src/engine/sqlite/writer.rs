//! Group commit for SQLite.
//!
//! SQLite has one writer, so every write goes to one task that owns the
//! write connection. The task drains whatever jobs are queued and runs them
//! in one transaction, each inside its own savepoint so one failing job
//! cannot undo another. Callers hear back only after the COMMIT, so an
//! acknowledged write is durable, and a burst of writers pays for one commit.

use crate::engine::BoxFuture;
use crate::{Result, StorageError};
use sqlx::Sqlite;
use sqlx::SqliteConnection;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

/// Delivers a job's result once the batch's fate is known.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;
type Job =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, (bool, Finish)> + Send>;

/// Upper bound on jobs per transaction, so one commit never grows unbounded.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    pub(crate) fn spawn(conn: PoolConnection<Sqlite>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(conn, rx));
        Self { jobs: tx }
    }

    /// Runs `work` inside the next group transaction and returns its result
    /// after that transaction committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = work(conn).await;
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit_error| {
                    let _ = reply.send(match (result, commit_error) {
                        (Ok(v), None) => Ok(v),
                        (Ok(_), Some(e)) => Err(StorageError::Commit(e.to_owned())),
                        (Err(e), _) => Err(e),
                    });
                });
                (ok, finish)
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }
}

/// Boxed so the spawned task's future is provably `Send` for every lifetime.
fn exec<'c>(
    conn: &'c mut SqliteConnection,
    sql: &'static str,
) -> BoxFuture<'c, Result<(), String>> {
    Box::pin(async move {
        sqlx::query(sql)
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

async fn run(mut conn: PoolConnection<Sqlite>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let conn: &mut SqliteConnection = &mut conn;
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
            // Dropping the jobs drops their reply channels: callers see an error.
            tracing::error!(error = %e, "cannot begin a write transaction");
            batch.clear();
            continue;
        }
        let mut finishes = Vec::with_capacity(batch.len());
        let mut failed: Option<String> = None;
        for job in batch.drain(..) {
            if let Err(e) = exec(conn, "SAVEPOINT job").await {
                failed = Some(e);
                break;
            }
            let (ok, finish) = job(conn).await;
            finishes.push(finish);
            let undo = if ok {
                Ok(())
            } else {
                exec(conn, "ROLLBACK TO job").await
            };
            if let Err(e) = undo.and(exec(conn, "RELEASE job").await) {
                failed = Some(e);
                break;
            }
        }
        let outcome = match failed {
            Some(e) => {
                let _ = exec(conn, "ROLLBACK").await;
                Some(e)
            }
            None => match exec(conn, "COMMIT").await {
                Ok(()) => None,
                Err(e) => {
                    let _ = exec(conn, "ROLLBACK").await;
                    Some(e)
                }
            },
        };
        if let Some(e) = &outcome {
            tracing::error!(error = %e, "write transaction failed");
        }
        for finish in finishes {
            finish(outcome.as_deref());
        }
        // Jobs never reached (after a failure) are dropped: their callers see an error.
        batch.clear();
    }
}
