//! The vault store, written once for both engines.
//!
//! Nothing here differs in concurrency between the engines: each write is
//! one conditional statement, or a read followed by writes under the row
//! lock that [`Engine::row_lock`](crate::engine::Engine::row_lock) takes on
//! PostgreSQL (SQLite's single writer already serialises the transaction).
//! The comments on each method say what makes it safe with several nodes.

/// Implements [`VaultStore`](crate::VaultStore) for an engine.
macro_rules! vault_store {
    ($S:ty) => {
        mod vault_store {
            use super::*;
            use crate::engine::{BoxFuture, Conn, Engine};
            use crate::router::store::TOPIC_COLS;
            use crate::*;
            use herald_core::EventGridEvent;
            use herald_core::vault::VaultSettings;
            use sqlx::Row;

            type S = $S;
            type DbRow = <<S as Engine>::Db as sqlx::Database>::Row;

            const SECRET_COLS: &str = "s.vault_id, s.name_key, s.name, s.deleted_at, s.purge_at, \
                 v.version, v.ordinal, v.enabled, v.nbf, v.exp, v.created, v.updated, \
                 v.content_type, v.tags, v.value, v.wrapped_key";

            const VAULT_COLS: &str =
                "id, name, retention_days, purge_protection, near_expiry_secs, created";

            fn vault_from_row(r: &DbRow) -> Result<VaultRecord> {
                Ok(VaultRecord {
                    id: r.try_get::<String, _>("id")?.into(),
                    name: r.try_get("name")?,
                    settings: VaultSettings {
                        retention_days: r.try_get("retention_days")?,
                        purge_protection: r.try_get("purge_protection")?,
                        near_expiry_secs: r.try_get("near_expiry_secs")?,
                    },
                    created: r.try_get("created")?,
                })
            }

            fn secret_from_row(r: &DbRow) -> Result<SecretRecord> {
                Ok(SecretRecord {
                    vault_id: r.try_get::<String, _>("vault_id")?.into(),
                    key: r.try_get("name_key")?,
                    name: r.try_get("name")?,
                    deleted_at: r.try_get("deleted_at")?,
                    purge_at: r.try_get("purge_at")?,
                })
            }

            fn version_from_row(r: &DbRow) -> Result<VersionRecord> {
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

            fn secret_and_version(r: &DbRow) -> Result<(SecretRecord, VersionRecord)> {
                Ok((secret_from_row(r)?, version_from_row(r)?))
            }

            async fn insert_version(
                tx: &mut Conn<S>,
                vault_id: &str,
                key: &str,
                v: &VersionRecord,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO secret_versions (vault_id, name_key, ordinal, version, enabled, \
                     nbf, exp, created, updated, content_type, tags, value, wrapped_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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

            /// Appends to the vault's system topic log inside the caller's
            /// transaction, counts it as published, and queues a
            /// `topic:<id>` wake-up that is sent only if the transaction
            /// commits.
            ///
            /// On PostgreSQL the event_log trigger (0001_vault.sql) takes the
            /// topic's append lock before drawing `seq`, so per topic seq
            /// order is commit order even with several nodes appending.
            async fn log_vault_event(
                tx: &mut Conn<S>,
                vault_id: &str,
                event: &EventGridEvent,
            ) -> Result<()> {
                let body = serde_json::to_string(event)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                let topics: Vec<String> = sqlx::query_scalar(&format!(
                    "INSERT INTO event_log (topic_id, event_id, event_type, subject, body, created) \
                     SELECT id, $1, $2, $3, $4, {} FROM topics \
                     WHERE vault_id = $5 AND kind = 'system' \
                     RETURNING topic_id",
                    S::UNIX_NOW
                ))
                .bind(&event.id)
                .bind(&event.event_type)
                .bind(&event.subject)
                .bind(body)
                .bind(vault_id)
                .fetch_all(&mut *tx)
                .await?;
                // A counter row is shared by every writer to the topic: add in place.
                sqlx::query(
                    "INSERT INTO counters (scope, name, value) \
                     SELECT id, 'published', 1 FROM topics WHERE vault_id = $1 AND kind = 'system' \
                     ON CONFLICT (scope, name) DO UPDATE SET value = counters.value + excluded.value",
                )
                .bind(vault_id)
                .execute(&mut *tx)
                .await?;
                for topic in topics {
                    S::notify(&mut *tx, format!("topic:{topic}")).await?;
                }
                Ok(())
            }

            async fn current_secret(
                tx: &mut Conn<S>,
                vault_id: &str,
                key: &str,
            ) -> Result<Option<(SecretRecord, VersionRecord)>> {
                let row = sqlx::query(&format!(
                    "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
                     ON v.vault_id = s.vault_id AND v.name_key = s.name_key \
                     AND v.ordinal = s.current_ordinal \
                     WHERE s.vault_id = $1 AND s.name_key = $2"
                ))
                .bind(vault_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
                row.as_ref().map(secret_and_version).transpose()
            }

            /// Soft-deletes a live secret (`Some((deleted_at, purge_at))`)
            /// or recovers a deleted one (`None`); returns it with its
            /// latest version.
            ///
            /// Conditional on the current state: of two racing deletes (or
            /// recovers) on PostgreSQL the second waits for the first's row
            /// lock, re-checks `deleted_at` and matches nothing. The row lock
            /// is held until commit, so the pair read after it is what this
            /// transaction wrote.
            async fn set_deleted(
                store: &S,
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
                store
                    .write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(&format!(
                                "UPDATE secrets SET deleted_at = $1, purge_at = $2 \
                                 WHERE vault_id = $3 AND name_key = $4 AND deleted_at {was}"
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
                            current_secret(tx, &vault_id, &key).await
                        })
                    })
                    .await
            }

            /// Live or soft-deleted secrets with their latest version, by key.
            /// PostgreSQL's `name_key` is COLLATE "C": byte order, as SQLite
            /// pages.
            async fn list_latest(
                store: &S,
                vault_id: &str,
                after_key: Option<&str>,
                limit: i64,
                deleted: bool,
            ) -> Result<Vec<(SecretRecord, VersionRecord)>> {
                let state = if deleted { "IS NOT NULL" } else { "IS NULL" };
                let rows = sqlx::query(&format!(
                    "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
                     ON v.vault_id = s.vault_id AND v.name_key = s.name_key \
                     AND v.ordinal = s.current_ordinal \
                     WHERE s.vault_id = $1 AND s.deleted_at {state} AND s.name_key > $2 \
                     ORDER BY s.name_key LIMIT $3"
                ))
                .bind(vault_id)
                .bind(after_key.unwrap_or(""))
                .bind(limit)
                .fetch_all(store.reader())
                .await?;
                rows.iter().map(secret_and_version).collect()
            }

            /// Reads from the reader pool take every row with `fetch_all`
            /// rather than `fetch_optional`, which on SQLite can leave the
            /// statement open and with it a read snapshot that holds WAL
            /// checkpoints back.
            #[async_trait::async_trait]
            impl VaultStore for S {
                async fn setting(&self, key: &str) -> Result<Option<String>> {
                    Ok(
                        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                            .bind(key)
                            .fetch_all(self.reader())
                            .await?
                            .into_iter()
                            .next(),
                    )
                }

                async fn init_setting(&self, key: &str, value: &str) -> Result<String> {
                    let (key, value) = (key.to_owned(), value.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // First writer wins: on PostgreSQL a racing insert
                            // waits for the other's commit and does nothing; the
                            // SELECT (a fresh snapshot under READ COMMITTED) then
                            // sees the winner's value.
                            sqlx::query(
                                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                                 ON CONFLICT (key) DO NOTHING",
                            )
                            .bind(&key)
                            .bind(&value)
                            .execute(&mut *tx)
                            .await?;
                            let stored: String =
                                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                                    .bind(&key)
                                    .fetch_one(&mut *tx)
                                    .await?;
                            Ok(stored)
                        })
                    })
                    .await
                }

                async fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<()> {
                    let (hash, t) = (hash.to_owned(), t.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO api_tokens (hash, id, name, role, created) \
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
                            )
                            .bind(&hash)
                            .bind(&t.id)
                            .bind(&t.name)
                            .bind(&t.role)
                            .bind(t.created)
                            .execute(&mut *tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
                    let row = sqlx::query(
                        "SELECT id, name, role, created FROM api_tokens WHERE hash = $1",
                    )
                    .bind(hash)
                    .fetch_all(self.reader())
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
                        sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE role = $1")
                            .bind(role)
                            .fetch_one(self.reader())
                            .await?,
                    )
                }

                async fn create_vault(&self, v: &VaultRecord, t: &TopicRecord) -> Result<bool> {
                    let (v, t) = (v.clone(), t.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // The system topic shares the topic namespace; a
                            // taken name refuses the vault before anything is
                            // written.
                            let taken: Option<i32> =
                                sqlx::query_scalar("SELECT 1 FROM topics WHERE name = $1")
                                    .bind(&t.name)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                            if taken.is_some() {
                                return Ok(false);
                            }
                            // Racing creators of one name: the loser's insert
                            // waits for the winner's commit and then does nothing.
                            let inserted = sqlx::query(
                                "INSERT INTO vaults (id, name, retention_days, purge_protection, \
                                 near_expiry_secs, created) VALUES ($1, $2, $3, $4, $5, $6) \
                                 ON CONFLICT (name) DO NOTHING",
                            )
                            .bind(v.id.as_str())
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
                            let topic = sqlx::query(
                                "INSERT INTO topics (id, kind, name, arm_id, vault_id, created) \
                                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                            )
                            .bind(t.id.as_str())
                            .bind(&t.kind)
                            .bind(&t.name)
                            .bind(&t.arm_id)
                            .bind(v.id.as_str())
                            .bind(t.created)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            if topic != 1 {
                                // Another node created a topic of this name
                                // since the check above: take the vault back,
                                // just as if the check had seen it.
                                sqlx::query("DELETE FROM vaults WHERE id = $1")
                                    .bind(v.id.as_str())
                                    .execute(&mut *tx)
                                    .await?;
                                return Ok(false);
                            }
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn vault_by_name(&self, name: &str) -> Result<Option<VaultRecord>> {
                    let row =
                        sqlx::query(&format!("SELECT {VAULT_COLS} FROM vaults WHERE name = $1"))
                            .bind(name)
                            .fetch_all(self.reader())
                            .await?
                            .into_iter()
                            .next();
                    row.as_ref().map(vault_from_row).transpose()
                }

                async fn list_vaults(&self) -> Result<Vec<VaultRecord>> {
                    let rows = sqlx::query(&format!("SELECT {VAULT_COLS} FROM vaults ORDER BY name"))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(vault_from_row).collect()
                }

                async fn delete_vault(&self, name: &str) -> Result<bool> {
                    let name = name.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Cascades to the system topic, secrets and
                            // versions; the topic's event_log rows stay.
                            let done = sqlx::query("DELETE FROM vaults WHERE name = $1")
                                .bind(&name)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn topic_for_vault(&self, vault_id: &str) -> Result<Option<TopicRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {TOPIC_COLS} FROM topics WHERE vault_id = $1 AND kind = 'system'"
                    ))
                    .bind(vault_id)
                    .fetch_all(self.reader())
                    .await?
                    .into_iter()
                    .next())
                }

                async fn access_policies(&self, vault_id: &str) -> Result<Vec<AccessPolicyRecord>> {
                    Ok(sqlx::query_as(
                        "SELECT object_id, app_id, secrets, updated FROM vault_access_policies \
                         WHERE vault_id = $1 ORDER BY app_id",
                    )
                    .bind(vault_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn set_access_policy(
                    &self,
                    vault_id: &str,
                    p: &AccessPolicyRecord,
                    event: &EventGridEvent,
                ) -> Result<()> {
                    let (vault_id, p, event) = (vault_id.to_owned(), p.clone(), event.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO vault_access_policies (vault_id, object_id, app_id, \
                                 secrets, updated) VALUES ($1, $2, $3, $4, $5) \
                                 ON CONFLICT (vault_id, object_id) DO UPDATE SET \
                                 secrets = excluded.secrets, updated = excluded.updated",
                            )
                            .bind(&vault_id)
                            .bind(&p.object_id)
                            .bind(&p.app_id)
                            .bind(&p.secrets)
                            .bind(p.updated)
                            .execute(&mut *tx)
                            .await?;
                            log_vault_event(tx, &vault_id, &event).await
                        })
                    })
                    .await
                }

                async fn delete_access_policy(
                    &self,
                    vault_id: &str,
                    object_id: &str,
                    event: &EventGridEvent,
                ) -> Result<bool> {
                    let (vault_id, object_id, event) =
                        (vault_id.to_owned(), object_id.to_owned(), event.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "DELETE FROM vault_access_policies \
                                 WHERE vault_id = $1 AND object_id = $2",
                            )
                            .bind(&vault_id)
                            .bind(&object_id)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() == 0 {
                                return Ok(false);
                            }
                            log_vault_event(tx, &vault_id, &event).await?;
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn put_version(
                    &self,
                    vault_id: &str,
                    key: &str,
                    name: &str,
                    version: &VersionRecord,
                    event: &EventGridEvent,
                ) -> Result<Result<SecretRecord, WriteRefused>> {
                    let (vault_id, key, name) =
                        (vault_id.to_owned(), key.to_owned(), name.to_owned());
                    let (version, mut event) = (version.clone(), event.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // One statement creates the secret or bumps its
                            // ordinal, unless the name is soft-deleted (then the
                            // conditional update returns no row). On PostgreSQL
                            // ON CONFLICT DO UPDATE locks the secret row until
                            // commit, so concurrent writers of one secret (on
                            // any node) take distinct ordinals one after
                            // another, and a racing soft-delete or purge is
                            // ordered before or after this whole write.
                            let row = sqlx::query(
                                "INSERT INTO secrets (vault_id, name_key, name, current_ordinal) \
                                 VALUES ($1, $2, $3, 1) ON CONFLICT (vault_id, name_key) \
                                 DO UPDATE SET current_ordinal = secrets.current_ordinal + 1 \
                                 WHERE secrets.deleted_at IS NULL \
                                 RETURNING vault_id, name_key, name, deleted_at, purge_at, \
                                 current_ordinal",
                            )
                            .bind(&vault_id)
                            .bind(&key)
                            .bind(&name)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(row) = row else {
                                return Ok(Err(WriteRefused::Deleted));
                            };
                            let secret = secret_from_row(&row)?;
                            let v = VersionRecord {
                                ordinal: row.try_get("current_ordinal")?,
                                ..version
                            };
                            insert_version(&mut *tx, &vault_id, &key, &v).await?;
                            herald_core::event::respell_secret_event(&mut event, &secret.name);
                            // The version and the event announcing it commit together.
                            log_vault_event(&mut *tx, &vault_id, &event).await?;
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
                        Some(_) => "v.version = $3",
                    };
                    let sql = format!(
                        "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
                         ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND {join} \
                         WHERE s.vault_id = $1 AND s.name_key = $2 AND s.deleted_at IS NULL"
                    );
                    let mut q = sqlx::query(&sql).bind(vault_id).bind(key);
                    if let Some(ver) = version {
                        q = q.bind(ver);
                    }
                    let row = q.fetch_all(self.reader()).await?.into_iter().next();
                    row.as_ref().map(secret_and_version).transpose()
                }

                async fn list_secrets(
                    &self,
                    vault_id: &str,
                    after_key: Option<&str>,
                    limit: i64,
                ) -> Result<Vec<(SecretRecord, VersionRecord)>> {
                    list_latest(self, vault_id, after_key, limit, false).await
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
                         WHERE s.vault_id = $1 AND s.name_key = $2 AND s.deleted_at IS NULL \
                         AND v.ordinal > $3 ORDER BY v.ordinal LIMIT $4"
                    ))
                    .bind(vault_id)
                    .bind(key)
                    .bind(after_ordinal.unwrap_or(0))
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?;
                    if let Some(first) = rows.first() {
                        let secret = secret_from_row(first)?;
                        let versions =
                            rows.iter().map(version_from_row).collect::<Result<_>>()?;
                        return Ok(Some((secret, versions)));
                    }
                    // An empty page is still a page if the secret exists.
                    let secret = sqlx::query(
                        "SELECT vault_id, name_key, name, deleted_at, purge_at FROM secrets \
                         WHERE vault_id = $1 AND name_key = $2 AND deleted_at IS NULL",
                    )
                    .bind(vault_id)
                    .bind(key)
                    .fetch_all(self.reader())
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
                    let (vault_id, key) = (vault_id.to_owned(), key.to_owned());
                    let (version, patch) = (version.map(str::to_owned), patch.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let join = match version {
                                None => "v.ordinal = s.current_ordinal",
                                Some(_) => "v.version = $3",
                            };
                            // Read-modify-write: on PostgreSQL, lock the secret
                            // and the version so a racing patch, soft-delete or
                            // lifecycle marker waits for this one (READ
                            // COMMITTED re-checks the WHERE on the latest row
                            // after the wait).
                            let sql = format!(
                                "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
                                 ON v.vault_id = s.vault_id AND v.name_key = s.name_key AND {join} \
                                 WHERE s.vault_id = $1 AND s.name_key = $2 AND s.deleted_at IS NULL{}",
                                S::row_lock(" FOR NO KEY UPDATE OF s, v")
                            );
                            let mut q = sqlx::query(&sql).bind(&vault_id).bind(&key);
                            if let Some(ver) = &version {
                                q = q.bind(ver);
                            }
                            let Some(row) = q.fetch_optional(&mut *tx).await? else {
                                return Ok(None);
                            };
                            let (secret, mut v) = secret_and_version(&row)?;
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
                            // A new `exp` reschedules the lifecycle timers for
                            // this version.
                            sqlx::query(&format!(
                                "UPDATE secret_versions SET enabled = $1, nbf = $2, exp = $3, \
                                 content_type = $4, tags = $5, updated = $6, \
                                 near_expiry_done = CASE WHEN $7 THEN {f} ELSE near_expiry_done END, \
                                 expired_done = CASE WHEN $7 THEN {f} ELSE expired_done END \
                                 WHERE vault_id = $8 AND name_key = $9 AND ordinal = $10",
                                f = S::FALSE
                            ))
                            .bind(v.enabled)
                            .bind(v.nbf)
                            .bind(v.exp)
                            .bind(&v.content_type)
                            .bind(&v.tags)
                            .bind(v.updated)
                            .bind(exp_changed)
                            .bind(&vault_id)
                            .bind(&key)
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
                    let (vault_id, key, name) =
                        (vault_id.to_owned(), key.to_owned(), name.to_owned());
                    let (versions, events) = (versions.to_vec(), events.to_vec());
                    let current = versions.iter().map(|v| v.ordinal).max().unwrap_or(1);
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Claim the name by inserting it; on PostgreSQL a
                            // racing restore or put waits for our commit (or we
                            // for theirs) instead of failing on the key. When the
                            // name exists, report whether it is live or
                            // soft-deleted. If it vanished in between (purged),
                            // try again.
                            loop {
                                let inserted = sqlx::query(
                                    "INSERT INTO secrets (vault_id, name_key, name, current_ordinal) \
                                     VALUES ($1, $2, $3, $4) ON CONFLICT (vault_id, name_key) DO NOTHING",
                                )
                                .bind(&vault_id)
                                .bind(&key)
                                .bind(&name)
                                .bind(current)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                                    == 1;
                                if inserted {
                                    break;
                                }
                                let deleted_at: Option<Option<i64>> = sqlx::query_scalar(
                                    "SELECT deleted_at FROM secrets WHERE vault_id = $1 AND name_key = $2",
                                )
                                .bind(&vault_id)
                                .bind(&key)
                                .fetch_optional(&mut *tx)
                                .await?;
                                match deleted_at {
                                    Some(Some(_)) => return Ok(Err(WriteRefused::Deleted)),
                                    Some(None) => return Ok(Err(WriteRefused::Exists)),
                                    None => continue,
                                }
                            }
                            for v in &versions {
                                insert_version(&mut *tx, &vault_id, &key, v).await?;
                            }
                            for e in &events {
                                log_vault_event(&mut *tx, &vault_id, e).await?;
                            }
                            Ok(Ok(SecretRecord {
                                vault_id: vault_id.into(),
                                key,
                                name,
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
                    set_deleted(self, vault_id, key, Some((deleted_at, purge_at))).await
                }

                async fn get_deleted(
                    &self,
                    vault_id: &str,
                    key: &str,
                ) -> Result<Option<(SecretRecord, VersionRecord)>> {
                    let row = sqlx::query(&format!(
                        "SELECT {SECRET_COLS} FROM secrets s JOIN secret_versions v \
                         ON v.vault_id = s.vault_id AND v.name_key = s.name_key \
                         AND v.ordinal = s.current_ordinal \
                         WHERE s.vault_id = $1 AND s.name_key = $2 AND s.deleted_at IS NOT NULL"
                    ))
                    .bind(vault_id)
                    .bind(key)
                    .fetch_all(self.reader())
                    .await?
                    .into_iter()
                    .next();
                    row.as_ref().map(secret_and_version).transpose()
                }

                async fn list_deleted(
                    &self,
                    vault_id: &str,
                    after_key: Option<&str>,
                    limit: i64,
                ) -> Result<Vec<(SecretRecord, VersionRecord)>> {
                    list_latest(self, vault_id, after_key, limit, true).await
                }

                async fn recover(
                    &self,
                    vault_id: &str,
                    key: &str,
                ) -> Result<Option<(SecretRecord, VersionRecord)>> {
                    set_deleted(self, vault_id, key, None).await
                }

                async fn purge(&self, vault_id: &str, key: &str) -> Result<bool> {
                    let (vault_id, key) = (vault_id.to_owned(), key.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Conditional on being soft-deleted; a racing recover
                            // or purge is ordered by the row lock and the loser
                            // matches nothing.
                            let done = sqlx::query(
                                "DELETE FROM secrets WHERE vault_id = $1 AND name_key = $2 \
                                 AND deleted_at IS NOT NULL",
                            )
                            .bind(&vault_id)
                            .bind(&key)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn purge_due(&self, now: i64) -> Result<Vec<(String, String)>> {
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Several nodes may sweep at once: a row another
                            // sweeper deleted is skipped after its commit (and one
                            // recovered meanwhile no longer matches
                            // `purge_at <= now`), so each purge is reported once.
                            let rows = sqlx::query(
                                "DELETE FROM secrets WHERE purge_at IS NOT NULL AND purge_at <= $1 \
                                 RETURNING (SELECT name FROM vaults WHERE vaults.id = secrets.vault_id) \
                                 AS vault, name",
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
                    // `= FALSE` spelled per engine so that each one's partial
                    // index on pending expiries applies.
                    let rows = sqlx::query(&format!(
                        "SELECT {SECRET_COLS}, v.near_expiry_done, \
                         vt.id AS vt_id, vt.name AS vt_name, vt.retention_days, vt.purge_protection, \
                         vt.near_expiry_secs, vt.created AS vt_created \
                         FROM secret_versions v \
                         JOIN secrets s ON s.vault_id = v.vault_id AND s.name_key = v.name_key \
                             AND s.current_ordinal = v.ordinal \
                         JOIN vaults vt ON vt.id = v.vault_id \
                         WHERE v.exp IS NOT NULL AND v.expired_done = {f} AND s.deleted_at IS NULL \
                           AND (v.exp <= $1 OR (v.near_expiry_done = {f} \
                                AND v.exp - vt.near_expiry_secs <= $1)) \
                         ORDER BY v.exp LIMIT $2",
                        f = S::FALSE
                    ))
                    .bind(now)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter()
                        .map(|r| {
                            let near_done: bool = r.try_get("near_expiry_done")?;
                            Ok(DueExpiry {
                                vault: VaultRecord {
                                    id: r.try_get::<String, _>("vt_id")?.into(),
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
                    let column = match kind {
                        ExpiryKind::NearExpiry => "near_expiry_done",
                        ExpiryKind::Expired => "expired_done",
                    };
                    let (vault_id, key, event) = (vault_id.to_owned(), key.to_owned(), event.clone());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Exactly once across nodes: the flag flips only from
                            // false. A second scanner's UPDATE waits on the
                            // first's row lock, then re-checks the flag on the
                            // committed row and matches nothing (if the first
                            // rolled back, the second claims it instead). The
                            // event is logged in the same transaction as the flag.
                            let claimed = sqlx::query(&format!(
                                "UPDATE secret_versions SET {column} = {t} \
                                 WHERE vault_id = $1 AND name_key = $2 AND ordinal = $3 \
                                 AND {column} = {f}",
                                t = S::TRUE,
                                f = S::FALSE
                            ))
                            .bind(&vault_id)
                            .bind(&key)
                            .bind(ordinal)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                                == 1;
                            if claimed {
                                log_vault_event(&mut *tx, &vault_id, &event).await?;
                            }
                            Ok(claimed)
                        })
                    })
                    .await
                }

                async fn read_events(
                    &self,
                    topic_id: &str,
                    after_seq: i64,
                    limit: i64,
                ) -> Result<Vec<LoggedEvent>> {
                    let rows = sqlx::query(
                        "SELECT seq, topic_id, body FROM event_log \
                         WHERE topic_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .bind(topic_id)
                    .bind(after_seq)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?;
                    rows.iter()
                        .map(|r| {
                            let body: String = r.try_get("body")?;
                            Ok(LoggedEvent {
                                seq: r.try_get("seq")?,
                                topic_id: r.try_get::<String, _>("topic_id")?.into(),
                                event: serde_json::from_str(&body)
                                    .map_err(|e| StorageError::Corrupt(e.to_string()))?,
                            })
                        })
                        .collect()
                }
            }
        }
    };
}
pub(crate) use vault_store;
