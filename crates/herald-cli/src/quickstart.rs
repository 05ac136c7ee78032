//! `herald quickstart`: the flagship flow of seed 000, end to end, on the
//! embedded default. A secret nears expiry → Key Vault event → a validated
//! webhook subscription → an Automation runbook job that rotates the secret.
//! Then it prints the trail a user would check in the portal.

use crate::output::Columns;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub(crate) struct QuickstartArgs {
    /// Data directory [default: a fresh one under the system temp dir]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Leave the server running afterwards and print how to reach it
    #[arg(long)]
    keep: bool,
}

const VAULT: &str = "payments";
const SECRET: &str = "db-password";
const RUNBOOK: &str = "Rotate-Secret";
const WEBHOOK: &str = "rotate-on-expiry";
const SUBSCRIPTION: &str = "expiry-to-automation";
const KV_TYPES: [&str; 2] = [
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.SecretNearExpiry",
];

/// The runbook users would write: read the event from WebhookData and, when
/// the secret nears expiry, set a new version with the job's scoped token.
pub(crate) const ROTATE_RUNBOOK: &str = r#"#!/usr/bin/env bash
# Rotate-Secret: rotates a Key Vault secret when Herald reports it nears expiry.
# `herald job input` reads $HERALD_JOB_INPUT and parses WebhookData.RequestBody.
set -euo pipefail
event_type=$(herald job input WebhookData.RequestBody.0.eventType)
secret=$(herald job input WebhookData.RequestBody.0.data.ObjectName)
vault=$(herald job input WebhookData.RequestBody.0.data.VaultName)
echo "Received $event_type for secret $secret in vault $vault:"
herald job input WebhookData.RequestBody
if [ "$event_type" = "Microsoft.KeyVault.SecretNearExpiry" ]; then
  new_value="rotated-$(date +%s)-$RANDOM$RANDOM$RANDOM"
  herald secret set "$secret" "$new_value" --vault "$vault" --expires +90d --json > /dev/null
  echo "Rotated $secret: a new version now expires in 90 days"
fi
"#;

struct Api {
    http: reqwest::Client,
    vault_http: reqwest::Client,
    origin: String,
    vault_origin: String,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.origin);
        self.send(&self.http, method, &url, body).await
    }

    async fn kv(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}?api-version=7.6", self.vault_origin);
        self.send(&self.vault_http, method, &url, body).await
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = http.request(method.clone(), url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {url} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

struct Steps {
    started: Instant,
}

impl Steps {
    fn spinner(&self, msg: &str) -> ProgressBar {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("  {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(80));
        pb.set_message(msg.to_owned());
        pb
    }

    fn done(&self, pb: ProgressBar, msg: &str) {
        pb.finish_and_clear();
        println!("  ✔ {msg}  [{:.1}s]", self.started.elapsed().as_secs_f64());
    }
}

async fn step<T>(
    steps: &Steps,
    doing: &str,
    done: impl FnOnce(&T) -> String,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let pb = steps.spinner(doing);
    match fut.await {
        Ok(v) => {
            let msg = done(&v);
            steps.done(pb, &msg);
            Ok(v)
        }
        Err(e) => {
            pb.finish_and_clear();
            println!("  ✘ {doing}");
            Err(e.context(format!("quickstart step failed: {doing}")))
        }
    }
}

/// Polls `check` until it yields a value or `limit` passes.
async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        crate::serve::init_logging_with("warn");
    } else {
        crate::serve::init_logging("text");
    }
    let steps = Steps {
        started: Instant::now(),
    };
    println!(
        "Herald quickstart: a secret nears expiry → Key Vault event → webhook → runbook job that rotates it\n"
    );

    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("herald-quickstart-")
                .tempdir()
                .context("cannot create a temp data dir")?,
        ),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .ok_or_else(|| anyhow!("no data dir"))?;
    let token = herald_core::new_token("hrd");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = herald_server::Config {
        data_dir: data_dir.clone(),
        listen: listener.local_addr()?,
        admin_token: Some(token.clone()),
        lifecycle_interval_ms: 250,
        herald_bin: std::env::current_exe().ok(),
        // A throwaway server needs no AMQP port (and must not take 5671).
        amqp_listen: "off".into(),
        ..Default::default()
    };
    let server = step(
        &steps,
        "starting Herald in-process",
        |s: &herald_node::Node| {
            format!(
                "Herald running at {} (storage {}, data dir {})",
                s.info.url,
                s.info.storage,
                s.info.data_dir.display()
            )
        },
        async { herald_node::Node::build(config, listener).await },
    )
    .await?;
    let info = server.info.clone();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));

    let ca_path = info.ca_path.clone().context("the generated CA")?;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path)?)?;
    let base = || {
        reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
    };
    let vault_host = format!("{VAULT}.vault.localhost");
    let api = Api {
        http: base().build()?,
        vault_http: base().resolve(&vault_host, info.addr).build()?,
        origin: format!("https://localhost:{}", info.addr.port()),
        vault_origin: format!("https://{vault_host}:{}", info.addr.port()),
        token: token.clone(),
    };
    // Ctrl-C or SIGTERM at any point stops the server and removes the temp
    // data dir (dropping `temp`) instead of leaving it behind.
    let result = tokio::select! {
        r = play(&api, &steps) => r,
        _ = crate::serve::signal_received() => Err(anyhow!("interrupted")),
    };
    match (&result, args.keep) {
        (Ok(()), true) => {
            println!("\nHerald keeps running (Ctrl-C stops it). Explore with the CLI:");
            println!("  export HERALD_ADDR={}", api.origin);
            println!("  export HERALD_CACERT={}", ca_path.display());
            println!("  export HERALD_TOKEN={token}");
            println!("  herald status");
            println!("  herald job list");
            println!("  herald secret versions {SECRET} --vault {VAULT}");
            println!("  vault URI: {}/", api.vault_origin);
            if let Some(t) = &temp {
                println!(
                    "  data dir {} is removed when Herald stops",
                    t.path().display()
                );
            }
            crate::serve::signal_received().await;
        }
        (Ok(()), false) => {
            println!(
                "\nDone in {:.1}s. Run `herald quickstart --keep` to keep exploring, or `herald serve` for real use.",
                steps.started.elapsed().as_secs_f64()
            );
        }
        (Err(_), _) => {}
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    // The server has let go of its files: now the temp dir can go.
    drop(temp);
    result
}

async fn play(api: &Api, steps: &Steps) -> anyhow::Result<()> {
    step(
        steps,
        "creating vault",
        |_| format!("vault '{VAULT}' created (near-expiry window 2 days)"),
        api.call(
            Method::POST,
            "/api/v1/vaults",
            Some(json!({"name": VAULT, "nearExpiryWindowInSeconds": 2 * 86_400})),
        ),
    )
    .await?;
    step(
        steps,
        "creating the rotation runbook",
        |_| format!("bash runbook '{RUNBOOK}' created and published (may get and set secrets in '{VAULT}')"),
        api.call(
            Method::PUT,
            &format!("/api/v1/automation/runbooks/{RUNBOOK}"),
            Some(json!({
                "runbookType": "bash",
                "description": "Rotates a secret when it nears expiry",
                "content": ROTATE_RUNBOOK,
                "permissions": [{"vault": VAULT, "actions": ["get", "set"]}],
                "timeoutSeconds": 120,
                "publish": true,
            })),
        ),
    )
    .await?;
    let hook = step(
        steps,
        "creating the webhook",
        |_| format!("webhook '{WEBHOOK}' created (its URL is shown once, kept only as a hash)"),
        api.call(
            Method::PUT,
            &format!("/api/v1/automation/webhooks/{WEBHOOK}"),
            Some(json!({"name": WEBHOOK, "properties": {"runbook": {"name": RUNBOOK}}})),
        ),
    )
    .await?;
    let uri = hook["properties"]["uri"]
        .as_str()
        .context("the webhook URL")?
        .to_owned();
    step(
        steps,
        "subscribing the webhook to the vault's events",
        |_| {
            format!("event subscription '{SUBSCRIPTION}' on vault '{VAULT}' validated (SubscriptionValidation handshake answered)")
        },
        async {
            api.call(
                Method::PUT,
                &format!("/api/v1/topics/{VAULT}/eventSubscriptions/{SUBSCRIPTION}"),
                Some(json!({
                    "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": uri}},
                    "filter": {"includedEventTypes": KV_TYPES},
                    "eventDeliverySchema": "EventGridSchema",
                })),
            )
            .await?;
            until(Duration::from_secs(10), "the subscription to be validated", || async {
                let s = api
                    .call(
                        Method::GET,
                        &format!("/api/v1/topics/{VAULT}/eventSubscriptions/{SUBSCRIPTION}"),
                        None,
                    )
                    .await?;
                Ok((s["provisioningState"] == "Succeeded").then_some(()))
            })
            .await
        },
    )
    .await?;
    let exp = chrono::Utc::now().timestamp() + 86_400;
    let first = step(
        steps,
        "setting a secret that expires tomorrow",
        |_| format!("secret '{SECRET}' set, expiring in 24 h (inside the 2-day window, so SecretNearExpiry fires now)"),
        api.kv(
            Method::PUT,
            &format!("/secrets/{SECRET}"),
            Some(json!({"value": "initial-password", "attributes": {"exp": exp}})),
        ),
    )
    .await?;
    let first_id = first["id"].as_str().unwrap_or_default().to_owned();
    let rotated = step(
        steps,
        "waiting for the runbook to rotate the secret",
        |v: &Value| {
            format!(
                "runbook job rotated the secret: new version {}",
                short_version(v["id"].as_str().unwrap_or(""))
            )
        },
        until(
            Duration::from_secs(30),
            "the rotated secret version",
            || async {
                failed_job(api).await?;
                let latest = api
                    .kv(Method::GET, &format!("/secrets/{SECRET}"), None)
                    .await?;
                Ok((latest["id"].as_str().is_some_and(|id| id != first_id)).then_some(latest))
            },
        ),
    )
    .await?;
    // The rotation's own NewVersionCreated event runs one more job; let all settle.
    step(
        steps,
        "waiting for every job to finish",
        |_| "all jobs finished".to_owned(),
        until(Duration::from_secs(30), "jobs to finish", || async {
            let jobs = api
                .call(Method::GET, "/api/v1/automation/jobs?top=100", None)
                .await?;
            let list = jobs["value"].as_array().cloned().unwrap_or_default();
            let open = list.iter().any(|j| {
                !matches!(
                    j["properties"]["status"].as_str(),
                    Some("Completed" | "Failed" | "Stopped" | "Suspended")
                )
            });
            Ok((list.len() >= 3 && !open).then_some(()))
        }),
    )
    .await?;
    trail(api, &first_id, &rotated).await
}

/// Stops at the first failed job, with what it printed to its Error stream.
async fn failed_job(api: &Api) -> anyhow::Result<()> {
    let jobs = api
        .call(
            Method::GET,
            "/api/v1/automation/jobs?status=Failed&top=1",
            None,
        )
        .await?;
    let Some(job) = jobs["value"].as_array().and_then(|a| a.first()) else {
        return Ok(());
    };
    let id = crate::output::s(&job["name"]);
    let errors = api
        .call(
            Method::GET,
            &format!("/api/v1/automation/jobs/{id}/streams?streamType=Error"),
            None,
        )
        .await?;
    let lines: Vec<String> = errors["value"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| crate::output::s(&r["streamText"]))
        .collect();
    bail!(
        "runbook job {id} failed ({}):\n    {}",
        crate::output::s(&job["properties"]["statusDetails"]),
        lines.join("\n    ")
    )
}

fn short_version(id: &str) -> String {
    id.rsplit('/')
        .next()
        .unwrap_or(id)
        .chars()
        .take(12)
        .collect()
}

fn event_types_of(job: &Value) -> Vec<String> {
    let body = job["properties"]["parameters"]["WebhookData"]["RequestBody"]
        .as_str()
        .unwrap_or("");
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["eventType"].as_str().map(str::to_owned))
        .collect()
}

fn time_of(v: &Value) -> String {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

/// What a user would check in the portal, in the order the flow ran.
async fn trail(api: &Api, first_id: &str, rotated: &Value) -> anyhow::Result<()> {
    let jobs = api
        .call(Method::GET, "/api/v1/automation/jobs?top=100", None)
        .await?;
    let mut jobs = jobs["value"].as_array().cloned().unwrap_or_default();
    jobs.reverse();

    println!("\nThe trail");
    println!("\n  Events delivered per type (subscription '{SUBSCRIPTION}'):");
    for t in KV_TYPES {
        let n = jobs
            .iter()
            .filter(|j| event_types_of(j).iter().any(|e| e == t))
            .count();
        println!("    {t:<45} {n}");
    }

    let attempts = api
        .call(
            Method::GET,
            &format!("/api/v1/topics/{VAULT}/eventSubscriptions/{SUBSCRIPTION}/attempts"),
            None,
        )
        .await?;
    println!("\n  Delivery attempts:");
    let rows = attempts["value"].as_array().cloned().unwrap_or_default();
    crate::output::print_table(
        &rows,
        Columns::new()
            .col("TIME", |a: &Value| time_of(&a["time"]))
            .col("EVENT", |a| crate::output::s(&a["eventId"]))
            .col("ATTEMPT", |a| crate::output::s(&a["attempt"]))
            .col("STATUS", |a| crate::output::s(&a["status"]))
            .col("LATENCY", |a| {
                format!("{} ms", crate::output::s(&a["latencyMs"]))
            }),
    );

    let hook = api
        .call(
            Method::GET,
            &format!("/api/v1/automation/webhooks/{WEBHOOK}"),
            None,
        )
        .await?;
    println!(
        "\n  Webhook '{WEBHOOK}' last triggered: {}",
        crate::output::s(&hook["properties"]["lastInvokedTime"])
    );

    println!("\n  Jobs:");
    crate::output::print_table(
        &jobs,
        Columns::new()
            .col("JOB", |j: &Value| crate::output::s(&j["name"]))
            .col("EVENT", |j| {
                event_types_of(j)
                    .first()
                    .map(|t| t.trim_start_matches("Microsoft.KeyVault.").to_owned())
                    .unwrap_or_default()
            })
            .col("STATUS", |j| crate::output::s(&j["properties"]["status"]))
            .col("SANDBOX", |j| crate::output::s(&j["properties"]["sandbox"]))
            .col("ENDED", |j| time_of(&j["properties"]["endTime"])),
    );

    let near = jobs
        .iter()
        .find(|j| event_types_of(j).iter().any(|e| e == KV_TYPES[1]))
        .context("no job ran for SecretNearExpiry")?;
    let id = crate::output::s(&near["name"]);
    println!("\n  Input of job {id} (the webhook POST body, as WebhookData.RequestBody):");
    let body = near["properties"]["parameters"]["WebhookData"]["RequestBody"]
        .as_str()
        .unwrap_or("");
    let pretty = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned());
    for line in pretty.lines() {
        println!("    {line}");
    }
    let output = api
        .http
        .get(format!("{}/api/v1/automation/jobs/{id}/output", api.origin))
        .bearer_auth(&api.token)
        .send()
        .await?
        .text()
        .await?;
    println!("\n  Output of job {id}:");
    for line in output.lines() {
        println!("    {line}");
    }
    anyhow::ensure!(
        near["properties"]["status"] == "Completed",
        "the SecretNearExpiry job ended {}",
        near["properties"]["status"]
    );
    anyhow::ensure!(
        output.contains(KV_TYPES[1]),
        "the job output does not show the SecretNearExpiry event"
    );

    let versions = api
        .kv(Method::GET, &format!("/secrets/{SECRET}/versions"), None)
        .await?;
    let n = versions["value"].as_array().map_or(0, Vec::len);
    println!("\n  Secret '{SECRET}' in vault '{VAULT}': {n} versions");
    println!("    first   {}", short_version(first_id));
    println!(
        "    rotated {}  (created by the runbook, expires {})",
        short_version(rotated["id"].as_str().unwrap_or("")),
        rotated["attributes"]["exp"]
            .as_i64()
            .and_then(|e| chrono::DateTime::from_timestamp(e, 0))
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "-".into())
    );
    anyhow::ensure!(n >= 2, "the secret has no new version");
    Ok(())
}
