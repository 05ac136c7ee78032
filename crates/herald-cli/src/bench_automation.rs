//! Automation figures: webhook POST → job Running, a trivial runbook end to
//! end through `?wait=`, and sustained jobs per second, all through the
//! built-in worker pool in the default sandbox.

use super::{BenchArgs, Scenario, Target, connect, report, request};
use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn call(t: &Target, method: Method, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let mut s = connect(t).await?;
    let resp = s
        .send_request(request(t, method, path, Bytes::from(body.to_string()))?)
        .await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// A published bash runbook and its webhook; returns the webhook's path.
async fn setup(t: &Target, name: &str, script: &str) -> anyhow::Result<String> {
    let (status, _) = call(
        t,
        Method::PUT,
        &format!("/api/v1/automation/runbooks/{name}"),
        json!({"runbookType": "bash", "content": script, "publish": true}),
    )
    .await?;
    anyhow::ensure!(status == 201, "creating runbook {name}: {status}");
    let (status, wh) = call(
        t,
        Method::PUT,
        &format!("/api/v1/automation/webhooks/{name}-hook"),
        json!({"properties": {"runbook": {"name": name}}}),
    )
    .await?;
    anyhow::ensure!(status == 201, "creating webhook: {status}");
    let uri = wh["properties"]["uri"]
        .as_str()
        .ok_or_else(|| anyhow!("no webhook uri"))?;
    let path = uri
        .find("/webhooks?")
        .map(|i| uri[i..].to_owned())
        .ok_or_else(|| anyhow!("odd webhook uri"))?;
    Ok(path)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn ms_of(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

async fn job(t: &Target, id: &str) -> anyhow::Result<Value> {
    Ok(call(
        t,
        Method::GET,
        &format!("/api/v1/automation/jobs/{id}"),
        Value::Null,
    )
    .await?
    .1)
}

async fn wait_final(t: &Target, id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(t, id).await?;
        let s = j["properties"]["status"].as_str().unwrap_or("");
        if matches!(s, "Completed" | "Failed" | "Stopped" | "Suspended") {
            return Ok(j);
        }
        anyhow::ensure!(Instant::now() < deadline, "job {id} did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn run(
    t: &Arc<Target>,
    args: &BenchArgs,
    scenario: Scenario,
) -> anyhow::Result<()> {
    let samples = 200;
    match scenario {
        Scenario::WebhookRunning => {
            let path = setup(t, "bench-running", "echo ok").await?;
            let mut s = connect(t).await?;
            let mut lat = Vec::with_capacity(samples);
            let mut accepted = Vec::with_capacity(samples);
            for _ in 0..samples {
                let sent = chrono::Utc::now().timestamp_micros();
                let start = Instant::now();
                let resp = s
                    .send_request(request(t, Method::POST, &path, Bytes::from_static(b"{}"))?)
                    .await?;
                anyhow::ensure!(resp.status().as_u16() == 202, "webhook: {}", resp.status());
                let body = resp.into_body().collect().await?.to_bytes();
                accepted.push(start.elapsed().as_secs_f64() * 1000.0);
                let v: Value = serde_json::from_slice(&body)?;
                let id = v["JobIds"][0].as_str().context("JobIds")?.to_owned();
                let j = wait_final(t, &id).await?;
                let running = j["properties"]["history"]
                    .as_array()
                    .and_then(|h| h.iter().find(|x| x["status"] == "Running"))
                    .and_then(|x| ms_of(&x["time"]))
                    .context("no Running transition")?;
                // Server stamps are in ms; the send time is in µs on the same clock.
                lat.push((running as f64) - sent as f64 / 1000.0);
            }
            lat.sort_by(f64::total_cmp);
            accepted.sort_by(f64::total_cmp);
            println!(
                "{:<20} POST→Running p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms   (POST→202 p50 {:.1} ms; {samples} sequential calls)",
                "WebhookRunning",
                percentile(&lat, 50),
                percentile(&lat, 90),
                percentile(&lat, 99),
                percentile(&accepted, 50),
            );
        }
        Scenario::WebhookWait => {
            let path = setup(t, "bench-wait", "echo ok").await?;
            let path = format!("{path}&wait=30");
            let mut s = connect(t).await?;
            let mut lat = Vec::with_capacity(samples);
            for _ in 0..samples {
                let start = Instant::now();
                let resp = s
                    .send_request(request(t, Method::POST, &path, Bytes::from_static(b"{}"))?)
                    .await?;
                anyhow::ensure!(
                    resp.status().as_u16() == 200,
                    "webhook wait: {}",
                    resp.status()
                );
                let _ = resp.into_body().collect().await?;
                lat.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "{:<20} POST ?wait → 200 Completed p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms   ({samples} sequential trivial bash jobs)",
                "WebhookWait",
                percentile(&lat, 50),
                percentile(&lat, 90),
                percentile(&lat, 99),
            );
        }
        Scenario::Jobs => {
            let path = setup(t, "bench-jobs", "echo ok").await?;
            let per_run = 1000u64;
            let mut rates = Vec::new();
            for run in 0..args.runs {
                let start = Instant::now();
                let mut tasks = Vec::new();
                let conns = args.connections.clamp(1, 64) as u64;
                let mut ids = Vec::new();
                for c in 0..conns {
                    let (t, path) = (t.clone(), path.clone());
                    let n = per_run / conns + u64::from(c < per_run % conns);
                    tasks.push(tokio::spawn(async move {
                        let mut s = connect(&t).await?;
                        let mut ids = Vec::new();
                        for _ in 0..n {
                            let resp = s
                                .send_request(request(
                                    &t,
                                    Method::POST,
                                    &path,
                                    Bytes::from_static(b"{}"),
                                )?)
                                .await?;
                            anyhow::ensure!(
                                resp.status().as_u16() == 202,
                                "webhook: {}",
                                resp.status()
                            );
                            let body = resp.into_body().collect().await?.to_bytes();
                            let v: Value = serde_json::from_slice(&body)?;
                            ids.push(v["JobIds"][0].as_str().unwrap_or_default().to_owned());
                        }
                        anyhow::Ok(ids)
                    }));
                }
                for task in tasks {
                    ids.extend(task.await??);
                }
                let submitted = start.elapsed().as_secs_f64();
                // Done when nothing is queued or running any more.
                let deadline = Instant::now() + Duration::from_secs(300);
                'poll: loop {
                    for status in ["New", "Activating", "Running"] {
                        let (_, v) = call(
                            t,
                            Method::GET,
                            &format!("/api/v1/automation/jobs?status={status}&top=1"),
                            Value::Null,
                        )
                        .await?;
                        if v["value"].as_array().is_some_and(|a| !a.is_empty()) {
                            anyhow::ensure!(Instant::now() < deadline, "jobs did not finish");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue 'poll;
                        }
                    }
                    break;
                }
                let (_, failed) = call(
                    t,
                    Method::GET,
                    "/api/v1/automation/jobs?status=Failed&top=1",
                    Value::Null,
                )
                .await?;
                anyhow::ensure!(
                    failed["value"].as_array().is_none_or(|a| a.is_empty()),
                    "a bench job failed: {}",
                    failed["value"][0]["properties"]["statusDetails"]
                );
                anyhow::ensure!(ids.len() as u64 == per_run, "lost JobIds");
                let elapsed = start.elapsed().as_secs_f64();
                let rate = per_run as f64 / elapsed;
                println!(
                    "  run {run}: {per_run} jobs submitted in {submitted:.2} s, all Completed after {elapsed:.2} s"
                );
                rates.push(rate);
            }
            report("Jobs (sustained)", &rates, "jobs/s");
        }
        _ => {}
    }
    Ok(())
}
