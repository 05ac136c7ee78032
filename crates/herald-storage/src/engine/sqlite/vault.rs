//! SQLite: the vault store (settings, tokens, vaults, secrets, the event
//! log of vaults' system topics).

use super::SqliteStorage;
use crate::engine::BoxFuture;
use crate::*;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

const SECRET_COLS: &str = "s.vault_id, s.name_key, s.name, s.deleted_at, s.purge_at, \
     v.version, v.ordinal, v.enabled, v.nbf, v.exp, v.created, v.updated, v.content_type, \
     v.tags, v.value, v.wrapped_key";

const VAULT_COLS: &str = "id, name, retention_days, purge_protection, near_expiry_secs, created";

impl SqliteStorage {
    /// Soft-deletes a live secret (`Some((deleted_at, purge_at))`) or
    /// recovers a deleted one (`None`); returns it with its latest version.
    async fn set_deleted(
        &self,
        vault_id: &str,
        key: &str,
        deletion: Option<(i64, i64)>,
    ) -> Result<Option<(SecretRecord, VersionRecord)>> {
        let (vault_id, key) = (vault_id.to_owned(), key.to_owned());
        let was = if deletion.is_some() {
            "IS NULL"
        } else {
            "IS NOT NULL"
        };
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let done = sqlx::query(&format!(
                            "UPDATE secrets SET deleted_at = ?, purge_at = ? \
                         WHERE vault_id = ? AND name_key = ? AND deleted_at {was}"
                        ))
                        .bind(deletion.map(|d| d.0))
                        .bind(deletion.map(|d| d.1))
                        .bind(&vault_id)
                        .bind(&key)
                        .execute(&mut *tx)
                        .await?;
                        if done.rows_affected() == 0 {
                            return Ok(None);
                        }
                        current_pair(&mut *tx, &vault_id, &key).await
                    })
                },
            )
            .await
    }

    /// Live or soft-deleted secrets with their latest version, by key.
    async fn list_latest(
        &self,
        vault_id: &str,
        after_key: Option<&str>,
        limit: i64,
        deleted: bool,
    ) -> Result<Vec<(SecretRecord, VersionRecord)>> {
        let state = if deleted { "IS NOT NULL" } else { "IS NULL" };
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
             ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND v.ordinal = s.current_ordinal \
             WHERE s.vault_id = ? AND s.deleted_at {state} AND s.name_key > ? \
             ORDER BY s.name_key LIMIT ?"
        ))
        .bind(vault_id)
        .bind(after_key.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(pair).collect()
    }
}

fn vault_from_row(r: &SqliteRow) -> Result<VaultRecord> {
    Ok(VaultRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        settings: VaultSettings {
            retention_days: r.try_get("retention_days")?,
            purge_protection: r.try_get("purge_protection")?,
            near_expiry_secs: r.try_get("near_expiry_secs")?,
        },
        created: r.try_get("created")?,
    })
}

pub(crate) const TOPIC_COLS: &str =
    "id, kind, name, arm_id, created, input_schema, input_mapping, key1, key2";

pub(crate) fn topic_from_row(r: &SqliteRow) -> Result<TopicRecord> {
    Ok(TopicRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        arm_id: r.try_get("arm_id")?,
        created: r.try_get("created")?,
        input_schema: r.try_get("input_schema")?,
        input_mapping: r.try_get("input_mapping")?,
        key1: r.try_get::<Option<Vec<u8>>, _>("key1")?.unwrap_or_default(),
        key2: r.try_get::<Option<Vec<u8>>, _>("key2")?.unwrap_or_default(),
    })
}

fn secret_from_row(r: &SqliteRow) -> Result<SecretRecord> {
    Ok(SecretRecord {
        vault_id: r.try_get("vault_id")?,
        key: r.try_get("name_key")?,
        name: r.try_get("name")?,
        deleted_at: r.try_get("deleted_at")?,
        purge_at: r.try_get("purge_at")?,
    })
}

fn version_from_row(r: &SqliteRow) -> Result<VersionRecord> {
    Ok(VersionRecord {
        version: r.try_get("version")?,
        ordinal: r.try_get("ordinal")?,
        enabled: r.try_get("enabled")?,
        nbf: r.try_get("nbf")?,
        exp: r.try_get("exp")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
        content_type: r.try_get("content_type")?,
        tags: r.try_get("tags")?,
        value: r.try_get("value")?,
        wrapped_key: r.try_get("wrapped_key")?,
    })
}

pub(crate) fn pair(r: &SqliteRow) -> Result<(SecretRecord, VersionRecord)> {
    Ok((secret_from_row(r)?, version_from_row(r)?))
}

async fn insert_version(
    tx: &mut SqliteConnection,
    vault_id: &str,
    key: &str,
    v: &VersionRecord,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO secret_versions (vault_id, name_key, ordinal, version, enabled, nbf, exp, \
         created, updated, content_type, tags, value, wrapped_key) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(vault_id)
    .bind(key)
    .bind(v.ordinal)
    .bind(&v.version)
    .bind(v.enabled)
    .bind(v.nbf)
    .bind(v.exp)
    .bind(v.created)
    .bind(v.updated)
    .bind(&v.content_type)
    .bind(&v.tags)
    .bind(&v.value)
    .bind(&v.wrapped_key)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Appends to the vault's system topic log inside the caller's transaction.
async fn log_vault_event(
    tx: &mut SqliteConnection,
    vault_id: &str,
    event: &EventGridEvent,
) -> Result<()> {
    let body = serde_json::to_string(event).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO event_log (topic_id, event_id, event_type, subject, body, created) \
         SELECT id, ?, ?, ?, ?, unixepoch() FROM topics WHERE vault_id = ? AND kind = 'system'",
    )
    .bind(&event.id)
    .bind(&event.event_type)
    .bind(&event.subject)
    .bind(body)
    .bind(vault_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO counters (scope, name, value) \
         SELECT id, 'published', 1 FROM topics WHERE vault_id = ? AND kind = 'system' \
         ON CONFLICT (scope, name) DO UPDATE SET value = value + 1",
    )
    .bind(vault_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn current_pair(
    tx: &mut SqliteConnection,
    vault_id: &str,
    key: &str,
) -> Result<Option<(SecretRecord, VersionRecord)>> {
    let row = sqlx::query(&format!(
        "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
         ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND v.ordinal = s.current_ordinal \
         WHERE s.vault_id = ? AND s.name_key = ?"
    ))
    .bind(vault_id)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    row.as_ref().map(pair).transpose()
}

#[async_trait]
impl VaultStore for SqliteStorage {
    async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                .bind(key)
                .fetch_all(&self.reader)
                .await?
                .into_iter()
                .next(),
        )
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String> {
        let key = key.to_owned();
        let value = value.to_owned();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let key = key.as_str();
                    let value = value.as_str();
                sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
                let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(stored)
                })
            })
            .await
    }

    async fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<()> {
        let hash = hash.to_owned();
        let t = t.clone();
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let hash = hash.as_str();
                        let t = &t;
                        sqlx::query(
                    "INSERT INTO api_tokens (hash, id, name, role, created) VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (hash) DO NOTHING",
                )
                .bind(hash)
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.role)
                .bind(t.created)
                .execute(&mut *tx)
                .await?;
                        Ok(())
                    })
                },
            )
            .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query("SELECT id, name, role, created FROM api_tokens WHERE hash = ?")
            .bind(hash)
            .fetch_all(&self.reader)
            .await?
            .into_iter()
            .next();
        row.map(|r| {
            Ok(TokenRecord {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                created: r.try_get("created")?,
            })
        })
        .transpose()
    }

    async fn count_tokens(&self, role: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE role = ?")
                .bind(role)
                .fetch_all(&self.reader)
                .await?
                .into_iter()
                .next()
                .ok_or(sqlx::Error::RowNotFound)?,
        )
    }

    async fn create_vault(&self, v: &VaultRecord, t: &TopicRecord) -> Result<bool> {
        let v = v.clone();
        let t = t.clone();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let v = &v;
                    let t = &t;
                // The system topic shares the topic namespace; a taken name
                // refuses the vault before anything is written.
                let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM topics WHERE name = ?")
                    .bind(&t.name)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Ok(false);
                }
                let inserted = sqlx::query(
                    "INSERT INTO vaults (id, name, retention_days, purge_protection, near_expiry_secs, created) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&v.id)
                .bind(&v.name)
                .bind(v.settings.retention_days)
                .bind(v.settings.purge_protection)
                .bind(v.settings.near_expiry_secs)
                .bind(v.created)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !inserted {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO topics (id, kind, name, arm_id, vault_id, created) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&t.id)
                .bind(&t.kind)
                .bind(&t.name)
                .bind(&t.arm_id)
                .bind(&v.id)
                .bind(t.created)
                .execute(&mut *tx)
                .await?;
                Ok(true)
                })
            })
            .await
    }

    async fn vault_by_name(&self, name: &str) -> Result<Option<VaultRecord>> {
        let row = sqlx::query(&format!("SELECT {VAULT_COLS} FROM vaults WHERE name = ?"))
            .bind(name)
            .fetch_all(&self.reader)
            .await?
            .into_iter()
            .next();
        row.as_ref().map(vault_from_row).transpose()
    }

    async fn list_vaults(&self) -> Result<Vec<VaultRecord>> {
        let rows = sqlx::query(&format!("SELECT {VAULT_COLS} FROM vaults ORDER BY name"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(vault_from_row).collect()
    }

    async fn delete_vault(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let name = name.as_str();
                        let done = sqlx::query("DELETE FROM vaults WHERE name = ?")
                            .bind(name)
                            .execute(&mut *tx)
                            .await?;
                        Ok(done.rows_affected() == 1)
                    })
                },
            )
            .await
    }

    async fn topic_for_vault(&self, vault_id: &str) -> Result<Option<TopicRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {TOPIC_COLS} FROM topics WHERE vault_id = ? AND kind = 'system'"
        ))
        .bind(vault_id)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .next();
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn put_version(
        &self,
        vault_id: &str,
        key: &str,
        name: &str,
        version: &VersionRecord,
        event: &EventGridEvent,
    ) -> Result<Result<SecretRecord, WriteRefused>> {
        let vault_id = vault_id.to_owned();
        let key = key.to_owned();
        let name = name.to_owned();
        let version = version.clone();
        let event = event.clone();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let vault_id = vault_id.as_str();
                    let key = key.as_str();
                    let name = name.as_str();
                    let version = &version;
                    let event = &event;
                // One statement creates the secret or bumps its ordinal, unless the
                // name is soft-deleted (then the conditional update returns no row).
                let row = sqlx::query(
                    "INSERT INTO secrets (vault_id, name_key, name, current_ordinal) VALUES (?, ?, ?, 1) \
                     ON CONFLICT (vault_id, name_key) DO UPDATE SET current_ordinal = current_ordinal + 1 \
                     WHERE deleted_at IS NULL \
                     RETURNING vault_id, name_key, name, deleted_at, purge_at, current_ordinal",
                )
                .bind(vault_id)
                .bind(key)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(Err(WriteRefused::Deleted));
                };
                let secret = secret_from_row(&row)?;
                let ordinal: i64 = row.try_get("current_ordinal")?;
                let v = VersionRecord {
                    ordinal,
                    ..version.clone()
                };
                insert_version(&mut *tx, vault_id, key, &v).await?;
                let mut event = event.clone();
                herald_core::event::respell_secret_event(&mut event, &secret.name);
                log_vault_event(&mut *tx, vault_id, &event).await?;
                Ok(Ok(secret))
                })
            })
            .await
    }

    async fn get_version(
        &self,
        vault_id: &str,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<(SecretRecord, VersionRecord)>> {
        let join = match version {
            None => "v.ordinal = s.current_ordinal",
            Some(_) => "v.version = ?",
        };
        let sql = format!(
            "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
             ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND {join} \
             WHERE s.vault_id = ? AND s.name_key = ? AND s.deleted_at IS NULL"
        );
        let mut q = sqlx::query(&sql);
        if let Some(ver) = version {
            q = q.bind(ver);
        }
        let row = q
            .bind(vault_id)
            .bind(key)
            .fetch_all(&self.reader)
            .await?
            .into_iter()
            .next();
        row.as_ref().map(pair).transpose()
    }

    async fn list_secrets(
        &self,
        vault_id: &str,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(SecretRecord, VersionRecord)>> {
        self.list_latest(vault_id, after_key, limit, false).await
    }

    async fn list_versions(
        &self,
        vault_id: &str,
        key: &str,
        after_ordinal: Option<i64>,
        limit: i64,
    ) -> Result<Option<(SecretRecord, Vec<VersionRecord>)>> {
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
             ON v.vault_id = s.vault_id AND v.name_key = s.name_key \
             WHERE s.vault_id = ? AND s.name_key = ? AND s.deleted_at IS NULL AND v.ordinal > ? \
             ORDER BY v.ordinal LIMIT ?"
        ))
        .bind(vault_id)
        .bind(key)
        .bind(after_ordinal.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        if let Some(first) = rows.first() {
            let secret = secret_from_row(first)?;
            let versions = rows.iter().map(version_from_row).collect::<Result<_>>()?;
            return Ok(Some((secret, versions)));
        }
        // An empty page is still a page if the secret exists.
        let secret = sqlx::query(
            "SELECT vault_id, name_key, name, deleted_at, purge_at FROM secrets \
             WHERE vault_id = ? AND name_key = ? AND deleted_at IS NULL",
        )
        .bind(vault_id)
        .bind(key)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .next();
        secret
            .as_ref()
            .map(|r| Ok((secret_from_row(r)?, Vec::new())))
            .transpose()
    }

    async fn update_version(
        &self,
        vault_id: &str,
        key: &str,
        version: Option<&str>,
        patch: &VersionPatch,
    ) -> Result<Option<(SecretRecord, VersionRecord)>> {
        let vault_id = vault_id.to_owned();
        let key = key.to_owned();
        let patch = patch.clone();
        let version = version.map(str::to_owned);
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let vault_id = vault_id.as_str();
                    let key = key.as_str();
                    let patch = &patch;
                    let version = version.as_deref();
                let join = match version {
                    None => "v.ordinal = s.current_ordinal",
                    Some(_) => "v.version = ?",
                };
                let sql = format!(
                    "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
                     ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND {join} \
                     WHERE s.vault_id = ? AND s.name_key = ? AND s.deleted_at IS NULL"
                );
                let mut q = sqlx::query(&sql);
                if let Some(ver) = version {
                    q = q.bind(ver);
                }
                let Some(row) = q.bind(vault_id).bind(key).fetch_optional(&mut *tx).await? else {
                    return Ok(None);
                };
                let (secret, mut v) = pair(&row)?;
                let exp_changed = patch.exp.is_some_and(|e| e != v.exp);
                if let Some(e) = patch.enabled {
                    v.enabled = e;
                }
                if let Some(n) = patch.nbf {
                    v.nbf = n;
                }
                if let Some(e) = patch.exp {
                    v.exp = e;
                }
                if let Some(c) = &patch.content_type {
                    v.content_type = c.clone();
                }
                if let Some(t) = &patch.tags {
                    v.tags = t.clone();
                }
                v.updated = patch.updated;
                // A new `exp` reschedules the lifecycle timers for this version.
                sqlx::query(
                    "UPDATE secret_versions SET enabled = ?, nbf = ?, exp = ?, content_type = ?, tags = ?, \
                     updated = ?, near_expiry_done = CASE WHEN ? THEN 0 ELSE near_expiry_done END, \
                     expired_done = CASE WHEN ? THEN 0 ELSE expired_done END \
                     WHERE vault_id = ? AND name_key = ? AND ordinal = ?",
                )
                .bind(v.enabled)
                .bind(v.nbf)
                .bind(v.exp)
                .bind(&v.content_type)
                .bind(&v.tags)
                .bind(v.updated)
                .bind(exp_changed)
                .bind(exp_changed)
                .bind(vault_id)
                .bind(key)
                .bind(v.ordinal)
                .execute(&mut *tx)
                .await?;
                Ok(Some((secret, v)))
                })
            })
            .await
    }

    async fn all_versions(
        &self,
        vault_id: &str,
        key: &str,
    ) -> Result<Option<(SecretRecord, Vec<VersionRecord>)>> {
        self.list_versions(vault_id, key, None, i64::MAX).await
    }

    async fn restore_secret(
        &self,
        vault_id: &str,
        key: &str,
        name: &str,
        versions: &[VersionRecord],
        events: &[EventGridEvent],
    ) -> Result<Result<SecretRecord, WriteRefused>> {
        let vault_id = vault_id.to_owned();
        let key = key.to_owned();
        let name = name.to_owned();
        let versions = versions.to_vec();
        let events = events.to_vec();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let vault_id = vault_id.as_str();
                    let key = key.as_str();
                    let name = name.as_str();
                    let versions = &versions[..];
                    let events = &events[..];
                let deleted_at: Option<Option<i64>> = sqlx::query_scalar(
                    "SELECT deleted_at FROM secrets WHERE vault_id = ? AND name_key = ?",
                )
                .bind(vault_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                match deleted_at {
                    Some(Some(_)) => return Ok(Err(WriteRefused::Deleted)),
                    Some(None) => return Ok(Err(WriteRefused::Exists)),
                    None => {}
                }
                let current = versions.iter().map(|v| v.ordinal).max().unwrap_or(1);
                sqlx::query(
                    "INSERT INTO secrets (vault_id, name_key, name, current_ordinal) VALUES (?, ?, ?, ?)",
                )
                .bind(vault_id)
                .bind(key)
                .bind(name)
                .bind(current)
                .execute(&mut *tx)
                .await?;
                for v in versions {
                    insert_version(&mut *tx, vault_id, key, v).await?;
                }
                for e in events {
                    log_vault_event(&mut *tx, vault_id, e).await?;
                }
                Ok(Ok(SecretRecord {
                    vault_id: vault_id.to_owned(),
                    key: key.to_owned(),
                    name: name.to_owned(),
                    deleted_at: None,
                    purge_at: None,
                }))
                })
            })
            .await
    }

    async fn soft_delete(
        &self,
        vault_id: &str,
        key: &str,
        deleted_at: i64,
        purge_at: i64,
    ) -> Result<Option<(SecretRecord, VersionRecord)>> {
        self.set_deleted(vault_id, key, Some((deleted_at, purge_at)))
            .await
    }

    async fn get_deleted(
        &self,
        vault_id: &str,
        key: &str,
    ) -> Result<Option<(SecretRecord, VersionRecord)>> {
        let row = sqlx::query(&format!(
            "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
             ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND v.ordinal = s.current_ordinal \
             WHERE s.vault_id = ? AND s.name_key = ? AND s.deleted_at IS NOT NULL"
        ))
        .bind(vault_id)
        .bind(key)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .next();
        row.as_ref().map(pair).transpose()
    }

    async fn list_deleted(
        &self,
        vault_id: &str,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(SecretRecord, VersionRecord)>> {
        self.list_latest(vault_id, after_key, limit, true).await
    }

    async fn recover(
        &self,
        vault_id: &str,
        key: &str,
    ) -> Result<Option<(SecretRecord, VersionRecord)>> {
        self.set_deleted(vault_id, key, None).await
    }

    async fn purge(&self, vault_id: &str, key: &str) -> Result<bool> {
        let vault_id = vault_id.to_owned();
        let key = key.to_owned();
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {
                    let vault_id = vault_id.as_str();
                    let key = key.as_str();
                let done = sqlx::query(
                    "DELETE FROM secrets WHERE vault_id = ? AND name_key = ? AND deleted_at IS NOT NULL",
                )
                .bind(vault_id)
                .bind(key)
                .execute(&mut *tx)
                .await?;
                Ok(done.rows_affected() == 1)
                })
            })
            .await
    }

    async fn purge_due(&self, now: i64) -> Result<Vec<(String, String)>> {
        self.writer
            .write(move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                Box::pin(async move {

                let rows = sqlx::query(
                    "DELETE FROM secrets WHERE purge_at IS NOT NULL AND purge_at <= ? \
                     RETURNING (SELECT name FROM vaults WHERE vaults.id = secrets.vault_id) AS vault, name",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("vault")?, r.try_get("name")?)))
                    .collect()
                })
            })
            .await
    }

    async fn due_expiries(&self, now: i64, limit: i64) -> Result<Vec<DueExpiry>> {
        let rows = sqlx::query(&format!(
            "SELECT {SECRET_COLS}, v.near_expiry_done, \
             vt.id AS vt_id, vt.name AS vt_name, vt.retention_days, vt.purge_protection, \
             vt.near_expiry_secs, vt.created AS vt_created \
             FROM secret_versions v \
             JOIN secrets s ON s.vault_id = v.vault_id AND s.name_key = v.name_key \
                 AND s.current_ordinal = v.ordinal \
             JOIN vaults vt ON vt.id = v.vault_id \
             WHERE v.exp IS NOT NULL AND v.expired_done = 0 AND s.deleted_at IS NULL \
               AND (v.exp <= ?1 OR (v.near_expiry_done = 0 AND v.exp - vt.near_expiry_secs <= ?1)) \
             ORDER BY v.exp LIMIT ?2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let near_done: bool = r.try_get("near_expiry_done")?;
                Ok(DueExpiry {
                    vault: VaultRecord {
                        id: r.try_get("vt_id")?,
                        name: r.try_get("vt_name")?,
                        settings: VaultSettings {
                            retention_days: r.try_get("retention_days")?,
                            purge_protection: r.try_get("purge_protection")?,
                            near_expiry_secs: r.try_get("near_expiry_secs")?,
                        },
                        created: r.try_get("vt_created")?,
                    },
                    secret: secret_from_row(r)?,
                    version: version_from_row(r)?,
                    // NearExpiry always precedes Expired for a version.
                    kind: if near_done {
                        ExpiryKind::Expired
                    } else {
                        ExpiryKind::NearExpiry
                    },
                })
            })
            .collect()
    }

    async fn record_expiry(
        &self,
        vault_id: &str,
        key: &str,
        ordinal: i64,
        kind: ExpiryKind,
        event: &EventGridEvent,
    ) -> Result<bool> {
        let vault_id = vault_id.to_owned();
        let key = key.to_owned();
        let event = event.clone();
        self.writer
            .write(
                move |tx: &mut SqliteConnection| -> BoxFuture<'_, Result<_>> {
                    Box::pin(async move {
                        let vault_id = vault_id.as_str();
                        let key = key.as_str();
                        let event = &event;
                        let column = match kind {
                            ExpiryKind::NearExpiry => "near_expiry_done",
                            ExpiryKind::Expired => "expired_done",
                        };
                        let claimed = sqlx::query(&format!(
                            "UPDATE secret_versions SET {column} = 1 \
                     WHERE vault_id = ? AND name_key = ? AND ordinal = ? AND {column} = 0"
                        ))
                        .bind(vault_id)
                        .bind(key)
                        .bind(ordinal)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if claimed {
                            log_vault_event(&mut *tx, vault_id, event).await?;
                        }
                        Ok(claimed)
                    })
                },
            )
            .await
    }

    async fn read_events(
        &self,
        topic_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>> {
        let rows = sqlx::query(
            "SELECT seq, topic_id, body FROM event_log WHERE topic_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(topic_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                Ok(LoggedEvent {
                    seq: r.try_get("seq")?,
                    topic_id: r.try_get("topic_id")?,
                    event: serde_json::from_str(&body)
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }
}
