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
    /// Gives up `worker`'s lease of a job whose attempt was interrupted by a
    /// crash of this runner (its leftovers are already killed), so its token
    /// dies and the job is re-queued at once rather than when the lease
    /// lapses. Hosts that cannot do it leave the lease to lapse.
    async fn abandon(&self, _job_id: &str, _worker_id: &str) -> anyhow::Result<()> {
        Ok(())
    }
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
    /// Paths jobs must not see (the data dir, key files); see
    /// [`JobSpec::hidden`].
    pub hidden: Vec<PathBuf>,
    /// Where notes of running attempts are kept, so a restart after a crash
    /// kills their leftovers; see [`exec::reap_interrupted`]. Jobs must not
    /// reach it (put it in the data dir).
    pub attempts_dir: Option<PathBuf>,
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
    // Before leasing anything: what a crash of the previous run left running
    // dies now, so no two attempts of a job are ever alive together.
    if let Some(dir) = &cfg.attempts_dir {
        for note in exec::reap_interrupted(dir) {
            if let Err(e) = host.abandon(&note.job_id, &note.worker_id).await {
                tracing::warn!(job = %note.job_id, error = %e, "giving up an interrupted attempt's lease failed; it will lapse");
            }
        }
    }
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
    let leased_at = tokio::time::Instant::now();
    let lease = match job.lease_ms {
        0 => Duration::from_secs(30),
        ms => Duration::from_millis(ms),
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
        // Short enough that a job stopped for a lost renewal (at half the
        // lease) is dead by three quarters of it.
        grace: Duration::from_secs(5).min(lease / 4),
        masks: job.masks,
        allow_network: job.allow_network,
        memory_limit_mb: job.memory_limit_mb,
        stream_limit: STREAM_LIMIT,
        work_root: cfg.work_root.clone(),
        hidden: cfg.hidden.clone(),
        attempts_dir: cfg.attempts_dir.clone(),
        worker_id: cfg.worker_id.clone(),
    };

    let (tx, rx) = mpsc::channel::<Record>(1024);
    let (started_tx, started_rx) = oneshot::channel::<u32>();
    let lost = CancellationToken::new();
    let collector = collect(host, &id, rx);
    let heartbeats = async {
        // Renewals are timed from before they are sent: the server's lease
        // runs from when it handled the request, which is later.
        let mut renewed = leased_at;
        let mut tick = tokio::time::interval(cfg.heartbeat.min(lease / 4));
        tick.tick().await;
        loop {
            tick.tick().await;
            let sent = tokio::time::Instant::now();
            let beat = tokio::time::timeout(lease / 4, host.heartbeat(&id)).await;
            match beat {
                Ok(Ok(Some(s))) => {
                    renewed = sent;
                    if s == "Stopping" {
                        stop.cancel();
                    }
                }
                Ok(Ok(None)) => {
                    tracing::warn!(job = %id, "lease lost; stopping the job");
                    lost.cancel();
                    stop.cancel();
                }
                Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "heartbeat failed"),
                Err(_) => tracing::warn!(job = %id, "heartbeat timed out"),
            }
            // A server blip is ridden out, but only for half the lease: the
            // job must be dead before its lease can lapse and be given to
            // another worker, or two attempts would run at once.
            if renewed.elapsed() >= lease / 2 && !lost.is_cancelled() {
                tracing::warn!(job = %id, "the lease could not be renewed for half its length; killing the job before it lapses");
                lost.cancel();
                stop.cancel();
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

    async fn abandon(&self, job_id: &str, worker_id: &str) -> anyhow::Result<()> {
        self.service.abandon_lease(job_id, worker_id).await?;
        Ok(())
    }

    fn watch_stop(&self, job_id: &str, stop: &CancellationToken) {
        self.service.register_local_stop(job_id, stop.clone());
    }

    fn forget_stop(&self, job_id: &str) {
        self.service.forget_local_stop(job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::RunbookKind;
    use std::sync::Mutex;
    use std::time::Instant;

    /// A server that leased one job and then became unreachable: every
    /// heartbeat fails.
    #[derive(Default)]
    struct Unreachable {
        leased: Mutex<bool>,
        finished: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl JobHost for Unreachable {
        async fn lease(
            &self,
            _n: i64,
            shutdown: &CancellationToken,
        ) -> anyhow::Result<Vec<LeasedJob>> {
            let first = !std::mem::replace(
                &mut *self.leased.lock().unwrap_or_else(|p| p.into_inner()),
                true,
            );
            if !first {
                shutdown.cancelled().await;
                return Ok(Vec::new());
            }
            Ok(vec![LeasedJob {
                job_id: "j1".into(),
                runbook: "rb".into(),
                kind: RunbookKind::Bash,
                script: "echo started; sleep 60".into(),
                input: "{}".into(),
                token: "hjt_x".into(),
                timeout_seconds: 120,
                allow_network: false,
                memory_limit_mb: 0,
                masks: Vec::new(),
                lease_ms: 2000,
            }])
        }
        async fn started(&self, _job_id: &str, _sandbox: &str) -> anyhow::Result<()> {
            Ok(())
        }
        async fn heartbeat(&self, _job_id: &str) -> anyhow::Result<Option<String>> {
            Err(anyhow::anyhow!("connection refused"))
        }
        async fn append(&self, _job_id: &str, _records: Vec<ReportedRecord>) -> anyhow::Result<()> {
            Ok(())
        }
        async fn finish(&self, job_id: &str, _report: JobReport) -> anyhow::Result<()> {
            self.finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(job_id.to_owned());
            Ok(())
        }
    }

    /// Issue 23.3: a worker that cannot renew its lease kills its job before
    /// the lease (2 s here) could lapse and the job be given to another.
    #[tokio::test]
    async fn unrenewable_lease_kills_the_job_before_it_lapses() {
        let attempts = tempfile::tempdir().expect("tempdir");
        let host = Arc::new(Unreachable::default());
        let cfg = RunnerConfig {
            worker_id: "w".into(),
            slots: 1,
            level: SandboxLevel::None,
            env: Vec::new(),
            path_dirs: Vec::new(),
            work_root: None,
            heartbeat: Duration::from_millis(200),
            hidden: Vec::new(),
            attempts_dir: Some(attempts.path().to_path_buf()),
        };
        let shutdown = CancellationToken::new();
        let t = Instant::now();
        let worker = tokio::spawn(run(host.clone(), cfg, shutdown.clone()));
        // The attempt's note exists while the job runs and goes with it.
        let mut seen_note = false;
        let mut gone_at = None;
        while t.elapsed() < Duration::from_secs(5) {
            let n = std::fs::read_dir(attempts.path())
                .map(|d| d.count())
                .unwrap_or(0);
            if n > 0 {
                seen_note = true;
            } else if seen_note {
                gone_at = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = worker.await;
        assert!(seen_note, "the running attempt was noted");
        let gone_at = gone_at.expect("the job was killed");
        // Half the lease to decide, at most a quarter to die: within 2 s.
        assert!(gone_at < Duration::from_millis(2000), "{gone_at:?}");
        assert!(gone_at >= Duration::from_millis(900), "{gone_at:?}");
        // The worker does not report it: the lease is left to lapse.
        assert!(
            host.finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        );
    }
}
