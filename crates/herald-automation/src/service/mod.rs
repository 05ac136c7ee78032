//! The Automation service: the rules over the store. Runbooks, webhooks
//! (Azure's rules exactly), invocation into durable jobs, the lease protocol
//! workers speak, job tokens for vault access, and assets.

use crate::model::*;
use crate::sandbox::RunbookKind;
use base64::Engine;
use herald_core::id::RunbookId;
use herald_core::seal::MasterKey;
use herald_storage::Storage;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

mod assets;
mod jobs;
mod lease;
mod runbooks;
mod tokens;
mod webhooks;

/// The built-in worker group (Azure's cloud sandbox: `runOn` empty).
pub const BUILTIN_GROUP: &str = "";
/// Idempotency keys are remembered this long.
pub const IDEMPOTENCY_MS: i64 = 24 * 3600 * 1000;
/// Every job's streams together are capped here; each stream is capped at
/// 1 MiB by the runner.
pub const JOB_STREAM_BYTES: i64 = 6 * 1024 * 1024 + 64 * 1024;

/// What an automation operation can refuse or fail with; each maps to one HTTP error.
#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    /// The request breaks a rule (a name, a parameter, a setting); the message says which.
    #[error("{0}")]
    Invalid(String),
    /// No runbook, webhook, job or asset by that name.
    #[error("{what} '{name}' was not found")]
    NotFound {
        /// What was looked for (`runbook`, `webhook`, `job`...).
        what: &'static str,
        /// The name or id looked for.
        name: String,
    },
    /// The operation clashes with the current state (e.g. a name in use, a job already ended).
    #[error("{0}")]
    Conflict(String),
    /// A webhook call that must be refused with a 400 and this code.
    #[error("{message}")]
    Webhook {
        /// The error code in the response body, e.g. `WebhookDisabled`.
        code: &'static str,
        /// What is wrong with the call.
        message: String,
    },
    /// The runbook (or its published version) behind a webhook or job no longer exists.
    #[error("{0}")]
    RunbookGone(String),
    /// The caller is not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] herald_storage::StorageError),
    /// Something that should not happen (corrupt data, crypto); not the caller's fault.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Invalid> for AutomationError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e.0)
    }
}

/// The result of an automation operation.
pub type Result<T, E = AutomationError> = std::result::Result<T, E>;

fn not_found(what: &'static str, name: &str) -> AutomationError {
    AutomationError::NotFound {
        what,
        name: name.to_owned(),
    }
}

/// The current time, unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// SHA-256 of a webhook token, hex: what is stored and looked up instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// 32 CSPRNG bytes, base64url without padding (43 characters).
pub fn new_webhook_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Server-wide automation settings.
#[derive(Debug, Clone)]
pub struct AutomationSettings {
    /// `https://host:port` clients reach; webhook URLs are built on it.
    pub public_url: String,
    /// How long a worker's lease lasts without a heartbeat.
    pub lease: Duration,
    /// Restarts after a lost worker before a job is Suspended.
    pub max_restarts: i64,
    /// How long ended jobs and their streams are kept.
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
    /// The job's id.
    pub job_id: String,
    /// The runbook's name.
    pub runbook: String,
    /// The runbook's language.
    pub kind: RunbookKind,
    /// The published runbook content to run.
    pub script: String,
    /// The JSON written to `$HERALD_JOB_INPUT`.
    pub input: String,
    /// Job-scoped token for the vault and assets, valid for this lease.
    pub token: String,
    /// Seconds the job may run before it is killed.
    pub timeout_seconds: u64,
    /// Whether the job's sandbox keeps network access.
    pub allow_network: bool,
    /// Memory limit of the job's process, in MiB.
    pub memory_limit_mb: u64,
    /// Values the worker masks in every record (secure parameters).
    pub masks: Vec<String>,
    /// How long the lease lasts after each renewal, in ms: a worker that
    /// cannot renew kills its job well within it, before the job can be
    /// leased to anyone else. 0 (an older server): the worker assumes 30 s.
    #[serde(default)]
    pub lease_ms: u64,
}

/// A job who called with its token.
#[derive(Debug, Clone)]
pub struct JobPrincipal {
    /// The job's id.
    pub job_id: String,
    /// The name of the job's runbook.
    pub runbook: String,
    /// What the runbook's jobs may do in vaults.
    pub permissions: Vec<Permission>,
    /// The assets the runbook's jobs may read (names or `*`).
    pub assets: Vec<String>,
}

/// What a webhook call produced.
#[derive(Debug, Clone)]
pub struct Invoked {
    /// The queued job's id.
    pub job_id: String,
    /// True when an Idempotency-Key matched an earlier call.
    pub replayed: bool,
}

/// A record a worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedRecord {
    /// The stream name (`Output`, `Error`, `Warning`, ...).
    pub stream: String,
    /// The record's text.
    pub text: String,
    /// A structured value with the record, if any.
    #[serde(default)]
    pub value: Option<Value>,
    /// When the record was written, unix milliseconds (the server's time when absent).
    #[serde(default)]
    pub time: Option<i64>,
}

/// How a worker says its job ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// Completed, Failed, Stopped, or TimedOut.
    pub outcome: String,
    /// Why the job ended that way, for its status details.
    #[serde(default)]
    pub details: String,
    /// The process's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Records not yet sent.
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
    version_cache: Mutex<HashMap<(RunbookId, i64), Frozen>>,
}

/// The Automation service: runbooks and their published versions, token
/// webhooks that start them, jobs leased to workers, their streams, and
/// assets (variables and credentials).
#[derive(Clone)]
pub struct AutomationService {
    inner: Arc<Inner>,
}

impl AutomationService {
    /// An automation service over `storage`; secure values are sealed under `master`.
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

    /// The server-wide settings.
    pub fn settings(&self) -> &AutomationSettings {
        &self.inner.settings
    }

    fn store(&self) -> &dyn Storage {
        &*self.inner.storage
    }

    /// Announces every job change on this node (status changes and new records), for waiters.
    pub fn subscribe(&self) -> broadcast::Receiver<JobChanged> {
        self.inner.changes.subscribe()
    }

    fn changed(&self, job_id: &str) {
        let _ = self.inner.changes.send(JobChanged(job_id.into()));
    }

    /// The signal idle workers of `group` wait on for newly queued jobs.
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

/// A secret as it may appear in output: raw; JSON-escaped (jobs get their
/// inputs as JSON, so printing them shows the escaped form); URL-escaped;
/// base64 (standard and URL-safe, with and without padding); and hex
/// (lower and upper case). Masking covers these encodings of the whole
/// value, not a value embedded inside a larger encoded blob.
pub fn mask_forms(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![value.to_owned()];
    if let Ok(quoted) = serde_json::to_string(value) {
        forms.push(quoted[1..quoted.len() - 1].to_owned());
    }
    // RFC 3986 keeps `-_.~` unescaped (curl, jq's @uri, JavaScript's
    // encodeURIComponent keep a few more); some encoders escape all but
    // alphanumerics; forms write spaces as `+`.
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    for set in [UNRESERVED, percent_encoding::NON_ALPHANUMERIC] {
        let escaped = percent_encoding::utf8_percent_encode(value, set).to_string();
        forms.push(escaped.replace("%20", "+"));
        forms.push(escaped);
    }
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(value));
    }
    forms.push(hex::encode(value));
    forms.push(hex::encode_upper(value));
    // Longest first, so a form that contains another is replaced whole.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
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

    #[test]
    fn mask_forms_cover_the_usual_encodings() {
        let v = "p@ss w/rd+é\"q";
        let forms = mask_forms(v);
        for want in [
            v,
            "p@ss w/rd+é\\\"q",             // JSON-escaped
            "p%40ss%20w%2Frd%2B%C3%A9%22q", // URL-escaped
            "p%40ss+w%2Frd%2B%C3%A9%22q",   // form-encoded
            "cEBzcyB3L3JkK8OpInE=",         // base64
            "cEBzcyB3L3JkK8OpInE",          // base64 without padding
            "7040737320772f72642bc3a92271", // hex
            "7040737320772F72642BC3A92271", // HEX
        ] {
            assert!(forms.iter().any(|f| f == want), "{want} not in {forms:?}");
        }
        let url_safe = mask_forms("\u{fb}\u{ff}");
        assert!(url_safe.iter().any(|f| f == "w7vDvw=="), "{url_safe:?}");
        assert!(
            forms.windows(2).all(|w| w[0].len() >= w[1].len()),
            "longest first"
        );
        let text = "a cEBzcyB3L3JkK8OpInE= b 7040737320772F72642BC3A92271 c";
        assert_eq!(mask(text, &forms), "a ***** b ***** c");
    }
}
