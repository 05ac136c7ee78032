//! The CLI's HTTP client: address, token and CA trust from the environment,
//! and errors that say what to do.

use anyhow::{Context, anyhow, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;

/// How to reach a running server; shared by every client command.
/// Flags win over `HERALD_*` variables, which win over `herald login`.
#[derive(Args, Clone, Debug)]
pub(crate) struct Conn {
    /// Server address [default: from `herald login`, else https://127.0.0.1:8443]
    #[arg(long, env = "HERALD_ADDR", global = true)]
    pub(crate) addr: Option<String>,
    /// CA certificate to trust [default: from `herald login`, else ./herald-data/tls/ca.pem]
    #[arg(long, env = "HERALD_CACERT", global = true)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// What `herald login` stores (mode 0600): the address, token and CA.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone, Debug)]
pub(crate) struct Login {
    pub(crate) addr: String,
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) ca_cert: Option<PathBuf>,
}

impl Login {
    pub(crate) fn path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("HERALD_CONFIG_DIR") {
            return Some(PathBuf::from(dir).join("login.json"));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("herald").join("login.json"))
    }

    pub(crate) fn load() -> Option<Self> {
        let text = std::fs::read_to_string(Self::path()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(crate) fn save(&self) -> anyhow::Result<PathBuf> {
        let path = Self::path().context("no HOME or HERALD_CONFIG_DIR to store the login in")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_vec_pretty(self)?;
        write_private(&path, &text)?;
        Ok(path)
    }
}

/// Writes a file readable by its owner only (it holds a token).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

pub(crate) struct Client {
    addr: String,
    token: String,
    ca: Option<reqwest::Certificate>,
    http: reqwest::Client,
}

fn token_from_env(login: Option<&Login>) -> anyhow::Result<String> {
    std::env::var("HERALD_TOKEN")
        .or_else(|_| std::env::var("HERALD_ADMIN_TOKEN"))
        .ok()
        .or_else(|| login.map(|l| l.token.clone()))
        .ok_or_else(|| {
            anyhow!("no token: run `herald login`, or export HERALD_TOKEN=<the admin token `herald serve` printed at first start>")
        })
}

impl Client {
    pub(crate) fn new(conn: &Conn) -> anyhow::Result<Self> {
        let login = Login::load();
        let token = token_from_env(login.as_ref())?;
        Self::build(conn, login, token)
    }

    /// A client with an explicit token (checking a login before saving it).
    pub(crate) fn with_token(conn: &Conn, token: &str) -> anyhow::Result<Self> {
        Self::build(conn, None, token.to_owned())
    }

    fn build(conn: &Conn, login: Option<Login>, token: String) -> anyhow::Result<Self> {
        let ca_path = conn
            .ca_cert
            .clone()
            .or_else(|| login.as_ref().and_then(|l| l.ca_cert.clone()))
            .or_else(|| Some(PathBuf::from("herald-data/tls/ca.pem")).filter(|p| p.exists()));
        let ca = match &ca_path {
            Some(p) => Some(
                reqwest::Certificate::from_pem(
                    &std::fs::read(p)
                        .with_context(|| format!("cannot read CA file {}", p.display()))?,
                )
                .with_context(|| format!("{} is not a PEM certificate", p.display()))?,
            ),
            None => None,
        };
        let addr = conn
            .addr
            .clone()
            .or_else(|| login.map(|l| l.addr))
            .unwrap_or_else(|| "https://127.0.0.1:8443".to_owned());
        let http = builder(&ca).build()?;
        Ok(Self {
            addr: addr.trim_end_matches('/').to_owned(),
            token,
            ca,
            http,
        })
    }

    /// Calls the management API.
    pub(crate) async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.addr);
        send(&self.http, &self.addr, method, &url, &self.token, body).await
    }

    /// Sends a raw body (publishing); `content_type` as given.
    pub(crate) async fn raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.addr);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| explain_transport(e, &self.addr))?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        bail!(
            "{} ({status}): {}",
            parsed["error"]["code"].as_str().unwrap_or("Error"),
            parsed["error"]["message"].as_str().unwrap_or(text.as_str())
        )
    }

    /// Sends raw text with PUT (runbook content) and returns the JSON answer.
    pub(crate) async fn put_text(&self, path: &str, body: String) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.addr);
        let resp = self
            .http
            .put(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| explain_transport(e, &self.addr))?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        Err(api_error(status, &text))
    }

    /// GETs a text resource (job output, runbook content).
    pub(crate) async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self.get_stream(path, "text/plain").await?;
        Ok(resp.text().await?)
    }

    /// GETs a response to read incrementally (server-sent events).
    pub(crate) async fn get_stream(
        &self,
        path: &str,
        accept: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.addr);
        // No overall timeout: a followed job may run for hours.
        let http = builder(&self.ca)
            .timeout(std::time::Duration::from_secs(365 * 86_400))
            .build()?;
        let resp = http
            .get(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| explain_transport(e, &self.addr))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(resp)
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// A client bound to one vault's host, the way Key Vault clients address it.
    pub(crate) async fn vault(&self, name: &str) -> anyhow::Result<VaultClient> {
        let uri = match std::env::var("HERALD_VAULT_BASE") {
            // Inside a runbook job: the job token reaches the data plane only.
            Ok(base) if self.token.starts_with("hjt_") => {
                let server = reqwest::Url::parse(&self.addr)?;
                let port = server.port_or_known_default().unwrap_or(443);
                format!("https://{name}.{base}:{port}")
            }
            _ => {
                let info = self
                    .api(Method::GET, &format!("/api/v1/vaults/{name}"), None)
                    .await?;
                info["vaultUri"]
                    .as_str()
                    .ok_or_else(|| anyhow!("server returned no vaultUri for vault {name}"))?
                    .to_owned()
            }
        };
        Ok(VaultClient {
            http: self.for_host(&uri).await?,
            uri,
            token: self.token.clone(),
        })
    }

    /// An HTTP client for a by-host endpoint (a vault, a hub namespace).
    /// `*.localhost` names may not resolve here; they go to the server we reach.
    pub(crate) async fn for_host(&self, uri: &str) -> anyhow::Result<reqwest::Client> {
        let mut b = builder(&self.ca);
        let host = reqwest::Url::parse(uri)?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        if host.ends_with(".localhost") {
            let server = reqwest::Url::parse(&self.addr)?;
            let port = server.port_or_known_default().unwrap_or(443);
            let target = server
                .host_str()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']']);
            if let Some(addr) = tokio::net::lookup_host((target, port)).await?.next() {
                b = b.resolve(&host, addr);
            }
        }
        Ok(b.build()?)
    }
}

fn builder(ca: &Option<reqwest::Certificate>) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60));
    if let Some(c) = ca {
        b = b.add_root_certificate(c.clone());
    }
    b
}

pub(crate) struct VaultClient {
    pub(crate) uri: String,
    token: String,
    http: reqwest::Client,
}

pub(crate) const API_VERSION: &str = "7.6";

impl VaultClient {
    pub(crate) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{path_and_query}{sep}api-version={API_VERSION}", self.uri);
        send(&self.http, &self.uri, method, &url, &self.token, body).await
    }
}

async fn send(
    http: &reqwest::Client,
    addr: &str,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.map_err(|e| explain_transport(e, addr))?;
    let status = resp.status();
    let text = resp.text().await?;
    if status.is_success() {
        return Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).context("server sent invalid JSON")?
        });
    }
    Err(api_error(status, &text))
}

fn api_error(status: StatusCode, text: &str) -> anyhow::Error {
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = parsed["error"]["code"].as_str().unwrap_or("Error");
    let msg = parsed["error"]["message"].as_str().unwrap_or(text);
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            "\nhint: export HERALD_TOKEN=<admin token printed by `herald serve` at first start>"
        }
        _ => "",
    };
    anyhow!("{code} ({status}): {msg}{hint}")
}

fn explain_transport(e: reqwest::Error, addr: &str) -> anyhow::Error {
    let text = format!("{e:?}");
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        anyhow!(
            "TLS: the server's certificate is not trusted. Point HERALD_CACERT (or --ca-cert) at DATA_DIR/tls/ca.pem"
        )
    } else if e.is_connect() {
        anyhow!(
            "cannot reach Herald at {addr}: is `herald serve` running? Set HERALD_ADDR to its address"
        )
    } else {
        anyhow!("request to {addr} failed: {e}")
    }
}
