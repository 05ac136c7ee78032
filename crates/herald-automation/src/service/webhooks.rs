//! Webhooks with Azure's rules: token URLs shown once, expiry, enablement, sealed secure parameters, and invocation into jobs.

use super::*;
use herald_storage::{JobCreated, WebhookPatch, WebhookRecord};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

impl AutomationService {
    /// Azure's generateUri: a fresh URL whose token a later PUT may bind.
    pub async fn generate_uri(&self) -> Result<String> {
        let token = new_webhook_token();
        self.store()
            .put_pending_webhook_token(&hash_token(&token), now_ms())
            .await?;
        Ok(self.webhook_url(&token))
    }

    pub(super) fn webhook_url(&self, token: &str) -> String {
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
            id: herald_core::id::WebhookId::generate(),
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

    pub(super) fn seal_secure(
        &self,
        name: &str,
        secure: &BTreeMap<String, Value>,
    ) -> Result<Option<Vec<u8>>> {
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

    pub(super) fn open_secure(&self, wh: &WebhookRecord) -> Result<BTreeMap<String, Value>> {
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

    /// One webhook by name.
    pub async fn webhook(&self, name: &str) -> Result<WebhookRecord> {
        self.store()
            .webhook(&key_of("webhook", name)?)
            .await?
            .ok_or_else(|| not_found("webhook", name))
    }

    /// Every webhook, or those of one runbook.
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

    /// Deletes a webhook; its URL stops working.
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
                    job_id: job.id.to_string(),
                    replayed: false,
                })
            }
            JobCreated::Existing(id) => Ok(Invoked {
                job_id: id,
                replayed: true,
            }),
        }
    }
}
