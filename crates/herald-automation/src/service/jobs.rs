//! Jobs as users see them: status with history, streams, output, stop, resume and waiting for the end.

use super::*;
use herald_storage::{JobFilter, JobRecord, JobTransition, StreamRecord};
use std::time::Duration;
use tokio::sync::broadcast;

impl AutomationService {
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
