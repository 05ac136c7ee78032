//! Automation's tables on PostgreSQL. Several nodes (and their workers)
//! share one database, so what the SQLite engine got from its single
//! serialised writer is done here with row locks:
//!
//! - queue claims and lease sweeps take jobs `FOR UPDATE SKIP LOCKED`, so two
//!   nodes never lease (or re-queue) the same job and never wait on each other;
//! - a runbook with a `maxConcurrentJobs` cap is locked while its active jobs
//!   are counted and new ones leased, so claimers on several nodes take turns;
//! - every status change happens under the job's row lock (a conditional
//!   `UPDATE` or `SELECT ... FOR UPDATE`), which also makes the per-job
//!   transition `seq` (`MAX(seq) + 1`) safe;
//! - idempotency keys are settled by the primary key and `ON CONFLICT`.
//!
//! A job becoming `New` (created, re-queued, resumed) sends a `job:<group>`
//! hint inside its transaction, so idle workers on other nodes wake at once.

use super::{PgStorage, notify};
use crate::Result;
use crate::automation::*;
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use std::collections::{BTreeSet, HashMap};

const RUNBOOK_COLS: &str = "id, key, name, kind, description, draft, draft_params, settings, \
     published_version, created, updated";
const WEBHOOK_COLS: &str = "id, key, name, runbook_id, token_hash, is_enabled, expiry, parameters, \
     secure_parameters, run_on, description, last_invoked, created, updated";
const JOB_COLS: &str = "id, runbook_id, runbook_name, runbook_version, started_by, run_on, status, \
     status_details, exception, parameters, input, created, start_time, end_time, last_modified, \
     last_status_modified, worker, lease_until, restarts, sandbox, exit_code";
const ASSET_COLS: &str =
    "key, name, kind, encrypted, username, value, description, created, updated";

/// Statuses that hold a lease (a worker owns the job).
const ACTIVE: &str = "('Activating', 'Running', 'Stopping')";

fn runbook_from_row(r: &PgRow) -> Result<RunbookRecord> {
    Ok(RunbookRecord {
        id: r.try_get("id")?,
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        description: r.try_get("description")?,
        draft: r.try_get("draft")?,
        draft_params: r.try_get("draft_params")?,
        settings: r.try_get("settings")?,
        published_version: r.try_get("published_version")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

fn webhook_from_row(r: &PgRow) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: r.try_get("id")?,
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        runbook_id: r.try_get("runbook_id")?,
        token_hash: r.try_get("token_hash")?,
        is_enabled: r.try_get("is_enabled")?,
        expiry: r.try_get("expiry")?,
        parameters: r.try_get("parameters")?,
        secure_parameters: r.try_get("secure_parameters")?,
        run_on: r.try_get("run_on")?,
        description: r.try_get("description")?,
        last_invoked: r.try_get("last_invoked")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

fn job_from_row(r: &PgRow) -> Result<JobRecord> {
    Ok(JobRecord {
        id: r.try_get("id")?,
        runbook_id: r.try_get("runbook_id")?,
        runbook_name: r.try_get("runbook_name")?,
        runbook_version: r.try_get("runbook_version")?,
        started_by: r.try_get("started_by")?,
        run_on: r.try_get("run_on")?,
        status: r.try_get("status")?,
        status_details: r.try_get("status_details")?,
        exception: r.try_get("exception")?,
        parameters: r.try_get("parameters")?,
        input: r.try_get("input")?,
        created: r.try_get("created")?,
        start_time: r.try_get("start_time")?,
        end_time: r.try_get("end_time")?,
        last_modified: r.try_get("last_modified")?,
        last_status_modified: r.try_get("last_status_modified")?,
        worker: r.try_get("worker")?,
        lease_until: r.try_get("lease_until")?,
        restarts: r.try_get("restarts")?,
        sandbox: r.try_get("sandbox")?,
        exit_code: r.try_get("exit_code")?,
    })
}

fn asset_from_row(r: &PgRow) -> Result<AssetRecord> {
    Ok(AssetRecord {
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        encrypted: r.try_get("encrypted")?,
        username: r.try_get("username")?,
        value: r.try_get("value")?,
        description: r.try_get("description")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

/// The `maxConcurrentJobs` cap in a runbook's settings JSON, if any.
fn concurrency_cap(settings: Option<&str>) -> Option<i64> {
    settings
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("maxConcurrentJobs").and_then(|c| c.as_i64()))
}

/// Records a status change: the job row and its history move together.
///
/// The `UPDATE` takes (or already holds) the job's row lock, and under READ
/// COMMITTED the `INSERT` runs with a fresh snapshot taken after it, so
/// `MAX(seq) + 1` sees every transition committed before ours: the per-job
/// sequence stays gap-free and increasing across nodes.
async fn transition(
    tx: &mut PgConnection,
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
         (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_transitions WHERE job_id = $1), $2, $3, $4)",
    )
    .bind(id)
    .bind(status)
    .bind(details)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_records(
    tx: &mut PgConnection,
    id: &str,
    records: &[StreamRecord],
    max_bytes: i64,
) -> Result<i64> {
    // The row lock serialises appenders of one job: two batches never get
    // the same sequence numbers and the byte budget is never overrun.
    let row = sqlx::query("SELECT stream_seq, stream_bytes FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(0) };
    let mut seq: i64 = row.try_get("stream_seq")?;
    let mut bytes: i64 = row.try_get("stream_bytes")?;
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
    // 6 binds a row: well under PostgreSQL's 65,535 per statement.
    for chunk in kept.chunks(1000) {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO job_streams (job_id, seq, stream, time, text, value) ");
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

async fn wake_group(tx: &mut PgConnection, group: &str) -> Result<()> {
    notify(tx, &format!("job:{group}")).await
}

#[async_trait]
impl AutomationStore for PgStorage {
    async fn create_runbook(&self, rb: &RunbookRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO runbooks (id, key, name, kind, description, draft, draft_params, \
             settings, published_version, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&rb.id)
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
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn runbook(&self, key: &str) -> Result<Option<RunbookRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {RUNBOOK_COLS} FROM runbooks WHERE key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(runbook_from_row).transpose()
    }

    async fn runbook_by_id(&self, id: &str) -> Result<Option<RunbookRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {RUNBOOK_COLS} FROM runbooks WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(runbook_from_row).transpose()
    }

    async fn list_runbooks(&self) -> Result<Vec<RunbookRecord>> {
        let rows = sqlx::query(&format!("SELECT {RUNBOOK_COLS} FROM runbooks ORDER BY key"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(runbook_from_row).collect()
    }

    async fn update_runbook(&self, rb: &RunbookRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE runbooks SET description = $1, draft = $2, draft_params = $3, \
             settings = $4, updated = $5 WHERE key = $6",
        )
        .bind(&rb.description)
        .bind(&rb.draft)
        .bind(&rb.draft_params)
        .bind(&rb.settings)
        .bind(rb.updated)
        .bind(&rb.key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn publish_runbook(&self, key: &str, now: i64) -> Result<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        // Read-modify-write of published_version: the row lock makes two
        // concurrent publishes take consecutive versions (the second one
        // reads the row as the first committed it).
        let row = sqlx::query(
            "SELECT id, draft, draft_params, COALESCE(published_version, 0) AS v \
             FROM runbooks WHERE key = $1 FOR UPDATE",
        )
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        let version: i64 = row.try_get::<i64, _>("v")? + 1;
        sqlx::query(
            "INSERT INTO runbook_versions (runbook_id, version, content, params, published) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(version)
        .bind(row.try_get::<String, _>("draft")?)
        .bind(row.try_get::<String, _>("draft_params")?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE runbooks SET published_version = $1, updated = $2 WHERE id = $3")
            .bind(version)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn runbook_version(
        &self,
        runbook_id: &str,
        version: i64,
    ) -> Result<Option<RunbookVersionRecord>> {
        let row = sqlx::query(
            "SELECT runbook_id, version, content, params, published FROM runbook_versions \
             WHERE runbook_id = $1 AND version = $2",
        )
        .bind(runbook_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|r| {
                Ok(RunbookVersionRecord {
                    runbook_id: r.try_get("runbook_id")?,
                    version: r.try_get("version")?,
                    content: r.try_get("content")?,
                    params: r.try_get("params")?,
                    published: r.try_get("published")?,
                })
            })
            .transpose()
    }

    async fn delete_runbook(&self, key: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM runbooks WHERE key = $1 FOR UPDATE")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(id) = id else { return Ok(false) };
        sqlx::query("DELETE FROM webhooks WHERE runbook_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM runbook_versions WHERE runbook_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM runbooks WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn put_pending_webhook_token(&self, token_hash: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Unbound tokens older than a day are abandoned portal sessions.
        sqlx::query("DELETE FROM webhook_pending_tokens WHERE created < $1")
            .bind(now - 86_400_000)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO webhook_pending_tokens (token_hash, created) VALUES ($1, $2)")
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_webhook(&self, wh: &WebhookRecord, pending: bool) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if pending {
            // The DELETE locks the token row: of two racing binds, the
            // second sees it gone and is refused.
            let took = sqlx::query("DELETE FROM webhook_pending_tokens WHERE token_hash = $1")
                .bind(&wh.token_hash)
                .execute(&mut *tx)
                .await?;
            if took.rows_affected() != 1 {
                return Ok(false);
            }
        }
        let done = sqlx::query(
            "INSERT INTO webhooks (id, key, name, runbook_id, token_hash, is_enabled, expiry, \
             parameters, secure_parameters, run_on, description, last_invoked, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&wh.id)
        .bind(&wh.key)
        .bind(&wh.name)
        .bind(&wh.runbook_id)
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
        // As on SQLite, a consumed pending token stays consumed even when
        // the name turned out to be taken.
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn webhook(&self, key: &str) -> Result<Option<WebhookRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    async fn webhook_by_token(&self, token_hash: &str) -> Result<Option<WebhookRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    async fn list_webhooks(&self, runbook_id: Option<&str>) -> Result<Vec<WebhookRecord>> {
        let rows = match runbook_id {
            Some(id) => {
                sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLS} FROM webhooks WHERE runbook_id = $1 ORDER BY key"
                ))
                .bind(id)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {WEBHOOK_COLS} FROM webhooks ORDER BY key"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(webhook_from_row).collect()
    }

    async fn update_webhook(
        &self,
        key: &str,
        patch: &WebhookPatch,
    ) -> Result<Option<WebhookRecord>> {
        let p = patch;
        let mut tx = self.pool.begin().await?;
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("UPDATE webhooks SET updated = ");
        qb.push_bind(p.updated);
        if let Some(v) = p.is_enabled {
            qb.push(", is_enabled = ").push_bind(v);
        }
        if let Some(v) = p.expiry {
            qb.push(", expiry = ").push_bind(v);
        }
        if let Some(v) = &p.parameters {
            qb.push(", parameters = ").push_bind(v);
        }
        if let Some(v) = &p.secure_parameters {
            qb.push(", secure_parameters = ").push_bind(v);
        }
        if let Some(v) = &p.run_on {
            qb.push(", run_on = ").push_bind(v);
        }
        if let Some(v) = &p.description {
            qb.push(", description = ").push_bind(v);
        }
        qb.push(" WHERE key = ").push_bind(key);
        qb.push(format!(" RETURNING {WEBHOOK_COLS}"));
        let row = qb.build().fetch_optional(&mut *tx).await?;
        let wh = row.as_ref().map(webhook_from_row).transpose()?;
        tx.commit().await?;
        Ok(wh)
    }

    async fn delete_webhook(&self, key: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_job(
        &self,
        job: &JobRecord,
        idempotency: Option<(&str, &str, i64)>,
        invoked: Option<(&str, i64)>,
    ) -> Result<JobCreated> {
        let mut tx = self.pool.begin().await?;
        if let Some((webhook, key, since)) = idempotency {
            // One statement settles the key, even against a racing call on
            // another node: the primary key makes the second INSERT wait for
            // the first transaction, then take the conflict branch, which
            // keeps a live key's job and replaces only a key older than
            // `since`. Whoever gets its own job id back owns the key.
            let owner: String = sqlx::query_scalar(
                "INSERT INTO job_idempotency (webhook_id, key, job_id, created) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (webhook_id, key) DO UPDATE SET \
                 job_id = CASE WHEN job_idempotency.created < $5 \
                     THEN excluded.job_id ELSE job_idempotency.job_id END, \
                 created = CASE WHEN job_idempotency.created < $5 \
                     THEN excluded.created ELSE job_idempotency.created END \
                 RETURNING job_id",
            )
            .bind(webhook)
            .bind(key)
            .bind(&job.id)
            .bind(job.created)
            .bind(since)
            .fetch_one(&mut *tx)
            .await?;
            if owner != job.id {
                // Nothing is written: the conflict branch's no-op update is
                // rolled back too.
                tx.rollback().await?;
                return Ok(JobCreated::Existing(owner));
            }
        }
        sqlx::query(&format!(
            "INSERT INTO jobs ({JOB_COLS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
             $19, $20, $21)"
        ))
        .bind(&job.id)
        .bind(&job.runbook_id)
        .bind(&job.runbook_name)
        .bind(job.runbook_version)
        .bind(&job.started_by)
        .bind(&job.run_on)
        .bind(&job.status)
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
        .bind(&job.id)
        .bind(&job.status)
        .bind(job.created)
        .execute(&mut *tx)
        .await?;
        if let Some((webhook, at)) = invoked {
            sqlx::query("UPDATE webhooks SET last_invoked = $1 WHERE id = $2")
                .bind(at)
                .bind(webhook)
                .execute(&mut *tx)
                .await?;
        }
        // Delivered only if the job commits: idle workers of the group on
        // every node claim at once instead of at their next poll.
        wake_group(&mut tx, &job.run_on).await?;
        tx.commit().await?;
        Ok(JobCreated::Created)
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<JobRecord>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {JOB_COLS} FROM jobs WHERE 1 = 1"));
        if let Some(s) = &f.status {
            qb.push(" AND status = ").push_bind(s);
        }
        if let Some(r) = &f.runbook_id {
            qb.push(" AND runbook_id = ").push_bind(r);
        }
        if let Some(t) = f.created_after {
            qb.push(" AND created >= ").push_bind(t);
        }
        if let Some(b) = &f.before_id {
            qb.push(" AND id < ").push_bind(b);
        }
        qb.push(" ORDER BY id DESC LIMIT ")
            .push_bind(f.limit.clamp(1, 1000));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn job_transitions(&self, id: &str) -> Result<Vec<JobTransition>> {
        let rows = sqlx::query(
            "SELECT seq, status, details, at FROM job_transitions WHERE job_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobTransition {
                    seq: r.try_get("seq")?,
                    status: r.try_get("status")?,
                    details: r.try_get("details")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    async fn count_jobs_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    async fn claim_jobs(
        &self,
        group: &str,
        worker: &str,
        n: i64,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<JobRecord>> {
        // SQLite's loop claims nothing for n <= 0 (and PostgreSQL refuses a
        // negative LIMIT).
        if n <= 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // Candidates beyond `n` cover runbooks skipped for their cap. SKIP
        // LOCKED: jobs another claimer is taking are passed over, never
        // waited on and never leased twice; a job another claimer leased
        // and committed meanwhile is re-checked (status = 'New') and dropped.
        let rows = sqlx::query(
            "SELECT id, runbook_id FROM jobs WHERE status = 'New' AND run_on = $1 \
             ORDER BY created, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(group)
        .bind(n.saturating_mul(4))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut candidates = Vec::with_capacity(rows.len());
        for r in &rows {
            candidates.push((
                r.try_get::<String, _>("id")?,
                r.try_get::<String, _>("runbook_id")?,
            ));
        }

        // Runbooks with a cap are locked (in id order, so claimers never
        // deadlock on each other) before their active jobs are counted: a
        // claimer on another node waits here until our leases commit, then
        // counts them. FOR NO KEY UPDATE still lets webhooks and versions be
        // added meanwhile (their foreign keys only need KEY SHARE).
        let runbook_ids: Vec<String> = candidates
            .iter()
            .map(|(_, r)| r.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let settings = sqlx::query("SELECT id, settings FROM runbooks WHERE id = ANY($1)")
            .bind(&runbook_ids)
            .fetch_all(&mut *tx)
            .await?;
        let mut capped = Vec::new();
        for r in &settings {
            let s: String = r.try_get("settings")?;
            if concurrency_cap(Some(&s)).is_some() {
                capped.push(r.try_get::<String, _>("id")?);
            }
        }
        let mut caps: HashMap<String, i64> = HashMap::new();
        let mut active: HashMap<String, i64> = HashMap::new();
        if !capped.is_empty() {
            let locked = sqlx::query(
                "SELECT id, settings FROM runbooks WHERE id = ANY($1) \
                 ORDER BY id FOR NO KEY UPDATE",
            )
            .bind(&capped)
            .fetch_all(&mut *tx)
            .await?;
            for r in &locked {
                // Settings as of now (re-read under the lock).
                let s: String = r.try_get("settings")?;
                if let Some(cap) = concurrency_cap(Some(&s)) {
                    caps.insert(r.try_get("id")?, cap);
                }
            }
            // A new statement, so (READ COMMITTED) it sees every lease that
            // committed before we got the locks.
            let counts = sqlx::query(&format!(
                "SELECT runbook_id, COUNT(*) AS n FROM jobs \
                 WHERE runbook_id = ANY($1) AND status IN {ACTIVE} GROUP BY runbook_id"
            ))
            .bind(&capped)
            .fetch_all(&mut *tx)
            .await?;
            for r in &counts {
                active.insert(r.try_get("runbook_id")?, r.try_get("n")?);
            }
        }

        let mut claimed = Vec::new();
        for (id, runbook_id) in candidates {
            if claimed.len() as i64 >= n {
                break;
            }
            if let Some(cap) = caps.get(&runbook_id) {
                let running = active.entry(runbook_id).or_insert(0);
                if *running >= *cap {
                    continue;
                }
                *running += 1;
            }
            sqlx::query(
                "UPDATE jobs SET worker = $1, lease_until = $2, \
                 start_time = COALESCE(start_time, $3) WHERE id = $4",
            )
            .bind(worker)
            .bind(lease_until)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            transition(&mut tx, &id, "Activating", "", now).await?;
            let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
            claimed.push(job_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn start_job(&self, id: &str, worker: &str, sandbox: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Conditional on the lease holder: if the lease lapsed and the job
        // was re-queued (or re-leased) meanwhile, the re-checked row no
        // longer matches and nothing changes.
        let done = sqlx::query(
            "UPDATE jobs SET sandbox = $1 WHERE id = $2 AND worker = $3 AND status = 'Activating'",
        )
        .bind(sandbox)
        .bind(id)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        transition(&mut tx, id, "Running", "", now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn heartbeat_job(
        &self,
        id: &str,
        worker: &str,
        lease_until: i64,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        // Compare-and-set on the lease holder.
        let status: Option<String> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND worker = $3 AND status IN {ACTIVE} \
             RETURNING status"
        ))
        .bind(lease_until)
        .bind(id)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(status)
    }

    async fn append_records(
        &self,
        id: &str,
        records: &[StreamRecord],
        max_bytes: i64,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let seq = insert_records(&mut tx, id, records, max_bytes).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn finish_job(&self, id: &str, worker: Option<&str>, end: &JobEnd) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Conditional on the job not being terminal and (with `worker`) on
        // the lease holder; the UPDATE's row lock then covers the transition.
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new("UPDATE jobs SET worker = NULL, lease_until = NULL, end_time = ");
        qb.push_bind(end.at)
            .push(", exception = ")
            .push_bind(&end.exception)
            .push(", exit_code = ")
            .push_bind(end.exit_code)
            .push(" WHERE id = ")
            .push_bind(id)
            .push(" AND status NOT IN ('Completed', 'Failed', 'Stopped', 'Suspended')");
        if let Some(w) = worker {
            qb.push(" AND worker = ").push_bind(w);
        }
        let done = qb.build().execute(&mut *tx).await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        transition(&mut tx, id, &end.status, &end.details, end.at).await?;
        sqlx::query("DELETE FROM job_tokens WHERE job_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn request_stop(&self, id: &str, now: i64) -> Result<Option<JobRecord>> {
        let mut tx = self.pool.begin().await?;
        // Locked, so a worker finishing (or a claimer leasing) the job
        // cannot slip in between reading the status and acting on it.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        match status.as_str() {
            "New" | "Suspended" | "Disconnected" => {
                sqlx::query(
                    "UPDATE jobs SET end_time = $1, worker = NULL, lease_until = NULL \
                     WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                transition(&mut tx, id, "Stopped", "stopped by user before it ran", now).await?;
            }
            "Activating" | "Running" => {
                transition(&mut tx, id, "Stopping", "stop requested by user", now).await?;
            }
            _ => {}
        }
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let job = job_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(job))
    }

    async fn resume_job(&self, id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let group: Option<String> = sqlx::query_scalar(
            "UPDATE jobs SET restarts = 0, end_time = NULL \
             WHERE id = $1 AND status = 'Suspended' RETURNING run_on",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(group) = group else {
            return Ok(false);
        };
        transition(&mut tx, id, "Resuming", "resumed by user", now).await?;
        transition(&mut tx, id, "New", "", now).await?;
        wake_group(&mut tx, &group).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn expire_leases(&self, now: i64, max_restarts: i64) -> Result<Vec<LapsedLease>> {
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: when two nodes sweep at once each takes its own
        // lapsed jobs, so none is counted as a restart twice. A job whose
        // worker is heart-beating right now is locked and skipped; one whose
        // lease was extended meanwhile is re-checked and dropped.
        let rows = sqlx::query(&format!(
            "SELECT id, worker, status, restarts, run_on FROM jobs \
             WHERE status IN {ACTIVE} AND lease_until < $1 \
             ORDER BY lease_until, id LIMIT 500 FOR UPDATE SKIP LOCKED"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut lapsed = Vec::with_capacity(rows.len());
        let mut requeued: BTreeSet<String> = BTreeSet::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let worker: Option<String> = r.try_get("worker")?;
            let status: String = r.try_get("status")?;
            let run_on: String = r.try_get("run_on")?;
            let restarts: i64 = r.try_get::<i64, _>("restarts")? + 1;
            let lost = format!(
                "worker {} stopped sending heartbeats",
                worker.as_deref().unwrap_or("?")
            );
            sqlx::query(
                "UPDATE jobs SET worker = NULL, lease_until = NULL, restarts = $1 WHERE id = $2",
            )
            .bind(restarts)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            transition(&mut tx, &id, "Disconnected", &lost, now).await?;
            let next = if status == "Stopping" {
                sqlx::query("UPDATE jobs SET end_time = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                transition(&mut tx, &id, "Stopped", "stopped: its worker was lost", now).await?;
                "Stopped"
            } else if restarts > max_restarts {
                transition(
                    &mut tx,
                    &id,
                    "Suspended",
                    &format!(
                        "the job was attempted {restarts} times and its worker was lost each time"
                    ),
                    now,
                )
                .await?;
                "Suspended"
            } else {
                transition(
                    &mut tx,
                    &id,
                    "New",
                    &format!("re-queued after restart {restarts}"),
                    now,
                )
                .await?;
                requeued.insert(run_on);
                "New"
            };
            sqlx::query("DELETE FROM job_tokens WHERE job_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            lapsed.push(LapsedLease {
                job_id: id,
                worker,
                status: next.to_owned(),
            });
        }
        for group in &requeued {
            wake_group(&mut tx, group).await?;
        }
        tx.commit().await?;
        Ok(lapsed)
    }

    async fn read_records(
        &self,
        id: &str,
        after_seq: i64,
        stream: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StreamRecord>> {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT seq, stream, time, text, value FROM job_streams WHERE job_id = ",
        );
        qb.push_bind(id).push(" AND seq > ").push_bind(after_seq);
        if let Some(s) = stream {
            qb.push(" AND stream = ").push_bind(s);
        }
        qb.push(" ORDER BY seq LIMIT ")
            .push_bind(limit.clamp(1, 100_000));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(StreamRecord {
                    seq: r.try_get("seq")?,
                    stream: r.try_get("stream")?,
                    time: r.try_get("time")?,
                    text: r.try_get("text")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    async fn prune_jobs(&self, before: i64, keys_before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        // The batch is chosen once and locked, so its streams, history and
        // rows go together even while other nodes prune or finish jobs.
        let old: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE end_time < $1 \
             AND status IN ('Completed', 'Failed', 'Stopped') LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        let mut pruned = 0;
        if !old.is_empty() {
            for table in ["job_streams", "job_transitions"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE job_id = ANY($1)"))
                    .bind(&old)
                    .execute(&mut *tx)
                    .await?;
            }
            pruned = sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                .bind(&old)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        sqlx::query("DELETE FROM job_idempotency WHERE created < $1")
            .bind(keys_before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM job_tokens WHERE expires_at < $1")
            .bind(keys_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(pruned)
    }

    async fn put_job_token(&self, token_hash: &str, job_id: &str, expires_at: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO job_tokens (token_hash, job_id, expires_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(job_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job_token(&self, token_hash: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT job_id, expires_at FROM job_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|r| Ok((r.try_get("job_id")?, r.try_get("expires_at")?)))
            .transpose()
    }

    async fn put_asset(&self, a: &AssetRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO assets ({ASSET_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (key) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
             encrypted = excluded.encrypted, username = excluded.username, \
             value = excluded.value, description = excluded.description, \
             updated = excluded.updated"
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
        tx.commit().await?;
        Ok(())
    }

    async fn asset(&self, key: &str) -> Result<Option<AssetRecord>> {
        let row = sqlx::query(&format!("SELECT {ASSET_COLS} FROM assets WHERE key = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(asset_from_row).transpose()
    }

    async fn list_assets(&self) -> Result<Vec<AssetRecord>> {
        let rows = sqlx::query(&format!("SELECT {ASSET_COLS} FROM assets ORDER BY key"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(asset_from_row).collect()
    }

    async fn delete_asset(&self, key: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM assets WHERE key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn touch_worker(&self, w: &WorkerRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workers (id, grp, hostname, slots, last_seen) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, hostname = excluded.hostname, \
             slots = excluded.slots, last_seen = excluded.last_seen",
        )
        .bind(&w.id)
        .bind(&w.group)
        .bind(&w.hostname)
        .bind(w.slots)
        .bind(w.last_seen)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_workers(&self, seen_after: i64) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(
            "SELECT id, grp, hostname, slots, last_seen FROM workers WHERE last_seen >= $1 \
             ORDER BY grp, id",
        )
        .bind(seen_after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerRecord {
                    id: r.try_get("id")?,
                    group: r.try_get("grp")?,
                    hostname: r.try_get("hostname")?,
                    slots: r.try_get("slots")?,
                    last_seen: r.try_get("last_seen")?,
                })
            })
            .collect()
    }
}
