//! The Automation service: the rules over the store. Runbooks, webhooks
//! (Azure's rules exactly), invocation into durable jobs, the lease protocol
//! workers speak, job tokens for vault access, and assets.

use crate::model::*;
use crate::sandbox::{RunbookKind, find_interpreter};
use base64::Engine;
use herald_core::seal::MasterKey;
use herald_storage::{
    AssetRecord, JobCreated, JobEnd, JobFilter, JobRecord, JobTransition, RunbookRecord, Storage,
    StreamRecord, WebhookPatch, WebhookRecord, WorkerRecord,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// The built-in worker group (Azure's cloud sandbox: `runOn` empty).
pub const BUILTIN_GROUP: &str = "";
/// Idempotency keys are remembered this long.
pub const IDEMPOTENCY_MS: i64 = 24 * 3600 * 1000;
/// Every job's streams together are capped here; each stream is capped at
/// 1 MiB by the runner.
pub const JOB_STREAM_BYTES: i64 = 6 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} '{name}' was not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// A webhook call that must be refused with a 400 and this code.
    #[error("{message}")]
    Webhook { code: &'static str, message: String },
    #[error("{0}")]
    RunbookGone(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("storage: {0}")]
    Storage(#[from] herald_storage::StorageError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Invalid> for AutomationError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e.0)
    }
}

pub type Result<T, E = AutomationError> = std::result::Result<T, E>;

fn not_found(what: &'static str, name: &str) -> AutomationError {
    AutomationError::NotFound {
        what,
        name: name.to_owned(),
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 32 CSPRNG bytes, base64url without padding (43 characters).
pub fn new_webhook_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[derive(Debug, Clone)]
pub struct AutomationSettings {
    /// `https://host:port` clients reach; webhook URLs are built on it.
    pub public_url: String,
    /// How long a worker's lease lasts without a heartbeat.
    pub lease: Duration,
    /// Restarts after a lost worker before a job is Suspended.
    pub max_restarts: i64,
    pub job_retention: Duration,
}

impl Default for AutomationSettings {
    fn default() -> Self {
        Self {
            public_url: "https://localhost:8443".into(),
            lease: Duration::from_secs(30),
            max_restarts: 3,
            job_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A runbook job announced to waiters: status changes and new records.
#[derive(Debug, Clone)]
pub struct JobChanged(pub Arc<str>);

/// What a worker receives for one leased job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeasedJob {
    pub job_id: String,
    pub runbook: String,
    pub kind: RunbookKind,
    pub script: String,
    /// The JSON written to `$HERALD_JOB_INPUT`.
    pub input: String,
    /// Job-scoped token for the vault and assets, valid for this lease.
    pub token: String,
    pub timeout_seconds: u64,
    pub allow_network: bool,
    pub memory_limit_mb: u64,
    /// Values the worker masks in every record (secure parameters).
    pub masks: Vec<String>,
}

/// A job who called with its token.
#[derive(Debug, Clone)]
pub struct JobPrincipal {
    pub job_id: String,
    pub runbook: String,
    pub permissions: Vec<Permission>,
}

/// What a webhook call produced.
#[derive(Debug, Clone)]
pub struct Invoked {
    pub job_id: String,
    /// True when an Idempotency-Key matched an earlier call.
    pub replayed: bool,
}

/// A record a worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedRecord {
    pub stream: String,
    pub text: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub time: Option<i64>,
}

/// How a worker says its job ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// Completed, Failed, Stopped, or TimedOut.
    pub outcome: String,
    #[serde(default)]
    pub details: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub records: Vec<ReportedRecord>,
}

type Frozen = Arc<(String, String)>;

struct Inner {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    settings: AutomationSettings,
    /// Wakes idle workers of a group when a job is queued.
    queued: Mutex<HashMap<String, Arc<Notify>>>,
    changes: broadcast::Sender<JobChanged>,
    /// Stop signals for jobs this node runs.
    local_stops: Mutex<HashMap<String, CancellationToken>>,
    /// Values fetched by a job (secrets, assets) that its records must hide.
    masks: Mutex<HashMap<String, Vec<String>>>,
    /// Published versions are immutable: (runbook id, version) → (content, params).
    version_cache: Mutex<HashMap<(String, i64), Frozen>>,
}

#[derive(Clone)]
pub struct AutomationService {
    inner: Arc<Inner>,
}

impl AutomationService {
    pub fn new(storage: Arc<dyn Storage>, master: MasterKey, settings: AutomationSettings) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Inner {
                storage,
                master,
                settings,
                queued: Mutex::default(),
                changes,
                local_stops: Mutex::default(),
                masks: Mutex::default(),
                version_cache: Mutex::default(),
            }),
        }
    }

    pub fn settings(&self) -> &AutomationSettings {
        &self.inner.settings
    }

    fn store(&self) -> &dyn Storage {
        &*self.inner.storage
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobChanged> {
        self.inner.changes.subscribe()
    }

    fn changed(&self, job_id: &str) {
        let _ = self.inner.changes.send(JobChanged(job_id.into()));
    }

    pub fn queue_signal(&self, group: &str) -> Arc<Notify> {
        let mut map = self.inner.queued.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(group.to_owned()).or_default().clone()
    }

    /// Wakes idle workers of `group` (a job was queued here or elsewhere).
    pub fn wake_group(&self, group: &str) {
        self.wake(group);
    }

    fn wake(&self, group: &str) {
        self.queue_signal(group).notify_waiters();
        self.queue_signal(group).notify_one();
    }

    // ---- runbooks ----

    /// Creates a runbook from `{name, runbookType, content, parameters, ...}`.
    pub async fn create_runbook(
        &self,
        name: &str,
        body: &Map<String, Value>,
    ) -> Result<RunbookRecord> {
        let name = parse_name("runbook", name)?;
        let kind_raw = body
            .get("runbookType")
            .or_else(|| body.get("type"))
            .or_else(|| body.get("kind"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Invalid("'runbookType' is required: bash, sh, python3, pwsh or node".into())
            })?;
        let kind = parse_kind(kind_raw)?;
        if find_interpreter(kind).is_none() {
            return Err(AutomationError::Invalid(format!(
                "runbook type '{}' needs the '{}' interpreter, which is not installed on this machine; available: {}",
                kind.as_str(),
                kind.as_str(),
                crate::sandbox::available_kinds()
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let content = content_of(body)?.unwrap_or_default();
        let params = parse_params(body.get("parameters").unwrap_or(&Value::Null))?;
        let mut settings = RunbookSettings::default();
        settings.apply(body)?;
        let now = now_ms();
        let rb = RunbookRecord {
            id: uuid::Uuid::now_v7().to_string(),
            key: name.to_ascii_lowercase(),
            name: name.clone(),
            kind: kind.as_str().to_owned(),
            description: description_of(body)?.unwrap_or_default(),
            draft: content,
            draft_params: serde_json::to_string(&params).map_err(internal)?,
            settings: serde_json::to_string(&settings).map_err(internal)?,
            published_version: None,
            created: now,
            updated: now,
        };
        if !self.store().create_runbook(&rb).await? {
            return Err(AutomationError::Conflict(format!(
                "a runbook named '{name}' already exists"
            )));
        }
        tracing::info!(runbook = %name, kind = kind.as_str(), "runbook created");
        if body.get("publish").and_then(Value::as_bool) == Some(true) {
            self.publish_runbook(&name).await?;
            return self.runbook(&name).await;
        }
        Ok(rb)
    }

    pub async fn runbook(&self, name: &str) -> Result<RunbookRecord> {
        self.store()
            .runbook(&key_of("runbook", name)?)
            .await?
            .ok_or_else(|| not_found("runbook", name))
    }

    pub async fn list_runbooks(&self) -> Result<Vec<RunbookRecord>> {
        Ok(self.store().list_runbooks().await?)
    }

    /// Changes the draft (content, parameters, description) and settings.
    pub async fn update_runbook(
        &self,
        name: &str,
        body: &Map<String, Value>,
    ) -> Result<RunbookRecord> {
        let mut rb = self.runbook(name).await?;
        if let Some(k) = body.get("runbookType").and_then(Value::as_str)
            && parse_kind(k)?.as_str() != rb.kind
        {
            return Err(AutomationError::Invalid(
                "a runbook's type cannot change; create a new runbook".into(),
            ));
        }
        if let Some(c) = content_of(body)? {
            rb.draft = c;
        }
        if let Some(p) = body.get("parameters") {
            rb.draft_params = serde_json::to_string(&parse_params(p)?).map_err(internal)?;
        }
        if let Some(d) = description_of(body)? {
            rb.description = d;
        }
        let mut settings: RunbookSettings = serde_json::from_str(&rb.settings).unwrap_or_default();
        settings.apply(body)?;
        rb.settings = serde_json::to_string(&settings).map_err(internal)?;
        rb.updated = now_ms();
        if !self.store().update_runbook(&rb).await? {
            return Err(not_found("runbook", name));
        }
        if body.get("publish").and_then(Value::as_bool) == Some(true) {
            self.publish_runbook(name).await?;
            return self.runbook(name).await;
        }
        Ok(rb)
    }

    pub async fn set_draft_content(&self, name: &str, content: String) -> Result<RunbookRecord> {
        if content.len() > MAX_CONTENT {
            return Err(AutomationError::Invalid(
                "runbook content exceeds 1 MiB".into(),
            ));
        }
        let mut body = Map::new();
        body.insert("content".into(), Value::String(content));
        self.update_runbook(name, &body).await
    }

    pub async fn publish_runbook(&self, name: &str) -> Result<i64> {
        let v = self
            .store()
            .publish_runbook(&key_of("runbook", name)?, now_ms())
            .await?
            .ok_or_else(|| not_found("runbook", name))?;
        tracing::info!(runbook = %name, version = v, "runbook published");
        Ok(v)
    }

    /// The content of a published version (`None`: the draft).
    pub async fn runbook_content(&self, name: &str, version: Option<i64>) -> Result<String> {
        let rb = self.runbook(name).await?;
        match version {
            None => Ok(rb.draft),
            Some(v) => Ok(self
                .store()
                .runbook_version(&rb.id, v)
                .await?
                .ok_or_else(|| not_found("runbook version", &format!("{name}/{v}")))?
                .content),
        }
    }

    pub async fn delete_runbook(&self, name: &str) -> Result<()> {
        if !self
            .store()
            .delete_runbook(&key_of("runbook", name)?)
            .await?
        {
            return Err(not_found("runbook", name));
        }
        tracing::info!(runbook = %name, "runbook deleted with its webhooks");
        Ok(())
    }

    /// Starts a job directly (Azure's Job_Create / Start-AzAutomationRunbook).
    pub async fn start_runbook(
        &self,
        name: &str,
        params: &Map<String, Value>,
        run_on: Option<&str>,
        started_by: &str,
    ) -> Result<String> {
        if let Some(group) = run_on.filter(|g| !g.is_empty()) {
            parse_name("worker group", group)?;
        }
        let rb = self.runbook(name).await?;
        let (version, decls) = self.published(&rb).await?;
        let (plain, secure) = bind_params(&decls, params)?;
        let webhook_data = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("WebhookData"))
            .and_then(|(_, v)| serde_json::from_value::<WebhookData>(v.clone()).ok());
        let job = self.new_job(
            &rb,
            version,
            started_by,
            run_on.unwrap_or(""),
            plain,
            secure,
            webhook_data,
        )?;
        self.store().create_job(&job, None, None).await?;
        self.queued_log(&job);
        Ok(job.id)
    }

    async fn published(&self, rb: &RunbookRecord) -> Result<(i64, Vec<ParamDecl>)> {
        let Some(version) = rb.published_version else {
            return Err(AutomationError::RunbookGone(format!(
                "runbook '{}' has no published version; publish it first (herald runbook publish {})",
                rb.name, rb.name
            )));
        };
        let v = self
            .store()
            .runbook_version(&rb.id, version)
            .await?
            .ok_or_else(|| {
                AutomationError::RunbookGone(format!("runbook '{}' is gone", rb.name))
            })?;
        let decls: Vec<ParamDecl> = serde_json::from_str(&v.params).map_err(internal)?;
        Ok((version, decls))
    }

    #[allow(clippy::too_many_arguments)]
    fn new_job(
        &self,
        rb: &RunbookRecord,
        version: i64,
        started_by: &str,
        run_on: &str,
        plain: BTreeMap<String, Value>,
        secure: BTreeMap<String, Value>,
        webhook_data: Option<WebhookData>,
    ) -> Result<JobRecord> {
        let id = uuid::Uuid::now_v7().to_string();
        // Azure logs every input with the job; secure values are masked.
        let mut shown: Map<String, Value> = plain.clone().into_iter().collect();
        for k in secure.keys() {
            shown.insert(k.clone(), Value::String("*****".into()));
        }
        if let Some(w) = &webhook_data {
            shown.insert(
                "WebhookData".into(),
                serde_json::to_value(w).map_err(internal)?,
            );
        }
        let mut parameters = plain;
        parameters.extend(secure);
        let input = JobInput {
            parameters,
            webhook_data,
        };
        let input = serde_json::to_vec(&input).map_err(internal)?;
        let sealed = self.inner.master.seal_direct(&input, id.as_bytes());
        let now = now_ms();
        Ok(JobRecord {
            id,
            runbook_id: rb.id.clone(),
            runbook_name: rb.name.clone(),
            runbook_version: version,
            started_by: started_by.to_owned(),
            run_on: run_on.to_owned(),
            status: JobStatus::New.as_str().to_owned(),
            status_details: String::new(),
            exception: None,
            parameters: Value::Object(shown).to_string(),
            input: sealed,
            created: now,
            start_time: None,
            end_time: None,
            last_modified: now,
            last_status_modified: now,
            worker: None,
            lease_until: None,
            restarts: 0,
            sandbox: None,
            exit_code: None,
        })
    }

    fn queued_log(&self, job: &JobRecord) {
        tracing::info!(job = %job.id, runbook = %job.runbook_name, started_by = %job.started_by, "job queued");
        self.wake(&job.run_on);
        self.changed(&job.id);
    }

    // ---- webhooks ----

    /// Azure's generateUri: a fresh URL whose token a later PUT may bind.
    pub async fn generate_uri(&self) -> Result<String> {
        let token = new_webhook_token();
        self.store()
            .put_pending_webhook_token(&hash_token(&token), now_ms())
            .await?;
        Ok(self.webhook_url(&token))
    }

    fn webhook_url(&self, token: &str) -> String {
        format!("{}/webhooks?token={token}", self.inner.settings.public_url)
    }

    /// Creates a webhook (Azure's PUT). Returns it with its URL, the only
    /// time the URL is shown.
    pub async fn create_webhook(
        &self,
        name: &str,
        props: &Map<String, Value>,
    ) -> Result<(WebhookRecord, String)> {
        let name = parse_name("webhook", name)?;
        let runbook_name = props
            .get("runbook")
            .and_then(|r| r.get("name").or(Some(r)))
            .and_then(Value::as_str)
            .ok_or_else(|| Invalid("'runbook': {\"name\": \"...\"} is required".into()))?;
        let rb = self.runbook(runbook_name).await.map_err(|e| match e {
            AutomationError::NotFound { .. } => {
                AutomationError::Invalid(format!("runbook '{runbook_name}' does not exist"))
            }
            other => other,
        })?;
        let (_, decls) = self.published(&rb).await.map_err(|e| match e {
            AutomationError::RunbookGone(m) => AutomationError::Invalid(m),
            other => other,
        })?;
        let given = params_of(props)?;
        let (plain, secure) = bind_params(&decls, &given)?;
        let now = now_ms();
        let expiry = match props.get("expiryTime").filter(|v| !v.is_null()) {
            Some(v) => parse_time(v)?,
            None => now + 365 * 24 * 3600 * 1000,
        };
        if expiry <= now {
            return Err(AutomationError::Invalid(
                "'expiryTime' must be in the future".into(),
            ));
        }
        let is_enabled = match props.get("isEnabled").filter(|v| !v.is_null()) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Invalid("'isEnabled' must be true or false".into()))?,
            None => true,
        };
        let run_on = run_on_of(props)?.unwrap_or_default();
        // A URI from generateUri is bound; otherwise mint one now.
        let (token, pending) = match props
            .get("uri")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            Some(uri) => (token_from_uri(uri)?, true),
            None => (new_webhook_token(), false),
        };
        let wh = WebhookRecord {
            id: uuid::Uuid::now_v7().to_string(),
            key: name.to_ascii_lowercase(),
            name: name.clone(),
            runbook_id: rb.id.clone(),
            token_hash: hash_token(&token),
            is_enabled,
            expiry,
            parameters: serde_json::to_string(&plain).map_err(internal)?,
            secure_parameters: self.seal_secure(&name, &secure)?,
            run_on,
            description: description_of(props)?.unwrap_or_default(),
            last_invoked: None,
            created: now,
            updated: now,
        };
        if !self.store().create_webhook(&wh, pending).await? {
            if pending && self.store().webhook(&wh.key).await?.is_none() {
                return Err(AutomationError::Invalid(
                    "'uri' was not issued by this server's generateUri (or was already used)"
                        .into(),
                ));
            }
            return Err(AutomationError::Conflict(format!(
                "a webhook named '{name}' already exists"
            )));
        }
        tracing::info!(webhook = %name, runbook = %rb.name, "webhook created");
        Ok((wh, self.webhook_url(&token)))
    }

    fn seal_secure(&self, name: &str, secure: &BTreeMap<String, Value>) -> Result<Option<Vec<u8>>> {
        if secure.is_empty() {
            return Ok(None);
        }
        let plain = serde_json::to_vec(secure).map_err(internal)?;
        Ok(Some(
            self.inner
                .master
                .seal_direct(&plain, aad_webhook(name).as_bytes()),
        ))
    }

    fn open_secure(&self, wh: &WebhookRecord) -> Result<BTreeMap<String, Value>> {
        match &wh.secure_parameters {
            None => Ok(BTreeMap::new()),
            Some(s) => {
                let plain = self
                    .inner
                    .master
                    .open_direct(s, aad_webhook(&wh.name).as_bytes())
                    .map_err(|e| {
                        AutomationError::Internal(format!("opening webhook parameters: {e}"))
                    })?;
                serde_json::from_slice(&plain).map_err(internal)
            }
        }
    }

    pub async fn webhook(&self, name: &str) -> Result<WebhookRecord> {
        self.store()
            .webhook(&key_of("webhook", name)?)
            .await?
            .ok_or_else(|| not_found("webhook", name))
    }

    pub async fn list_webhooks(&self, runbook: Option<&str>) -> Result<Vec<WebhookRecord>> {
        let id = match runbook {
            Some(r) => Some(self.runbook(r).await?.id),
            None => None,
        };
        Ok(self.store().list_webhooks(id.as_deref()).await?)
    }

    /// Azure's PATCH (and PUT on an existing webhook): enable or disable at
    /// any time; expiry and parameters only while the webhook is live.
    pub async fn update_webhook(
        &self,
        name: &str,
        props: &Map<String, Value>,
    ) -> Result<WebhookRecord> {
        let wh = self.webhook(name).await?;
        let now = now_ms();
        if wh.expiry <= now {
            return Err(AutomationError::Webhook {
                code: "WebhookExpired",
                message: format!(
                    "webhook '{}' has expired and can never be re-enabled or changed; delete it and create a new one",
                    wh.name
                ),
            });
        }
        let mut patch = WebhookPatch {
            updated: now,
            ..Default::default()
        };
        if let Some(v) = props.get("isEnabled").filter(|v| !v.is_null()) {
            patch.is_enabled = Some(
                v.as_bool()
                    .ok_or_else(|| Invalid("'isEnabled' must be true or false".into()))?,
            );
        }
        if let Some(v) = props.get("expiryTime").filter(|v| !v.is_null()) {
            let t = parse_time(v)?;
            if t <= now {
                return Err(AutomationError::Invalid(
                    "'expiryTime' must be in the future".into(),
                ));
            }
            patch.expiry = Some(t);
        }
        if props.contains_key("parameters") {
            let rb = self
                .store()
                .runbook_by_id(&wh.runbook_id)
                .await?
                .ok_or_else(|| not_found("runbook", &wh.runbook_id))?;
            let (_, decls) = self.published(&rb).await?;
            let (plain, secure) = bind_params(&decls, &params_of(props)?)?;
            patch.parameters = Some(serde_json::to_string(&plain).map_err(internal)?);
            patch.secure_parameters = Some(self.seal_secure(&wh.name, &secure)?);
            tracing::info!(webhook = %wh.name, "webhook parameters changed by an admin");
        }
        if let Some(r) = run_on_of(props)? {
            patch.run_on = Some(r);
        }
        if let Some(d) = description_of(props)? {
            patch.description = Some(d);
        }
        let updated = self
            .store()
            .update_webhook(&wh.key, &patch)
            .await?
            .ok_or_else(|| not_found("webhook", name))?;
        tracing::info!(webhook = %wh.name, enabled = updated.is_enabled, "webhook updated");
        Ok(updated)
    }

    pub async fn delete_webhook(&self, name: &str) -> Result<()> {
        if !self
            .store()
            .delete_webhook(&key_of("webhook", name)?)
            .await?
        {
            return Err(not_found("webhook", name));
        }
        tracing::info!(webhook = %name, "webhook deleted");
        Ok(())
    }

    /// The webhook a token opens, checked as Azure checks it: unknown,
    /// expired or disabled tokens are all 400s.
    pub async fn webhook_for_token(&self, token: &str) -> Result<WebhookRecord> {
        let invalid = || AutomationError::Webhook {
            code: "InvalidToken",
            message: "The webhook token is not valid.".into(),
        };
        if token.is_empty() || token.len() > 256 {
            return Err(invalid());
        }
        // Looked up by digest, so timing reveals nothing about the token.
        let wh = self
            .store()
            .webhook_by_token(&hash_token(token))
            .await?
            .ok_or_else(invalid)?;
        use subtle::ConstantTimeEq;
        if !bool::from(wh.token_hash.as_bytes().ct_eq(hash_token(token).as_bytes())) {
            return Err(invalid());
        }
        if wh.expiry <= now_ms() {
            return Err(AutomationError::Webhook {
                code: "WebhookExpired",
                message: "The webhook has expired.".into(),
            });
        }
        if !wh.is_enabled {
            return Err(AutomationError::Webhook {
                code: "WebhookDisabled",
                message: "The webhook is disabled.".into(),
            });
        }
        Ok(wh)
    }

    /// Queues the job for a webhook call; returns once it is committed.
    pub async fn invoke(
        &self,
        wh: &WebhookRecord,
        headers: BTreeMap<String, String>,
        body: String,
        idempotency_key: Option<&str>,
    ) -> Result<Invoked> {
        let rb = self
            .store()
            .runbook_by_id(&wh.runbook_id)
            .await?
            .ok_or_else(|| {
                AutomationError::RunbookGone("The webhook's runbook no longer exists.".into())
            })?;
        let (version, _) = self.published(&rb).await?;
        let plain: BTreeMap<String, Value> =
            serde_json::from_str(&wh.parameters).map_err(internal)?;
        let secure = self.open_secure(wh)?;
        let data = WebhookData {
            webhook_name: wh.name.clone(),
            request_header: headers,
            request_body: body,
        };
        let job = self.new_job(
            &rb,
            version,
            &format!("webhook:{}", wh.name),
            &wh.run_on,
            plain,
            secure,
            Some(data),
        )?;
        let since = job.created - IDEMPOTENCY_MS;
        let idem = idempotency_key.map(|k| (wh.id.as_str(), k, since));
        match self
            .store()
            .create_job(&job, idem, Some((&wh.id, job.created)))
            .await?
        {
            JobCreated::Created => {
                self.queued_log(&job);
                Ok(Invoked {
                    job_id: job.id,
                    replayed: false,
                })
            }
            JobCreated::Existing(id) => Ok(Invoked {
                job_id: id,
                replayed: true,
            }),
        }
    }

    // ---- jobs ----

    pub async fn job(&self, id: &str) -> Result<JobRecord> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found("job", id));
        }
        self.store()
            .job(id)
            .await?
            .ok_or_else(|| not_found("job", id))
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        Ok(self.store().list_jobs(filter).await?)
    }

    pub async fn runbook_id(&self, name: &str) -> Result<String> {
        Ok(self.runbook(name).await?.id)
    }

    pub async fn transitions(&self, id: &str) -> Result<Vec<JobTransition>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found("job", id));
        }
        Ok(self.store().job_transitions(id).await?)
    }

    pub async fn count_jobs_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(self.store().count_jobs_by_status().await?)
    }

    pub async fn records(
        &self,
        id: &str,
        after: i64,
        stream: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StreamRecord>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(not_found("job", id));
        }
        Ok(self.store().read_records(id, after, stream, limit).await?)
    }

    /// The concatenated Output stream (Azure's GetOutput).
    pub async fn output(&self, id: &str) -> Result<String> {
        let mut out = String::new();
        let mut after = 0;
        loop {
            let page = self.records(id, after, Some("Output"), 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                out.push_str(&r.text);
                out.push('\n');
            }
        }
        Ok(out)
    }

    pub async fn stop_job(&self, id: &str) -> Result<JobRecord> {
        let job = self
            .store()
            .request_stop(id, now_ms())
            .await?
            .ok_or_else(|| not_found("job", id))?;
        if let Some(stop) = self
            .inner
            .local_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            stop.cancel();
        }
        tracing::info!(job = %id, status = %job.status, "job stop requested");
        self.changed(id);
        Ok(job)
    }

    pub async fn resume_job(&self, id: &str) -> Result<JobRecord> {
        let job = self.job(id).await?;
        if !self.store().resume_job(id, now_ms()).await? {
            return Err(AutomationError::Conflict(format!(
                "job {id} is {}; only Suspended jobs can be resumed",
                job.status
            )));
        }
        self.wake(&job.run_on);
        self.changed(id);
        self.job(id).await
    }

    /// Waits until the job reaches a final status or `deadline` passes.
    pub async fn wait_final(&self, id: &str, limit: Duration) -> Result<JobRecord> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut rx = self.subscribe();
        loop {
            let job = self.job(id).await?;
            if JobStatus::parse(&job.status).is_some_and(JobStatus::is_final) {
                return Ok(job);
            }
            // The broadcast is a hint; another node's progress is polled.
            let wake = async {
                loop {
                    match rx.recv().await {
                        Ok(JobChanged(j)) if &*j == id => return,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = wake => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline) => return self.job(id).await,
            }
        }
    }

    // ---- the lease protocol (local pool and remote workers) ----

    /// Leases up to `n` jobs of `group`, holding the request up to `hold`
    /// while none is queued.
    pub async fn lease(
        &self,
        group: &str,
        worker: &str,
        n: i64,
        hold: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Vec<LeasedJob>> {
        let deadline = tokio::time::Instant::now() + hold;
        let signal = self.queue_signal(group);
        loop {
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let lease_until = now + self.inner.settings.lease.as_millis() as i64;
            let jobs = self
                .store()
                .claim_jobs(group, worker, n, lease_until, now)
                .await?;
            if !jobs.is_empty() {
                let mut out = Vec::with_capacity(jobs.len());
                for job in jobs {
                    self.changed(&job.id);
                    match self.prepare(&job).await {
                        Ok(l) => out.push(l),
                        Err(e) => {
                            tracing::warn!(job = %job.id, error = %e, "cannot prepare leased job");
                            let _ = self
                                .store()
                                .finish_job(
                                    &job.id,
                                    Some(worker),
                                    &JobEnd {
                                        status: "Failed".into(),
                                        details: e.to_string(),
                                        exception: Some(e.to_string()),
                                        exit_code: None,
                                        at: now_ms(),
                                    },
                                )
                                .await;
                            self.changed(&job.id);
                        }
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                // Other nodes queue jobs too; poll now and then.
                _ = tokio::time::sleep(Duration::from_millis(1000)) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    async fn prepare(&self, job: &JobRecord) -> Result<LeasedJob> {
        let key = (job.runbook_id.clone(), job.runbook_version);
        let cached = self
            .inner
            .version_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let frozen = match cached {
            Some(c) => c,
            None => {
                let v = self
                    .store()
                    .runbook_version(&job.runbook_id, job.runbook_version)
                    .await?
                    .ok_or_else(|| {
                        AutomationError::RunbookGone("the runbook version is gone".into())
                    })?;
                let entry = Arc::new((v.content, v.params));
                let mut cache = self
                    .inner
                    .version_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if cache.len() > 1000 {
                    cache.clear();
                }
                cache.insert(key, entry.clone());
                entry
            }
        };
        let rb = self.store().runbook_by_id(&job.runbook_id).await?;
        let (kind, settings) = match &rb {
            Some(rb) => (
                parse_kind(&rb.kind)?,
                serde_json::from_str::<RunbookSettings>(&rb.settings).unwrap_or_default(),
            ),
            None => {
                return Err(AutomationError::RunbookGone(
                    "the runbook was deleted".into(),
                ));
            }
        };
        let input = self
            .inner
            .master
            .open_direct(&job.input, job.id.as_bytes())
            .map_err(|e| AutomationError::Internal(format!("opening job input: {e}")))?;
        let input = String::from_utf8(input.to_vec()).map_err(internal)?;
        let decls: Vec<ParamDecl> = serde_json::from_str(&frozen.1).unwrap_or_default();
        let parsed: JobInput = serde_json::from_str(&input).map_err(internal)?;
        let masks = decls
            .iter()
            .filter(|d| d.secure)
            .filter_map(|d| parsed.parameters.get(&d.name))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|s| s.len() >= 3)
            .flat_map(|s| mask_forms(&s))
            .collect();
        let token = herald_core::new_token("hjt");
        let expires = now_ms() + (settings.timeout_seconds as i64 + 300) * 1000;
        self.store()
            .put_job_token(&hash_token(&token), &job.id, expires)
            .await?;
        Ok(LeasedJob {
            job_id: job.id.clone(),
            runbook: job.runbook_name.clone(),
            kind,
            script: frozen.0.clone(),
            input,
            token,
            timeout_seconds: settings.timeout_seconds,
            allow_network: settings.allow_network,
            memory_limit_mb: settings.memory_limit_mb,
            masks,
        })
    }

    pub async fn mark_running(&self, id: &str, worker: &str, sandbox: &str) -> Result<bool> {
        let ok = self
            .store()
            .start_job(id, worker, sandbox, now_ms())
            .await?;
        if ok {
            tracing::info!(job = %id, worker, sandbox, "job running");
            self.changed(id);
        }
        Ok(ok)
    }

    /// Extends a lease; `Ok(None)` means the worker lost it. A status of
    /// `Stopping` tells the worker to stop the job.
    pub async fn heartbeat(&self, id: &str, worker: &str) -> Result<Option<String>> {
        let until = now_ms() + self.inner.settings.lease.as_millis() as i64;
        Ok(self.store().heartbeat_job(id, worker, until).await?)
    }

    fn to_stored(&self, id: &str, records: &[ReportedRecord]) -> Vec<StreamRecord> {
        let masks = self
            .inner
            .masks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default();
        let now = now_ms();
        records
            .iter()
            .filter(|r| crate::exec::StreamType::parse(&r.stream).is_some())
            .map(|r| {
                let stream = crate::exec::StreamType::parse(&r.stream)
                    .map(|s| s.as_str())
                    .unwrap_or("Output");
                StreamRecord {
                    seq: 0,
                    stream: stream.to_owned(),
                    time: r.time.unwrap_or(now),
                    // NUL cannot be stored as text (PostgreSQL) and means nothing to readers.
                    text: mask(&r.text, &masks).replace('\0', "\u{FFFD}"),
                    value: r.value.as_ref().map(|v| mask(&v.to_string(), &masks)),
                }
            })
            .collect()
    }

    pub async fn append(&self, id: &str, records: &[ReportedRecord]) -> Result<i64> {
        let stored = self.to_stored(id, records);
        let seq = self
            .store()
            .append_records(id, &stored, JOB_STREAM_BYTES)
            .await?;
        self.changed(id);
        Ok(seq)
    }

    /// Ends a job as its worker reports; `false` if the lease was lost.
    pub async fn finish(&self, id: &str, worker: Option<&str>, report: &JobReport) -> Result<bool> {
        if !report.records.is_empty() {
            self.append(id, &report.records).await?;
        }
        let (status, details) = match report.outcome.as_str() {
            "Completed" => ("Completed", report.details.clone()),
            "Stopped" => ("Stopped", "stopped by user".to_owned()),
            "TimedOut" => ("Failed", report.details.clone()),
            _ => ("Failed", report.details.clone()),
        };
        let exception = if status == "Failed" {
            let last_error = self
                .store()
                .read_records(id, 0, Some("Error"), 100_000)
                .await?
                .pop()
                .map(|r| r.text);
            Some(last_error.unwrap_or_else(|| details.clone()))
        } else {
            None
        };
        let done = self
            .store()
            .finish_job(
                id,
                worker,
                &JobEnd {
                    status: status.into(),
                    details: details.clone(),
                    exception,
                    exit_code: report.exit_code,
                    at: now_ms(),
                },
            )
            .await?;
        self.inner
            .masks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if done {
            tracing::info!(job = %id, status, details = %details, "job finished");
            metrics::counter!("herald_jobs_finished_total", "status" => status).increment(1);
        }
        self.changed(id);
        Ok(done)
    }

    pub fn register_local_stop(&self, id: &str, stop: CancellationToken) {
        self.inner
            .local_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), stop);
    }

    pub fn forget_local_stop(&self, id: &str) {
        self.inner
            .local_stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Returns leases that lapsed to the queue (or suspends the job).
    pub async fn sweep_leases(&self) -> Result<usize> {
        let lapsed = self
            .store()
            .expire_leases(now_ms(), self.inner.settings.max_restarts)
            .await?;
        for l in &lapsed {
            tracing::warn!(job = %l.job_id, worker = l.worker.as_deref().unwrap_or("?"), status = %l.status, "job's worker was lost");
            if l.status == "New"
                && let Ok(job) = self.job(&l.job_id).await
            {
                self.wake(&job.run_on);
            }
            self.changed(&l.job_id);
        }
        Ok(lapsed.len())
    }

    /// The automation duties as the node runs them: lease sweeping and job
    /// retention on one node at a time.
    pub fn duties(&self) -> Vec<herald_core::duty::Duty> {
        let service = self.clone();
        let every = Duration::from_millis(
            (self.inner.settings.lease.as_millis() as u64 / 4).clamp(200, 5000),
        );
        vec![herald_core::duty::Duty::singleton(
            "automation-duties",
            every,
            move |stop| service.run_duties(stop),
        )]
    }

    /// Background duties: lease sweeping and job retention.
    pub async fn run_duties(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(
            (self.inner.settings.lease.as_millis() as u64 / 4).clamp(200, 5000),
        ));
        let mut last_prune = 0i64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep_leases().await {
                tracing::warn!(error = %e, "lease sweep failed");
            }
            let now = now_ms();
            if now - last_prune > 3_600_000 {
                last_prune = now;
                let before = now - self.inner.settings.job_retention.as_millis() as i64;
                match self.store().prune_jobs(before, now - IDEMPOTENCY_MS).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "pruned jobs past retention"),
                    Err(e) => tracing::warn!(error = %e, "job pruning failed"),
                }
            }
        }
    }

    pub async fn touch_worker(
        &self,
        id: &str,
        group: &str,
        hostname: &str,
        slots: i64,
    ) -> Result<()> {
        self.store()
            .touch_worker(&WorkerRecord {
                id: id.to_owned(),
                group: group.to_owned(),
                hostname: hostname.to_owned(),
                slots,
                last_seen: now_ms(),
            })
            .await?;
        Ok(())
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(self.store().list_workers(now_ms() - 120_000).await?)
    }

    // ---- job tokens ----

    /// The running job a job token belongs to, with its permissions.
    pub async fn principal(&self, token: &str) -> Result<Option<JobPrincipal>> {
        if !token.starts_with("hjt_") {
            return Ok(None);
        }
        let Some((job_id, expires)) = self.store().job_token(&hash_token(token)).await? else {
            return Ok(None);
        };
        if expires < now_ms() {
            return Ok(None);
        }
        let Some(job) = self.store().job(&job_id).await? else {
            return Ok(None);
        };
        if JobStatus::parse(&job.status).is_some_and(JobStatus::is_final) {
            return Ok(None);
        }
        let permissions = match self.store().runbook_by_id(&job.runbook_id).await? {
            Some(rb) => {
                serde_json::from_str::<RunbookSettings>(&rb.settings)
                    .unwrap_or_default()
                    .permissions
            }
            None => Vec::new(),
        };
        Ok(Some(JobPrincipal {
            job_id,
            runbook: job.runbook_name,
            permissions,
        }))
    }

    /// Hides `value` in the job's future stream records.
    pub fn register_mask(&self, job_id: &str, value: &str) {
        if value.len() < 3 {
            return;
        }
        let mut map = self.inner.masks.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(job_id.to_owned()).or_default();
        for form in mask_forms(value) {
            if !list.contains(&form) && list.len() < 1000 {
                list.push(form);
            }
        }
        list.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    // ---- assets ----

    /// Creates or replaces a variable (`encrypted` seals it) or a credential
    /// (always sealed).
    pub async fn put_asset(
        &self,
        kind: &str,
        name: &str,
        value: &str,
        username: Option<&str>,
        encrypted: bool,
        description: &str,
    ) -> Result<AssetRecord> {
        let name = parse_name(kind, name)?;
        if username.is_some_and(|u| u.len() > 512 || u.contains('\0')) {
            return Err(AutomationError::Invalid(
                "a credential's user name is at most 512 characters, without NUL".into(),
            ));
        }
        if value.len() > 1_048_576 {
            return Err(AutomationError::Invalid(
                "an asset value is limited to 1,048,576 characters".into(),
            ));
        }
        let encrypted = encrypted || kind == "credential";
        let key = asset_key(kind, &name);
        let stored = if encrypted {
            self.inner
                .master
                .seal_direct(value.as_bytes(), key.as_bytes())
        } else {
            value.as_bytes().to_vec()
        };
        let now = now_ms();
        let created = self.store().asset(&key).await?.map_or(now, |a| a.created);
        let rec = AssetRecord {
            key,
            name,
            kind: kind.to_owned(),
            encrypted,
            username: username.map(str::to_owned),
            value: stored,
            description: description.to_owned(),
            created,
            updated: now,
        };
        self.store().put_asset(&rec).await?;
        tracing::info!(asset = %rec.name, kind, "asset saved");
        Ok(rec)
    }

    pub async fn assets(&self) -> Result<Vec<AssetRecord>> {
        Ok(self.store().list_assets().await?)
    }

    pub async fn asset(&self, kind: &str, name: &str) -> Result<AssetRecord> {
        key_of(
            if kind == "credential" {
                "credential"
            } else {
                "variable"
            },
            name,
        )?;
        self.store()
            .asset(&asset_key(kind, name))
            .await?
            .ok_or_else(|| {
                not_found(
                    if kind == "credential" {
                        "credential"
                    } else {
                        "variable"
                    },
                    name,
                )
            })
    }

    pub async fn delete_asset(&self, kind: &str, name: &str) -> Result<()> {
        key_of("asset", name)?;
        if !self.store().delete_asset(&asset_key(kind, name)).await? {
            return Err(not_found("asset", name));
        }
        Ok(())
    }

    /// An asset's value for a running job: audited and masked from then on.
    pub async fn asset_for_job(&self, job: &JobPrincipal, name: &str) -> Result<Value> {
        key_of("asset", name)?;
        let (kind, rec) = match self.store().asset(&asset_key("credential", name)).await? {
            Some(r) => ("credential", r),
            None => ("variable", self.asset("variable", name).await?),
        };
        let value = if rec.encrypted {
            let plain = self
                .inner
                .master
                .open_direct(&rec.value, rec.key.as_bytes())
                .map_err(|e| AutomationError::Internal(format!("opening asset: {e}")))?;
            String::from_utf8_lossy(&plain).into_owned()
        } else {
            String::from_utf8_lossy(&rec.value).into_owned()
        };
        tracing::info!(job = %job.job_id, runbook = %job.runbook, asset = %rec.name, kind, "asset read by job");
        if rec.encrypted {
            self.register_mask(&job.job_id, &value);
        }
        Ok(if kind == "credential" {
            json!({"name": rec.name, "username": rec.username, "password": value})
        } else {
            json!({"name": rec.name, "value": value})
        })
    }
}

fn aad_webhook(name: &str) -> String {
    format!("webhook/{}", name.to_ascii_lowercase())
}

/// The lookup key of a name; a name that could never have been created is
/// simply not found (and never reaches the database).
fn key_of(what: &'static str, name: &str) -> Result<String> {
    parse_name(what, name)
        .map(|n| n.to_ascii_lowercase())
        .map_err(|_| {
            not_found(
                what,
                &name
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(80)
                    .collect::<String>(),
            )
        })
}

fn asset_key(kind: &str, name: &str) -> String {
    format!("{kind}/{}", name.to_ascii_lowercase())
}

fn internal(e: impl std::fmt::Display) -> AutomationError {
    AutomationError::Internal(e.to_string())
}

/// A secret as it may appear in output: raw, and JSON-escaped (jobs get
/// their inputs as JSON, so printing them shows the escaped form).
pub fn mask_forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    if let Ok(quoted) = serde_json::to_string(value) {
        let escaped = quoted[1..quoted.len() - 1].to_owned();
        if escaped != value {
            forms.push(escaped);
        }
    }
    forms
}

/// Replaces every mask value in `text`.
pub fn mask(text: &str, masks: &[String]) -> String {
    let mut out = text.to_owned();
    for m in masks {
        if !m.is_empty() && out.contains(m.as_str()) {
            out = out.replace(m.as_str(), "*****");
        }
    }
    out
}

fn content_of(body: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match body.get("content").or_else(|| body.get("script")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.contains('\0') => Err(Invalid(
            "runbook content must not contain NUL characters".into(),
        )),
        Some(Value::String(s)) if s.len() <= MAX_CONTENT => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(Invalid("runbook content exceeds 1 MiB".into())),
        Some(_) => Err(Invalid("'content' must be a string".into())),
    }
}

fn description_of(body: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match body.get("description") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 512 && !s.contains('\0') => Ok(Some(s.clone())),
        Some(_) => Err(Invalid(
            "'description' must be a string of at most 512 characters".into(),
        )),
    }
}

fn params_of(props: &Map<String, Value>) -> Result<Map<String, Value>, Invalid> {
    match props.get("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(Invalid(
            "'parameters' must be an object of name: value".into(),
        )),
    }
}

fn run_on_of(props: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    match props.get("runOn") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(String::new())),
        Some(Value::String(s)) if s.is_empty() => Ok(Some(String::new())),
        Some(Value::String(s)) => parse_name("worker group", s).map(Some),
        Some(_) => Err(Invalid("'runOn' must be a worker group name".into())),
    }
}

fn parse_time(v: &Value) -> Result<i64, Invalid> {
    let s = v.as_str().ok_or_else(|| {
        Invalid("times must be ISO 8601 strings such as 2027-11-01T00:00:00Z".into())
    })?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            Invalid(format!(
                "'{s}' is not an ISO 8601 time such as 2027-11-01T00:00:00Z"
            ))
        })
}

fn token_from_uri(uri: &str) -> Result<String, Invalid> {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| percent_decode(v))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Invalid("'uri' must be a URL from generateUri, with ?token=".into()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_chars_of_base64url() {
        let t = new_webhook_token();
        assert_eq!(t.len(), 43);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(t, new_webhook_token());
    }

    #[test]
    fn uri_tokens() {
        assert_eq!(
            token_from_uri("https://h/webhooks?token=abc%2Bd").unwrap(),
            "abc+d"
        );
        assert!(token_from_uri("https://h/webhooks").is_err());
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn masking() {
        let masks = vec!["s3cret-longer".to_owned(), "s3cret".to_owned()];
        assert_eq!(
            mask("a s3cret-longer and s3cret", &masks),
            "a ***** and *****"
        );
    }
}
