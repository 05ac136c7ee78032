//! The automation store on PostgreSQL: shared (automation/store.rs) but for
//! the claim. Several nodes (and their workers) share one database, so
//! claimers are kept apart by row locks:
//!
//! - queue claims take jobs `FOR UPDATE SKIP LOCKED`, so two nodes never
//!   lease the same job and never wait on each other;
//! - a runbook with a `maxConcurrentJobs` cap is locked while its active jobs
//!   are counted and new ones leased, so claimers on several nodes take turns.

use super::PgStorage;
use crate::Result;
use crate::automation::store::{ACTIVE, AutomationEngine};
use crate::automation::{CapRule, JobRecord};
use crate::engine::{BoxFuture, Engine};
use automation_store::lease_job;
use std::collections::{BTreeSet, HashMap};

crate::automation::store::automation_store!(PgStorage);

impl AutomationEngine for PgStorage {
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
                // SKIP LOCKED: jobs another claimer is taking are passed over,
                // never waited on and never leased twice; a job another
                // claimer leased and committed meanwhile is re-checked
                // (status = 'New') and dropped.
                let candidates: Vec<(String, String)> = sqlx::query_as(
                    "SELECT id, runbook_id FROM jobs WHERE status = 'New' AND run_on = $1 \
                     ORDER BY created, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind(&group)
                .bind(n.saturating_mul(4))
                .fetch_all(&mut *tx)
                .await?;
                if candidates.is_empty() {
                    return Ok(Vec::new());
                }

                // Runbooks with a cap are locked (in id order, so claimers
                // never deadlock on each other) before their active jobs are
                // counted: a claimer on another node waits here until our
                // leases commit, then counts them. FOR NO KEY UPDATE still
                // lets webhooks and versions be added meanwhile (their foreign
                // keys only need KEY SHARE).
                let runbook_ids: Vec<String> = candidates
                    .iter()
                    .map(|(_, r)| r.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let settings: Vec<(String, String)> =
                    sqlx::query_as("SELECT id, settings FROM runbooks WHERE id = ANY($1)")
                        .bind(&runbook_ids)
                        .fetch_all(&mut *tx)
                        .await?;
                let capped: Vec<String> = settings
                    .into_iter()
                    .filter(|(_, s)| cap(s).is_some())
                    .map(|(id, _)| id)
                    .collect();
                let mut caps: HashMap<String, i64> = HashMap::new();
                let mut active: HashMap<String, i64> = HashMap::new();
                if !capped.is_empty() {
                    let locked: Vec<(String, String)> = sqlx::query_as(
                        "SELECT id, settings FROM runbooks WHERE id = ANY($1) \
                         ORDER BY id FOR NO KEY UPDATE",
                    )
                    .bind(&capped)
                    .fetch_all(&mut *tx)
                    .await?;
                    for (id, s) in locked {
                        // Settings as of now (re-read under the lock).
                        if let Some(max) = cap(&s) {
                            caps.insert(id, max);
                        }
                    }
                    // A new statement, so (READ COMMITTED) it sees every
                    // lease that committed before we got the locks.
                    let counts: Vec<(String, i64)> = sqlx::query_as(&format!(
                        "SELECT runbook_id, COUNT(*) AS n FROM jobs \
                         WHERE runbook_id = ANY($1) AND status IN {ACTIVE} GROUP BY runbook_id"
                    ))
                    .bind(&capped)
                    .fetch_all(&mut *tx)
                    .await?;
                    active.extend(counts);
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
                    claimed.push(lease_job(tx, &id, &worker, lease_until, now).await?);
                }
                Ok(claimed)
            })
        })
        .await
    }
}
