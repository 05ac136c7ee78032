//! Herald's composition root: one node.
//!
//! `Node::build` opens storage, checks the master key, bootstraps the
//! tenant and admin token, and wires the domain services together.
//! `Node::serve` starts every duty the domains declare (see
//! [`herald_core::duty`]) and the listeners, which are thin edges over the
//! domains: today HTTPS (herald-server); the AMQP and Kafka listeners of
//! the hubs join them here.

mod amqp;
mod bootstrap;
mod datalock;
mod duties;
mod resolver;
mod wakeups;

use anyhow::Context;
use bootstrap::{check_master_key, put_admin};
use herald_core::ArmScope;
use herald_core::seal::MasterKey;
use herald_core::vault::VaultSettings;
use herald_server::auth::TokenCache;
use herald_server::config::Config;
use herald_server::state::{AppState, VaultCache};
use herald_storage::Durability;
use herald_vault::{VaultService, VaultUrls};
use resolver::VaultResolver;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What start-up produced, for the CLI to print once.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub addr: SocketAddr,
    pub url: String,
    pub data_dir: PathBuf,
    pub ca_path: Option<PathBuf>,
    /// Set only when a token was generated now; shown once, stored hashed.
    pub generated_admin_token: Option<String>,
    pub default_vault_uri: String,
    pub tenant_id: String,
    pub storage: &'static str,
    /// The AMQP (TLS) listener's address, when on.
    pub amqp_addr: Option<SocketAddr>,
    /// The plaintext AMQP listener's address, when on.
    pub amqp_plain_addr: Option<SocketAddr>,
}

/// One Herald node, built and ready to serve.
pub struct Node {
    /// Held until the node stops: one server per embedded data dir.
    data_lock: Option<datalock::DataDirLock>,
    listener: TcpListener,
    amqp: Vec<herald_amqp::AmqpListener>,
    state: AppState,
    tls: TlsAcceptor,
    pub info: StartInfo,
}

impl Node {
    /// Prepares everything (data dir, storage, keys, TLS) on an already-bound
    /// listener, so tests can bind port 0 and read the port back.
    pub async fn build(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        // Every connection is a file descriptor: use what the hard limit
        // allows before the connection cap is derived from it.
        let fd_limit = herald_server::https::raise_fd_limit();
        tracing::debug!(?fd_limit, "open-file limit");
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        restrict_data_dir(&config.data_dir)?;
        let data_lock = if config.database_url().starts_with("sqlite:") {
            Some(datalock::acquire(&config.data_dir, addr)?)
        } else {
            None
        };
        let durability = if config.durability == "full" {
            Durability::Full
        } else {
            Durability::Normal
        };
        let storage = herald_storage::open(&config.database_url(), durability)
            .await
            .context("opening storage")?;

        let master = match &config.master_key {
            Some(text) => MasterKey::from_base64(text).context("HERALD_MASTER_KEY")?,
            None => MasterKey::load_or_create(&config.data_dir.join("master.key"))?,
        };
        check_master_key(&*storage, &master).await?;

        // The tenant is named in config, or generated once and kept in
        // storage so every node of an installation issues for the same one.
        let tenant_id = match &config.tenant_id {
            Some(t) => t.clone(),
            None => {
                storage
                    .init_setting("tenant_id", &uuid::Uuid::new_v4().to_string())
                    .await?
            }
        };

        let generated_admin_token = match &config.admin_token {
            Some(t) => {
                put_admin(&*storage, t, "admin (HERALD_ADMIN_TOKEN)").await?;
                None
            }
            None if storage.count_tokens("admin").await? == 0 => {
                let t = herald_core::new_token("hrd");
                put_admin(&*storage, &t, "admin (generated)").await?;
                Some(t)
            }
            None => None,
        };

        let (cert, key, ca_path) = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), None),
            _ => {
                let files = herald_server::tls::ensure_generated(
                    &config.data_dir,
                    &[&config.vault_base, &config.hub_base, &config.blob_base],
                )?;
                (files.cert, files.key, Some(files.ca))
            }
        };
        let tls = TlsAcceptor::from(herald_server::tls::server_config(&cert, &key)?);
        // Again now that storage, keys and certificates exist.
        restrict_data_dir(&config.data_dir)?;

        let urls = VaultUrls {
            base: config.vault_base.clone(),
            port: config.public_port.unwrap_or(addr.port()),
        };
        let scope = ArmScope {
            subscription_id: config.subscription_id.clone(),
            resource_group: config.resource_group.clone(),
        };
        let router =
            herald_router::RouterService::new(storage.clone(), master.clone(), scope.clone());
        let public_url = config.public_url.clone().unwrap_or_else(|| {
            format!(
                "https://localhost:{}",
                config.public_port.unwrap_or(addr.port())
            )
        });
        let public_url = public_url.trim_end_matches('/').to_owned();
        let delivery_public_url = public_url.clone();
        let allowed: Vec<ipnet::IpNet> = config
            .delivery_allowed_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        // Our own webhooks are delivered to this listener, trusting our CA.
        let own_ca = ca_path
            .as_ref()
            .or(config.tls_cert.as_ref())
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok());
        let client =
            herald_delivery::http::DeliveryClient::new(herald_delivery::http::ClientConfig {
                allowed_cidrs: allowed,
                internal: Some(herald_delivery::http::InternalTarget {
                    prefixes: vec![format!("{public_url}/webhooks")],
                    local_addr: if addr.ip().is_unspecified() {
                        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
                    } else {
                        addr
                    },
                    ca: own_ca,
                }),
                ..Default::default()
            })?;
        let delivery = herald_delivery::Delivery::new(
            router.clone(),
            storage.clone(),
            client,
            herald_delivery::DeliverySettings {
                internal_prefixes: vec![format!("{public_url}/webhooks")],
                public_base_url: public_url,
                retry_scale: config.delivery_retry_scale,
                dead_letter_root: Some(config.data_dir.join("deadletters")),
                dead_letter_url: config.dead_letter_url.clone(),
                ..Default::default()
            },
        )?;
        let master_for_automation = master.clone();
        let public_url_for_automation = delivery_public_url.clone();
        let hubs = herald_hubs::HubService::new(storage.clone(), master.clone(), &config.hub_base);
        let content =
            herald_blob::service::open_content(&config.data_dir, config.blob_url.as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
        let blob = herald_blob::service::BlobService::new(
            storage.clone(),
            master.clone(),
            content,
            &config.blob_base,
        );
        let identity = herald_identity::IdentityService::open(
            storage.clone(),
            &master,
            herald_identity::IdentityConfig {
                tenant: tenant_id.clone(),
                token_lifetime_secs: config.token_lifetime_secs,
                hosts: herald_identity::ResourceHosts {
                    vault_base: config.vault_base.clone(),
                    hub_base: config.hub_base.clone(),
                },
                scope: scope.clone(),
            },
        )
        .await
        .context("opening the identity service")?;
        let vault = VaultService::new(storage.clone(), master, scope, urls.clone());
        let delivery = delivery
            .with_secret_resolver(Arc::new(VaultResolver(vault.clone())))
            .with_dead_letter_blobs(Arc::new(resolver::BlobDeadLetters(blob.clone())));
        vault
            .ensure_default_vault(VaultSettings {
                near_expiry_secs: config.near_expiry_window_secs,
                ..VaultSettings::default()
            })
            .await?;
        hubs.ensure_default_namespace().await?;

        let automation = herald_automation::AutomationService::new(
            storage.clone(),
            master_for_automation,
            herald_automation::AutomationSettings {
                public_url: public_url_for_automation,
                lease: Duration::from_secs(config.automation_lease_secs),
                max_restarts: 3,
                job_retention: Duration::from_secs(config.job_retention_days.max(1) * 86_400),
            },
        );
        let sandbox = herald_automation::sandbox::probe(&config.sandbox)
            .await
            .context(
                "choosing the job sandbox (set sandbox = \"auto\" to use the best available)",
            )?;
        let kinds = herald_automation::sandbox::available_kinds();
        match sandbox {
            herald_automation::sandbox::SandboxLevel::Bwrap => {
                tracing::info!(sandbox = %sandbox, runbook_types = ?kinds, "job sandbox in force: bubblewrap (own namespaces, read-only root, data dir hidden)");
            }
            herald_automation::sandbox::SandboxLevel::None => {
                tracing::warn!(
                    sandbox = %sandbox,
                    runbook_types = ?kinds,
                    "job sandbox in force: none (sandbox = \"none\"): jobs run uncontained and can read the data dir, the master key and the database (dev only); install bubblewrap and use --sandbox auto"
                );
            }
            _ => {
                // Say how to get the strongest isolation, once, where operators look.
                tracing::info!(
                    sandbox = %sandbox,
                    runbook_types = ?kinds,
                    "job sandbox in force: {sandbox}, weaker than bubblewrap; for the strongest, install bubblewrap (e.g. apt install bubblewrap) and run with --sandbox auto or bwrap"
                );
            }
        }

        let info = StartInfo {
            addr,
            url: format!("https://{addr}"),
            data_dir: config.data_dir.clone(),
            ca_path,
            generated_admin_token,
            default_vault_uri: urls.vault_uri(herald_vault::DEFAULT_VAULT),
            tenant_id: tenant_id.clone(),
            storage: storage.engine(),
            amqp_addr: None,
            amqp_plain_addr: None,
        };
        let state = AppState {
            config: Arc::new(config),
            storage,
            vault,
            router,
            delivery,
            tokens: Arc::new(TokenCache::default()),
            vaults: Arc::new(VaultCache::default()),
            metrics_cache: Arc::default(),
            tenant_id: tenant_id.into(),
            metrics: herald_server::metrics_setup::handle(),
            automation,
            hubs,
            identity,
            blob,
            sandbox,
            shutdown: CancellationToken::new(),
        };
        // The AMQP listeners are bound now, so a taken port fails the start
        // and tests can read the ports back; they serve in `serve`.
        let backend: Arc<dyn herald_amqp::HubsBackend> = amqp::HubsAmqp::new(state.hubs.clone());
        let mut amqp = Vec::new();
        let mut amqp_addrs = [None, None];
        let tls_addr =
            (state.config.amqp_listen != "off").then(|| state.config.amqp_listen.clone());
        for (i, (addr, tls)) in [
            (
                tls_addr,
                Some(herald_server::tls::bare_server_config(&cert, &key)?),
            ),
            (state.config.amqp_plain_listen.clone(), None),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(addr) = addr else { continue };
            let addr: SocketAddr = addr.parse().context("amqp listen address")?;
            let l = herald_amqp::AmqpListener::bind(
                herald_amqp::ListenerConfig { addr, tls, limits: herald_amqp::Limits::default() },
                backend.clone(),
                state.shutdown.clone(),
            )
            .await
            .with_context(|| {
                format!("cannot listen for AMQP on {addr}: is the port taken? Set --amqp-listen HOST:PORT (or off)")
            })?;
            amqp_addrs[i] = Some(l.local_addr()?);
            amqp.push(l);
        }
        let mut info = info;
        info.amqp_addr = amqp_addrs[0];
        info.amqp_plain_addr = amqp_addrs[1];
        Ok(Self {
            data_lock,
            listener,
            amqp,
            state,
            tls,
            info,
        })
    }

    /// Runs the node's duties and listeners until `shutdown` is cancelled,
    /// then drains open connections and waits for the duties to stop.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            data_lock,
            listener,
            amqp,
            state,
            tls,
            info,
        } = self;
        {
            // Long polls and streams end on the state's own token.
            let inner = state.shutdown.clone();
            let outer = shutdown.clone();
            tokio::spawn(async move {
                outer.cancelled().await;
                inner.cancel();
            });
        }
        let duties = duties::start(node_duties(&state, &info), &state.storage, &shutdown);
        let amqp_tasks: Vec<_> = amqp.into_iter().map(|l| tokio::spawn(l.serve())).collect();
        let limits = herald_server::https::Limits::from_config(&state.config);
        let app = herald_server::api::router(state);
        tracing::info!(url = %info.url, storage = info.storage, data_dir = %info.data_dir.display(), "herald is listening");
        herald_server::https::serve(listener, tls, app, shutdown, limits).await;
        for task in amqp_tasks {
            let _ = task.await;
        }
        for duty in duties {
            let _ = duty.await;
        }
        drop(data_lock);
        tracing::info!("herald stopped");
        Ok(())
    }
}

/// Every background duty of this node, as the domains declare them.
fn node_duties(state: &AppState, info: &StartInfo) -> Vec<herald_core::duty::Duty> {
    let config = &state.config;
    let mut duties = Vec::new();
    duties.extend(
        state
            .vault
            .duties(Duration::from_millis(config.lifecycle_interval_ms)),
    );
    duties.extend(state.router.duties(Duration::from_secs(
        config.event_retention_hours.saturating_mul(3600),
    )));
    duties.push(wakeups::duty(
        state.storage.clone(),
        state.router.clone(),
        state.automation.clone(),
    ));
    duties.extend(state.delivery.duties());
    duties.extend(state.automation.duties());
    duties.extend(state.hubs.duties());
    if config.automation_slots > 0 {
        let host = Arc::new(herald_automation::worker::LocalHost {
            service: state.automation.clone(),
            group: herald_automation::service::BUILTIN_GROUP.to_owned(),
            worker_id: format!("local-{}", uuid::Uuid::now_v7()),
        });
        let cfg = local_runner_config(state, info, host.worker_id.clone());
        duties.push(herald_automation::worker::pool_duty(host, cfg));
    }
    duties
}

/// What jobs of the built-in pool get: the server's address, its CA, the
/// vault host scheme, and the `herald` binary on PATH.
fn local_runner_config(
    state: &AppState,
    info: &StartInfo,
    worker_id: String,
) -> herald_automation::worker::RunnerConfig {
    let mut env = vec![
        (
            "HERALD_ADDR".to_owned(),
            format!("https://127.0.0.1:{}", info.addr.port()),
        ),
        (
            "HERALD_VAULT_BASE".to_owned(),
            state.config.vault_base.clone(),
        ),
    ];
    let ca = info
        .ca_path
        .clone()
        .or_else(|| state.config.tls_cert.clone());
    if let Some(ca) = ca.and_then(|p| std::fs::canonicalize(p).ok()) {
        env.push(("HERALD_CACERT".to_owned(), ca.display().to_string()));
    }
    let herald = state.config.herald_bin.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .filter(|p| p.file_name().is_some_and(|n| n == "herald"))
    });
    let path_dirs = herald
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .into_iter()
        .collect();
    herald_automation::worker::RunnerConfig {
        worker_id,
        slots: state.config.automation_slots,
        level: state.sandbox,
        env,
        path_dirs,
        work_root: None,
        heartbeat: Duration::from_secs((state.config.automation_lease_secs / 3).max(1)),
        hidden: job_hidden_paths(&state.config),
        // In the data dir, which jobs cannot see.
        attempts_dir: Some(state.config.data_dir.join("job-attempts")),
    }
}

/// What jobs must not see: the data dir (master key, database, TLS keys,
/// blobs) and a configured TLS key kept elsewhere.
fn job_hidden_paths(config: &Config) -> Vec<std::path::PathBuf> {
    [Some(&config.data_dir), config.tls_key.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

/// Makes the data dir the server's alone, whatever the umask: 0700 for it
/// and its `tls` dir, 0600 for the master key, the SQLite files and the TLS
/// keys. At the `rlimits` sandbox level this is what keeps a job (uid 65534)
/// out; at the others it is a second wall.
fn restrict_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let set = |p: &std::path::Path, mode: u32| -> anyhow::Result<()> {
        match std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!(
                "cannot restrict {} to {mode:o}: {e}",
                p.display()
            )),
        }
    };
    set(dir, 0o700)?;
    set(&dir.join("tls"), 0o700)?;
    for f in [
        "master.key",
        "herald.db",
        "herald.db-wal",
        "herald.db-shm",
        "herald.db-journal",
    ] {
        set(&dir.join(f), 0o600)?;
    }
    for f in ["ca.key", "server.key"] {
        set(&dir.join("tls").join(f), 0o600)?;
    }
    Ok(())
}
