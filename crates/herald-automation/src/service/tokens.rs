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
