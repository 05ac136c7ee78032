//! One Herald server per test, on a random port and a fresh data dir, spoken
//! to over real HTTPS with a client that trusts only the server's own CA.

use herald_node::Node;
use herald_server::Config;
use herald_storage::{Durability, Storage};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The admin token every test server is started with (HERALD_ADMIN_TOKEN).
pub const TOKEN: &str = "hrd_it-admin-token-5f0c2a9e7d1b4c38";
/// The api-version added to vault requests that carry none.
pub const API: &str = "7.6";
/// The vault served on `localhost` and IP hosts.
pub const DEFAULT: &str = "default";
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";

pub fn not_found_message(name: &str) -> String {
    format!(
        "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
    )
}

pub fn deleted_conflict_message(name: &str) -> String {
    format!(
        "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
    )
}

pub fn vault_topic(vault: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/herald/providers/Microsoft.KeyVault/vaults/{vault}"
    )
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// 32 lower-case hex characters, as Key Vault versions are.
pub fn is_version(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The version segment of a versioned secret id.
pub fn version_of(id: &str) -> String {
    let v = id.rsplit('/').next().expect("id has segments").to_owned();
    assert!(is_version(&v), "not a versioned id: {id}");
    v
}

/// Sends every host to the loopback interface: `*.vault.localhost` must reach
/// the test server whatever the OS resolver thinks. The URL's port is kept.
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

/// A client that trusts exactly the given CA file (HTTP/2 via ALPN).
pub fn client_for(ca_path: &Path) -> reqwest::Client {
    builder_for(ca_path)
        .build()
        .expect("build the HTTPS client")
}

/// Like [`client_for`] but HTTP/1.1 only, as Python's `requests` speaks:
/// the vault then comes from the `Host` header, not `:authority`.
pub fn http1_client_for(ca_path: &Path) -> reqwest::Client {
    builder_for(ca_path)
        .http1_only()
        .build()
        .expect("build the HTTP/1.1 client")
}

fn builder_for(ca_path: &Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(ca_path).expect("read the generated CA");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA is PEM"))
        .tls_built_in_root_certs(false)
        .dns_resolver(Arc::new(Loopback))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

/// A response, read completely; `json` is `Null` for empty or non-JSON bodies.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error.code>")
    }

    pub fn message(&self) -> &str {
        self.json["error"]["message"]
            .as_str()
            .unwrap_or("<no error.message>")
    }

    pub fn inner(&self) -> Option<&str> {
        self.json["error"]["innererror"]["code"].as_str()
    }

    /// Asserts the status and returns the body, showing the body on failure.
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        &self.json
    }

    /// Asserts an error status with the `{"error":{"code","message"}}` envelope.
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert!(
            self.json["error"]["message"].is_string(),
            "error body lacks error.message: {}",
            self.text
        );
        assert_eq!(self.code(), code, "error code; body: {}", self.text);
    }
}

pub async fn read(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("read the response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub port: u16,
    pub token: String,
    pub tenant: String,
    pub ca_path: PathBuf,
    pub client: reqwest::Client,
    /// Kept alive for the whole test, across restarts.
    pub data_dir: TempDir,
    shutdown: CancellationToken,
    serving: Option<JoinHandle<anyhow::Result<()>>>,
    storage: tokio::sync::OnceCell<Arc<dyn Storage>>,
    tweak: Option<ConfigTweak>,
    /// The test's own PostgreSQL database, when the suite runs on PostgreSQL.
    pub database: Option<String>,
}

struct Booted {
    info: herald_node::StartInfo,
    shutdown: CancellationToken,
    serving: JoinHandle<anyhow::Result<()>>,
}

/// Changes made to a test server's [`Config`] before it boots (and reboots).
pub type ConfigTweak = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// The PostgreSQL server the suite also runs on: HERALD_TEST_DATABASE_URL.
/// Unset, the suite runs on the embedded SQLite only.
pub fn pg_admin_url() -> Option<String> {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A fresh PostgreSQL database per test, so tests never share state.
pub async fn fresh_database() -> Option<String> {
    Some(create_database(&pg_admin_url()?).await)
}

/// Creates an empty database on the server `admin` points at; returns its URL.
pub async fn create_database(admin: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required here but unreachable: {e}"));
    let name = format!("herald_it_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    format!("{base}/{name}")
}

async fn boot(
    data_dir: &Path,
    listener: TcpListener,
    tweak: Option<&ConfigTweak>,
    database: Option<&str>,
) -> Booted {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        listen: listener.local_addr().expect("bound address"),
        admin_token: Some(TOKEN.into()),
        lifecycle_interval_ms: 200,
        database: database.map(str::to_owned),
        // Every test server has its own AMQP ports.
        amqp_listen: "127.0.0.1:0".into(),
        amqp_plain_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    if let Some(t) = tweak {
        t(&mut config);
    }
    let server = Node::build(config, listener).await.expect("server builds");
    let info = server.info.clone();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    Booted {
        info,
        shutdown,
        serving,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn(None).await
}

/// Like [`spawn_app`], with `tweak` applied to the server's [`Config`] on
/// every boot (restarts included).
pub async fn spawn_app_with(tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> TestApp {
    spawn(Some(Arc::new(tweak))).await
}

async fn spawn(tweak: Option<ConfigTweak>) -> TestApp {
    let dir = tempfile::tempdir().expect("temp data dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
    let database = fresh_database().await;
    let b = boot(dir.path(), listener, tweak.as_ref(), database.as_deref()).await;
    let ca_path = b.info.ca_path.clone().expect("a generated CA");
    TestApp {
        addr: b.info.addr,
        port: b.info.addr.port(),
        token: TOKEN.into(),
        tenant: b.info.tenant_id.clone(),
        client: client_for(&ca_path),
        ca_path,
        data_dir: dir,
        shutdown: b.shutdown,
        serving: Some(b.serving),
        storage: tokio::sync::OnceCell::new(),
        tweak,
        database,
    }
}

impl TestApp {
    /// Stops serving (as on SIGTERM) and waits for the server to finish.
    pub async fn stop(&mut self) {
        // Drop pooled connections first so the graceful drain has nothing to wait for.
        self.client = client_for(&self.ca_path);
        self.shutdown.cancel();
        if let Some(serving) = self.serving.take() {
            tokio::time::timeout(Duration::from_secs(20), serving)
                .await
                .expect("server stops within 20 s")
                .expect("serve task did not panic")
                .expect("serve returned Ok");
        }
    }

    /// Stops, then starts a new server on the same data dir and port, so
    /// ids and event URLs stay the same.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot rebind {}: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let b = boot(
            self.data_dir.path(),
            listener,
            self.tweak.as_ref(),
            self.database.as_deref(),
        )
        .await;
        assert_eq!(b.info.tenant_id, self.tenant, "tenant survives a restart");
        self.shutdown = b.shutdown;
        self.serving = Some(b.serving);
        self.client = client_for(&self.ca_path);
    }

    /// `https://host:port` of a vault, as Key Vault clients address it.
    pub fn vault_origin(&self, vault: &str) -> String {
        if vault == DEFAULT {
            format!("https://localhost:{}", self.port)
        } else {
            format!("https://{vault}.vault.localhost:{}", self.port)
        }
    }

    /// Full URL of a vault request, adding `api-version` if it has none.
    pub fn vault_url(&self, vault: &str, path_and_query: &str) -> String {
        let mut url = format!("{}{path_and_query}", self.vault_origin(vault));
        if !path_and_query.contains("api-version=") {
            url.push(if path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            url.push_str("api-version=");
            url.push_str(API);
        }
        url
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        read(req.send().await.expect("request reaches the server")).await
    }

    /// An authenticated vault data-plane request.
    pub async fn kv(
        &self,
        method: Method,
        vault: &str,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self
            .client
            .request(method, self.vault_url(vault, path_and_query))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// GET of an absolute URL (a `nextLink`) with the token.
    pub async fn get_url(&self, url: &str) -> Resp {
        self.send(self.client.get(url).bearer_auth(&self.token))
            .await
    }

    /// An authenticated management API request under `/api/v1/vaults`.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let url = format!("https://localhost:{}/api/v1/vaults{path}", self.port);
        let mut req = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    pub async fn create_vault(&self, body: Value) -> Value {
        self.admin(Method::POST, "", Some(body))
            .await
            .expect(201)
            .clone()
    }

    /// PUT a secret with the given body; asserts 200 and returns the bundle.
    pub async fn set(&self, vault: &str, name: &str, body: Value) -> Value {
        self.kv(Method::PUT, vault, &format!("/secrets/{name}"), Some(body))
            .await
            .expect(200)
            .clone()
    }

    pub async fn set_value(&self, vault: &str, name: &str, value: &str) -> Value {
        self.set(vault, name, serde_json::json!({ "value": value }))
            .await
    }

    /// Every item of a paged listing, following absolute `nextLink`s.
    pub async fn list_all(&self, vault: &str, path_and_query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut resp = self.kv(Method::GET, vault, path_and_query, None).await;
        for _ in 0..1000 {
            let page = resp.expect(200);
            items.extend(
                page["value"]
                    .as_array()
                    .expect("value array")
                    .iter()
                    .cloned(),
            );
            match page["nextLink"].as_str() {
                Some(next) if !next.is_empty() => resp = self.get_url(next).await,
                _ => return items,
            }
        }
        panic!("listing never ended");
    }

    /// The server's storage, opened a second time for inspection.
    pub async fn storage(&self) -> Arc<dyn Storage> {
        self.storage
            .get_or_init(|| async {
                let url = self.database.clone().unwrap_or_else(|| {
                    format!("sqlite://{}/herald.db", self.data_dir.path().display())
                });
                herald_storage::open(&url, Durability::Normal)
                    .await
                    .expect("open the server's database")
            })
            .await
            .clone()
    }

    /// Every event in a vault's system topic log, oldest first, as JSON.
    pub async fn events(&self, vault: &str) -> Vec<Value> {
        let storage = self.storage().await;
        let v = storage
            .vault_by_name(vault)
            .await
            .expect("read vault")
            .expect("vault exists");
        let topic = storage
            .topic_for_vault(&v.id)
            .await
            .expect("read topic")
            .expect("vault has a system topic");
        storage
            .read_events(&topic.id, 0, 100_000)
            .await
            .expect("read events")
            .iter()
            .map(|e| serde_json::to_value(&e.event).expect("event serializes"))
            .collect()
    }
}

/// Polls `f` every 100 ms until it yields a value; panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
