//! Configuration in layers: built-in defaults, then a TOML file, then
//! `HERALD_*` environment variables, then command-line flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the embedded database, TLS material and master key live.
    pub data_dir: PathBuf,
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// Storage URL: empty means embedded SQLite in the data dir; postgres://USER@HOST/DB
    /// shares one PostgreSQL among several nodes (add ?sslmode=require for TLS).
    pub database: Option<String>,
    /// `normal` survives a process crash; `full` also fsyncs every commit.
    pub durability: String,
    /// Parent domain of vault hosts: vault `payments` is `payments.{vault_base}`.
    pub vault_base: String,
    /// Parent domain of hub namespaces: namespace `orders` is `orders.{hub_base}`.
    pub hub_base: String,
    /// Parent domain of storage accounts: account `logs` is `logs.{blob_base}`.
    pub blob_base: String,
    /// Where blob content goes: unset = DATA_DIR/blobs, or s3://bucket[/prefix]
    /// (credentials and endpoint from AWS_* variables) when nodes share it.
    pub blob_url: Option<String>,
    /// AMQP 1.0 over TLS for the Event Hubs SDKs (`HOST:PORT`, or `off`).
    pub amqp_listen: String,
    /// Plaintext AMQP for `UseDevelopmentEmulator=true` connection strings
    /// (`HOST:PORT`); off unless set.
    pub amqp_plain_listen: Option<String>,
    /// Port written into ids and event URLs; defaults to the bound port.
    pub public_port: Option<u16>,
    /// Initial admin token (HERALD_ADMIN_TOKEN); generated when unset.
    pub admin_token: Option<String>,
    /// Base64 master key (HERALD_MASTER_KEY); else DATA_DIR/master.key.
    pub master_key: Option<String>,
    /// PEM certificate chain and key to serve instead of the generated ones.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How often expiry events and scheduled purges are checked, in ms.
    pub lifecycle_interval_ms: u64,
    /// Near-expiry window of the default vault, in seconds.
    pub near_expiry_window_secs: i64,
    /// ARM scope stamped on event topics.
    pub subscription_id: String,
    pub resource_group: String,
    /// `text` or `json`.
    pub log_format: String,
    /// CIDRs webhook deliveries may reach although private or loopback
    /// (HERALD_DELIVERY_ALLOWED_CIDRS=127.0.0.0/8,10.0.0.0/8).
    pub delivery_allowed_cidrs: Vec<String>,
    /// Multiplies Event Grid's retry schedule; e.g. 0.01 turns 10 s into 100 ms for demos and tests.
    pub delivery_retry_scale: f64,
    /// Base URL clients use to reach this server (validation links); default https://localhost:PORT.
    pub public_url: Option<String>,
    /// Where dead-letter objects go: unset = DATA_DIR/deadletters, or s3://bucket[/prefix]
    /// (credentials and endpoint from AWS_* variables).
    pub dead_letter_url: Option<String>,
    /// Jobs the built-in worker pool runs at once (0 turns the pool off).
    pub automation_slots: usize,
    /// Job sandbox: auto (best available), bwrap, unshare, rlimits or none.
    pub sandbox: String,
    /// Seconds a worker's job lease lasts without a heartbeat.
    pub automation_lease_secs: u64,
    /// Days finished jobs are kept.
    pub job_retention_days: u64,
    /// Hours a topic's events are kept at most, delivered or not; events
    /// every subscription is done with go sooner.
    pub event_retention_hours: u64,
    /// The `herald` binary runbooks call (for `herald secret set`, `herald asset get`);
    /// default: this executable.
    pub herald_bin: Option<PathBuf>,
    /// The tenant tokens are issued in (a GUID or a domain-like name);
    /// default: a GUID generated at first start and kept in storage.
    pub tenant_id: Option<String>,
    /// Lifetime of access tokens from the token endpoint, in seconds.
    pub token_lifetime_secs: i64,
    /// HTTPS connections served at once; unset = 80 % of the open-file
    /// limit less a reserve. At the cap the quietest connection is closed
    /// to make room.
    pub max_connections: Option<usize>,
    /// The TLS handshake must finish within this, in ms.
    pub handshake_timeout_ms: u64,
    /// A request head must arrive within this of its first byte (and the
    /// first request within this of the handshake), in ms.
    pub request_head_timeout_ms: u64,
    /// A connection with no request in flight is closed after this, in ms.
    pub idle_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let scope = herald_core::ArmScope::default();
        Self {
            data_dir: PathBuf::from("herald-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            database: None,
            durability: "normal".into(),
            vault_base: "vault.localhost".into(),
            hub_base: "servicebus.localhost".into(),
            blob_base: "blob.localhost".into(),
            blob_url: None,
            amqp_listen: "127.0.0.1:5671".into(),
            amqp_plain_listen: None,
            public_port: None,
            admin_token: None,
            master_key: None,
            tls_cert: None,
            tls_key: None,
            lifecycle_interval_ms: 1000,
            near_expiry_window_secs: herald_core::vault::DEFAULT_NEAR_EXPIRY_SECS,
            subscription_id: scope.subscription_id,
            resource_group: scope.resource_group,
            log_format: "text".into(),
            delivery_allowed_cidrs: Vec::new(),
            delivery_retry_scale: 1.0,
            public_url: None,
            dead_letter_url: None,
            automation_slots: 8,
            sandbox: "auto".into(),
            automation_lease_secs: 30,
            job_retention_days: 30,
            // The longest eventTimeToLive a subscription may have (P7D).
            event_retention_hours: 168,
            herald_bin: None,
            tenant_id: None,
            // Entra ID's default lifetime for app tokens is about an hour.
            token_lifetime_secs: 3600,
            max_connections: None,
            handshake_timeout_ms: 10_000,
            request_head_timeout_ms: 10_000,
            // nginx's keepalive_timeout.
            idle_timeout_ms: 75_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
}

impl Config {
    /// Loads defaults < `file` (or `herald.toml` if present) < env < `overrides`.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                if !f.exists() {
                    return Err(ConfigError::Invalid(format!(
                        "config file {} does not exist",
                        f.display()
                    )));
                }
                fig = fig.merge(Toml::file(f));
            }
            None => fig = fig.merge(Toml::file("herald.toml")),
        }
        // HERALD_ADDR/HERALD_TOKEN/HERALD_CONFIG belong to the CLI, not the server.
        let mut env = Env::prefixed("HERALD_").ignore(&[
            "addr",
            "token",
            "config",
            "cacert",
            "delivery_allowed_cidrs",
        ]);
        // A comma-separated list in one variable, as operators write it.
        if let Ok(list) = std::env::var("HERALD_DELIVERY_ALLOWED_CIDRS") {
            let cidrs: Vec<String> = list
                .split(',')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect();
            fig = fig.merge(Serialized::default("delivery_allowed_cidrs", cidrs));
        }
        env = env.split("__");
        let cfg: Config = fig
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !matches!(self.durability.as_str(), "normal" | "full") {
            return bad(format!(
                "durability must be 'normal' or 'full', got '{}'",
                self.durability
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(format!(
                "log_format must be 'text' or 'json', got '{}'",
                self.log_format
            ));
        }
        for (key, base) in [
            ("vault_base", &self.vault_base),
            ("hub_base", &self.hub_base),
            ("blob_base", &self.blob_base),
        ] {
            if base.is_empty()
                || !base.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                return bad(format!("{key} '{base}' is not a valid domain name"));
            }
        }
        if self.amqp_listen != "off" && self.amqp_listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!(
                "amqp_listen '{}' must be HOST:PORT (e.g. 0.0.0.0:5671) or off",
                self.amqp_listen
            ));
        }
        if let Some(a) = &self.amqp_plain_listen
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(format!(
                "amqp_plain_listen '{a}' must be HOST:PORT, e.g. 127.0.0.1:5672"
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be set together".into());
        }
        for c in &self.delivery_allowed_cidrs {
            if c.parse::<ipnet::IpNet>().is_err() {
                return bad(format!(
                    "delivery_allowed_cidrs: '{c}' is not a CIDR such as 127.0.0.0/8"
                ));
            }
        }
        if !matches!(
            self.sandbox.as_str(),
            "auto" | "bwrap" | "unshare" | "rlimits" | "none"
        ) {
            return bad(format!(
                "sandbox must be auto, bwrap, unshare, rlimits or none, got '{}'",
                self.sandbox
            ));
        }
        if !(2..=3600).contains(&self.automation_lease_secs) {
            return bad("automation_lease_secs must be 2..3600".into());
        }
        if self.automation_slots > 1024 {
            return bad("automation_slots must be at most 1024".into());
        }
        if !(self.delivery_retry_scale > 0.0 && self.delivery_retry_scale <= 1.0) {
            return bad("delivery_retry_scale must be greater than 0 and at most 1".into());
        }
        if let Some(u) = &self.dead_letter_url
            && !u.starts_with("s3://")
        {
            return bad(format!(
                "dead_letter_url '{u}' must be s3://bucket[/prefix]; leave it unset for DATA_DIR/deadletters"
            ));
        }
        if self.event_retention_hours == 0 {
            return bad("event_retention_hours must be at least 1".into());
        }
        if self.lifecycle_interval_ms == 0 {
            return bad("lifecycle_interval_ms must be at least 1".into());
        }
        if self.near_expiry_window_secs < 0 {
            return bad("near_expiry_window_secs must not be negative".into());
        }
        if let Some(t) = &self.admin_token
            && t.len() < 16
        {
            return bad("admin_token (HERALD_ADMIN_TOKEN) must be at least 16 characters".into());
        }
        if !(1..=86_400).contains(&self.token_lifetime_secs) {
            return bad("token_lifetime_secs must be 1..86400".into());
        }
        if let Some(t) = &self.tenant_id
            && (t.is_empty()
                || t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        {
            return bad(format!(
                "tenant_id '{t}' must be a GUID or a name of letters, digits, '-' and '.'"
            ));
        }
        if self.max_connections == Some(0) {
            return bad("max_connections must be at least 1".into());
        }
        for (key, ms) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("request_head_timeout_ms", self.request_head_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(1..=86_400_000).contains(&ms) {
                return bad(format!("{key} must be 1..86400000 (a day)"));
            }
        }
        if let Some(db) = &self.database
            && !["sqlite://", "postgres://", "postgresql://"]
                .iter()
                .any(|p| db.starts_with(p))
        {
            return bad(format!(
                "database '{db}' is not supported: use sqlite://PATH or postgres://USER@HOST:5432/DB"
            ));
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("herald.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_validation() {
        #[derive(Serialize)]
        struct Flags {
            durability: &'static str,
        }
        let c = Config::load(None, Flags { durability: "full" }).unwrap();
        assert_eq!(c.durability, "full");
        assert!(Config::load(None, Flags { durability: "fast" }).is_err());
        let dir = tempfile_dir();
        let f = dir.join("h.toml");
        std::fs::write(
            &f,
            "vault_base = \"kv.internal\"\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        #[derive(Serialize)]
        struct None_ {}
        let c = Config::load(Some(&f), None_ {}).unwrap();
        assert_eq!(c.vault_base, "kv.internal");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.event_retention_hours, 168);
        std::fs::write(&f, "event_retention_hours = 0\n").unwrap();
        assert!(Config::load(Some(&f), None_ {}).is_err());
        std::fs::write(&f, "event_retention_hours = 1\n").unwrap();
        assert_eq!(
            Config::load(Some(&f), None_ {})
                .unwrap()
                .event_retention_hours,
            1
        );
        std::fs::write(&f, "listen = \"nope\"\n").unwrap();
        assert!(Config::load(Some(&f), None_ {}).is_err());
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("herald-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
