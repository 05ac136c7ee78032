//! `herald`: the server and a CLI over its API.

mod automation;
mod bench;
mod client;
mod events;
mod hub;
mod migrate;
mod output;
mod principal;
mod quickstart;
mod secret;
mod serve;
mod status;
mod storage;
mod topic;
mod vault;
mod worker;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Self-hosted event-driven automation: vault, router, hubs and automation in one binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play the flagship flow end to end on a throwaway server: expiring secret → event → webhook → rotation job.
    Quickstart(quickstart::QuickstartArgs),
    /// Run the Herald server (zero configuration: ./herald-data, https://127.0.0.1:8443).
    #[command(
        after_help = "Environment (secrets are read only from the environment, never from flags):
  HERALD_ADMIN_TOKEN               initial admin token instead of a generated one (at least 16 characters)
  HERALD_MASTER_KEY                base64 32-byte master key instead of DATA_DIR/master.key
  HERALD_DELIVERY_ALLOWED_CIDRS    CIDRs webhooks may reach although private, e.g. 127.0.0.0/8,10.0.0.0/8
  HERALD_DELIVERY_RETRY_SCALE      multiply the webhook retry schedule (0 < x <= 1) for demos and tests
  HERALD_PUBLIC_URL                base URL for validation links (default https://localhost:PORT)
  HERALD_<SETTING>                 any flag above, e.g. HERALD_DATA_DIR, HERALD_LISTEN
  RUST_LOG                         log level, e.g. info or herald_server=debug

Config file (TOML, --config or ./herald.toml) keys are the flag names with underscores."
    )]
    Serve(serve::ServeArgs),
    /// Overview of a running server: storage, vaults, topics, subscriptions, jobs.
    Status(status::StatusArgs),
    /// Store the server address, token and CA for later commands.
    Login(status::LoginArgs),
    /// Copy an embedded installation (data dir) into an empty PostgreSQL database.
    Migrate(migrate::MigrateArgs),
    /// Manage vaults (create, list, show, delete).
    #[command(subcommand)]
    Vault(vault::VaultCmd),
    /// Principals (applications) and their client secrets, for azure-identity.
    #[command(subcommand)]
    Principal(principal::PrincipalCmd),
    /// Read and write secrets in a vault.
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Storage accounts for the Azure Storage SDKs (blob containers).
    #[command(subcommand)]
    Storage(storage::StorageCmd),
    /// Manage topics: create, list, show, delete, keys, publish.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// Manage event subscriptions on a topic.
    #[command(subcommand)]
    Subscription(topic::SubscriptionCmd),
    /// Pull delivery: receive, ack, release, reject, deadletters.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Dead-lettered events: list, show, replay.
    #[command(subcommand)]
    Deadletter(events::DeadletterCmd),
    /// Automation runbooks: create, publish, start, show, content, delete.
    #[command(subcommand)]
    Runbook(automation::RunbookCmd),
    /// Token webhooks that start runbooks (URL shown once).
    #[command(subcommand)]
    Webhook(automation::WebhookCmd),
    /// Runbook jobs: list, show, output --follow, stop, wait.
    #[command(subcommand)]
    Job(automation::JobCmd),
    /// Automation assets: variables and credentials (get works inside jobs).
    #[command(subcommand)]
    Asset(automation::AssetCmd),
    /// Hubs (Event Hubs): namespaces, event hubs, consumer groups, SAS policies, send, tail.
    #[command(subcommand)]
    Hub(hub::HubCmd),
    /// Run a remote worker that pulls jobs of one worker group over HTTPS.
    Worker(worker::WorkerArgs),
    /// Measure throughput against an in-process server and print the figures.
    Bench(bench::BenchArgs),
    /// Print shell completions: herald completions bash|zsh|fish.
    Completions { shell: clap_complete::Shell },
}

/// glibc's allocator spent a fifth of push delivery's CPU consolidating
/// the many short-lived row and body buffers; mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Status(args) => status::status(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Login(args) => status::login(args).await,
            Command::Vault(cmd) => vault::run(cmd).await,
            Command::Secret(cmd) => secret::run(cmd).await,
            Command::Principal(cmd) => principal::run(cmd).await,
            Command::Storage(cmd) => storage::run(cmd).await,
            Command::Topic(cmd) => topic::run_topic(cmd).await,
            Command::Subscription(cmd) => topic::run_subscription(cmd).await,
            Command::Events(cmd) => events::run(cmd).await,
            Command::Deadletter(cmd) => events::run_deadletter(cmd).await,
            Command::Runbook(cmd) => automation::run_runbook(cmd).await,
            Command::Webhook(cmd) => automation::run_webhook(cmd).await,
            Command::Job(cmd) => automation::run_job(cmd).await,
            Command::Asset(cmd) => automation::run_asset(cmd).await,
            Command::Hub(cmd) => hub::run(cmd).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "herald",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
