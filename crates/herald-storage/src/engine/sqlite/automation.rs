//! The automation store on SQLite: shared (automation/store.rs) but for the
//! claim. Every write goes through the group committer, so a claim is one
//! serialised transaction and needs no row locks.

use super::SqliteStorage;
use crate::Result;
use crate::automation::store::{ACTIVE, AutomationEngine};
use crate::automation::{CapRule, JobRecord};
use crate::engine::{BoxFuture, Engine};
use automation_store::lease_job;
use std::collections::HashMap;

crate::automation::store::automation_store!(SqliteStorage);

impl AutomationEngine for SqliteStorage {
    async fn claim_queued(
        &self,
        group: String,
        worker: String,
        n: i64,
        lease_until: i64,
        now: i64,
        cap: CapRule,
    ) -> Result<Vec<JobRecord>> {
        self.write(move |tx| -> BoxFuture<'_, Result<_>> {
            Box::pin(async move {
                // Candidates beyond `n` cover runbooks skipped for their cap.
                let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                    "SELECT j.id, j.runbook_id, r.settings FROM jobs j \
                     LEFT JOIN runbooks r ON r.id = j.runbook_id \
                     WHERE j.status = 'New' AND j.run_on = $1 \
                     ORDER BY j.created, j.id LIMIT $2",
                )
                .bind(&group)
                .bind(n.saturating_mul(4))
                .fetch_all(&mut *tx)
                .await?;
                let mut claimed = Vec::new();
                let mut active: HashMap<String, i64> = HashMap::new();
                for (id, runbook_id, settings) in rows {
                    if claimed.len() as i64 >= n {
                        break;
                    }
                    if let Some(cap) = settings.as_deref().and_then(|s| cap(s)) {
                        let running = match active.get(&runbook_id) {
                            Some(n) => *n,
                            None => {
                                sqlx::query_scalar::<_, i64>(&format!(
                                    "SELECT COUNT(*) FROM jobs \
                                     WHERE runbook_id = $1 AND status IN {ACTIVE}"
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
                    claimed.push(lease_job(tx, &id, &worker, lease_until, now).await?);
                }
                Ok(claimed)
            })
        })
        .await
    }
}
