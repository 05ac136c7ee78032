//! Hubs benchmarks over AMQP 1.0 with TLS, as the Event Hubs SDKs connect:
//! durable ingest of `EventDataBatch` transfers, one consumer reading a
//! backlog, and send-to-receive latency at a steady rate. The client is
//! `herald_amqp::client` on fe2o3-amqp, in the same process as the server,
//! so every figure is for server and client sharing this machine's cores.

use super::{BenchArgs, Scenario, Target, call, report, rss_mb};
use anyhow::{Context, anyhow};
use bytes::Bytes;
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::types::messaging::{Body, Outcome};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Delivery, Receiver, Sender};
use herald_amqp::client::{HubClient, batch, inner_message};
use http::Method;
use rustls::pki_types::ServerName;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The namespace the bench uses: the default one, on the plain host.
const HOST: &str = "localhost";
/// Events per `EventDataBatch` in the ingest and fill loops.
const BATCH: usize = 1000;
/// Batches in flight per sender link (unsettled transfers).
const WINDOW: usize = 8;
/// Credit a reading consumer keeps open.
const CREDIT: u32 = 5000;

type SendFut = DeliveryFut<Result<Outcome, fe2o3_amqp::link::SendError>>;

struct Hubs {
    t: Arc<Target>,
    key: String,
}

impl Hubs {
    async fn setup(t: &Arc<Target>) -> anyhow::Result<Self> {
        let (status, body) = call(
            t,
            Method::POST,
            "/api/v1/hubs/namespaces/default/authorizationRules/RootManageSharedAccessKey/listKeys",
            Bytes::new(),
        )
        .await?;
        anyhow::ensure!(status.is_success(), "listing the root keys: {status}");
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Keys {
            primary_key: String,
        }
        let keys: Keys = serde_json::from_slice(&body)?;
        Ok(Hubs {
            t: t.clone(),
            key: keys.primary_key,
        })
    }

    async fn create_hub(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        let (status, body) = call(
            &self.t,
            Method::POST,
            "/api/v1/hubs/namespaces/default/eventhubs",
            Bytes::from(format!(
                r#"{{"name":"{name}","partitionCount":{partitions}}}"#
            )),
        )
        .await?;
        anyhow::ensure!(
            status.is_success(),
            "creating hub {name}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }

    /// A TLS connection with a put-token for `hub`, as an SDK client opens.
    async fn client(&self, hub: &str) -> anyhow::Result<HubClient> {
        let addr = self
            .t
            .amqp
            .ok_or_else(|| anyhow!("the AMQP listener is off"))?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .t
            .tls
            .connect(ServerName::try_from(HOST.to_owned())?, tcp)
            .await?;
        let mut c = HubClient::connect(tls, HOST)
            .await
            .map_err(|e| anyhow!("AMQP open: {e}"))?;
        let audience = c.audience(hub);
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64 + 3600;
        let token =
            herald_hubs::sas::sign(&audience, "RootManageSharedAccessKey", &self.key, expiry);
        let status = c
            .put_token(&audience, &token)
            .await
            .map_err(|e| anyhow!("put-token: {e}"))?;
        anyhow::ensure!(status == 202, "put-token answered {status}");
        Ok(c)
    }
}

async fn settle(f: SendFut) -> anyhow::Result<()> {
    match f.await {
        Ok(o) if o.is_accepted() => Ok(()),
        Ok(o) => Err(anyhow!("batch not accepted: {o:?}")),
        Err(e) => Err(anyhow!("batch send failed: {e}")),
    }
}

/// Sends `BATCH`-event batches of `size`-byte bodies to one partition until
/// `deadline` (or `limit` batches); returns events acknowledged.
async fn send_loop(
    tx: &mut Sender,
    inner: &[Vec<u8>],
    deadline: Instant,
    limit: u64,
) -> anyhow::Result<u64> {
    let mut inflight: VecDeque<SendFut> = VecDeque::new();
    let mut acked = 0u64;
    let mut sent = 0u64;
    while Instant::now() < deadline && sent < limit {
        if inflight.len() >= WINDOW
            && let Some(f) = inflight.pop_front()
        {
            settle(f).await?;
            acked += inner.len() as u64;
        }
        let f = tx
            .send_batchable(batch(inner.to_vec(), None))
            .await
            .map_err(|e| anyhow!("send: {e}"))?;
        inflight.push_back(f);
        sent += 1;
    }
    for f in inflight {
        settle(f).await?;
        acked += inner.len() as u64;
    }
    Ok(acked)
}

fn bodies(size: usize) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|_| inner_message(&vec![b'x'; size], &[], None))
        .collect()
}

/// Durable ingest: `connections` TLS connections, one sender link each on
/// its own partition, `WINDOW` batches of 1,000 in flight per link.
async fn ingest(h: &Hubs, args: &BenchArgs, size: usize) -> anyhow::Result<()> {
    let hub = format!("bench-ingest-{size}");
    let links = args.amqp_connections.max(1);
    h.create_hub(&hub, links as u32).await?;
    let inner = Arc::new(bodies(size));
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let total = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for p in 0..links {
            let mut c = h.client(&hub).await?;
            let (inner, total, hub) = (inner.clone(), total.clone(), hub.clone());
            tasks.push(tokio::spawn(async move {
                let mut tx = c
                    .producer(&format!("{hub}/Partitions/{p}"))
                    .await
                    .map_err(|e| anyhow!("attach sender: {e}"))?;
                let n = send_loop(&mut tx, &inner, deadline, u64::MAX).await?;
                total.fetch_add(n, Ordering::Relaxed);
                let _ = tx.close().await;
                c.close().await;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        rates.push(total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64());
    }
    let label = format!("HubIngest {size} B");
    report(&label, &rates, "events/s");
    let mb: Vec<f64> = rates.iter().map(|r| r * size as f64 / 1e6).collect();
    report(&label, &mb, "MB/s (bodies)");
    println!("{:<20} RSS {:.0} MB (server + bench client)", "", rss_mb());
    Ok(())
}

/// Receives one delivery, keeping credit open: the listener sends events
/// pre-settled, which never refills fe2o3's auto credit by itself.
async fn next(rx: &mut Receiver) -> anyhow::Result<Delivery<Body<Value>>> {
    let d = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .context("no event within 30 s")?
        .map_err(|e| anyhow!("receive: {e}"))?;
    if rx.credit() < CREDIT / 2 {
        rx.set_credit(CREDIT)
            .await
            .map_err(|e| anyhow!("flow: {e}"))?;
    }
    Ok(d)
}

/// One consumer reading a backlog of `hub_events` 100-byte events on one
/// partition from the start; each run opens a new link.
async fn read(h: &Hubs, args: &BenchArgs) -> anyhow::Result<()> {
    let hub = "bench-read";
    h.create_hub(hub, 1).await?;
    let fill_start = Instant::now();
    let mut c = h.client(hub).await?;
    let mut tx = c
        .producer(&format!("{hub}/Partitions/0"))
        .await
        .map_err(|e| anyhow!("attach sender: {e}"))?;
    let batches = args.hub_events.div_ceil(BATCH as u64);
    let far = Instant::now() + Duration::from_secs(3600);
    let events = send_loop(&mut tx, &bodies(100), far, batches).await?;
    let _ = tx.close().await;
    println!(
        "{:<20} backlog of {events} events appended in {:.1} s",
        "HubRead",
        fill_start.elapsed().as_secs_f64()
    );
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        let mut rx = c
            .consumer(
                hub,
                "$Default",
                "0",
                Some("amqp.annotation.x-opt-offset > '-1'"),
                None,
                CREDIT,
            )
            .await
            .map_err(|e| anyhow!("attach receiver: {e}"))?;
        for _ in 0..events {
            next(&mut rx).await?;
        }
        rates.push(events as f64 / start.elapsed().as_secs_f64());
        let _ = rx.close().await;
    }
    c.close().await;
    report("HubRead", &rates, "events/s");
    println!("{:<20} RSS {:.0} MB (server + bench client)", "", rss_mb());
    Ok(())
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Send-to-receive latency: one event per millisecond (each its own
/// `EventDataBatch`, as `send_batch` with one event is), a consumer waiting
/// at `@latest`. The body carries the send time.
async fn latency(h: &Hubs, args: &BenchArgs) -> anyhow::Result<()> {
    let hub = "bench-latency";
    h.create_hub(hub, 1).await?;
    let per_run = (args.seconds * 1000.0).max(1000.0) as u64;
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..args.runs {
        let mut rc = h.client(hub).await?;
        let mut rx = rc
            .consumer(
                hub,
                "$Default",
                "0",
                Some("amqp.annotation.x-opt-offset > '@latest'"),
                None,
                CREDIT,
            )
            .await
            .map_err(|e| anyhow!("attach receiver: {e}"))?;
        let receiver = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_run as usize);
            for _ in 0..per_run {
                let d = next(&mut rx).await?;
                let now = micros_now();
                let sent = match d.body() {
                    Body::Data(b) => b
                        .first()
                        .and_then(|d| d.0.get(..8))
                        .and_then(|s| <[u8; 8]>::try_from(s).ok())
                        .map(u64::from_le_bytes),
                    _ => None,
                }
                .ok_or_else(|| anyhow!("an event without the bench's timestamp"))?;
                lat.push(now.saturating_sub(sent));
            }
            let _ = rx.close().await;
            rc.close().await;
            anyhow::Ok(lat)
        });
        let mut sc = h.client(hub).await?;
        let mut tx = sc
            .producer(hub)
            .await
            .map_err(|e| anyhow!("attach sender: {e}"))?;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut inflight: VecDeque<SendFut> = VecDeque::new();
        for _ in 0..per_run {
            tick.tick().await;
            let mut body = micros_now().to_le_bytes().to_vec();
            body.resize(100, b'x');
            let f = tx
                .send_batchable(batch(vec![inner_message(&body, &[], None)], None))
                .await
                .map_err(|e| anyhow!("send: {e}"))?;
            inflight.push_back(f);
            // Dispositions are collected behind the sends, as a pipelining SDK does.
            while inflight.len() > 64 {
                if let Some(f) = inflight.pop_front() {
                    settle(f).await?;
                }
            }
        }
        for f in inflight {
            settle(f).await?;
        }
        let _ = tx.close().await;
        sc.close().await;
        let mut lat = receiver.await??;
        lat.sort_unstable();
        let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1e3;
        println!(
            "{:<20} p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms   ({} events at 1000/s)",
            "HubLatency run",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0),
            lat.len()
        );
        p50s.push(pct(0.5));
        p99s.push(pct(0.99));
    }
    let fmt = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        (
            s[s.len() / 2],
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let (m50, r50) = fmt(&p50s);
    let (m99, r99) = fmt(&p99s);
    println!(
        "{:<20} median p50 {m50:.2} ms [{r50}]   median p99 {m99:.2} ms [{r99}]",
        "HubLatency"
    );
    println!("{:<20} RSS {:.0} MB (server + bench client)", "", rss_mb());
    Ok(())
}

pub(crate) async fn run(
    t: &Arc<Target>,
    args: &BenchArgs,
    scenario: Scenario,
) -> anyhow::Result<()> {
    let h = Hubs::setup(t).await?;
    match scenario {
        Scenario::HubIngest => {
            ingest(&h, args, 100).await?;
            ingest(&h, args, 1024).await
        }
        Scenario::HubRead => read(&h, args).await,
        Scenario::HubLatency => latency(&h, args).await,
        _ => Ok(()),
    }
}
