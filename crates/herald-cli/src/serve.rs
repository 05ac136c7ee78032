//! `herald serve`.

use anyhow::Context;
use clap::Args;
use herald_node::Node;
use herald_server::Config;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Every setting can also come from the config file or a HERALD_* variable
/// (e.g. HERALD_DATA_DIR); flags win over both.
#[derive(Args, Serialize, Default)]
pub(crate) struct ServeArgs {
    /// TOML config file [env: HERALD_CONFIG] [default: ./herald.toml if present]
    #[arg(long, env = "HERALD_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory for the embedded database, TLS files and master key [default: ./herald-data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data_dir: Option<PathBuf>,
    /// HTTPS listen address [default: 127.0.0.1:8443]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen: Option<SocketAddr>,
    /// Storage URL [default: sqlite://DATA_DIR/herald.db]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) database: Option<String>,
    /// normal (survives a crash) or full (also fsync per commit) [default: normal]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) durability: Option<String>,
    /// Parent domain of vault hosts: vault NAME is served at NAME.VAULT_BASE [default: vault.localhost]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vault_base: Option<String>,
    /// Parent domain of hub namespaces: namespace NAME is served at NAME.HUB_BASE [default: servicebus.localhost]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hub_base: Option<String>,
    /// Parent domain of storage accounts: account NAME is served at NAME.BLOB_BASE [default: blob.localhost]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) blob_base: Option<String>,
    /// Where blob content goes: a directory path, or s3://bucket[/prefix] [default: DATA_DIR/blobs]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) blob_url: Option<String>,
    /// AMQP 1.0 over TLS for the Event Hubs SDKs: HOST:PORT, or off [default: 127.0.0.1:5671]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) amqp_listen: Option<String>,
    /// Plaintext AMQP for UseDevelopmentEmulator=true connection strings: HOST:PORT [default: off]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) amqp_plain_listen: Option<String>,
    /// Port written into ids and event URLs, when clients reach Herald through another port
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) public_port: Option<u16>,
    /// PEM certificate chain to serve instead of the generated one (needs --tls-key)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<PathBuf>,
    /// How often expiry events and scheduled purges are checked, in ms [default: 1000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lifecycle_interval_ms: Option<u64>,
    /// Near-expiry window of the default vault, in seconds [default: 2592000 = 30 days]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) near_expiry_window_secs: Option<i64>,
    /// ARM subscription id stamped on event topics [default: 00000000-0000-0000-0000-000000000000]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subscription_id: Option<String>,
    /// ARM resource group stamped on event topics [default: herald]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resource_group: Option<String>,
    /// CIDRs webhook deliveries may reach although private or loopback, comma-separated
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivery_allowed_cidrs: Option<Vec<String>>,
    /// Multiply the webhook retry schedule and event time to live (0 < x <= 1), e.g. 0.01 for demos [default: 1]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivery_retry_scale: Option<f64>,
    /// Base URL clients use to reach this server, for validation links [default: https://localhost:PORT]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) public_url: Option<String>,
    /// Dead-letter objects in S3-compatible storage: s3://bucket[/prefix] (AWS_* variables configure access) [default: DATA_DIR/deadletters]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dead_letter_url: Option<String>,
    /// Jobs the built-in worker pool runs at once; 0 turns it off [default: 8]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) automation_slots: Option<usize>,
    /// Job sandbox: auto, bwrap, unshare, rlimits or none [default: auto]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sandbox: Option<String>,
    /// Seconds a job lease lasts without a worker heartbeat [default: 30]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) automation_lease_secs: Option<u64>,
    /// Days finished jobs are kept [default: 30]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) job_retention_days: Option<u64>,
    /// Hours a topic's events are kept at most, delivered or not; events every subscription is done with go sooner [default: 168 = 7 days, the longest eventTimeToLive]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) event_retention_hours: Option<u64>,
    /// The herald binary runbooks call [default: this executable]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) herald_bin: Option<PathBuf>,
    /// HTTPS connections served at once [default: 80% of the open-file limit less a reserve]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections: Option<usize>,
    /// Log format: text or json [default: text]; level via RUST_LOG
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log_format: Option<String>,
    // Secrets are read from the environment only (HERALD_ADMIN_TOKEN,
    // HERALD_MASTER_KEY) so they never show up in `ps`.
}

pub(crate) fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn,rustls=warn")
    });
    install(format, filter);
}

/// Logging at a fixed level, for commands whose output is the point.
pub(crate) fn init_logging_with(level: &str) {
    install("text", tracing_subscriber::EnvFilter::new(level));
}

fn install(format: &str, filter: tracing_subscriber::EnvFilter) {
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal: in files, journald or a
    // pipe they are noise that breaks grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &args)?;
    init_logging(&config.log_format);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server using it? Pick another with --listen",
                config.listen
            )
        })?;
    let server = Node::build(config, listener).await?;
    let info = server.info.clone();
    println!("Herald is running at {}", info.url);
    println!("  data dir:       {}", info.data_dir.display());
    println!("  storage:        {}", info.storage);
    if let Some(ca) = &info.ca_path {
        println!(
            "  CA certificate: {}  (trust this file, e.g. REQUESTS_CA_BUNDLE or connection_verify)",
            ca.display()
        );
    }
    println!("  default vault:  {}", info.default_vault_uri);
    println!("  tenant id:      {}", info.tenant_id);
    if let Some(t) = &info.generated_admin_token {
        println!();
        println!("  Admin token (shown once, stored only as a hash):");
        println!("    {t}");
        println!("  export HERALD_TOKEN={t}");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    server.serve(shutdown).await
}

async fn wait_for_signal(shutdown: CancellationToken) {
    signal_received().await;
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub(crate) async fn signal_received() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
