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
        let settings = match self.store().runbook_by_id(&job.runbook_id).await? {
            Some(rb) => serde_json::from_str::<RunbookSettings>(&rb.settings).unwrap_or_default(),
            // No runbook, no rights.
            None => RunbookSettings::default(),
        };
        Ok(Some(JobPrincipal {
            job_id,
            runbook: job.runbook_name,
            permissions: settings.permissions,
            assets: settings.assets,
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

    /// Hides `value` in the job's future stream records, on every node:
    /// the value is stored sealed with the job before this returns, so the
    /// node that records the job's output masks it even when another node
    /// served the secret (remote workers behind a load balancer).
    pub async fn register_mask(&self, job_id: &str, value: &str) {
        if value.len() < 3 {
            return;
        }
        {
            let mut map = self.inner.masks.lock().unwrap_or_else(|p| p.into_inner());
            let list = map.entry(job_id.to_owned()).or_default();
            if list.iter().any(|v| v == value) {
                return;
            }
            if list.len() < 1000 {
                list.push(value.to_owned());
            }
        }
        let digest = hex::encode(Sha256::digest(value.as_bytes()));
        let sealed = self
            .inner
            .master
            .seal_direct(value.as_bytes(), &mask_aad(job_id));
        if let Err(e) = self.store().add_job_mask(job_id, &digest, &sealed).await {
            tracing::error!(job = %job_id, error = %e, "recording a job's mask failed; only this node masks it");
        }
    }

    /// Every form of every value the job has read, longest first.
    pub(super) async fn masks_of(&self, job_id: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .inner
            .masks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
            .cloned()
            .unwrap_or_default();
        match self.store().job_masks(job_id).await {
            Ok(sealed) => {
                for s in sealed {
                    match self.inner.master.open_direct(&s, &mask_aad(job_id)) {
                        Ok(v) => values.push(String::from_utf8_lossy(&v).into_owned()),
                        Err(e) => {
                            tracing::error!(job = %job_id, error = %e, "a job's mask does not open")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(job = %job_id, error = %e, "reading a job's masks failed"),
        }
        let mut forms: Vec<String> = values.iter().flat_map(|v| mask_forms(v)).collect();
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        forms
    }
}

/// Binds a sealed mask to its job.
fn mask_aad(job_id: &str) -> Vec<u8> {
    let mut aad = b"job-mask:".to_vec();
    aad.extend_from_slice(job_id.as_bytes());
    aad
}
