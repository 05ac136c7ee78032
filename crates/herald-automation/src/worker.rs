//! The worker loop, shared by the built-in pool and `herald worker`: lease
//! jobs, run each in the sandbox, stream its records back, heartbeat, and
//! report how it ended. Only the [`JobHost`] differs: in-process calls to the
//! service, or HTTPS to a server.

use crate::exec::{self, ExecResult, JobSpec, Outcome, Record};
use crate::sandbox::{SandboxLevel, find_interpreter};
use crate::service::{AutomationService, JobReport, LeasedJob, ReportedRecord};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Bytes kept per stream per job (Azure's limit).
pub const STREAM_LIMIT: usize = 1024 * 1024;

/// Where a worker gets jobs and reports to.
#[async_trait]
pub trait JobHost: Send + Sync + 'static {
    /// Leases up to `n` queued jobs of the worker's group, waiting a while for
    /// some to arrive; returns early (possibly empty) on `shutdown`.
    async fn lease(&self, n: i64, shutdown: &CancellationToken) -> anyhow::Result<Vec<LeasedJob>>;
    /// Reports that the job's process started, in the `sandbox` level named.
    async fn started(&self, job_id: &str, sandbox: &str) -> anyhow::Result<()>;
    /// `Ok(None)`: the lease is lost. `Some("Stopping")`: stop the job.
    async fn heartbeat(&self, job_id: &str) -> anyhow::Result<Option<String>>;
    /// Sends a batch of the job's stream records.
    async fn append(&self, job_id: &str, records: Vec<ReportedRecord>) -> anyhow::Result<()>;
    /// Reports how the job ended, with its last records.
    async fn finish(&self, job_id: &str, report: JobReport) -> anyhow::Result<()>;
    /// Lets the host stop a job at once (in-process hosts).
    fn watch_stop(&self, _job_id: &str, _stop: &CancellationToken) {}
    /// Drops what [`JobHost::watch_stop`] registered, once the job has ended.
    fn forget_stop(&self, _job_id: &str) {}
}

/// How a worker runs jobs: its id, slots, sandbox and job environment.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The worker's id, reported with leases and heartbeats.
    pub worker_id: String,
    /// Jobs run at once.
    pub slots: usize,
    /// The sandbox every job runs in.
    pub level: SandboxLevel,
    /// Environment every job gets (server address, CA file).
    pub env: Vec<(String, String)>,
    /// Put first on PATH (the directory of the `herald` binary).
    pub path_dirs: Vec<PathBuf>,
    /// Parent of each job's temp dir (`None`: the system temp dir).
    pub work_root: Option<PathBuf>,
    /// How often running jobs send heartbeats (and the pool duty's period).
    pub heartbeat: Duration,
}

/// A worker pool as a duty of the node that hosts it (the built-in pool
/// leases for this node's slots only).
pub fn pool_duty(host: Arc<dyn JobHost>, cfg: RunnerConfig) -> herald_core::duty::Duty {
    herald_core::duty::Duty::every_node("job-worker-pool", cfg.heartbeat, move |stop| {
        run(host, cfg, stop)
    })
}

/// Runs jobs until `shutdown`. Jobs still running then are left to their
/// leases: they lapse and the jobs are re-queued, as after a crash.
pub async fn run(host: Arc<dyn JobHost>, cfg: RunnerConfig, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(cfg.slots.max(1)));
    let cfg = Arc::new(cfg);
    tracing::info!(worker = %cfg.worker_id, slots = cfg.slots, sandbox = %cfg.level, "worker started");
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let jobs = match host.lease(permits.len() as i64, &shutdown).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "leasing jobs failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        for job in jobs {
            let Some(permit) = permits.pop() else { break };
            let host = host.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                run_one(&*host, &cfg, job).await;
                drop(permit);
            });
        }
    }
}

async fn run_one(host: &dyn JobHost, cfg: &RunnerConfig, job: LeasedJob) {
    let id = job.job_id.clone();
    let Some(interpreter) = find_interpreter(job.kind) else {
        let report = JobReport {
            outcome: "Failed".into(),
            details: format!(
                "the '{}' interpreter is not installed on worker {}",
                job.kind.as_str(),
                cfg.worker_id
            ),
            exit_code: None,
            records: Vec::new(),
        };
        if let Err(e) = host.finish(&id, report).await {
            tracing::warn!(job = %id, error = %e, "reporting a failed job failed");
        }
        return;
    };
    let stop = CancellationToken::new();
    host.watch_stop(&id, &stop);
    let mut env = cfg.env.clone();
    env.push(("HERALD_TOKEN".into(), job.token.clone()));
    env.push(("HERALD_RUNBOOK".into(), job.runbook.clone()));
    let spec = JobSpec {
        job_id: id.clone(),
        kind: job.kind,
        interpreter,
        script: job.script,
        input_json: job.input,
        env,
        path_dirs: cfg.path_dirs.clone(),
        timeout: Duration::from_secs(job.timeout_seconds),
        grace: Duration::from_secs(5),
        masks: job.masks,
        allow_network: job.allow_network,
        memory_limit_mb: job.memory_limit_mb,
        stream_limit: STREAM_LIMIT,
        work_root: cfg.work_root.clone(),
    };

    let (tx, rx) = mpsc::channel::<Record>(1024);
    let (started_tx, started_rx) = oneshot::channel::<u32>();
    let lost = CancellationToken::new();
    let collector = collect(host, &id, rx);
    let heartbeats = async {
        let mut tick = tokio::time::interval(cfg.heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            match host.heartbeat(&id).await {
                Ok(Some(s)) if s == "Stopping" => stop.cancel(),
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(job = %id, "lease lost; stopping the job");
                    lost.cancel();
                    stop.cancel();
                }
                // A server blip: keep running, the lease has slack.
                Err(e) => tracing::warn!(job = %id, error = %e, "heartbeat failed"),
            }
        }
    };
    let level = cfg.level;
    let mark_running = async {
        if started_rx.await.is_ok()
            && let Err(e) = host.started(&id, level.as_str()).await
        {
            tracing::warn!(job = %id, error = %e, "marking the job Running failed");
        }
    };
    let exec = exec::run(spec, level, tx, stop.clone(), move |pid| {
        let _ = started_tx.send(pid);
    });
    let exec_and_start = async { tokio::join!(exec, mark_running).0 };
    // Heartbeats run until the process and the record stream are done.
    let (result, rest): (ExecResult, Vec<ReportedRecord>) = tokio::select! {
        r = async { tokio::join!(exec_and_start, collector) } => r,
        _ = heartbeats => unreachable_pair(),
    };
    host.forget_stop(&id);
    if lost.is_cancelled() {
        return;
    }
    let (outcome, details) = match &result.outcome {
        Outcome::Completed => ("Completed", String::new()),
        Outcome::Failed { reason } => ("Failed", reason.clone()),
        Outcome::TimedOut => (
            "TimedOut",
            format!(
                "the job exceeded the runbook's timeout of {} s and was killed",
                job.timeout_seconds
            ),
        ),
        Outcome::Stopped => ("Stopped", String::new()),
    };
    let report = JobReport {
        outcome: outcome.into(),
        details,
        exit_code: result.exit_code.map(i64::from),
        records: rest,
    };
    if let Err(e) = host.finish(&id, report).await {
        tracing::warn!(job = %id, error = %e, "reporting the job's end failed; its lease will lapse");
    }
}

/// The heartbeat loop never ends on its own; this only keeps `select!` typed.
fn unreachable_pair() -> (ExecResult, Vec<ReportedRecord>) {
    (
        ExecResult {
            outcome: Outcome::Stopped,
            exit_code: None,
            level: SandboxLevel::None,
            pid: None,
        },
        Vec::new(),
    )
}

/// Batches records to the host while the job runs; what is left at the
/// end goes with the final report, so a short job costs one write.
async fn collect(
    host: &dyn JobHost,
    id: &str,
    mut rx: mpsc::Receiver<Record>,
) -> Vec<ReportedRecord> {
    let mut buf: Vec<ReportedRecord> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match flush_at {
            Some(at) => tokio::select! {
                r = rx.recv() => r.map(Some),
                _ = tokio::time::sleep_until(at) => Some(None),
            },
            None => rx.recv().await.map(Some),
        };
        match next {
            None => return buf,
            Some(Some(r)) => {
                buf.push(ReportedRecord {
                    stream: r.stream.as_str().to_owned(),
                    text: r.text,
                    value: r.value,
                    time: Some(r.time_ms),
                });
                if flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                }
                if buf.len() < 500 {
                    continue;
                }
            }
            Some(None) => {}
        }
        flush_at = None;
        let batch = std::mem::take(&mut buf);
        if let Err(e) = host.append(id, batch).await {
            tracing::warn!(job = %id, error = %e, "sending job records failed");
        }
    }
}

/// The built-in pool's host: the service itself.
pub struct LocalHost {
    /// The automation service jobs are leased from.
    pub service: AutomationService,
    /// The worker group this pool serves.
    pub group: String,
    /// This pool's worker id.
    pub worker_id: String,
}

#[async_trait]
impl JobHost for LocalHost {
    async fn lease(&self, n: i64, shutdown: &CancellationToken) -> anyhow::Result<Vec<LeasedJob>> {
        Ok(self
            .service
            .lease(
                &self.group,
                &self.worker_id,
                n,
                Duration::from_secs(25),
                shutdown,
            )
            .await?)
    }

    async fn started(&self, job_id: &str, sandbox: &str) -> anyhow::Result<()> {
        self.service
            .mark_running(job_id, &self.worker_id, sandbox)
            .await?;
        Ok(())
    }

    async fn heartbeat(&self, job_id: &str) -> anyhow::Result<Option<String>> {
        Ok(self.service.heartbeat(job_id, &self.worker_id).await?)
    }

    async fn append(&self, job_id: &str, records: Vec<ReportedRecord>) -> anyhow::Result<()> {
        self.service.append(job_id, &records).await?;
        Ok(())
    }

    async fn finish(&self, job_id: &str, report: JobReport) -> anyhow::Result<()> {
        self.service
            .finish(job_id, Some(&self.worker_id), &report)
            .await?;
        Ok(())
    }

    fn watch_stop(&self, job_id: &str, stop: &CancellationToken) {
        self.service.register_local_stop(job_id, stop.clone());
    }

    fn forget_stop(&self, job_id: &str) {
        self.service.forget_local_stop(job_id);
    }
}
