//! The router store on PostgreSQL: shared (router/store.rs) but for
//! appends, which several nodes make at once, and the planner pin on log
//! reads.

use super::PgStorage;
use crate::Result;
use crate::engine::{BoxFuture, Conn};
use crate::router::NewLogEvent;
use crate::router::store::RouterEngine;
use sqlx::PgConnection;

crate::router::store::router_store!(PgStorage);

/// One publish waiting for its topic's next group commit.
pub(crate) struct AppendJob {
    events: Vec<NewLogEvent>,
    reply: tokio::sync::oneshot::Sender<std::result::Result<i64, String>>,
}

impl PgStorage {
    /// The group committer of a topic's log, started on first use.
    fn appender(&self, topic_id: &str) -> tokio::sync::mpsc::Sender<AppendJob> {
        let mut map = self.appenders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(topic_id).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(run_appender(self.pool.clone(), topic_id.to_owned(), rx));
        map.insert(topic_id.to_owned(), tx.clone());
        tx
    }
}

/// Appends to one topic's log in group commits. Appends to a topic are
/// serialised by its log lock until COMMIT anyway (so seq order is commit
/// order); doing the publishes that queued up meanwhile in one transaction
/// turns one commit per publish into one per burst.
async fn run_appender(
    pool: sqlx::PgPool,
    topic_id: String,
    mut rx: tokio::sync::mpsc::Receiver<AppendJob>,
) {
    const MAX_EVENTS: usize = 5000;
    while let Some(first) = rx.recv().await {
        let mut n = first.events.len();
        let mut jobs = vec![first];
        while n < MAX_EVENTS {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.events.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        match append_batch(&pool, &topic_id, &jobs).await {
            Ok(lasts) => {
                for (job, last) in jobs.into_iter().zip(lasts) {
                    let _ = job.reply.send(Ok(last));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// One transaction for several publishes; returns each one's last seq.
async fn append_batch(pool: &sqlx::PgPool, topic_id: &str, jobs: &[AppendJob]) -> Result<Vec<i64>> {
    let mut tx = pool.begin().await?;
    let publishes: Vec<&[NewLogEvent]> = jobs.iter().map(|j| j.events.as_slice()).collect();
    let lasts = router_store::append_in(&mut tx, topic_id, &publishes).await?;
    tx.commit().await?;
    Ok(lasts)
}

impl RouterEngine for PgStorage {
    async fn append_to_log(&self, topic_id: String, events: Vec<NewLogEvent>) -> Result<i64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.appender(&topic_id)
            .send(AppendJob { events, reply })
            .await
            .map_err(|_| crate::StorageError::WriterStopped)?;
        answer
            .await
            .map_err(|_| crate::StorageError::WriterStopped)?
            .map_err(crate::StorageError::Commit)
    }

    /// Keeps reads of a topic's log on the (topic_id, seq) index for the
    /// rest of the transaction. Right after a burst of publishes, before
    /// autovacuum has analysed event_log, the planner underestimates a
    /// topic's rows and picks a bitmap scan that sorts everything past the
    /// cursor (to disk): hundreds of milliseconds for each window read
    /// instead of a few.
    fn log_order_plan<'c>(tx: &'c mut Conn<Self>, no_sort: bool) -> BoxFuture<'c, Result<()>> {
        Box::pin(async move {
            let tx: &mut PgConnection = tx;
            sqlx::query(
                "SELECT set_config('enable_bitmapscan', 'off', true), \
                 set_config('enable_sort', CASE WHEN $1 THEN 'off' \
                 ELSE current_setting('enable_sort') END, true)",
            )
            .bind(no_sort)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
}
