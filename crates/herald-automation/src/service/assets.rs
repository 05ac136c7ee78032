//! Assets: variables and credentials, sealed when encrypted, and what jobs read of them.

use super::*;
use herald_storage::AssetRecord;
use serde_json::{Value, json};

impl AutomationService {
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

    /// Every asset: variables and credentials.
    pub async fn assets(&self) -> Result<Vec<AssetRecord>> {
        Ok(self.store().list_assets().await?)
    }

    /// One asset, a `variable` or a `credential`.
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

    /// Deletes a variable or credential.
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
        // Checked before the lookup, so a job cannot probe which assets exist.
        if !job
            .assets
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
        {
            return Err(AutomationError::Forbidden(format!(
                "runbook '{}' may not read asset '{name}': name it in the runbook's assets (herald runbook create ... --asset {name})",
                job.runbook
            )));
        }
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
            self.register_mask(&job.job_id, &value).await;
        }
        Ok(if kind == "credential" {
            json!({"name": rec.name, "username": rec.username, "password": value})
        } else {
            json!({"name": rec.name, "value": value})
        })
    }
}
