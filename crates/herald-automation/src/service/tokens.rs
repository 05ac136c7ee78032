//! Job tokens (what a running job may do) and the values masked in its streams.

use super::*;

impl AutomationService {
    /// The running job a job token belongs to, with its permissions.
    pub async fn principal(&self, token: &str) -> Result<Option<JobPrincipal>> {
        if !token.starts_with("hjt_") {
            return Ok(None);
        }
        let Some((job_id, expires)) = self.store().job_token(&hash_token(token)).await? else {
            return Ok(None);
        };
        if expires < now_ms() {
            return Ok(None);
        }
        let Some(job) = self.store().job(&job_id).await? else {
            return Ok(None);
        };
        if job.status.is_final() {
            return Ok(None);
        }
        // A token belongs to one attempt: once that attempt's lease has
        // lapsed (its worker or server died) the token is dead, even in the
        // moments before the sweep re-queues the job and deletes it.
        if job.lease_until.is_none_or(|l| l < now_ms()) {
            return Ok(None);
        }
        let permissions = match self.store().runbook_by_id(&job.runbook_id).await? {
            Some(rb) => {
                serde_json::from_str::<RunbookSettings>(&rb.settings)
                    .unwrap_or_default()
                    .permissions
            }
            None => Vec::new(),
        };
        Ok(Some(JobPrincipal {
            job_id,
            runbook: job.runbook_name,
            permissions,
        }))
    }

    /// Gives up `worker`'s lease of `job_id` at once because its process is
    /// known to be dead (found at start, killed): the attempt's tokens die
    /// now and the next sweep re-queues the job.
    pub async fn abandon_lease(&self, job_id: &str, worker: &str) -> Result<bool> {
        let done = self.store().abandon_lease(job_id, worker, now_ms()).await?;
        if done {
            tracing::warn!(job = %job_id, worker, "interrupted job attempt abandoned; the job is re-queued");
            self.changed(job_id);
        }
        Ok(done)
    }

    /// Hides `value` in the job's future stream records.
    pub fn register_mask(&self, job_id: &str, value: &str) {
        if value.len() < 3 {
            return;
        }
        let mut map = self.inner.masks.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(job_id.to_owned()).or_default();
        for form in mask_forms(value) {
            if !list.contains(&form) && list.len() < 1000 {
                list.push(form);
            }
        }
        list.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}
