//! The lease protocol that the built-in pool and remote workers speak, lease sweeping, and the automation duties.

use super::*;
use crate::transitions::cap_rule;
use herald_storage::{JobEnd, JobRecord, StreamRecord, WorkerRecord};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl AutomationService {
    /// Leases up to `n` jobs of `group`, holding the request up to `hold`
    /// while none is queued.
    pub async fn lease(
        &self,
        group: &str,
        worker: &str,
        n: i64,
        hold: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Vec<LeasedJob>> {
        let deadline = tokio::time::Instant::now() + hold;
        let signal = self.queue_signal(group);
        loop {
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let lease_until = now + self.inner.settings.lease.as_millis() as i64;
            let jobs = self
                .store()
                .claim_jobs(group, worker, n, lease_until, now, cap_rule())
                .await?;
            if !jobs.is_empty() {
                let mut out = Vec::with_capacity(jobs.len());
                for job in jobs {
                    self.changed(&job.id);
                    match self.prepare(&job).await {
                        Ok(l) => out.push(l),
                        Err(e) => {
                            tracing::warn!(job = %job.id, error = %e, "cannot prepare leased job");
                            let _ = self
                                .store()
                                .finish_job(
                                    &job.id,
                                    Some(worker),
                                    &JobEnd {
                                        status: JobStatus::Failed,
                                        details: e.to_string(),
                                        exception: Some(e.to_string()),
                                        exit_code: None,
                                        at: now_ms(),
                                    },
                                )
                                .await;
                            self.changed(&job.id);
                        }
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                // Other nodes queue jobs too; poll now and then.
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    pub(super) async fn prepare(&self, job: &JobRecord) -> Result<LeasedJob> {
        let key = (job.runbook_id.clone(), job.runbook_version);
        let cached = self
            .inner
            .version_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let frozen = match cached {
            Some(c) => c,
            None => {
                let v = self
                    .store()
                    .runbook_version(&job.runbook_id, job.runbook_version)
                    .await?
                    .ok_or_else(|| {
                        AutomationError::RunbookGone("the runbook version is gone".into())
                    })?;
                let entry = Arc::new((v.content, v.params));
                let mut cache = self
                    .inner
                    .version_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if cache.len() > 1000 {
                    cache.clear();
                }
                cache.insert(key, entry.clone());
                entry
            }
        };
        let rb = self.store().runbook_by_id(&job.runbook_id).await?;
        let (kind, settings) = match &rb {
            Some(rb) => (
                parse_kind(&rb.kind)?,
                serde_json::from_str::<RunbookSettings>(&rb.settings).unwrap_or_default(),
            ),
            None => {
                return Err(AutomationError::RunbookGone(
                    "the runbook was deleted".into(),
                ));
            }
        };
        let input = self
            .inner
            .master
            .open_direct(&job.input, job.id.as_bytes())
            .map_err(|e| AutomationError::Internal(format!("opening job input: {e}")))?;
        let input = String::from_utf8(input.to_vec()).map_err(internal)?;
        let decls: Vec<ParamDecl> = serde_json::from_str(&frozen.1).unwrap_or_default();
        let parsed: JobInput = serde_json::from_str(&input).map_err(internal)?;
        let masks = decls
            .iter()
            .filter(|d| d.secure)
            .filter_map(|d| parsed.parameters.get(&d.name))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|s| s.len() >= 3)
            .flat_map(|s| mask_forms(&s))
            .collect();
        let token = herald_core::new_token("hjt");
        let expires = now_ms() + (settings.timeout_seconds as i64 + 300) * 1000;
        self.store()
            .put_job_token(&hash_token(&token), &job.id, expires)
            .await?;
        Ok(LeasedJob {
            job_id: job.id.to_string(),
            runbook: job.runbook_name.clone(),
            kind,
            script: frozen.0.clone(),
            input,
            token,
            timeout_seconds: settings.timeout_seconds,
            allow_network: settings.allow_network,
            memory_limit_mb: settings.memory_limit_mb,
            masks,
            lease_ms: self.inner.settings.lease.as_millis() as u64,
        })
    }

    /// Records that a worker started the job's process; `false` if the worker no longer holds its lease.
    pub async fn mark_running(&self, id: &str, worker: &str, sandbox: &str) -> Result<bool> {
        let ok = self
            .store()
            .start_job(id, worker, sandbox, now_ms())
            .await?;
        if ok {
            tracing::info!(job = %id, worker, sandbox, "job running");
            self.changed(id);
        }
        Ok(ok)
    }

    /// Extends a lease; `Ok(None)` means the worker lost it. A status of
    /// `Stopping` tells the worker to stop the job.
    pub async fn heartbeat(&self, id: &str, worker: &str) -> Result<Option<String>> {
        let until = now_ms() + self.inner.settings.lease.as_millis() as i64;
        Ok(self.store().heartbeat_job(id, worker, until).await?)
    }

    pub(super) async fn to_stored(
        &self,
        id: &str,
        records: &[ReportedRecord],
    ) -> Vec<StreamRecord> {
        let masks = self.masks_of(id).await;
        let now = now_ms();
        records
            .iter()
            .filter(|r| crate::exec::StreamType::parse(&r.stream).is_some())
            .map(|r| {
                let stream = crate::exec::StreamType::parse(&r.stream)
                    .map(|s| s.as_str())
                    .unwrap_or("Output");
                StreamRecord {
                    seq: 0,
                    stream: stream.to_owned(),
                    time: r.time.unwrap_or(now),
                    // NUL cannot be stored as text (PostgreSQL) and means nothing to readers.
                    text: mask(&r.text, &masks).replace('\0', "\u{FFFD}"),
                    value: r.value.as_ref().map(|v| mask(&v.to_string(), &masks)),
                }
            })
            .collect()
    }

    /// Stores a batch of a job's records (masked, within the job's stream cap);
    /// returns the last sequence number.
    pub async fn append(&self, id: &str, records: &[ReportedRecord]) -> Result<i64> {
        let stored = self.to_stored(id, records).await;
        let seq = self
            .store()
            .append_records(id, &stored, JOB_STREAM_BYTES)
            .await?;
        self.changed(id);
        Ok(seq)
    }

    /// Ends a job as its worker reports; `false` if the lease was lost.
    pub async fn finish(&self, id: &str, worker: Option<&str>, report: &JobReport) -> Result<bool> {
        if !report.records.is_empty() {
            self.append(id, &report.records).await?;
        }
        let (status, details) = match report.outcome.as_str() {
            "Completed" => (JobStatus::Completed, report.details.clone()),
            "Stopped" => (JobStatus::Stopped, "stopped by user".to_owned()),
            "TimedOut" => (JobStatus::Failed, report.details.clone()),
            _ => (JobStatus::Failed, report.details.clone()),
        };
        let exception = if status == JobStatus::Failed {
            let last_error = self
                .store()
                .read_records(id, 0, Some("Error"), 100_000)
                .await?
                .pop()
                .map(|r| r.text);
            Some(last_error.unwrap_or_else(|| details.clone()))
        } else {
            None
        };
        let done = self
            .store()
            .finish_job(
                id,
                worker,
                &JobEnd {
                    status,
                    details: details.clone(),
                    exception,
                    exit_code: report.exit_code,
                    at: now_ms(),
                },
            )
            .await?;
        self.inner
            .masks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if done {
            tracing::info!(job = %id, status = status.as_str(), details = %details, "job finished");
            metrics::counter!("herald_jobs_finished_total", "status" => status.as_str())
                .increment(1);
        }
        self.changed(id);
        Ok(done)
    }

    /// Lets a stop request end a job this node runs at once.
    pub fn register_local_stop(&self, id: &str, stop: CancellationToken) {
        self.inner
            .local_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), stop);
    }

    /// Drops the stop signal of a job this node no longer runs.
    pub fn forget_local_stop(&self, id: &str) {
        self.inner
            .local_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Returns leases that lapsed to the queue (or suspends the job).
    pub async fn sweep_leases(&self) -> Result<usize> {
        let lapsed = self
            .store()
            .expire_leases(
                now_ms(),
                crate::transitions::lapse_rule(self.inner.settings.max_restarts),
            )
            .await?;
        for l in &lapsed {
            tracing::warn!(job = %l.job_id, worker = l.worker.as_deref().unwrap_or("?"), status = %l.status, "job's worker was lost");
            if l.status == JobStatus::New
                && let Ok(job) = self.job(&l.job_id).await
            {
                self.wake(&job.run_on);
            }
            self.changed(&l.job_id);
        }
        Ok(lapsed.len())
    }

    /// The automation duties as the node runs them: lease sweeping and job
    /// retention on one node at a time.
    pub fn duties(&self) -> Vec<herald_core::duty::Duty> {
        let service = self.clone();
        let every = Duration::from_millis(
            (self.inner.settings.lease.as_millis() as u64 / 4).clamp(200, 5000),
        );
        vec![herald_core::duty::Duty::singleton(
            "automation-duties",
            every,
            move |stop| service.run_duties(stop),
        )]
    }

    /// Background duties: lease sweeping and job retention.
    pub async fn run_duties(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(
            (self.inner.settings.lease.as_millis() as u64 / 4).clamp(200, 5000),
        ));
        let mut last_prune = 0i64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep_leases().await {
                tracing::warn!(error = %e, "lease sweep failed");
            }
            let now = now_ms();
            if now - last_prune > 3_600_000 {
                last_prune = now;
                let before = now - self.inner.settings.job_retention.as_millis() as i64;
                match self.store().prune_jobs(before, now - IDEMPOTENCY_MS).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "pruned jobs past retention"),
                    Err(e) => tracing::warn!(error = %e, "job pruning failed"),
                }
            }
        }
    }

    /// Records that a worker of `group` is alive, for `herald status`.
    pub async fn touch_worker(
        &self,
        id: &str,
        group: &str,
        hostname: &str,
        slots: i64,
    ) -> Result<()> {
        self.store()
            .touch_worker(&WorkerRecord {
                id: id.to_owned(),
                group: group.to_owned(),
                hostname: hostname.to_owned(),
                slots,
                last_seen: now_ms(),
            })
            .await?;
        Ok(())
    }

    /// The workers seen in the last two minutes.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(self.store().list_workers(now_ms() - 120_000).await?)
    }
}
