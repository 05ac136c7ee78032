//! Runbooks: definitions, drafts, published versions, and starting one by hand.

use super::*;
use crate::sandbox::find_interpreter;
use herald_storage::{JobId, JobRecord, RunbookRecord};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

impl AutomationService {
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
            id: RunbookId::generate(),
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

    /// One runbook by name.
    pub async fn runbook(&self, name: &str) -> Result<RunbookRecord> {
        self.store()
            .runbook(&key_of("runbook", name)?)
            .await?
            .ok_or_else(|| not_found("runbook", name))
    }

    /// Every runbook.
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

    /// Replaces the runbook's draft content; publish it to run it.
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

    /// Publishes the draft as the next version; returns the version number.
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

    /// Deletes a runbook and its webhooks.
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
        Ok(job.id.to_string())
    }

    pub(super) async fn published(&self, rb: &RunbookRecord) -> Result<(i64, Vec<ParamDecl>)> {
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
    pub(super) fn new_job(
        &self,
        rb: &RunbookRecord,
        version: i64,
        started_by: &str,
        run_on: &str,
        plain: BTreeMap<String, Value>,
        secure: BTreeMap<String, Value>,
        webhook_data: Option<WebhookData>,
    ) -> Result<JobRecord> {
        let id = JobId::generate();
        // Azure logs every input with the job; secure values are masked.
        let mut shown: Map<String, Value> = plain.clone().into_iter().collect();
        for k in secure.keys() {
            shown.insert(k.clone(), Value::String("*****".into()));
        }
        if let Some(w) = &webhook_data {
            shown.insert(
                "WebhookData".into(),
                serde_json::to_value(w.shown()).map_err(internal)?,
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
        let parameters = self.seal_shown(&id, &Value::Object(shown))?;
        Ok(JobRecord {
            id,
            runbook_id: rb.id.clone(),
            runbook_name: rb.name.clone(),
            runbook_version: version,
            started_by: started_by.to_owned(),
            run_on: run_on.to_owned(),
            status: JobStatus::New,
            status_details: String::new(),
            exception: None,
            parameters,
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

    pub(super) fn queued_log(&self, job: &JobRecord) {
        tracing::info!(job = %job.id, runbook = %job.runbook_name, started_by = %job.started_by, "job queued");
        self.wake(&job.run_on);
        self.changed(&job.id);
    }
}
