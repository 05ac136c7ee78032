//! Automation's tables on SQLite. Mutations go through the group committer,
//! so a claim is one serialised transaction and needs no row locks.

use super::SqliteStorage;
use crate::Result;
use crate::automation::*;
use crate::engine::BoxFuture;
use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

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

fn runbook_from_row(r: &SqliteRow) -> Result<RunbookRecord> {
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

fn webhook_from_row(r: &SqliteRow) -> Result<WebhookRecord> {
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

fn job_from_row(r: &SqliteRow) -> Result<JobRecord> {
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

fn asset_from_row(r: &SqliteRow) -> Result<AssetRecord> {
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

/// Records a status change: the job row and its history move together.
async fn transition(
    tx: &mut SqliteConnection,
    id: &str,
    status: &str,
    details: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET status = ?, status_details = ?, last_modified = ?, \
         last_status_modified = ? WHERE id = ?",
    )
    .bind(status)
    .bind(details)
    .bind(at)
    .bind(at)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO job_transitions (job_id, seq, status, details, at) VALUES (?, \
         (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_transitions WHERE job_id = ?), ?, ?, ?)",
    )
    .bind(id)
    .bind(id)
    .bind(status)
    .bind(details)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_records(
    tx: &mut SqliteConnection,
    id: &str,
    records: &[StreamRecord],
    max_bytes: i64,
) -> Result<i64> {
    let row = sqlx::query("SELECT stream_seq, stream_bytes FROM jobs WHERE id = ?")
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
    for chunk in kept.chunks(150) {
        let mut qb: QueryBuilder<Sqlite> =
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
    sqlx::query("UPDATE jobs SET stream_seq = ?, stream_bytes = ? WHERE id = ?")
        .bind(seq)
        .bind(bytes)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(seq)
}

impl SqliteStorage {
    async fn write_owned<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        self.writer.write(f).await
    }
}

#[async_trait]
impl AutomationStore for SqliteStorage {
    async fn create_runbook(&self, rb: &RunbookRecord) -> Result<bool> {
        let rb = rb.clone();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let done = sqlx::query(
                    "INSERT INTO runbooks (id, key, name, kind, description, draft, draft_params, \
                     settings, published_version, created, updated) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) ON CONFLICT (key) DO NOTHING",
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
                Ok(done.rows_affected() == 1)
            })
        })
        .await
    }

    async fn runbook(&self, key: &str) -> Result<Option<RunbookRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUNBOOK_COLS} FROM runbooks WHERE key = ?"
        ))
        .bind(key)
        .fetch_all(&self.reader)
        .await?;
        rows.first().map(runbook_from_row).transpose()
    }

    async fn runbook_by_id(&self, id: &str) -> Result<Option<RunbookRecord>> {
        let rows = sqlx::query(&format!("SELECT {RUNBOOK_COLS} FROM runbooks WHERE id = ?"))
            .bind(id)
            .fetch_all(&self.reader)
            .await?;
        rows.first().map(runbook_from_row).transpose()
    }

    async fn list_runbooks(&self) -> Result<Vec<RunbookRecord>> {
        let rows = sqlx::query(&format!("SELECT {RUNBOOK_COLS} FROM runbooks ORDER BY key"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(runbook_from_row).collect()
    }

    async fn update_runbook(&self, rb: &RunbookRecord) -> Result<bool> {
        let rb = rb.clone();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE runbooks SET description = ?, draft = ?, draft_params = ?, \
                     settings = ?, updated = ? WHERE key = ?",
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
        self.write_owned(move |tx| {
            Box::pin(async move {
                let row = sqlx::query(
                    "SELECT id, draft, draft_params, COALESCE(published_version, 0) AS v \
                     FROM runbooks WHERE key = ?",
                )
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let id: String = row.try_get("id")?;
                let version: i64 = row.try_get::<i64, _>("v")? + 1;
                sqlx::query(
                    "INSERT INTO runbook_versions (runbook_id, version, content, params, published) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&id)
                .bind(version)
                .bind(row.try_get::<String, _>("draft")?)
                .bind(row.try_get::<String, _>("draft_params")?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE runbooks SET published_version = ?, updated = ? WHERE id = ?")
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
        let rows = sqlx::query(
            "SELECT runbook_id, version, content, params, published FROM runbook_versions \
             WHERE runbook_id = ? AND version = ?",
        )
        .bind(runbook_id)
        .bind(version)
        .fetch_all(&self.reader)
        .await?;
        rows.first()
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
        let key = key.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let id: Option<String> =
                    sqlx::query_scalar("SELECT id FROM runbooks WHERE key = ?")
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(id) = id else { return Ok(false) };
                sqlx::query("DELETE FROM webhooks WHERE runbook_id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM runbook_versions WHERE runbook_id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM runbooks WHERE id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                Ok(true)
            })
        })
        .await
    }

    async fn put_pending_webhook_token(&self, token_hash: &str, now: i64) -> Result<()> {
        let hash = token_hash.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                // Unbound tokens older than a day are abandoned portal sessions.
                sqlx::query("DELETE FROM webhook_pending_tokens WHERE created < ?")
                    .bind(now - 86_400_000)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO webhook_pending_tokens (token_hash, created) VALUES (?, ?)",
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
        self.write_owned(move |tx| {
            Box::pin(async move {
                if pending {
                    let took = sqlx::query("DELETE FROM webhook_pending_tokens WHERE token_hash = ?")
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
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) ON CONFLICT DO NOTHING",
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
                Ok(done.rows_affected() == 1)
            })
        })
        .await
    }

    async fn webhook(&self, key: &str) -> Result<Option<WebhookRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE key = ?"
        ))
        .bind(key)
        .fetch_all(&self.reader)
        .await?;
        rows.first().map(webhook_from_row).transpose()
    }

    async fn webhook_by_token(&self, token_hash: &str) -> Result<Option<WebhookRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLS} FROM webhooks WHERE token_hash = ?"
        ))
        .bind(token_hash)
        .fetch_all(&self.reader)
        .await?;
        rows.first().map(webhook_from_row).transpose()
    }

    async fn list_webhooks(&self, runbook_id: Option<&str>) -> Result<Vec<WebhookRecord>> {
        let rows = match runbook_id {
            Some(id) => {
                sqlx::query(&format!(
                    "SELECT {WEBHOOK_COLS} FROM webhooks WHERE runbook_id = ? ORDER BY key"
                ))
                .bind(id)
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {WEBHOOK_COLS} FROM webhooks ORDER BY key"))
                    .fetch_all(&self.reader)
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
        let key = key.to_owned();
        let p = patch.clone();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let mut qb: QueryBuilder<Sqlite> =
                    QueryBuilder::new("UPDATE webhooks SET updated = ");
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
                qb.push(" WHERE key = ").push_bind(&key);
                qb.push(format!(" RETURNING {WEBHOOK_COLS}"));
                let row = qb.build().fetch_optional(&mut *tx).await?;
                row.as_ref().map(webhook_from_row).transpose()
            })
        })
        .await
    }

    async fn delete_webhook(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM webhooks WHERE key = ?")
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
        self.write_owned(move |tx| {
            Box::pin(async move {
                if let Some((webhook, key, since)) = &idem {
                    let existing: Option<String> = sqlx::query_scalar(
                        "SELECT job_id FROM job_idempotency WHERE webhook_id = ? AND key = ? \
                         AND created >= ?",
                    )
                    .bind(webhook)
                    .bind(key)
                    .bind(since)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(id) = existing {
                        return Ok(JobCreated::Existing(id));
                    }
                    sqlx::query(
                        "INSERT INTO job_idempotency (webhook_id, key, job_id, created) \
                         VALUES (?, ?, ?, ?) ON CONFLICT (webhook_id, key) DO UPDATE SET \
                         job_id = excluded.job_id, created = excluded.created",
                    )
                    .bind(webhook)
                    .bind(key)
                    .bind(&job.id)
                    .bind(job.created)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(&format!(
                    "INSERT INTO jobs ({JOB_COLS}) VALUES \
                     (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
                    "INSERT INTO job_transitions (job_id, seq, status, details, at) VALUES (?, 1, ?, '', ?)",
                )
                .bind(&job.id)
                .bind(&job.status)
                .bind(job.created)
                .execute(&mut *tx)
                .await?;
                if let Some((webhook, at)) = &invoked {
                    sqlx::query("UPDATE webhooks SET last_invoked = ? WHERE id = ?")
                        .bind(at)
                        .bind(webhook)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(JobCreated::Created)
            })
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let rows = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_all(&self.reader)
            .await?;
        rows.first().map(job_from_row).transpose()
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<Vec<JobRecord>> {
        let mut qb: QueryBuilder<Sqlite> =
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
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn job_transitions(&self, id: &str) -> Result<Vec<JobTransition>> {
        let rows = sqlx::query(
            "SELECT seq, status, details, at FROM job_transitions WHERE job_id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.reader)
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
                .fetch_all(&self.reader)
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
        let group = group.to_owned();
        let worker = worker.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                // Candidates beyond `n` cover runbooks skipped for their cap.
                let rows = sqlx::query(
                    "SELECT j.id, j.runbook_id, r.settings FROM jobs j \
                     LEFT JOIN runbooks r ON r.id = j.runbook_id \
                     WHERE j.status = 'New' AND j.run_on = ? ORDER BY j.created, j.id LIMIT ?",
                )
                .bind(&group)
                .bind(n * 4)
                .fetch_all(&mut *tx)
                .await?;
                let mut claimed = Vec::new();
                let mut active: std::collections::HashMap<String, i64> = Default::default();
                for r in rows {
                    if claimed.len() as i64 >= n {
                        break;
                    }
                    let id: String = r.try_get("id")?;
                    let runbook_id: String = r.try_get("runbook_id")?;
                    let settings: Option<String> = r.try_get("settings")?;
                    let cap = settings
                        .as_deref()
                        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                        .and_then(|v| v.get("maxConcurrentJobs").and_then(|c| c.as_i64()));
                    if let Some(cap) = cap {
                        let running = match active.get(&runbook_id) {
                            Some(n) => *n,
                            None => {
                                sqlx::query_scalar::<_, i64>(&format!(
                                    "SELECT COUNT(*) FROM jobs WHERE runbook_id = ? AND status IN {ACTIVE}"
                                ))
                                .bind(&runbook_id)
                                .fetch_one(&mut *tx)
                                .await?
                            }
                        };
                        if running >= cap {
                            active.insert(runbook_id, running);
                            continue;
                        }
                        active.insert(runbook_id, running + 1);
                    }
                    sqlx::query(
                        "UPDATE jobs SET worker = ?, lease_until = ?, start_time = COALESCE(start_time, ?) \
                         WHERE id = ?",
                    )
                    .bind(&worker)
                    .bind(lease_until)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                    transition(tx, &id, "Activating", "", now).await?;
                    let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?"))
                        .bind(&id)
                        .fetch_one(&mut *tx)
                        .await?;
                    claimed.push(job_from_row(&row)?);
                }
                Ok(claimed)
            })
        })
        .await
    }

    async fn start_job(&self, id: &str, worker: &str, sandbox: &str, now: i64) -> Result<bool> {
        let (id, worker, sandbox) = (id.to_owned(), worker.to_owned(), sandbox.to_owned());
        self.write_owned(move |tx| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE jobs SET sandbox = ? WHERE id = ? AND worker = ? AND status = 'Activating'",
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
        self.write_owned(move |tx| {
            Box::pin(async move {
                let status: Option<String> = sqlx::query_scalar(&format!(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND status IN {ACTIVE} \
                     RETURNING status"
                ))
                .bind(lease_until)
                .bind(&id)
                .bind(&worker)
                .fetch_optional(&mut *tx)
                .await?;
                Ok(status)
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
        self.write_owned(move |tx| {
            Box::pin(async move { insert_records(tx, &id, &records, max_bytes).await })
        })
        .await
    }

    async fn finish_job(&self, id: &str, worker: Option<&str>, end: &JobEnd) -> Result<bool> {
        let id = id.to_owned();
        let worker = worker.map(str::to_owned);
        let end = end.clone();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "UPDATE jobs SET worker = NULL, lease_until = NULL, end_time = ",
                );
                qb.push_bind(end.at)
                    .push(", exception = ")
                    .push_bind(&end.exception)
                    .push(", exit_code = ")
                    .push_bind(end.exit_code)
                    .push(" WHERE id = ")
                    .push_bind(&id)
                    .push(" AND status NOT IN ('Completed', 'Failed', 'Stopped', 'Suspended')");
                if let Some(w) = &worker {
                    qb.push(" AND worker = ").push_bind(w);
                }
                let done = qb.build().execute(&mut *tx).await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                transition(tx, &id, &end.status, &end.details, end.at).await?;
                sqlx::query("DELETE FROM job_tokens WHERE job_id = ?")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                Ok(true)
            })
        })
        .await
    }

    async fn request_stop(&self, id: &str, now: i64) -> Result<Option<JobRecord>> {
        let id = id.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?")
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(status) = status else { return Ok(None) };
                match status.as_str() {
                    "New" | "Suspended" | "Disconnected" => {
                        sqlx::query("UPDATE jobs SET end_time = ?, worker = NULL, lease_until = NULL WHERE id = ?")
                            .bind(now)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                        transition(tx, &id, "Stopped", "stopped by user before it ran", now).await?;
                    }
                    "Activating" | "Running" => {
                        transition(tx, &id, "Stopping", "stop requested by user", now).await?;
                    }
                    _ => {}
                }
                let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?"))
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(Some(job_from_row(&row)?))
            })
        })
        .await
    }

    async fn resume_job(&self, id: &str, now: i64) -> Result<bool> {
        let id = id.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE jobs SET restarts = 0, end_time = NULL WHERE id = ? AND status = 'Suspended'",
                )
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                transition(tx, &id, "Resuming", "resumed by user", now).await?;
                transition(tx, &id, "New", "", now).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn expire_leases(&self, now: i64, max_restarts: i64) -> Result<Vec<LapsedLease>> {
        self.write_owned(move |tx| {
            Box::pin(async move {
                let rows = sqlx::query(&format!(
                    "SELECT id, worker, status, restarts FROM jobs \
                     WHERE status IN {ACTIVE} AND lease_until < ? LIMIT 500"
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut lapsed = Vec::with_capacity(rows.len());
                for r in rows {
                    let id: String = r.try_get("id")?;
                    let worker: Option<String> = r.try_get("worker")?;
                    let status: String = r.try_get("status")?;
                    let restarts: i64 = r.try_get::<i64, _>("restarts")? + 1;
                    let lost = format!(
                        "worker {} stopped sending heartbeats",
                        worker.as_deref().unwrap_or("?")
                    );
                    sqlx::query(
                        "UPDATE jobs SET worker = NULL, lease_until = NULL, restarts = ? WHERE id = ?",
                    )
                    .bind(restarts)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                    transition(tx, &id, "Disconnected", &lost, now).await?;
                    let next = if status == "Stopping" {
                        sqlx::query("UPDATE jobs SET end_time = ? WHERE id = ?")
                            .bind(now)
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                        transition(tx, &id, "Stopped", "stopped: its worker was lost", now).await?;
                        "Stopped"
                    } else if restarts > max_restarts {
                        transition(
                            tx,
                            &id,
                            "Suspended",
                            &format!("the job was attempted {restarts} times and its worker was lost each time"),
                            now,
                        )
                        .await?;
                        "Suspended"
                    } else {
                        transition(tx, &id, "New", &format!("re-queued after restart {restarts}"), now)
                            .await?;
                        "New"
                    };
                    sqlx::query("DELETE FROM job_tokens WHERE job_id = ?")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    lapsed.push(LapsedLease {
                        job_id: id,
                        worker,
                        status: next.to_owned(),
                    });
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
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT seq, stream, time, text, value FROM job_streams WHERE job_id = ",
        );
        qb.push_bind(id).push(" AND seq > ").push_bind(after_seq);
        if let Some(s) = stream {
            qb.push(" AND stream = ").push_bind(s);
        }
        qb.push(" ORDER BY seq LIMIT ")
            .push_bind(limit.clamp(1, 100_000));
        let rows = qb.build().fetch_all(&self.reader).await?;
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
        self.write_owned(move |tx| {
            Box::pin(async move {
                let old = "SELECT id FROM jobs WHERE end_time < ? AND status IN ('Completed', 'Failed', 'Stopped') LIMIT 1000";
                for table in ["job_streams", "job_transitions"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE job_id IN ({old})"))
                        .bind(before)
                        .execute(&mut *tx)
                        .await?;
                }
                let done = sqlx::query(&format!("DELETE FROM jobs WHERE id IN ({old})"))
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM job_idempotency WHERE created < ?")
                    .bind(keys_before)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM job_tokens WHERE expires_at < ?")
                    .bind(keys_before)
                    .execute(&mut *tx)
                    .await?;
                Ok(done.rows_affected())
            })
        })
        .await
    }

    async fn put_job_token(&self, token_hash: &str, job_id: &str, expires_at: i64) -> Result<()> {
        let (hash, job) = (token_hash.to_owned(), job_id.to_owned());
        self.write_owned(move |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO job_tokens (token_hash, job_id, expires_at) VALUES (?, ?, ?)",
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

    async fn job_token(&self, token_hash: &str) -> Result<Option<(String, i64)>> {
        let rows = sqlx::query("SELECT job_id, expires_at FROM job_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_all(&self.reader)
            .await?;
        rows.first()
            .map(|r| Ok((r.try_get("job_id")?, r.try_get("expires_at")?)))
            .transpose()
    }

    async fn put_asset(&self, a: &AssetRecord) -> Result<()> {
        let a = a.clone();
        self.write_owned(move |tx| {
            Box::pin(async move {
                sqlx::query(&format!(
                    "INSERT INTO assets ({ASSET_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
                Ok(())
            })
        })
        .await
    }

    async fn asset(&self, key: &str) -> Result<Option<AssetRecord>> {
        let rows = sqlx::query(&format!("SELECT {ASSET_COLS} FROM assets WHERE key = ?"))
            .bind(key)
            .fetch_all(&self.reader)
            .await?;
        rows.first().map(asset_from_row).transpose()
    }

    async fn list_assets(&self) -> Result<Vec<AssetRecord>> {
        let rows = sqlx::query(&format!("SELECT {ASSET_COLS} FROM assets ORDER BY key"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(asset_from_row).collect()
    }

    async fn delete_asset(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.write_owned(move |tx| {
            Box::pin(async move {
                let done = sqlx::query("DELETE FROM assets WHERE key = ?")
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
        self.write_owned(move |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO workers (id, grp, hostname, slots, last_seen) VALUES (?, ?, ?, ?, ?) \
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
                Ok(())
            })
        })
        .await
    }

    async fn list_workers(&self, seen_after: i64) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(
            "SELECT id, grp, hostname, slots, last_seen FROM workers WHERE last_seen >= ? ORDER BY grp, id",
        )
        .bind(seen_after)
        .fetch_all(&self.reader)
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
