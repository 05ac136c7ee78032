//! Blob benchmarks: 1 KB PUT and GET of block blobs over HTTPS keep-alive,
//! each request signed with Shared Key as the SDK signs it, and a 1 GiB
//! upload in 4 MiB blocks (Put Block x 256 + Put Block List) with the
//! process's resident memory sampled throughout.

use super::{BenchArgs, Scenario, Target, call, connect, report, rss_mb};
use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "benchblob";

/// Creates the account and container; returns key1's bytes.
async fn setup(t: &Target) -> anyhow::Result<Vec<u8>> {
    let (status, _) = call(
        t,
        Method::POST,
        "/api/v1/storage/accounts",
        Bytes::from(format!(r#"{{"name":"{ACCOUNT}"}}"#)),
    )
    .await?;
    anyhow::ensure!(
        status.is_success() || status == http::StatusCode::CONFLICT,
        "creating the storage account: {status}"
    );
    let (status, body) = call(
        t,
        Method::POST,
        &format!("/api/v1/storage/accounts/{ACCOUNT}/listKeys"),
        Bytes::new(),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "listing keys: {status}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let key = B64.decode(v["keys"][0]["value"].as_str().unwrap_or_default())?;
    let mut s = connect(t).await?;
    let resp = s
        .send_request(signed(
            t,
            &key,
            Method::PUT,
            "/bench?restype=container",
            &[],
            Bytes::new(),
        )?)
        .await?;
    let st = resp.status();
    anyhow::ensure!(
        st.is_success() || st == http::StatusCode::CONFLICT,
        "creating the container: {st}"
    );
    Ok(key)
}

/// A Shared Key request on the account's host.
fn signed(
    t: &Target,
    key: &[u8],
    method: Method,
    path_and_query: &str,
    extra: &[(&'static str, &str)],
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let mut h = HeaderMap::new();
    h.insert(
        "x-ms-date",
        HeaderValue::from_str(
            &chrono::Utc::now()
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        )?,
    );
    h.insert("x-ms-version", HeaderValue::from_static("2025-01-05"));
    h.insert("content-length", HeaderValue::from(body.len()));
    for (k, v) in extra {
        h.insert(*k, HeaderValue::from_str(v)?);
    }
    let sts = herald_blob::auth::string_to_sign(ACCOUNT, method.as_str(), path, query, &h);
    let sig = herald_blob::auth::sign(key, &sts);
    let mut b = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(
            http::header::HOST,
            format!("{ACCOUNT}.blob.localhost:{}", t.addrs[0].port()),
        );
    for (k, v) in &h {
        b = b.header(k, v);
    }
    Ok(b.header(
        http::header::AUTHORIZATION,
        format!("SharedKey {ACCOUNT}:{sig}"),
    )
    .body(Full::new(body))?)
}

async fn rate(
    t: &Arc<Target>,
    args: &BenchArgs,
    key: &Arc<Vec<u8>>,
    put: bool,
) -> anyhow::Result<Vec<f64>> {
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut rates = Vec::new();
    for run in 0..args.runs {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            let (t, key, body) = (t.clone(), key.clone(), body.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = connect(&t).await?;
                let mut i = c as u64 * 1_000_003;
                while Instant::now() < deadline {
                    let path = format!("/bench/blob-{}", i % 1024);
                    i += 1;
                    let req = if put {
                        signed(
                            &t,
                            &key,
                            Method::PUT,
                            &path,
                            &[("x-ms-blob-type", "BlockBlob")],
                            body.clone(),
                        )?
                    } else {
                        signed(&t, &key, Method::GET, &path, &[], Bytes::new())?
                    };
                    s.ready().await?;
                    let resp = s.send_request(req).await?;
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await.context("bench connection task")??;
        }
        let failures = failed.load(Ordering::Relaxed);
        anyhow::ensure!(
            failures == 0,
            "blob bench: {failures} requests failed in run {run}"
        );
        rates.push(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64());
    }
    Ok(rates)
}

/// 1 GiB in 4 MiB blocks over 4 connections, then Put Block List.
async fn upload(t: &Arc<Target>, key: &Arc<Vec<u8>>, run: usize) -> anyhow::Result<(f64, f64)> {
    const BLOCK: usize = 4 * 1024 * 1024;
    const BLOCKS: usize = 256;
    let block = Bytes::from(vec![7u8; BLOCK]);
    let ids: Vec<String> = (0..BLOCKS)
        .map(|i| B64.encode(format!("block-{i:06}")))
        .collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mb() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let name = format!("/bench/big-{run}");
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (t, key, block, ids, next, name) = (
            t.clone(),
            key.clone(),
            block.clone(),
            ids.clone(),
            next.clone(),
            name.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&t).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= BLOCKS {
                    break;
                }
                let id = percent_encoding::utf8_percent_encode(
                    &ids[i],
                    percent_encoding::NON_ALPHANUMERIC,
                );
                let path = format!("{name}?comp=block&blockid={id}");
                let resp = s
                    .send_request(signed(&t, &key, Method::PUT, &path, &[], block.clone())?)
                    .await?;
                let st = resp.status();
                let _ = resp.into_body().collect().await;
                anyhow::ensure!(st.is_success(), "Put Block answered {st}");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("upload task")??;
    }
    let list: String = ids
        .iter()
        .map(|id| format!("<Latest>{id}</Latest>"))
        .collect();
    let xml = format!(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>{list}</BlockList>"#);
    let mut s = connect(t).await?;
    let resp = s
        .send_request(signed(
            t,
            key,
            Method::PUT,
            &format!("{name}?comp=blocklist"),
            &[],
            Bytes::from(xml),
        )?)
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "Put Block List answered {}",
        resp.status()
    );
    let secs = start.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    Ok((
        (BLOCK * BLOCKS) as f64 / 1e6 / secs,
        peak.load(Ordering::Relaxed) as f64,
    ))
}

pub(super) async fn run(
    t: &Arc<Target>,
    args: &BenchArgs,
    scenario: Scenario,
) -> anyhow::Result<()> {
    let key = Arc::new(setup(t).await?);
    match scenario {
        Scenario::BlobPut => report("BlobPut (1 KB)", &rate(t, args, &key, true).await?, "req/s"),
        Scenario::BlobGet => {
            // Something to read: every name the GETs ask for.
            let mut s = connect(t).await?;
            for i in 0..1024 {
                let req = signed(
                    t,
                    &key,
                    Method::PUT,
                    &format!("/bench/blob-{i}"),
                    &[("x-ms-blob-type", "BlockBlob")],
                    Bytes::from(vec![b'x'; 1024]),
                )?;
                s.ready().await?;
                let resp = s.send_request(req).await?;
                anyhow::ensure!(resp.status().is_success(), "filling: {}", resp.status());
                let _ = resp.into_body().collect().await;
            }
            report(
                "BlobGet (1 KB)",
                &rate(t, args, &key, false).await?,
                "req/s",
            );
        }
        _ => {
            let mut rates = Vec::new();
            let mut peaks = Vec::new();
            for run in 0..args.runs.min(3) {
                let (mbps, peak) = upload(t, &key, run).await?;
                rates.push(mbps);
                peaks.push(peak);
            }
            report("BlobUpload (1 GiB)", &rates, "MB/s");
            report("BlobUpload peak RSS", &peaks, "MB (server and client)");
        }
    }
    Ok(())
}
