//! Throughput probe for the AMQP edge over the in-memory backend.
//!
//! ```text
//! cargo build --release -p herald-amqp --examples
//! target/release/examples/throughput ingest [batches=400] [connections=2] [window=8]
//! target/release/examples/throughput read [events=1000000] [credit=5000]
//! ```
//! Spawns `mem_server` (next to this binary) as a separate process, drives it
//! with an fe2o3-amqp client, and prints events/s plus the server's own CPU
//! time (from /proc), so the edge's cost can be told apart from the client's.
//! With `PROBE_PORT` and `PROBE_PID` set it drives an already running
//! `mem_server --preload N` instead (e.g. one started under `perf record`).

#[path = "../tests/common/mod.rs"]
mod common;

/// As in herald-cli: the composition root runs on mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::client::{Client, batch, inner_message};
use fe2o3_amqp::types::{
    messaging::Body,
    primitives::{SimpleValue, Value},
};

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_else(|| "ingest".into());
    let preload = if mode == "read" {
        arg(&args, 1, 1_000_000)
    } else {
        0
    };
    if let (Ok(port), Ok(pid)) = (std::env::var("PROBE_PORT"), std::env::var("PROBE_PID")) {
        // An already running `mem_server --preload N` (e.g. under perf).
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let pid: u32 = pid.parse().unwrap();
        match mode.as_str() {
            "ingest" => {
                ingest(
                    addr,
                    pid,
                    arg(&args, 1, 400),
                    arg(&args, 2, 2),
                    arg(&args, 3, 8),
                )
                .await
            }
            _ => read(addr, pid, preload, arg(&args, 2, 5000) as u32).await,
        }
        return;
    }
    let exe = std::env::current_exe()
        .unwrap()
        .with_file_name("mem_server");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Command::new(&exe)
        .args(["--preload", &preload.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mem_server next to this binary (cargo build --release --examples)");
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap()
        .parse()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pid = child.0.id();
    match mode.as_str() {
        "ingest" => {
            ingest(
                addr,
                pid,
                arg(&args, 1, 400),
                arg(&args, 2, 2),
                arg(&args, 3, 8),
            )
            .await
        }
        "read" => read(addr, pid, preload, arg(&args, 2, 5000) as u32).await,
        other => eprintln!("unknown mode {other}"),
    }
    drop(child);
}

async fn ingest(addr: SocketAddr, pid: u32, batches: usize, connections: usize, window: usize) {
    let inner: Vec<Vec<u8>> = (0..1000)
        .map(|i| inner_message(&[b'x'; 100], &[("n", SimpleValue::Int(i))], None))
        .collect();
    let per_conn = batches / connections;
    let mut tasks = Vec::new();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    for c in 0..connections {
        let inner = inner.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, "127.0.0.1").await;
            client.authorize("bench").await;
            let mut tx = client
                .producer(&format!("bench/Partitions/{}", c % 4))
                .await;
            let mut inflight = VecDeque::new();
            for _ in 0..per_conn {
                if inflight.len() >= window {
                    let f: fe2o3_amqp::link::delivery::DeliveryFut<_> =
                        inflight.pop_front().unwrap();
                    let o: Result<_, fe2o3_amqp::link::SendError> = f.await;
                    assert!(o.unwrap().is_accepted());
                }
                inflight.push_back(tx.send_batchable(batch(inner.clone(), None)).await.unwrap());
            }
            for f in inflight {
                assert!(f.await.unwrap().is_accepted());
            }
            client.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let events = (per_conn * connections * 1000) as f64;
    println!(
        "ingest: {} batches x 1000 x 100 B over {connections} connection(s), window {window}: {:.0} events/s wall ({secs:.2} s); server CPU {cpu:.2} s = {:.0} events per server CPU-second",
        per_conn * connections,
        events / secs,
        events / cpu.max(0.001)
    );
}

async fn read(addr: SocketAddr, pid: u32, events: usize, credit: u32) {
    let per = events / 2;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..2 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, "127.0.0.1").await;
            client.authorize("bench").await;
            let mut rx = client
                .consumer(
                    "bench",
                    &p.to_string(),
                    Some("amqp.annotation.x-opt-offset > '-1'"),
                    None,
                    credit,
                )
                .await
                .unwrap();
            for _ in 0..per {
                let d: fe2o3_amqp::Delivery<Body<Value>> =
                    tokio::time::timeout(Duration::from_secs(30), rx.recv())
                        .await
                        .unwrap()
                        .unwrap();
                drop(d);
                // Pre-settled deliveries never refill fe2o3's auto credit.
                if rx.credit() < credit / 2 {
                    rx.set_credit(credit).await.unwrap();
                }
            }
            client.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    println!(
        "read: {} events (2 partitions, credit {credit}): {:.0} events/s wall ({secs:.2} s); server CPU {cpu:.2} s = {:.0} events per server CPU-second",
        per * 2,
        (per * 2) as f64 / secs,
        (per * 2) as f64 / cpu.max(0.001)
    );
}
