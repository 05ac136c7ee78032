//! The automation store, written once for both engines.
//!
//! Every method but the queue claim is shared: each write is one
//! conditional statement, or a read followed by writes under the row lock
//! that [`Engine::FOR_UPDATE`] takes on PostgreSQL, and sweeps take their
//! rows with [`Engine::SKIP_LOCKED`] (SQLite's single writer already
//! serialises every transaction). What makes each method safe with several
//! nodes is said beside it:
//!
//! - every status change happens under the job's row lock (a conditional
//!   `UPDATE` or `SELECT ... FOR UPDATE`), which also makes the per-job
//!   transition `seq` (`MAX(seq) + 1`) safe;
//! - idempotency keys are settled by the primary key and `ON CONFLICT`;
//! - a job becoming `New` (created, re-queued, resumed) sends a `job:<group>`
//!   hint inside its transaction, so idle workers on other nodes wake at once.
//!
//! The claim differs between the engines in how it keeps several claimers
//! apart, so each engine implements [`AutomationEngine`].

use crate::Result;
use crate::automation::{CapRule, JobRecord};
use crate::engine::Engine;
use std::future::Future;

pub(crate) const RUNBOOK_COLS: &str = "id, key, name, kind, description, draft, draft_params, \
     settings, published_version, created, updated";
pub(crate) const WEBHOOK_COLS: &str = "id, key, name, runbook_id, token_hash, is_enabled, expiry, \
     parameters, secure_parameters, run_on, description, last_invoked, created, updated";
pub(crate) const JOB_COLS: &str = "id, runbook_id, runbook_name, runbook_version, started_by, \
     run_on, status, status_details, exception, parameters, input, created, start_time, end_time, \
     last_modified, last_status_modified, worker, lease_until, restarts, sandbox, exit_code";
pub(crate) const ASSET_COLS: &str =
    "key, name, kind, encrypted, username, value, description, created, updated";

/// Statuses that hold a lease (a worker owns the job).
pub(crate) const ACTIVE: &str = "('Activating', 'Running', 'Stopping')";

/// What each engine does its own way: taking jobs off the queue.
pub(crate) trait AutomationEngine: Engine {
    /// Leases up to `n` (at least 1) `New` jobs of `group` to `worker`, in
    /// one write transaction, and returns them as they are after it.
    ///
    /// Jobs are taken oldest first (`created`, then `id`), looking at no
    /// more than `4 n` of them. A job whose runbook's settings have a cap
    /// (by `cap`) is skipped once the runbook's jobs in `ACTIVE`
    /// statuses (counting those leased by this call) reach the cap. Each
    /// leased job gets `worker`, `lease_until` and (if unset) `start_time`
    /// `now`, and moves to `Activating`: all of which `lease_job` does.
    ///
    /// With several claimers at once, no job is leased twice, no cap is
    /// exceeded, and claimers do not wait on each other's jobs.
    fn claim_queued(
        &self,
        group: String,
        worker: String,
        n: i64,
        lease_until: i64,
        now: i64,
        cap: CapRule,
    ) -> impl Future<Output = Result<Vec<JobRecord>>> + Send;
}

/// Implements [`AutomationStore`](crate::AutomationStore) for an engine
/// that implements [`AutomationEngine`]. Its claim leases each job it
/// chose with `automation_store::lease_job`, from the module this expands to.
macro_rules! automation_store {
    ($S:ty) => {
        mod automation_store {
            use super::*;
            use crate::Result;
            use crate::automation::store::{
                ACTIVE, ASSET_COLS, AutomationEngine, JOB_COLS, RUNBOOK_COLS, WEBHOOK_COLS,
            };
            use crate::automation::*;
            use crate::engine::{BoxFuture, Conn, Engine};
            use std::collections::BTreeSet;

            type S = $S;
            type Db = <S as Engine>::Db;

            /// Records a status change: the job row and its history move
            /// together.
            ///
            /// The `UPDATE` takes (or already holds) the job's row lock, and
            /// under READ COMMITTED the `INSERT` runs with a fresh snapshot
            /// taken after it, so `MAX(seq) + 1` sees every transition
            /// committed before ours: the per-job sequence stays gap-free and
            /// increasing across nodes.
            /// Writes a decision of the job state machine: the end (end
            /// time set, worker and lease released) and each status change.
            async fn apply(
                tx: &mut Conn<S>,
                id: &str,
                decision: &JobDecision,
                now: i64,
            ) -> Result<()> {
                if decision.ends {
                    sqlx::query(
                        "UPDATE jobs SET end_time = $1, worker = NULL, lease_until = NULL \
                         WHERE id = $2",
                    )
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                for change in &decision.changes {
                    transition(&mut *tx, id, change.status.as_str(), &change.details, now).await?;
                }
                Ok(())
            }

            async fn transition(
                tx: &mut Conn<S>,
                id: &str,
                status: &str,
                details: &str,
                at: i64,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE jobs SET status = $1, status_details = $2, last_modified = $3, \
                     last_status_modified = $3 WHERE id = $4",
                )
                .bind(status)
                .bind(details)
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO job_transitions (job_id, seq, status, details, at) VALUES ($1, \
                     (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_transitions WHERE job_id = $1), \
                     $2, $3, $4)",
                )
                .bind(id)
                .bind(status)
                .bind(details)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                Ok(())
            }

            /// Leases a `New` job to `worker` (→ `Activating`) and returns
            /// it as it is now; the engine's claim chose it.
            pub(super) async fn lease_job(
                tx: &mut Conn<S>,
                id: &str,
                worker: &str,
                lease_until: i64,
                now: i64,
            ) -> Result<JobRecord> {
                sqlx::query(
                    "UPDATE jobs SET worker = $1, lease_until = $2, \
                     start_time = COALESCE(start_time, $3) WHERE id = $4",
                )
                .bind(worker)
                .bind(lease_until)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                transition(tx, id, "Activating", "", now).await?;
                job_by_id(tx, id).await
            }

            /// A status read from the jobs table, which only ever holds
            /// the names [`JobStatus`] writes.
            fn stored_status(s: String) -> Result<JobStatus> {
                JobStatus::try_from(s).map_err(|e| crate::StorageError::Corrupt(e.to_string()))
            }

            /// The job as the transaction sees it now.
            async fn job_by_id(tx: &mut Conn<S>, id: &str) -> Result<JobRecord> {
                Ok(
                    sqlx::query_as(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?,
                )
            }

            async fn insert_records(
                tx: &mut Conn<S>,
                id: &str,
                records: &[StreamRecord],
                max_bytes: i64,
            ) -> Result<i64> {
                // The row lock serialises appenders of one job: two batches
                // never get the same sequence numbers and the byte budget is
                // never overrun.
                let row: Option<(i64, i64)> = sqlx::query_as(&format!(
                    "SELECT stream_seq, stream_bytes FROM jobs WHERE id = $1{}",
                    <S as Engine>::FOR_UPDATE
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((mut seq, mut bytes)) = row else {
                    return Ok(0);
                };
                if records.is_empty() {
                    return Ok(seq);
                }
                let mut kept = Vec::with_capacity(records.len());
                for r in records {
                    let size = (r.text.len() + r.value.as_ref().map_or(0, String::len)) as i64;
                    if bytes + size > max_bytes {
                        break;
                    }
                    bytes += size;
                    seq += 1;
                    kept.push((seq, r));
                }
                // 6 binds a row.
                for chunk in kept.chunks(<S as Engine>::MAX_BINDS / 6) {
                    let mut qb: sqlx::QueryBuilder<Db> = sqlx::QueryBuilder::new(
                        "INSERT INTO job_streams (job_id, seq, stream, time, text, value) ",
                    );
                    qb.push_values(chunk, |mut b, (seq, r)| {
                        b.push_bind(id)
                            .push_bind(*seq)
                            .push_bind(&r.stream)
                            .push_bind(r.time)
                            .push_bind(&r.text)
                            .push_bind(&r.value);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE jobs SET stream_seq = $1, stream_bytes = $2 WHERE id = $3")
                    .bind(seq)
                    .bind(bytes)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                Ok(seq)
            }

            /// Wakes idle workers of `group` on every node once the
            /// transaction commits.
            async fn wake_group(tx: &mut Conn<S>, group: &str) -> Result<()> {
                <S as Engine>::notify(tx, format!("job:{group}")).await
            }

            /// Reads from the reader pool take every row with `fetch_all`
            /// rather than `fetch_optional`, which on SQLite can leave the
            /// statement open and with it a read snapshot that holds WAL
            /// checkpoints back.
            #[async_trait::async_trait]
            impl crate::AutomationStore for S {
                async fn create_runbook(&self, rb: &RunbookRecord) -> Result<bool> {
                    let rb = rb.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO runbooks (id, key, name, kind, description, draft, \
                                 draft_params, settings, published_version, created, updated) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10) \
                                 ON CONFLICT (key) DO NOTHING",
                            )
                            .bind(rb.id.as_str())
                            .bind(&rb.key)
                            .bind(&rb.name)
                            .bind(&rb.kind)
                            .bind(&rb.description)
                            .bind(&rb.draft)
                            .bind(&rb.draft_params)
                            .bind(&rb.settings)
                            .bind(rb.created)
                            .bind(rb.updated)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn runbook(&self, key: &str) -> Result<Option<RunbookRecord>> {
                    let rows: Vec<RunbookRecord> = sqlx::query_as(&format!(
                        "SELECT {RUNBOOK_COLS} FROM runbooks WHERE key = $1"
                    ))
                    .bind(key)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().next())
                }

                async fn runbook_by_id(&self, id: &str) -> Result<Option<RunbookRecord>> {
                    let rows: Vec<RunbookRecord> = sqlx::query_as(&format!(
                        "SELECT {RUNBOOK_COLS} FROM runbooks WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().next())
                }

                async fn list_runbooks(&self) -> Result<Vec<RunbookRecord>> {
                    Ok(
                        sqlx::query_as(&format!(
                            "SELECT {RUNBOOK_COLS} FROM runbooks ORDER BY key"
                        ))
                        .fetch_all(self.reader())
                        .await?,
                    )
                }

                async fn update_runbook(&self, rb: &RunbookRecord) -> Result<bool> {
                    let rb = rb.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE runbooks SET description = $1, draft = $2, \
                                 draft_params = $3, settings = $4, updated = $5 WHERE key = $6",
                            )
                            .bind(&rb.description)
                            .bind(&rb.draft)
                            .bind(&rb.draft_params)
                            .bind(&rb.settings)
                            .bind(rb.updated)
                            .bind(&rb.key)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn publish_runbook(&self, key: &str, now: i64) -> Result<Option<i64>> {
                    let key = key.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Read-modify-write of published_version: the row
                            // lock makes two concurrent publishes take
                            // consecutive versions (the second one reads the
                            // row as the first committed it).
                            let row: Option<(String, String, String, i64)> =
                                sqlx::query_as(&format!(
                                    "SELECT id, draft, draft_params, \
                                     COALESCE(published_version, 0) AS v \
                                     FROM runbooks WHERE key = $1{}",
                                    <S as Engine>::FOR_UPDATE
                                ))
                                .bind(&key)
                                .fetch_optional(&mut *tx)
                                .await?;
                            let Some((id, draft, draft_params, v)) = row else {
                                return Ok(None);
                            };
                            let version = v + 1;
                            sqlx::query(
                                "INSERT INTO runbook_versions \
                                 (runbook_id, version, content, params, published) \
                                 VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(&id)
                            .bind(version)
                            .bind(draft)
                            .bind(draft_params)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "UPDATE runbooks SET published_version = $1, updated = $2 \
                                 WHERE id = $3",
                            )
                            .bind(version)
                            .bind(now)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                            Ok(Some(version))
                        })
                    })
                    .await
                }

                async fn runbook_version(
                    &self,
                    runbook_id: &str,
                    version: i64,
                ) -> Result<Option<RunbookVersionRecord>> {
                    let rows: Vec<RunbookVersionRecord> = sqlx::query_as(
                        "SELECT runbook_id, version, content, params, published \
                         FROM runbook_versions WHERE runbook_id = $1 AND version = $2",
                    )
                    .bind(runbook_id)
                    .bind(version)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().next())
                }

                async fn delete_runbook(&self, key: &str) -> Result<bool> {
                    let key = key.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let id: Option<String> = sqlx::query_scalar(&format!(
                                "SELECT id FROM runbooks WHERE key = $1{}",
                                <S as Engine>::FOR_UPDATE
                            ))
                            .bind(&key)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(id) = id else { return Ok(false) };
                            for sql in [
                                "DELETE FROM webhooks WHERE runbook_id = $1",
                                "DELETE FROM runbook_versions WHERE runbook_id = $1",
                                "DELETE FROM runbooks WHERE id = $1",
                            ] {
                                sqlx::query(sql).bind(&id).execute(&mut *tx).await?;
                            }
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn put_pending_webhook_token(
                    &self,
                    token_hash: &str,
                    now: i64,
                ) -> Result<()> {
                    let hash = token_hash.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Unbound tokens older than a day are abandoned
                            // portal sessions.
                            sqlx::query("DELETE FROM webhook_pending_tokens WHERE created < $1")
                                .bind(now - 86_400_000)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(
                                "INSERT INTO webhook_pending_tokens (token_hash, created) \
                                 VALUES ($1, $2)",
                            )
                            .bind(&hash)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn create_webhook(&self, wh: &WebhookRecord, pending: bool) -> Result<bool> {
                    let wh = wh.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            if pending {
                                // The DELETE locks the token row: of two racing
                                // binds, the second sees it gone and is refused.
                                let took = sqlx::query(
                                    "DELETE FROM webhook_pending_tokens WHERE token_hash = $1",
                                )
                                .bind(&wh.token_hash)
                                .execute(&mut *tx)
                                .await?;
                                if took.rows_affected() != 1 {
                                    return Ok(false);
                                }
                            }
                            // A consumed pending token stays consumed even
                            // when the name turns out to be taken.
                            let done = sqlx::query(
                                "INSERT INTO webhooks (id, key, name, runbook_id, token_hash, \
                                 is_enabled, expiry, parameters, secure_parameters, run_on, \
                                 description, last_invoked, created, updated) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, \
                                 $12, $13) ON CONFLICT DO NOTHING",
                            )
                            .bind(wh.id.as_str())
                            .bind(&wh.key)
                            .bind(&wh.name)
                            .bind(wh.runbook_id.as_str())
                            .bind(&wh.token_hash)
                            .bind(wh.is_enabled)
                            .bind(wh.expiry)
                            .bind(&wh.parameters)
                            .bind(&wh.secure_parameters)
                            .bind(&wh.run_on)
                            .bind(&wh.description)
                            .bind(wh.created)
                            .bind(wh.updated)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn webhook(&self, key: &str) -> Result<Option<WebhookRecord>> {
                    let rows: Vec<WebhookRecord> = sqlx::query_as(&format!(
                        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE key = $1"
                    ))
                    .bind(key)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().next())
                }

                async fn webhook_by_token(
                    &self,
                    token_hash: &str,
                ) -> Result<Option<WebhookRecord>> {
                    let rows: Vec<WebhookRecord> = sqlx::query_as(&format!(
                        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE token_hash = $1"
                    ))
                    .bind(token_hash)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().next())
                }

                async fn list_webhooks(
                    &self,
                    runbook_id: Option<&str>,
                ) -> Result<Vec<WebhookRecord>> {
                    let mut qb: sqlx::QueryBuilder<Db> =
                        sqlx::QueryBuilder::new(format!("SELECT {WEBHOOK_COLS} FROM webhooks"));
                    if let Some(id) = runbook_id {
                        qb.push(" WHERE runbook_id = ").push_bind(id);
                    }
                    qb.push(" ORDER BY key");
                    Ok(qb.build_query_as().fetch_all(self.reader()).await?)
                }

                async fn update_webhook(
                    &self,
                    key: &str,
                    patch: &WebhookPatch,
                ) -> Result<Option<WebhookRecord>> {
                    let key = key.to_owned();
                    let p = patch.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let mut qb: sqlx::QueryBuilder<Db> =
                                sqlx::QueryBuilder::new("UPDATE webhooks SET updated = ");
                            qb.push_bind(p.updated);
                            if let Some(v) = p.is_enabled {
                                qb.push(", is_enabled = ").push_bind(v);
                            }
                            if let Some(v) = p.expiry {
                                qb.push(", expiry = ").push_bind(v);
                            }
                            if let Some(v) = p.parameters {
                                qb.push(", parameters = ").push_bind(v);
                            }
                            if let Some(v) = p.secure_parameters {
                                qb.push(", secure_parameters = ").push_bind(v);
                            }
                            if let Some(v) = p.run_on {
                                qb.push(", run_on = ").push_bind(v);
                            }
                            if let Some(v) = p.description {
                                qb.push(", description = ").push_bind(v);
                            }
                            qb.push(" WHERE key = ").push_bind(key);
                            qb.push(format!(" RETURNING {WEBHOOK_COLS}"));
                            Ok(qb.build_query_as().fetch_optional(&mut *tx).await?)
                        })
                    })
                    .await
                }

                async fn delete_webhook(&self, key: &str) -> Result<bool> {
                    let key = key.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query("DELETE FROM webhooks WHERE key = $1")
                                .bind(&key)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn create_job(
                    &self,
                    job: &JobRecord,
                    idempotency: Option<(&str, &str, i64)>,
                    invoked: Option<(&str, i64)>,
                ) -> Result<JobCreated> {
                    let job = job.clone();
                    let idem = idempotency.map(|(w, k, since)| (w.to_owned(), k.to_owned(), since));
                    let invoked = invoked.map(|(w, at)| (w.to_owned(), at));
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            if let Some((webhook, key, since)) = &idem {
                                // One statement settles the key, even against a
                                // racing call on another node: the primary key
                                // makes the second INSERT wait for the first
                                // transaction, then take the conflict branch,
                                // which keeps a live key's job and replaces only
                                // a key older than `since`. Whoever gets its own
                                // job id back owns the key.
                                let owner: String = sqlx::query_scalar(
                                    "INSERT INTO job_idempotency \
                                     (webhook_id, key, job_id, created) \
                                     VALUES ($1, $2, $3, $4) ON CONFLICT (webhook_id, key) \
                                     DO UPDATE SET \
                                     job_id = CASE WHEN job_idempotency.created < $5 \
                                         THEN excluded.job_id ELSE job_idempotency.job_id END, \
                                     created = CASE WHEN job_idempotency.created < $5 \
                                         THEN excluded.created ELSE job_idempotency.created END \
                                     RETURNING job_id",
                                )
                                .bind(webhook)
                                .bind(key)
                                .bind(job.id.as_str())
                                .bind(job.created)
                                .bind(since)
                                .fetch_one(&mut *tx)
                                .await?;
                                if job.id != owner.as_str() {
                                    // The conflict branch rewrote the live key
                                    // unchanged: nothing else is written.
                                    return Ok(JobCreated::Existing(owner));
                                }
                            }
                            sqlx::query(&format!(
                                "INSERT INTO jobs ({JOB_COLS}) VALUES \
                                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                                 $15, $16, $17, $18, $19, $20, $21)"
                            ))
                            .bind(job.id.as_str())
                            .bind(job.runbook_id.as_str())
                            .bind(&job.runbook_name)
                            .bind(job.runbook_version)
                            .bind(&job.started_by)
                            .bind(&job.run_on)
                            .bind(job.status.as_str())
                            .bind(&job.status_details)
                            .bind(&job.exception)
                            .bind(&job.parameters)
                            .bind(&job.input)
                            .bind(job.created)
                            .bind(job.start_time)
                            .bind(job.end_time)
                            .bind(job.last_modified)
                            .bind(job.last_status_modified)
                            .bind(&job.worker)
                            .bind(job.lease_until)
                            .bind(job.restarts)
                            .bind(&job.sandbox)
                            .bind(job.exit_code)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query(
                                "INSERT INTO job_transitions (job_id, seq, status, details, at) \
                                 VALUES ($1, 1, $2, '', $3)",
                            )
                            .bind(job.id.as_str())
                            .bind(job.status.as_str())
                            .bind(job.created)
                            .execute(&mut *tx)
                            .await?;
                            if let Some((webhook, at)) = &invoked {
                                sqlx::query("UPDATE webhooks SET last_invoked = $1 WHERE id = $2")
                                    .bind(at)
                                    .bind(webhook)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            // Delivered only if the job commits: idle workers
                            // of the group on every node claim at once instead
                            // of at their next poll.
                            wake_group(tx, &job.run_on).await?;
                            Ok(JobCreated::Created)
                        })
                    })
                    .await
                }

                async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
                    let rows: Vec<JobRecord> =
                        sqlx::query_as(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
                            .bind(id)
                            .fetch_all(self.reader())
                            .await?;
                    Ok(rows.into_iter().next())
                }

                async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<JobRecord>> {
                    let mut qb: sqlx::QueryBuilder<Db> =
                        sqlx::QueryBuilder::new(format!("SELECT {JOB_COLS} FROM jobs WHERE 1 = 1"));
                    if let Some(s) = f.status {
                        qb.push(" AND status = ").push_bind(s.as_str());
                    }
                    if let Some(r) = &f.runbook_id {
                        qb.push(" AND runbook_id = ").push_bind(r.as_str());
                    }
                    if let Some(t) = f.created_after {
                        qb.push(" AND created >= ").push_bind(t);
                    }
                    if let Some(b) = &f.before_id {
                        qb.push(" AND id < ").push_bind(b);
                    }
                    qb.push(" ORDER BY id DESC LIMIT ")
                        .push_bind(f.limit.clamp(1, 1000));
                    Ok(qb.build_query_as().fetch_all(self.reader()).await?)
                }

                async fn job_transitions(&self, id: &str) -> Result<Vec<JobTransition>> {
                    Ok(sqlx::query_as(
                        "SELECT seq, status, details, at FROM job_transitions \
                         WHERE job_id = $1 ORDER BY seq",
                    )
                    .bind(id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn count_jobs_by_status(&self) -> Result<Vec<(String, i64)>> {
                    Ok(sqlx::query_as(
                        "SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status",
                    )
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn claim_jobs(
                    &self,
                    group: &str,
                    worker: &str,
                    n: i64,
                    lease_until: i64,
                    now: i64,
                    cap: CapRule,
                ) -> Result<Vec<JobRecord>> {
                    if n <= 0 {
                        return Ok(Vec::new());
                    }
                    self.claim_queued(
                        group.to_owned(),
                        worker.to_owned(),
                        n,
                        lease_until,
                        now,
                        cap,
                    )
                    .await
                }

                async fn start_job(
                    &self,
                    id: &str,
                    worker: &str,
                    sandbox: &str,
                    now: i64,
                ) -> Result<bool> {
                    let (id, worker) = (id.to_owned(), worker.to_owned());
                    let sandbox = sandbox.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Conditional on the lease holder: if the lease
                            // lapsed and the job was re-queued (or re-leased)
                            // meanwhile, the re-checked row no longer matches
                            // and nothing changes.
                            let done = sqlx::query(
                                "UPDATE jobs SET sandbox = $1 \
                                 WHERE id = $2 AND worker = $3 AND status = 'Activating'",
                            )
                            .bind(&sandbox)
                            .bind(&id)
                            .bind(&worker)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() != 1 {
                                return Ok(false);
                            }
                            transition(tx, &id, "Running", "", now).await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn heartbeat_job(
                    &self,
                    id: &str,
                    worker: &str,
                    lease_until: i64,
                ) -> Result<Option<String>> {
                    let (id, worker) = (id.to_owned(), worker.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Compare-and-set on the lease holder.
                            Ok(sqlx::query_scalar(&format!(
                                "UPDATE jobs SET lease_until = $1 \
                                 WHERE id = $2 AND worker = $3 AND status IN {ACTIVE} \
                                 RETURNING status"
                            ))
                            .bind(lease_until)
                            .bind(&id)
                            .bind(&worker)
                            .fetch_optional(&mut *tx)
                            .await?)
                        })
                    })
                    .await
                }

                async fn append_records(
                    &self,
                    id: &str,
                    records: &[StreamRecord],
                    max_bytes: i64,
                ) -> Result<i64> {
                    let id = id.to_owned();
                    let records = records.to_vec();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move { insert_records(tx, &id, &records, max_bytes).await })
                    })
                    .await
                }

                async fn finish_job(
                    &self,
                    id: &str,
                    worker: Option<&str>,
                    end: &JobEnd,
                ) -> Result<bool> {
                    let id = id.to_owned();
                    let worker = worker.map(str::to_owned);
                    let end = end.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Conditional on the job not being terminal and
                            // (with `worker`) on the lease holder; the UPDATE's
                            // row lock then covers the transition.
                            let mut qb: sqlx::QueryBuilder<Db> = sqlx::QueryBuilder::new(
                                "UPDATE jobs SET worker = NULL, lease_until = NULL, end_time = ",
                            );
                            qb.push_bind(end.at)
                                .push(", exception = ")
                                .push_bind(&end.exception)
                                .push(", exit_code = ")
                                .push_bind(end.exit_code)
                                .push(" WHERE id = ")
                                .push_bind(&id)
                                .push(
                                    " AND status NOT IN \
                                     ('Completed', 'Failed', 'Stopped', 'Suspended')",
                                );
                            if let Some(w) = &worker {
                                qb.push(" AND worker = ").push_bind(w);
                            }
                            let done = qb.build().execute(&mut *tx).await?;
                            if done.rows_affected() != 1 {
                                return Ok(false);
                            }
                            transition(tx, &id, end.status.as_str(), &end.details, end.at).await?;
                            sqlx::query("DELETE FROM job_tokens WHERE job_id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query("DELETE FROM job_masks WHERE job_id = $1")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn request_stop(
                    &self,
                    id: &str,
                    now: i64,
                    rule: StatusRule,
                ) -> Result<Option<JobRecord>> {
                    let id = id.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Locked, so a worker finishing (or a claimer
                            // leasing) the job cannot slip in between reading
                            // the status and acting on it.
                            let status: Option<String> = sqlx::query_scalar(&format!(
                                "SELECT status FROM jobs WHERE id = $1{}",
                                <S as Engine>::FOR_UPDATE
                            ))
                            .bind(&id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(status) = status else {
                                return Ok(None);
                            };
                            apply(tx, &id, &rule(stored_status(status)?), now).await?;
                            Ok(Some(job_by_id(tx, &id).await?))
                        })
                    })
                    .await
                }

                async fn resume_job(&self, id: &str, now: i64, rule: StatusRule) -> Result<bool> {
                    let id = id.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let row: Option<(String, String)> = sqlx::query_as(&format!(
                                "SELECT status, run_on FROM jobs WHERE id = $1{}",
                                <S as Engine>::FOR_UPDATE
                            ))
                            .bind(&id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some((status, group)) = row else {
                                return Ok(false);
                            };
                            let decision = rule(stored_status(status)?);
                            if decision.changes.is_empty() {
                                return Ok(false);
                            }
                            sqlx::query(
                                "UPDATE jobs SET restarts = 0, end_time = NULL WHERE id = $1",
                            )
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                            apply(tx, &id, &decision, now).await?;
                            if decision.requeue {
                                wake_group(tx, &group).await?;
                            }
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn expire_leases(
                    &self,
                    now: i64,
                    rule: LapseRule,
                ) -> Result<Vec<LapsedLease>> {
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // SKIP LOCKED: when two nodes sweep at once each
                            // takes its own lapsed jobs, so none is counted as
                            // a restart twice. A job whose worker is
                            // heart-beating right now is locked and skipped;
                            // one whose lease was extended meanwhile is
                            // re-checked and dropped.
                            let rows: Vec<(String, Option<String>, String, i64, String)> =
                                sqlx::query_as(&format!(
                                    "SELECT id, worker, status, restarts, run_on FROM jobs \
                                     WHERE status IN {ACTIVE} AND lease_until < $1 \
                                     ORDER BY lease_until, id LIMIT 500{}",
                                    <S as Engine>::SKIP_LOCKED
                                ))
                                .bind(now)
                                .fetch_all(&mut *tx)
                                .await?;
                            let mut lapsed = Vec::with_capacity(rows.len());
                            let mut requeued: BTreeSet<String> = BTreeSet::new();
                            for (id, worker, status, restarts, run_on) in rows {
                                let restarts = restarts + 1;
                                sqlx::query(
                                    "UPDATE jobs SET worker = NULL, lease_until = NULL, \
                                     restarts = $1 WHERE id = $2",
                                )
                                .bind(restarts)
                                .bind(&id)
                                .execute(&mut *tx)
                                .await?;
                                let status = stored_status(status)?;
                                let decision = rule(&LapsedJob {
                                    status,
                                    restarts,
                                    worker: worker.as_deref(),
                                });
                                apply(tx, &id, &decision, now).await?;
                                sqlx::query("DELETE FROM job_tokens WHERE job_id = $1")
                                    .bind(&id)
                                    .execute(&mut *tx)
                                    .await?;
                                if decision.requeue {
                                    requeued.insert(run_on);
                                }
                                let last = decision.changes.last().map(|c| c.status);
                                lapsed.push(LapsedLease {
                                    job_id: id,
                                    worker,
                                    status: last.unwrap_or(status),
                                });
                            }
                            for group in &requeued {
                                wake_group(tx, group).await?;
                            }
                            Ok(lapsed)
                        })
                    })
                    .await
                }

                async fn read_records(
                    &self,
                    id: &str,
                    after_seq: i64,
                    stream: Option<&str>,
                    limit: i64,
                ) -> Result<Vec<StreamRecord>> {
                    let mut qb: sqlx::QueryBuilder<Db> = sqlx::QueryBuilder::new(
                        "SELECT seq, stream, time, text, value FROM job_streams WHERE job_id = ",
                    );
                    qb.push_bind(id).push(" AND seq > ").push_bind(after_seq);
                    if let Some(s) = stream {
                        qb.push(" AND stream = ").push_bind(s);
                    }
                    qb.push(" ORDER BY seq LIMIT ")
                        .push_bind(limit.clamp(1, 100_000));
                    Ok(qb.build_query_as().fetch_all(self.reader()).await?)
                }

                async fn prune_jobs(&self, before: i64, keys_before: i64) -> Result<u64> {
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // The batch is chosen once and locked, so its
                            // streams, history and rows go together even while
                            // other nodes prune or finish jobs.
                            let old: Vec<String> = sqlx::query_scalar(&format!(
                                "SELECT id FROM jobs WHERE end_time < $1 \
                                 AND status IN ('Completed', 'Failed', 'Stopped') LIMIT 1000{}",
                                <S as Engine>::SKIP_LOCKED
                            ))
                            .bind(before)
                            .fetch_all(&mut *tx)
                            .await?;
                            let mut pruned = 0;
                            if !old.is_empty() {
                                for (table, col) in [
                                    ("job_streams", "job_id"),
                                    ("job_transitions", "job_id"),
                                    ("jobs", "id"),
                                ] {
                                    let mut qb: sqlx::QueryBuilder<Db> = sqlx::QueryBuilder::new(
                                        format!("DELETE FROM {table} WHERE {col} IN ("),
                                    );
                                    let mut ids = qb.separated(", ");
                                    for id in &old {
                                        ids.push_bind(id);
                                    }
                                    qb.push(")");
                                    pruned = qb.build().execute(&mut *tx).await?.rows_affected();
                                }
                            }
                            sqlx::query("DELETE FROM job_idempotency WHERE created < $1")
                                .bind(keys_before)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query("DELETE FROM job_tokens WHERE expires_at < $1")
                                .bind(keys_before)
                                .execute(&mut *tx)
                                .await?;
                            Ok(pruned)
                        })
                    })
                    .await
                }

                async fn put_job_token(
                    &self,
                    token_hash: &str,
                    job_id: &str,
                    expires_at: i64,
                ) -> Result<()> {
                    let (hash, job) = (token_hash.to_owned(), job_id.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO job_tokens (token_hash, job_id, expires_at) \
                                 VALUES ($1, $2, $3)",
                            )
                            .bind(&hash)
                            .bind(&job)
                            .bind(expires_at)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn abandon_lease(&self, job_id: &str, worker: &str, now: i64) -> Result<bool> {
                    let (job, worker) = (job_id.to_owned(), worker.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(&format!(
                                "UPDATE jobs SET lease_until = $1 \
                                 WHERE id = $2 AND worker = $3 AND status IN {ACTIVE}"
                            ))
                            .bind(now - 1)
                            .bind(&job)
                            .bind(&worker)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() != 1 {
                                return Ok(false);
                            }
                            sqlx::query("DELETE FROM job_tokens WHERE job_id = $1")
                                .bind(&job)
                                .execute(&mut *tx)
                                .await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn job_token(&self, token_hash: &str) -> Result<Option<(String, i64)>> {
                    let rows: Vec<(String, i64)> = sqlx::query_as(
                        "SELECT job_id, expires_at FROM job_tokens WHERE token_hash = $1",
                    )
                    .bind(token_hash)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().next())
                }

                async fn add_job_mask(&self, job_id: &str, digest: &str, sealed: &[u8]) -> Result<()> {
                    let (job, digest, sealed) = (job_id.to_owned(), digest.to_owned(), sealed.to_vec());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO job_masks (job_id, digest, sealed) VALUES ($1, $2, $3) \
                                 ON CONFLICT (job_id, digest) DO NOTHING",
                            )
                            .bind(&job)
                            .bind(&digest)
                            .bind(&sealed)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn job_masks(&self, job_id: &str) -> Result<Vec<Vec<u8>>> {
                    let rows: Vec<(Vec<u8>,)> =
                        sqlx::query_as("SELECT sealed FROM job_masks WHERE job_id = $1")
                            .bind(job_id)
                            .fetch_all(self.reader())
                            .await?;
                    Ok(rows.into_iter().map(|(s,)| s).collect())
                }

                async fn put_asset(&self, a: &AssetRecord) -> Result<()> {
                    let a = a.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(&format!(
                                "INSERT INTO assets ({ASSET_COLS}) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                                 ON CONFLICT (key) DO UPDATE SET name = excluded.name, \
                                 kind = excluded.kind, encrypted = excluded.encrypted, \
                                 username = excluded.username, value = excluded.value, \
                                 description = excluded.description, updated = excluded.updated"
                            ))
                            .bind(&a.key)
                            .bind(&a.name)
                            .bind(&a.kind)
                            .bind(a.encrypted)
                            .bind(&a.username)
                            .bind(&a.value)
                            .bind(&a.description)
                            .bind(a.created)
                            .bind(a.updated)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn asset(&self, key: &str) -> Result<Option<AssetRecord>> {
                    let rows: Vec<AssetRecord> =
                        sqlx::query_as(&format!("SELECT {ASSET_COLS} FROM assets WHERE key = $1"))
                            .bind(key)
                            .fetch_all(self.reader())
                            .await?;
                    Ok(rows.into_iter().next())
                }

                async fn list_assets(&self) -> Result<Vec<AssetRecord>> {
                    Ok(
                        sqlx::query_as(&format!("SELECT {ASSET_COLS} FROM assets ORDER BY key"))
                            .fetch_all(self.reader())
                            .await?,
                    )
                }

                async fn delete_asset(&self, key: &str) -> Result<bool> {
                    let key = key.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query("DELETE FROM assets WHERE key = $1")
                                .bind(&key)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn touch_worker(&self, w: &WorkerRecord) -> Result<()> {
                    let w = w.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO workers (id, grp, hostname, slots, last_seen) \
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                                 grp = excluded.grp, hostname = excluded.hostname, \
                                 slots = excluded.slots, last_seen = excluded.last_seen",
                            )
                            .bind(&w.id)
                            .bind(&w.group)
                            .bind(&w.hostname)
                            .bind(w.slots)
                            .bind(w.last_seen)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn list_workers(&self, seen_after: i64) -> Result<Vec<WorkerRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT id, grp, hostname, slots, last_seen FROM workers \
                         WHERE last_seen >= $1 ORDER BY grp, id",
                    )
                    .bind(seen_after)
                    .fetch_all(self.reader())
                    .await?)
                }
            }
        }
    };
}
pub(crate) use automation_store;
