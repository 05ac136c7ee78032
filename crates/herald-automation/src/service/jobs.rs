//! Jobs as users see them: status with history, streams, output, stop, resume and waiting for the end.

use super::*;
use herald_storage::{JobFilter, JobId, JobRecord, JobTransition, StreamRecord};
use std::time::Duration;
use tokio::sync::broadcast;

/// How a job's shown parameters are stored: sealed, so the webhook
/// request they hold (its body and headers) is not plaintext in the
/// database. Rows written before sealing hold plain JSON.
const SEALED_PARAMS: &str = "sealed:";

impl AutomationService {
    /// The job's shown parameters (secure values and credential headers
    /// already masked) sealed for the `parameters` column.
    pub(super) fn seal_shown(&self, id: &JobId, shown: &Value) -> Result<String> {
        let plain = serde_json::to_vec(shown).map_err(internal)?;
        let sealed = self.inner.master.seal_direct(&plain, &params_aad(id));
        Ok(format!(
            "{SEALED_PARAMS}{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        ))
    }

    /// The parameters the jobs API shows for `job`.
    pub fn shown_parameters(&self, job: &JobRecord) -> Value {
        let Some(b64) = job.parameters.strip_prefix(SEALED_PARAMS) else {
            return serde_json::from_str(&job.parameters).unwrap_or(Value::Null);
        };
        let opened = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|s| self.inner.master.open_direct(&s, &params_aad(&job.id)).ok());
        match opened {
            Some(plain) => serde_json::from_slice(&plain).unwrap_or(Value::Null),
            None => {
                tracing::error!(job = %job.id, "a job's sealed parameters do not open under this master key");
                Value::Null
            }
        }
    }

    /// One job by id.
    pub async fn job(&self, id: &str) -> Result<JobRecord> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found("job", id));
        }
        self.store()
            .job(id)
            .await?
            .ok_or_else(|| not_found("job", id))
    }

    /// Jobs matching `filter` (status, runbook, how many).
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        Ok(self.store().list_jobs(filter).await?)
    }

    /// The id of the runbook named `name`.
    pub async fn runbook_id(&self, name: &str) -> Result<RunbookId> {
        Ok(self.runbook(name).await?.id)
    }

    /// A job's status history, oldest first.
    pub async fn transitions(&self, id: &str) -> Result<Vec<JobTransition>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found("job", id));
        }
        Ok(self.store().job_transitions(id).await?)
    }

    /// How many jobs there are in each status.
    pub async fn count_jobs_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(self.store().count_jobs_by_status().await?)
    }

    /// A page of a job's stream records after the sequence number `after`,
    /// optionally of one stream only.
    pub async fn records(
        &self,
        id: &str,
        after: i64,
        stream: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StreamRecord>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found("job", id));
        }
        Ok(self.store().read_records(id, after, stream, limit).await?)
    }

    /// The concatenated Output stream (Azure's GetOutput).
    pub async fn output(&self, id: &str) -> Result<String> {
        let mut out = String::new();
        let mut after = 0;
        loop {
            let page = self.records(id, after, Some("Output"), 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                out.push_str(&r.text);
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Asks a job to stop: a queued job stops at once, a running one is ended by its worker.
    pub async fn stop_job(&self, id: &str) -> Result<JobRecord> {
        let job = self
            .store()
            .request_stop(id, now_ms(), crate::transitions::stop_rule())
            .await?
            .ok_or_else(|| not_found("job", id))?;
        if let Some(stop) = self
            .inner
            .local_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            stop.cancel();
        }
        tracing::info!(job = %id, status = %job.status, "job stop requested");
        self.changed(id);
        Ok(job)
    }

    /// Queues a Suspended job again.
    pub async fn resume_job(&self, id: &str) -> Result<JobRecord> {
        let job = self.job(id).await?;
        if !self
            .store()
            .resume_job(id, now_ms(), crate::transitions::resume_rule())
            .await?
        {
            return Err(AutomationError::Conflict(format!(
                "job {id} is {}; only Suspended jobs can be resumed",
                job.status
            )));
        }
        self.wake(&job.run_on);
        self.changed(id);
        self.job(id).await
    }

    /// Waits until the job reaches a final status or `deadline` passes.
    pub async fn wait_final(&self, id: &str, limit: Duration) -> Result<JobRecord> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut rx = self.subscribe();
        loop {
            let job = self.job(id).await?;
            if job.status.is_final() {
                return Ok(job);
            }
            // The broadcast is a hint; another node's progress is polled.
            let wake = async {
                loop {
                    match rx.recv().await {
                        Ok(JobChanged(j)) if &*j == id => return,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline) => return self.job(id).await,
            }
        }
    }
}

/// Binds sealed parameters to their job (and apart from its sealed input).
fn params_aad(id: &JobId) -> Vec<u8> {
    let mut aad = b"job-parameters:".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}
