//! Records and the store for Automation: runbooks, webhooks, jobs, streams
//! and assets. The rules (who may invoke, what a transition means) live in
//! `herald-automation`; this is only what must commit together.

use crate::Result;
use async_trait::async_trait;
pub use herald_core::id::{JobId, RunbookId, WebhookId};
pub use herald_core::job::JobStatus;
use std::sync::Arc;

pub(crate) mod store;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RunbookRecord {
    #[sqlx(try_from = "String")]
    pub id: RunbookId,
    pub key: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub draft: String,
    /// JSON array of parameter declarations.
    pub draft_params: String,
    /// JSON object of run settings.
    pub settings: String,
    pub published_version: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RunbookVersionRecord {
    #[sqlx(try_from = "String")]
    pub runbook_id: RunbookId,
    pub version: i64,
    pub content: String,
    pub params: String,
    pub published: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WebhookRecord {
    #[sqlx(try_from = "String")]
    pub id: WebhookId,
    pub key: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub runbook_id: RunbookId,
    pub token_hash: String,
    pub is_enabled: bool,
    pub expiry: i64,
    pub parameters: String,
    pub secure_parameters: Option<Vec<u8>>,
    pub run_on: String,
    pub description: String,
    pub last_invoked: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

/// Changes to a webhook; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub is_enabled: Option<bool>,
    pub expiry: Option<i64>,
    pub parameters: Option<String>,
    pub secure_parameters: Option<Option<Vec<u8>>>,
    pub run_on: Option<String>,
    pub description: Option<String>,
    pub updated: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobRecord {
    #[sqlx(try_from = "String")]
    pub id: JobId,
    #[sqlx(try_from = "String")]
    pub runbook_id: RunbookId,
    pub runbook_name: String,
    pub runbook_version: i64,
    pub started_by: String,
    pub run_on: String,
    #[sqlx(try_from = "String")]
    pub status: JobStatus,
    pub status_details: String,
    pub exception: Option<String>,
    pub parameters: String,
    pub input: Vec<u8>,
    pub created: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub last_modified: i64,
    pub last_status_modified: i64,
    pub worker: Option<String>,
    pub lease_until: Option<i64>,
    pub restarts: i64,
    pub sandbox: Option<String>,
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobTransition {
    pub seq: i64,
    #[sqlx(try_from = "String")]
    pub status: JobStatus,
    pub details: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StreamRecord {
    pub seq: i64,
    pub stream: String,
    pub time: i64,
    pub text: String,
    /// JSON value, if the record carried one.
    pub value: Option<String>,
}

/// How the job of a webhook call came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCreated {
    Created,
    /// The idempotency key was seen before: this is the original job.
    Existing(String),
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub runbook_id: Option<RunbookId>,
    pub created_after: Option<i64>,
    /// Jobs with ids below this (newest first paging).
    pub before_id: Option<String>,
    pub limit: i64,
}

/// What ending a job sets.
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub status: JobStatus,
    pub details: String,
    pub exception: Option<String>,
    pub exit_code: Option<i64>,
    pub at: i64,
}

/// One status change a domain rule decided; the store writes it with its
/// history row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub status: JobStatus,
    /// The status details users read (`statusDetails`, and the history).
    pub details: String,
}

/// What herald-automation's state machine decided for one job. The store
/// applies it in the transaction that read the job's status, under its
/// row lock, so the decision cannot race a worker or another node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobDecision {
    /// Status changes in order; empty leaves the job as it is.
    pub changes: Vec<StatusChange>,
    /// The job ends: its end time is set and its worker and lease released.
    pub ends: bool,
    /// The job is queued again: its group's workers are woken.
    pub requeue: bool,
}

/// A runbook's cap on its jobs running at once (`maxConcurrentJobs`), read
/// from its stored settings; `None` for no cap.
pub type CapRule = Arc<dyn Fn(&str) -> Option<i64> + Send + Sync>;

/// Decides what a request does to a job in the given status (stop, resume).
pub type StatusRule = Arc<dyn Fn(JobStatus) -> JobDecision + Send + Sync>;

/// A job whose lease lapsed, as the lapse rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct LapsedJob<'a> {
    pub status: JobStatus,
    /// Restarts so far, counting this one.
    pub restarts: i64,
    pub worker: Option<&'a str>,
}

/// Decides what becomes of a job whose worker stopped renewing its lease.
pub type LapseRule = Arc<dyn Fn(&LapsedJob<'_>) -> JobDecision + Send + Sync>;

/// A lease that lapsed: its job was re-queued or suspended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapsedLease {
    pub job_id: String,
    pub worker: Option<String>,
    /// `New` (re-queued), `Suspended` (too many restarts) or `Stopped`.
    pub status: JobStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AssetRecord {
    pub key: String,
    pub name: String,
    pub kind: String,
    pub encrypted: bool,
    pub username: Option<String>,
    pub value: Vec<u8>,
    pub description: String,
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkerRecord {
    pub id: String,
    #[sqlx(rename = "grp")]
    pub group: String,
    pub hostname: String,
    pub slots: i64,
    pub last_seen: i64,
}

#[async_trait]
pub trait AutomationStore: Send + Sync {
    // Runbooks
    /// `false` if the name is taken.
    async fn create_runbook(&self, rb: &RunbookRecord) -> Result<bool>;
    async fn runbook(&self, key: &str) -> Result<Option<RunbookRecord>>;
    async fn runbook_by_id(&self, id: &str) -> Result<Option<RunbookRecord>>;
    async fn list_runbooks(&self) -> Result<Vec<RunbookRecord>>;
    /// Replaces the draft and settings.
    async fn update_runbook(&self, rb: &RunbookRecord) -> Result<bool>;
    /// Freezes the draft as the next version; returns it.
    async fn publish_runbook(&self, key: &str, now: i64) -> Result<Option<i64>>;
    async fn runbook_version(
        &self,
        runbook_id: &str,
        version: i64,
    ) -> Result<Option<RunbookVersionRecord>>;
    /// Deletes the runbook and its webhooks; its jobs stay for the record.
    async fn delete_runbook(&self, key: &str) -> Result<bool>;

    // Webhooks
    async fn put_pending_webhook_token(&self, token_hash: &str, now: i64) -> Result<()>;
    /// Creates the webhook. With `pending`, the generateUri token must exist
    /// and is consumed in the same transaction. `false` if the name is taken
    /// or the pending token is unknown.
    async fn create_webhook(&self, wh: &WebhookRecord, pending: bool) -> Result<bool>;
    async fn webhook(&self, key: &str) -> Result<Option<WebhookRecord>>;
    async fn webhook_by_token(&self, token_hash: &str) -> Result<Option<WebhookRecord>>;
    async fn list_webhooks(&self, runbook_id: Option<&str>) -> Result<Vec<WebhookRecord>>;
    async fn update_webhook(
        &self,
        key: &str,
        patch: &WebhookPatch,
    ) -> Result<Option<WebhookRecord>>;
    async fn delete_webhook(&self, key: &str) -> Result<bool>;

    // Jobs
    /// Commits a `New` job. With an idempotency key already used for this
    /// webhook within `since`, nothing is written and the original job id is
    /// returned. `invoked` stamps the webhook's lastInvokedTime.
    async fn create_job(
        &self,
        job: &JobRecord,
        idempotency: Option<(&str, &str, i64)>,
        invoked: Option<(&str, i64)>,
    ) -> Result<JobCreated>;
    async fn job(&self, id: &str) -> Result<Option<JobRecord>>;
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>>;
    async fn job_transitions(&self, id: &str) -> Result<Vec<JobTransition>>;
    async fn count_jobs_by_status(&self) -> Result<Vec<(String, i64)>>;
    /// Leases up to `n` queued jobs of `group` to `worker` (→ `Activating`),
    /// oldest first, skipping runbooks at the concurrency cap `cap` reads
    /// from their settings.
    async fn claim_jobs(
        &self,
        group: &str,
        worker: &str,
        n: i64,
        lease_until: i64,
        now: i64,
        cap: CapRule,
    ) -> Result<Vec<JobRecord>>;
    /// `Activating` → `Running` for the leaseholder.
    async fn start_job(&self, id: &str, worker: &str, sandbox: &str, now: i64) -> Result<bool>;
    /// Extends the lease. `None` if `worker` no longer holds it; otherwise
    /// the job's status (`Stopping` tells the worker to stop).
    async fn heartbeat_job(
        &self,
        id: &str,
        worker: &str,
        lease_until: i64,
    ) -> Result<Option<String>>;
    /// Appends stream records (masked by the caller) and returns the last
    /// sequence number. Records past `max_bytes` per job are dropped.
    async fn append_records(
        &self,
        id: &str,
        records: &[StreamRecord],
        max_bytes: i64,
    ) -> Result<i64>;
    /// Ends the job for its leaseholder (or anyone, with `worker` None),
    /// revoking its tokens. `false` if it was already terminal or re-leased.
    async fn finish_job(&self, id: &str, worker: Option<&str>, end: &JobEnd) -> Result<bool>;
    /// A user stop: queued jobs stop at once, active ones go `Stopping`.
    async fn request_stop(&self, id: &str, now: i64, rule: StatusRule)
    -> Result<Option<JobRecord>>;
    /// Resumes a job as `rule` decides for its status, with its restarts
    /// reset; `false` if the rule changed nothing (or the job is unknown).
    async fn resume_job(&self, id: &str, now: i64, rule: StatusRule) -> Result<bool>;
    /// Releases lapsed leases (their job tokens die with them) and applies
    /// `rule` to each job, counting the restart.
    async fn expire_leases(&self, now: i64, rule: LapseRule) -> Result<Vec<LapsedLease>>;
    async fn read_records(
        &self,
        id: &str,
        after_seq: i64,
        stream: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StreamRecord>>;
    /// Deletes finished jobs older than `before` and idempotency keys older
    /// than `keys_before`.
    async fn prune_jobs(&self, before: i64, keys_before: i64) -> Result<u64>;

    // Job tokens
    async fn put_job_token(&self, token_hash: &str, job_id: &str, expires_at: i64) -> Result<()>;
    async fn job_token(&self, token_hash: &str) -> Result<Option<(String, i64)>>;
    /// Gives up `worker`'s lease of an active job at once (its process is
    /// known dead): the lease lapses at `now` so the next sweep re-queues the
    /// job, and the attempt's tokens are deleted now. `false` if `worker` did
    /// not hold the job.
    async fn abandon_lease(&self, job_id: &str, worker: &str, now: i64) -> Result<bool>;

    // Masks: sealed values a job has read, kept until the job ends
    /// Records one sealed mask value for a job; a repeat (same digest) is a no-op.
    async fn add_job_mask(&self, job_id: &str, digest: &str, sealed: &[u8]) -> Result<()>;
    /// The sealed mask values of a job.
    async fn job_masks(&self, job_id: &str) -> Result<Vec<Vec<u8>>>;

    // Assets
    async fn put_asset(&self, asset: &AssetRecord) -> Result<()>;
    async fn asset(&self, key: &str) -> Result<Option<AssetRecord>>;
    async fn list_assets(&self) -> Result<Vec<AssetRecord>>;
    async fn delete_asset(&self, key: &str) -> Result<bool>;

    // Workers
    async fn touch_worker(&self, w: &WorkerRecord) -> Result<()>;
    async fn list_workers(&self, seen_after: i64) -> Result<Vec<WorkerRecord>>;
}

/// Statuses a job never leaves.
pub const TERMINAL_JOB_STATUSES: [&str; 3] = ["Completed", "Failed", "Stopped"];
