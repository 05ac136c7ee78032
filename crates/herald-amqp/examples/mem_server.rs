//! Serve the in-memory backend over AMQP for the Python SDK tests.
//!
//! `cargo run -p herald-amqp --example mem_server -- [--port N] [--tls CA_PEM_OUT] [--preload N]`
//! prints `LISTENING <port>` once bound. Namespaces: 127.0.0.1, localhost and
//! herald-test.servicebus.windows.net, each with hub `hub` (2 partitions) and
//! `hub4` and `bench` (4 partitions) and `t1`..`t12` (2 partitions); keys as in tests/common.

#[path = "../tests/common/mod.rs"]
mod common;

/// As in herald-cli: the composition root runs on mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;

use herald_amqp::{AmqpListener, Limits, ListenerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut port = 0u16;
    let mut tls_out: Option<String> = None;
    let mut preload = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().ok_or("--port N")?.parse()?,
            "--tls" => tls_out = Some(args.next().ok_or("--tls CA_PEM_OUT")?),
            "--preload" => preload = args.next().ok_or("--preload N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let namespaces = [
        "127.0.0.1",
        "localhost",
        "herald-test.servicebus.windows.net",
    ];
    let backend = common::MemBackend::new(&namespaces);
    for ns in namespaces {
        backend.create_hub(ns, "hub", 2);
        backend.create_hub(ns, "hub4", 4);
        backend.create_hub(ns, "bench", 4);
        for i in 1..=12 {
            backend.create_hub(ns, &format!("t{i}"), 2);
        }
    }
    if preload > 0 {
        // Half of the backlog on each of bench/0 and bench/1: 100-byte
        // bodies with one application property, encoded as the SDK does.
        let raw = bytes::Bytes::from(common::client::inner_message(
            &[b'x'; 100],
            &[("n", fe2o3_amqp::types::primitives::SimpleValue::Int(1))],
            None,
        ));
        let ev = herald_amqp::InboundEvent {
            body: bytes::Bytes::from_static(&[b'x'; 100]),
            partition_key: None,
            properties: vec![("n".into(), herald_amqp::PropertyValue::Int(1))],
            amqp: Some(raw),
        };
        for p in 0..2 {
            for _ in 0..(preload / 2).div_ceil(10_000) {
                backend.append_direct("127.0.0.1", "bench", p, vec![ev.clone(); 10_000]);
            }
        }
        eprintln!("preloaded {preload} events into 127.0.0.1/bench partitions 0 and 1");
    }
    let tls = match &tls_out {
        Some(path) => {
            let (cfg, ca) = common::test_tls();
            std::fs::write(path, ca)?;
            Some(cfg)
        }
        None => None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = ListenerConfig {
        addr: format!("127.0.0.1:{port}").parse()?,
        tls,
        limits: Limits::default(),
    };
    let listener = AmqpListener::bind(config, backend, shutdown.clone()).await?;
    let addr = listener.local_addr()?;
    println!("LISTENING {}", addr.port());
    std::io::stdout().flush()?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    listener.serve().await?;
    Ok(())
}
