//! Start-up and the HTTPS accept loop.

use crate::api;
use crate::auth::{TokenCache, hash_token};
use crate::config::Config;
use crate::state::{AppState, VaultCache};
use anyhow::Context;
use herald_core::ArmScope;
use herald_core::seal::MasterKey;
use herald_core::vault::VaultSettings;
use herald_storage::{Durability, TokenRecord};
use herald_vault::{VaultService, VaultUrls};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
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
}

pub struct Server {
    listener: TcpListener,
    state: AppState,
    tls: TlsAcceptor,
    pub info: StartInfo,
}

const KEY_CHECK: &str = "master_key_check";

impl Server {
    /// Prepares everything (data dir, storage, keys, TLS) on an already-bound
    /// listener, so tests can bind port 0 and read the port back.
    pub async fn build(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
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

        let tenant_id = storage
            .init_setting("tenant_id", &uuid::Uuid::new_v4().to_string())
            .await?;

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
                let files = crate::tls::ensure_generated(&config.data_dir, &config.vault_base)?;
                (files.cert, files.key, Some(files.ca))
            }
        };
        let tls = TlsAcceptor::from(crate::tls::server_config(&cert, &key)?);

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
        let vault = VaultService::new(storage.clone(), master, scope, urls.clone());
        let delivery = delivery.with_secret_resolver(Arc::new(VaultResolver(vault.clone())));
        vault
            .ensure_default_vault(VaultSettings {
                near_expiry_secs: config.near_expiry_window_secs,
                ..VaultSettings::default()
            })
            .await?;

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
        tracing::info!(sandbox = %sandbox, runbook_types = ?herald_automation::sandbox::available_kinds(), "job sandbox chosen");

        let info = StartInfo {
            addr,
            url: format!("https://{addr}"),
            data_dir: config.data_dir.clone(),
            ca_path,
            generated_admin_token,
            default_vault_uri: urls.vault_uri(herald_vault::DEFAULT_VAULT),
            tenant_id: tenant_id.clone(),
            storage: storage.engine(),
        };
        let state = AppState {
            config: Arc::new(config),
            storage,
            vault,
            router,
            delivery,
            tokens: Arc::new(TokenCache::default()),
            vaults: Arc::new(VaultCache::default()),
            tenant_id: tenant_id.into(),
            metrics: crate::metrics_setup::handle(),
            automation,
            sandbox,
            shutdown: CancellationToken::new(),
        };
        Ok(Self {
            listener,
            state,
            tls,
            info,
        })
    }

    /// Serves until `shutdown` is cancelled, then drains open connections.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            tls,
            info,
        } = self;
        // Singleton duties: on several nodes, exactly one runs each at a time.
        let lifecycle = {
            let vault = state.vault.clone();
            let every = Duration::from_millis(state.config.lifecycle_interval_ms);
            tokio::spawn(as_singleton(
                state.storage.clone(),
                "vault-lifecycle",
                shutdown.clone(),
                move |stop| vault.clone().run_lifecycle(every, stop),
            ))
        };
        let sweeper = {
            let router = state.router.clone();
            let retention =
                Duration::from_secs(state.config.event_retention_hours.saturating_mul(3600));
            tokio::spawn(as_singleton(
                state.storage.clone(),
                "router-duties",
                shutdown.clone(),
                move |stop| run_router_duties(router.clone(), retention, stop),
            ))
        };
        tokio::spawn(run_wakeups(
            state.storage.clone(),
            state.router.clone(),
            state.automation.clone(),
            shutdown.clone(),
        ));
        let dispatcher = tokio::spawn(state.delivery.clone().run(shutdown.clone()));
        {
            let inner = state.shutdown.clone();
            let outer = shutdown.clone();
            tokio::spawn(async move {
                outer.cancelled().await;
                inner.cancel();
            });
        }
        let duties = {
            let automation = state.automation.clone();
            tokio::spawn(as_singleton(
                state.storage.clone(),
                "automation-duties",
                shutdown.clone(),
                move |stop| automation.clone().run_duties(stop),
            ))
        };
        if state.config.automation_slots > 0 {
            let host = std::sync::Arc::new(herald_automation::worker::LocalHost {
                service: state.automation.clone(),
                group: herald_automation::service::BUILTIN_GROUP.to_owned(),
                worker_id: format!("local-{}", uuid::Uuid::now_v7()),
            });
            let cfg = local_runner_config(&state, &info, host.worker_id.clone());
            tokio::spawn(herald_automation::worker::run(host, cfg, shutdown.clone()));
        }
        let app = api::router(state);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        tracing::info!(url = %info.url, storage = info.storage, data_dir = %info.data_dir.display(), "herald is listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't die.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            let service = TowerToHyperService::new(app.clone());
            let builder = builder.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: draining open connections");
        if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 10 s");
        }
        let _ = lifecycle.await;
        let _ = sweeper.await;
        let _ = dispatcher.await;
        let _ = duties.await;
        tracing::info!("herald stopped");
        Ok(())
    }
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
    }
}

/// Resolves secret delivery headers from the vault at send time.
struct VaultResolver(VaultService);

impl herald_delivery::SecretResolver for VaultResolver {
    fn resolve<'a>(
        &'a self,
        vault: &'a str,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send + 'a>>
    {
        Box::pin(async move {
            let v = self
                .0
                .vault(vault)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let name = herald_core::SecretName::parse(name)?;
            let (_, _, value) = self
                .0
                .get_secret(&v, &name, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(value)
        })
    }
}

/// Router housekeeping: expired subscriptions are deleted, as in Event Grid.
/// Runs `duty` only while this node holds the named singleton; another node
/// takes over within seconds when the holder dies (its lock dies with its
/// database connection).
async fn as_singleton<F, Fut>(
    storage: Arc<dyn herald_storage::Storage>,
    name: &'static str,
    shutdown: CancellationToken,
    duty: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut waiting_logged = false;
    loop {
        match storage.try_singleton(name).await {
            Ok(Some(guard)) => {
                if storage.engine() != "sqlite" {
                    tracing::info!(duty = name, "this node now runs the singleton duty");
                }
                duty(shutdown.clone()).await;
                drop(guard);
                return;
            }
            Ok(None) if !waiting_logged => {
                tracing::info!(duty = name, "another node runs this duty; standing by");
                waiting_logged = true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(duty = name, error = %e, "cannot take the singleton lock; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Turns other nodes' NOTIFY hints into local wake-ups.
async fn run_wakeups(
    storage: Arc<dyn herald_storage::Storage>,
    router: herald_router::RouterService,
    automation: herald_automation::AutomationService,
    shutdown: CancellationToken,
) {
    let Some(mut rx) = storage.wakeups() else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => m,
        };
        match msg {
            Ok(p) => {
                if let Some(topic) = p.strip_prefix("topic:") {
                    router.waker(topic).notify_waiters();
                } else if let Some(group) = p.strip_prefix("job:") {
                    automation.wake_group(group);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How often topic logs are pruned (event_retention_hours and consumed events).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

async fn run_router_duties(
    router: herald_router::RouterService,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first pass comes a period after taking the duty, so a start or a
    // takeover is not slowed by a whole pass over the logs.
    let mut prune =
        tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = router.sweep_expired_subscriptions().await {
                    tracing::error!(error = %e, "subscription expiry sweep failed; will retry");
                }
            }
            _ = prune.tick() => {
                // Each chunk commits on its own, so stopping halfway is safe.
                let pruned = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = router.prune_event_log(retention) => r,
                };
                match pruned {
                    Ok(n) if n > 0 => tracing::info!(events = n, "event log pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "pruning the event log failed; will retry"),
                }
            }
        }
    }
}

async fn put_admin(
    storage: &dyn herald_storage::Storage,
    token: &str,
    name: &str,
) -> anyhow::Result<()> {
    storage
        .put_token(
            &hash_token(token),
            &TokenRecord {
                id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
                name: name.into(),
                role: "admin".into(),
                created: chrono::Utc::now().timestamp(),
            },
        )
        .await?;
    Ok(())
}

/// Refuses to start with a master key that cannot open this data dir's
/// secrets, instead of failing later on every read.
async fn check_master_key(
    storage: &dyn herald_storage::Storage,
    master: &MasterKey,
) -> anyhow::Result<()> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let sealed = STANDARD.encode(master.seal_direct(b"herald", KEY_CHECK.as_bytes()));
    let stored = storage.init_setting(KEY_CHECK, &sealed).await?;
    let raw = STANDARD
        .decode(stored)
        .context("corrupt master key check")?;
    master.open_direct(&raw, KEY_CHECK.as_bytes()).map_err(|_| {
        anyhow::anyhow!(
            "the master key does not match this data dir: set HERALD_MASTER_KEY (or restore master.key) to the key it was created with"
        )
    })?;
    Ok(())
}
