//! Automation's domain values, parsed at the edge: runbook definitions,
//! declared parameters, webhook inputs, job statuses and permissions.

use crate::sandbox::RunbookKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Largest runbook body accepted.
pub const MAX_CONTENT: usize = 1024 * 1024;
/// Azure's job parameter limits: 50 parameters, 512 KB in all.
pub const MAX_PARAMS: usize = 50;
/// Most bytes of job parameters in all.
pub const MAX_PARAM_BYTES: usize = 512 * 1024;
/// Webhook request body limit (Azure: 512 KB).
pub const MAX_WEBHOOK_BODY: usize = 512 * 1024;
/// A runbook's job timeout unless it sets one (one hour).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Longest job timeout a runbook may set (seven days).
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A rejected definition; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// Runbook, webhook and asset names: Azure's `^[a-zA-Z][-_a-zA-Z0-9]{0,62}$`.
pub fn parse_name(kind: &str, raw: &str) -> Result<String, Invalid> {
    let ok = raw.len() <= 63
        && raw.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(raw.to_owned())
    } else {
        invalid(format!(
            "The {kind} name '{}' is invalid: use 1-63 letters, digits, '-' or '_', starting with a letter.",
            raw.chars().take(80).collect::<String>()
        ))
    }
}

/// The type a runbook parameter declares; values are checked (and coerced
/// from webhook strings) against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A JSON string.
    String,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl ParamType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "string" | "str" => Self::String,
            "int" | "integer" | "int32" | "int64" | "number" => Self::Int,
            "bool" | "boolean" | "switch" => Self::Bool,
            "object" | "hashtable" | "pscustomobject" => Self::Object,
            "array" | "list" | "string[]" => Self::Array,
            _ => return None,
        })
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Self::String => v.is_string(),
            Self::Int => v.is_i64() || v.is_u64(),
            Self::Bool => v.is_boolean(),
            Self::Object => v.is_object(),
            Self::Array => v.is_array(),
        }
    }
}

/// One declared runbook parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamDecl {
    /// The parameter name (matched case-insensitively).
    pub name: String,
    /// The value type (`type` on the wire).
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Whether a job cannot start without a value (unless there is a default).
    pub is_mandatory: bool,
    /// The value used when a start or webhook gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<Value>,
    /// Whether the value is a secret: kept sealed and masked in the job's streams.
    #[serde(default)]
    pub secure: bool,
}

/// Accepts Herald's list form and Azure's map form
/// (`{"Vault": {"type": "string", "isMandatory": true}}`).
pub fn parse_params(raw: &Value) -> Result<Vec<ParamDecl>, Invalid> {
    let entries: Vec<(String, &Map<String, Value>)> = match raw {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                let obj = v
                    .as_object()
                    .ok_or_else(|| Invalid("each parameter must be an object".into()))?;
                let name = obj
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Invalid("each parameter needs a 'name'".into()))?;
                Ok((name.to_owned(), obj))
            })
            .collect::<Result<_, Invalid>>()?,
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                v.as_object()
                    .map(|o| (k.clone(), o))
                    .ok_or_else(|| Invalid(format!("parameter '{k}' must be an object")))
            })
            .collect::<Result<_, Invalid>>()?,
        _ => return invalid("'parameters' must be a list or an object of parameter declarations"),
    };
    if entries.len() > MAX_PARAMS {
        return invalid(format!(
            "a runbook may declare at most {MAX_PARAMS} parameters"
        ));
    }
    let mut out: Vec<ParamDecl> = Vec::with_capacity(entries.len());
    for (name, obj) in entries {
        let name = parse_name("parameter", &name)?;
        if out.iter().any(|p| p.name.eq_ignore_ascii_case(&name)) {
            return invalid(format!("parameter '{name}' is declared twice"));
        }
        let ty = match obj.get("type") {
            None | Some(Value::Null) => ParamType::String,
            Some(Value::String(s)) => ParamType::parse(s).ok_or_else(|| {
                Invalid(format!(
                    "parameter '{name}' has unknown type '{s}': use string, int, bool, object or array"
                ))
            })?,
            Some(_) => return invalid(format!("parameter '{name}': 'type' must be a string")),
        };
        let flag = |k1: &str, k2: &str| -> Result<bool, Invalid> {
            match obj.get(k1).or_else(|| obj.get(k2)) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => invalid(format!("parameter '{name}': '{k1}' must be true or false")),
            }
        };
        let is_mandatory = flag("isMandatory", "mandatory")?;
        let secure = flag("secure", "isSecure")?;
        let default_value = obj.get("defaultValue").filter(|v| !v.is_null()).cloned();
        if let Some(d) = &default_value
            && !ty.accepts(d)
        {
            return invalid(format!(
                "parameter '{name}': the default value does not match its type"
            ));
        }
        out.push(ParamDecl {
            name,
            ty,
            is_mandatory,
            default_value,
            secure,
        });
    }
    Ok(out)
}

/// What a runbook's jobs may do in the vault: `{"vault": "payments",
/// "actions": ["get", "set"]}`; `"*"` matches every vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// The vault name, or `*` for every vault.
    pub vault: String,
    /// Allowed actions from [`VAULT_ACTIONS`], or `*` for all.
    pub actions: Vec<String>,
}

/// The vault actions a permission can grant.
pub const VAULT_ACTIONS: [&str; 5] = ["get", "list", "set", "delete", "manage"];

impl Permission {
    /// Whether this permission lets a job do `action` in `vault`.
    pub fn allows(&self, vault: &str, action: &str) -> bool {
        (self.vault == "*" || self.vault.eq_ignore_ascii_case(vault))
            && self.actions.iter().any(|a| a == action || a == "*")
    }
}

/// Run settings of a runbook, stored as JSON beside its draft. A setting
/// missing from the stored JSON has its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunbookSettings {
    /// Seconds a job may run before it is killed.
    pub timeout_seconds: u64,
    /// Most jobs of this runbook running at once; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_jobs: Option<i64>,
    /// Runbooks reach Herald's API and other hosts by default, as in Azure.
    pub allow_network: bool,
    /// Memory limit of a job's process, in MiB.
    pub memory_limit_mb: u64,
    /// Azure's `logVerbose` setting, kept and reported.
    pub log_verbose: bool,
    /// Azure's `logProgress` setting, kept and reported.
    pub log_progress: bool,
    /// What the runbook's jobs may do in vaults; nothing when empty.
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// The Automation assets (variables and credentials) its jobs may
    /// read, by name, or `*` for all; none when empty.
    #[serde(default)]
    pub assets: Vec<String>,
}

impl Default for RunbookSettings {
    fn default() -> Self {
        Self {
            timeout_seconds: DEFAULT_TIMEOUT_SECS,
            max_concurrent_jobs: None,
            allow_network: true,
            memory_limit_mb: 512,
            log_verbose: true,
            log_progress: true,
            permissions: Vec::new(),
            assets: Vec::new(),
        }
    }
}

impl RunbookSettings {
    /// Applies the settings present in a request body over `self`.
    pub fn apply(&mut self, body: &Map<String, Value>) -> Result<(), Invalid> {
        if let Some(v) = body.get("timeoutSeconds").filter(|v| !v.is_null()) {
            match v.as_u64() {
                Some(t) if (1..=MAX_TIMEOUT_SECS).contains(&t) => self.timeout_seconds = t,
                _ => return invalid(format!("'timeoutSeconds' must be 1..{MAX_TIMEOUT_SECS}")),
            }
        }
        if let Some(v) = body.get("maxConcurrentJobs") {
            self.max_concurrent_jobs = match v {
                Value::Null => None,
                v => match v.as_i64() {
                    Some(n) if (1..=10_000).contains(&n) => Some(n),
                    _ => return invalid("'maxConcurrentJobs' must be 1..10000 or null"),
                },
            };
        }
        if let Some(v) = body.get("memoryLimitMb").filter(|v| !v.is_null()) {
            match v.as_u64() {
                Some(m) if m == 0 || (16..=1_048_576).contains(&m) => self.memory_limit_mb = m,
                _ => return invalid("'memoryLimitMb' must be 0 (no limit) or 16..1048576"),
            }
        }
        for (key, slot) in [
            ("allowNetwork", &mut self.allow_network),
            ("logVerbose", &mut self.log_verbose),
            ("logProgress", &mut self.log_progress),
        ] {
            if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
                *slot = v
                    .as_bool()
                    .ok_or_else(|| Invalid(format!("'{key}' must be true or false")))?;
            }
        }
        if let Some(v) = body.get("permissions").filter(|v| !v.is_null()) {
            let perms: Vec<Permission> = serde_json::from_value(v.clone()).map_err(|_| {
                Invalid(
                    "'permissions' must be a list like [{\"vault\": \"payments\", \"actions\": [\"get\", \"set\"]}]"
                        .into(),
                )
            })?;
            for p in &perms {
                if p.vault != "*" {
                    herald_core::VaultName::parse(&p.vault).map_err(|_| {
                        Invalid(format!("permission names an invalid vault '{}'", p.vault))
                    })?;
                }
                if let Some(bad) = p
                    .actions
                    .iter()
                    .find(|a| *a != "*" && !VAULT_ACTIONS.contains(&a.as_str()))
                {
                    return invalid(format!(
                        "unknown action '{bad}': use get, list, set, delete, manage or *"
                    ));
                }
            }
            self.permissions = perms;
        }
        if let Some(v) = body.get("assets").filter(|v| !v.is_null()) {
            let names: Vec<String> = serde_json::from_value(v.clone()).map_err(|_| {
                Invalid("'assets' must be a list of asset names like [\"MyAzureCredential\"], or [\"*\"]".into())
            })?;
            for n in &names {
                if n != "*" {
                    parse_name("asset", n)?;
                }
            }
            self.assets = names;
        }
        Ok(())
    }
}

/// Parses a runbook type (`bash`, `sh`, `python3`, `pwsh` or `node`).
pub fn parse_kind(raw: &str) -> Result<RunbookKind, Invalid> {
    RunbookKind::parse(raw).ok_or_else(|| {
        Invalid(format!(
            "unknown runbook type '{raw}': use bash, sh, python3, pwsh or node"
        ))
    })
}

/// Parameter values by declared name.
pub type Values = BTreeMap<String, Value>;

/// Checks webhook (or start) parameter values against the declarations:
/// every mandatory parameter is set, every value has its declared type.
/// Returns plain and secure values separately, defaults filled in.
pub fn bind_params(
    decls: &[ParamDecl],
    given: &Map<String, Value>,
) -> Result<(Values, Values), Invalid> {
    if given.len() > MAX_PARAMS {
        return invalid(format!("at most {MAX_PARAMS} parameter values are allowed"));
    }
    if serde_json::to_vec(given).map_or(0, |v| v.len()) > MAX_PARAM_BYTES {
        return invalid("parameter values exceed 512 KB");
    }
    let mut plain = BTreeMap::new();
    let mut secure = BTreeMap::new();
    for (k, v) in given {
        if k.eq_ignore_ascii_case("WebhookData") {
            // The request data always replaces a configured WebhookData.
            continue;
        }
        let Some(d) = decls.iter().find(|d| d.name.eq_ignore_ascii_case(k)) else {
            return invalid(format!("the runbook declares no parameter '{k}'"));
        };
        // Azure stores webhook parameter values as strings; accept that form.
        let v = coerce(d.ty, v)
            .ok_or_else(|| Invalid(format!("parameter '{}' must be of type {:?}", d.name, d.ty)))?;
        if d.secure {
            secure.insert(d.name.clone(), v);
        } else {
            plain.insert(d.name.clone(), v);
        }
    }
    for d in decls {
        if d.name.eq_ignore_ascii_case("WebhookData")
            || plain.contains_key(&d.name)
            || secure.contains_key(&d.name)
        {
            continue;
        }
        if let Some(def) = &d.default_value {
            if d.secure {
                secure.insert(d.name.clone(), def.clone());
            } else {
                plain.insert(d.name.clone(), def.clone());
            }
        } else if d.is_mandatory {
            return invalid(format!(
                "the runbook's mandatory parameter '{}' needs a value",
                d.name
            ));
        }
    }
    Ok((plain, secure))
}

fn coerce(ty: ParamType, v: &Value) -> Option<Value> {
    if ty.accepts(v) {
        return Some(v.clone());
    }
    let s = v.as_str()?;
    match ty {
        ParamType::String => None,
        ParamType::Int => s.trim().parse::<i64>().ok().map(Value::from),
        ParamType::Bool => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "$true" => Some(Value::Bool(true)),
            "false" | "$false" => Some(Value::Bool(false)),
            _ => None,
        },
        ParamType::Object | ParamType::Array => serde_json::from_str::<Value>(s)
            .ok()
            .filter(|p| ty.accepts(p)),
    }
}

pub use herald_core::job::JobStatus;

/// What a job's process receives through `$HERALD_JOB_INPUT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInput {
    /// The job's parameter values by name (secure ones included).
    pub parameters: BTreeMap<String, Value>,
    /// The webhook request, when a webhook started the job (`WebhookData`).
    #[serde(rename = "WebhookData", skip_serializing_if = "Option::is_none")]
    pub webhook_data: Option<WebhookData>,
}

/// The request that triggered a webhook, as Azure hands it to runbooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookData {
    /// The webhook's name.
    #[serde(rename = "WebhookName")]
    pub webhook_name: String,
    /// The request's headers.
    #[serde(rename = "RequestHeader")]
    pub request_header: BTreeMap<String, String>,
    /// The request body, as text.
    #[serde(rename = "RequestBody")]
    pub request_body: String,
}

/// What the jobs API shows in place of a header value it hides.
pub const MASKED: &str = "*****";

/// Headers whose values the jobs API shows as sent. Every other header is
/// shown masked: a header may carry a credential under any name (a
/// delivery attribute filled from a vault secret, an API key a caller
/// chose), so the shown copy lists only what is known to be harmless.
/// The runbook itself still receives every header unmasked, as Azure
/// hands them over.
fn header_is_shown(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n == "aeg-sas-key" || n == "aeg-sas-token" {
        return false;
    }
    n.starts_with("aeg-")
        || n.starts_with("ce-")
        || matches!(
            n.as_str(),
            "accept"
                | "accept-encoding"
                | "accept-language"
                | "connection"
                | "content-encoding"
                | "content-length"
                | "content-type"
                | "expect"
                | "from"
                | "host"
                | "idempotency-key"
                | "request-id"
                | "traceparent"
                | "tracestate"
                | "user-agent"
                | "webhook-id"
                | "webhook-timestamp"
                | "x-correlation-id"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-request-id"
        )
}

impl WebhookData {
    /// The copy the jobs API shows: headers that may carry a credential
    /// (`Authorization`, `Cookie`, `aeg-sas-key`, any header not known to
    /// be harmless) are masked.
    pub fn shown(&self) -> WebhookData {
        WebhookData {
            webhook_name: self.webhook_name.clone(),
            request_header: self
                .request_header
                .iter()
                .map(|(k, v)| {
                    let v = if header_is_shown(k) {
                        v.clone()
                    } else {
                        MASKED.to_owned()
                    };
                    (k.clone(), v)
                })
                .collect(),
            request_body: self.request_body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(parse_name("runbook", "Rotate-Db_1").is_ok());
        for bad in ["", "1abc", "a b", "a/b", &"x".repeat(64)] {
            assert!(parse_name("runbook", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_both_shapes() {
        let list = parse_params(&json!([
            {"name": "Vault", "type": "string", "isMandatory": true},
            {"name": "Count", "type": "int", "defaultValue": 3},
            {"name": "Password", "secure": true}
        ]))
        .unwrap();
        assert_eq!(list.len(), 3);
        assert!(list[2].secure);
        let map = parse_params(&json!({"Vault": {"type": "String", "isMandatory": true}})).unwrap();
        assert_eq!(map[0].name, "Vault");
        assert!(parse_params(&json!([{"name": "x", "type": "float"}])).is_err());
        assert!(parse_params(&json!([{"name": "x", "type": "int", "defaultValue": "a"}])).is_err());
        assert!(parse_params(&json!([{"name": "x"}, {"name": "X"}])).is_err());
        assert!(parse_params(&json!("nope")).is_err());
    }

    #[test]
    fn binding_enforces_mandatory_and_types() {
        let decls = parse_params(&json!([
            {"name": "Vault", "isMandatory": true},
            {"name": "Count", "type": "int", "defaultValue": 3},
            {"name": "Password", "secure": true},
            {"name": "WebhookData", "type": "object"}
        ]))
        .unwrap();
        let err = bind_params(&decls, &Map::new()).unwrap_err();
        assert!(err.0.contains("Vault"));
        let given =
            json!({"Vault": "payments", "Count": "7", "Password": "pw", "WebhookData": "x"});
        let (plain, secure) = bind_params(&decls, given.as_object().unwrap()).unwrap();
        assert_eq!(plain["Count"], json!(7));
        assert_eq!(secure["Password"], json!("pw"));
        assert!(!plain.contains_key("WebhookData"));
        let bad = json!({"Vault": "v", "Count": "seven"});
        assert!(bind_params(&decls, bad.as_object().unwrap()).is_err());
        let unknown = json!({"Vault": "v", "Nope": 1});
        assert!(bind_params(&decls, unknown.as_object().unwrap()).is_err());
    }

    #[test]
    fn settings_apply() {
        let mut s = RunbookSettings::default();
        s.apply(json!({"timeoutSeconds": 5, "permissions": [{"vault": "payments", "actions": ["get", "set"]}]}).as_object().unwrap()).unwrap();
        assert_eq!(s.timeout_seconds, 5);
        assert!(s.permissions[0].allows("Payments", "set"));
        assert!(!s.permissions[0].allows("payments", "delete"));
        assert!(!s.permissions[0].allows("other", "get"));
        assert!(
            s.apply(json!({"timeoutSeconds": 0}).as_object().unwrap())
                .is_err()
        );
        assert!(
            s.apply(
                json!({"permissions": [{"vault": "x", "actions": ["fly"]}]})
                    .as_object()
                    .unwrap()
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn params_never_panic(raw in any::<String>()) {
            if let Ok(v) = serde_json::from_str::<Value>(&raw) {
                let _ = parse_params(&v);
            }
            let _ = parse_name("runbook", &raw);
            let _ = JobStatus::parse(&raw);
        }

        #[test]
        fn binding_never_panics(keys in proptest::collection::vec("[A-Za-z]{1,6}", 0..8), vals in proptest::collection::vec(any::<i64>(), 0..8)) {
            let decls = parse_params(&json!([{"name": "A", "type": "int", "isMandatory": true}, {"name": "B", "secure": true}])).unwrap();
            let given: Map<String, Value> = keys.into_iter().zip(vals).map(|(k, v)| (k, json!(v))).collect();
            let _ = bind_params(&decls, &given);
        }
    }

    #[test]
    fn shown_webhook_data_masks_credential_headers() {
        let wd = WebhookData {
            webhook_name: "w".into(),
            request_header: [
                ("Authorization", "Bearer abc"),
                ("Proxy-Authorization", "Basic x"),
                ("Cookie", "s=1"),
                ("aeg-sas-key", "k"),
                ("AEG-SAS-TOKEN", "t"),
                ("X-Api-Key", "from-a-vault"),
                ("Content-Type", "application/json"),
                ("aeg-event-type", "Notification"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            request_body: "{}".into(),
        };
        let shown = wd.shown();
        for k in [
            "Authorization",
            "Proxy-Authorization",
            "Cookie",
            "aeg-sas-key",
            "AEG-SAS-TOKEN",
            "X-Api-Key",
        ] {
            assert_eq!(shown.request_header[k], MASKED, "{k}");
        }
        assert_eq!(shown.request_header["Content-Type"], "application/json");
        assert_eq!(shown.request_header["aeg-event-type"], "Notification");
        assert_eq!(shown.request_body, "{}");
    }
}
