//! `herald worker`: a remote worker that pulls jobs of one worker group
//! over HTTPS (Azure's hybrid worker model): long-poll leases, heartbeats,
//! records streamed back, and the job's end reported. Only outbound
//! connections are needed.

use crate::client::Conn;
use anyhow::{Context, anyhow};
use async_trait::async_trait;
use clap::Args;
use herald_automation::service::{JobReport, LeasedJob, ReportedRecord};
use herald_automation::worker::{JobHost, RunnerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// Worker group whose jobs this worker runs (webhooks and jobs pick it with runOn)
    #[arg(long, env = "HERALD_WORKER_GROUP")]
    group: String,
    /// Jobs run at once
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Sandbox: auto, bwrap, unshare, rlimits or none
    #[arg(long, default_value = "auto")]
    sandbox: String,
    /// Worker id [default: hostname plus a random suffix]
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

struct RemoteHost {
    http: reqwest::Client,
    addr: String,
    token: String,
    group: String,
    worker_id: String,
    hostname: String,
    slots: usize,
}

impl RemoteHost {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.addr))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.addr))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() || status == StatusCode::CONFLICT {
            return Ok((status, v));
        }
        Err(anyhow!(
            "{status}: {}",
            v["error"]["message"].as_str().unwrap_or(text.as_str())
        ))
    }
}

#[async_trait]
impl JobHost for RemoteHost {
    async fn lease(&self, n: i64, shutdown: &CancellationToken) -> anyhow::Result<Vec<LeasedJob>> {
        let body = json!({
            "workerId": self.worker_id, "hostname": self.hostname,
            "maxJobs": n, "slots": self.slots, "waitSeconds": 25,
        });
        let path = format!("/api/v1/automation/workers/{}/lease", self.group);
        let (_, v) = tokio::select! {
            r = self.post(&path, &body) => r?,
            _ = shutdown.cancelled() => return Ok(Vec::new()),
        };
        Ok(
            serde_json::from_value(v["jobs"].clone())
                .context("the server sent an invalid lease")?,
        )
    }

    async fn started(&self, job_id: &str, sandbox: &str) -> anyhow::Result<()> {
        let body = json!({ "workerId": self.worker_id, "sandbox": sandbox });
        self.post(&format!("/api/v1/automation/jobs/{job_id}/started"), &body)
            .await?;
        Ok(())
    }

    async fn heartbeat(&self, job_id: &str) -> anyhow::Result<Option<String>> {
        let body = json!({ "workerId": self.worker_id });
        let (status, v) = self
            .post(
                &format!("/api/v1/automation/jobs/{job_id}/heartbeat"),
                &body,
            )
            .await?;
        if status == StatusCode::CONFLICT {
            return Ok(None);
        }
        Ok(v["status"].as_str().map(str::to_owned))
    }

    async fn append(&self, job_id: &str, records: Vec<ReportedRecord>) -> anyhow::Result<()> {
        let body = json!({ "workerId": self.worker_id, "records": records });
        self.post(&format!("/api/v1/automation/jobs/{job_id}/records"), &body)
            .await?;
        Ok(())
    }

    async fn finish(&self, job_id: &str, report: JobReport) -> anyhow::Result<()> {
        let body = json!({ "workerId": self.worker_id, "report": report });
        // The end of a job must not be lost to a blip: retry for a while.
        let mut delay = Duration::from_millis(200);
        for _ in 0..8 {
            match self
                .post(&format!("/api/v1/automation/jobs/{job_id}/finish"), &body)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(job = %job_id, error = %e, "reporting the job's end failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        Err(anyhow!("could not report the end of job {job_id}"))
    }
}

pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    herald_automation::model::parse_name("worker group", &args.group)
        .map_err(|e| anyhow!("{e}"))?;
    let client = crate::client::Client::new(&args.conn)?;
    let ca_path = args.conn.ca_cert.clone().or_else(|| {
        Some("herald-data/tls/ca.pem".into()).filter(|p: &std::path::PathBuf| p.exists())
    });
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Longer than the server's 25 s lease hold.
        .timeout(Duration::from_secs(40));
    if let Some(p) = &ca_path {
        let pem =
            std::fs::read(p).with_context(|| format!("cannot read CA file {}", p.display()))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    let worker_id = args.id.clone().unwrap_or_else(|| {
        format!(
            "{hostname}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    let token = std::env::var("HERALD_TOKEN")
        .or_else(|_| std::env::var("HERALD_ADMIN_TOKEN"))
        .map_err(|_| anyhow!("no token: export HERALD_TOKEN=<an admin token of the server>"))?;
    let level = herald_automation::sandbox::probe(&args.sandbox).await?;
    let mut env = vec![("HERALD_ADDR".to_owned(), client.addr().to_owned())];
    if let Some(p) = ca_path.and_then(|p| std::fs::canonicalize(p).ok()) {
        env.push(("HERALD_CACERT".to_owned(), p.display().to_string()));
    }
    if let Ok(base) = std::env::var("HERALD_VAULT_BASE") {
        env.push(("HERALD_VAULT_BASE".to_owned(), base));
    } else {
        env.push(("HERALD_VAULT_BASE".to_owned(), "vault.localhost".to_owned()));
    }
    let path_dirs = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .into_iter()
        .collect();
    let host = Arc::new(RemoteHost {
        http: b.build()?,
        addr: client.addr().to_owned(),
        token,
        group: args.group.clone(),
        worker_id: worker_id.clone(),
        hostname,
        slots: args.slots,
    });
    eprintln!(
        "herald worker {worker_id}: group {}, {} slots, sandbox {level}, server {}",
        args.group,
        args.slots,
        client.addr()
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    herald_automation::worker::run(
        host,
        RunnerConfig {
            worker_id,
            slots: args.slots,
            level,
            env,
            path_dirs,
            work_root: None,
            heartbeat: Duration::from_secs(2),
            hidden: Vec::new(),
            attempts_dir: None,
        },
        shutdown,
    )
    .await;
    Ok(())
}
