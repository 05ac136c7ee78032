//! The blob store, written once for both engines. Blob writes are
//! compare-and-set statements (`INSERT .. ON CONFLICT DO NOTHING` for an
//! absent blob, `UPDATE .. WHERE etag = $x` for a known one), which are
//! atomic on SQLite's single writer and on PostgreSQL's row locks alike;
//! the only engine difference, byte-order name collation, is in the schema.

pub(crate) const ACCOUNT_COLS: &str = "name, key1, key2, created";
pub(crate) const CONTAINER_COLS: &str = "account, name, metadata, etag, last_modified";
pub(crate) const BLOB_COLS: &str = "account, container, name, etag, created, last_modified, size, \
     content_type, content_encoding, content_language, content_md5, cache_control, \
     content_disposition, metadata, parts";
pub(crate) const BLOCK_COLS: &str = "account, container, blob, block_id, object_key, size, created";

/// The object keys a blob's `parts` JSON names.
pub(crate) fn keys_of(parts: &str) -> Vec<String> {
    serde_json::from_str::<Vec<serde_json::Value>>(parts)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.get("key").and_then(|k| k.as_str()).map(str::to_owned))
        .collect()
}

/// Implements [`BlobStore`](crate::BlobStore) for an engine.
macro_rules! blob_store {
    ($S:ty) => {
        mod blob_store {
            use super::*;
            use crate::Result;
            use crate::blob::store::{ACCOUNT_COLS, BLOB_COLS, BLOCK_COLS, CONTAINER_COLS, keys_of};
            use crate::blob::*;
            use crate::engine::{BoxFuture, Engine};
            use sqlx::Row;

            #[async_trait::async_trait]
            impl BlobStore for $S {
                async fn create_storage_account(&self, a: &StorageAccountRecord) -> Result<bool> {
                    let a = a.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO storage_accounts (name, key1, key2, created) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            )
                            .bind(&a.name)
                            .bind(&a.key1)
                            .bind(&a.key2)
                            .bind(a.created)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn storage_account(&self, name: &str) -> Result<Option<StorageAccountRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {ACCOUNT_COLS} FROM storage_accounts WHERE name = $1"
                    ))
                    .bind(name)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn list_storage_accounts(&self) -> Result<Vec<StorageAccountRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {ACCOUNT_COLS} FROM storage_accounts ORDER BY name"
                    ))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn set_storage_account_key(
                    &self,
                    name: &str,
                    which: u8,
                    sealed: &[u8],
                ) -> Result<bool> {
                    let (name, sealed) = (name.to_owned(), sealed.to_vec());
                    let sql = if which == 1 {
                        "UPDATE storage_accounts SET key1 = $2 WHERE name = $1"
                    } else {
                        "UPDATE storage_accounts SET key2 = $2 WHERE name = $1"
                    };
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(sql)
                                .bind(&name)
                                .bind(&sealed)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn delete_storage_account(&self, name: &str) -> Result<Option<Vec<String>>> {
                    let name = name.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let mut keys = Vec::new();
                            let parts = sqlx::query("SELECT parts FROM blobs WHERE account = $1")
                                .bind(&name)
                                .fetch_all(&mut *tx)
                                .await?;
                            for r in parts {
                                keys.extend(keys_of(&r.try_get::<String, _>(0)?));
                            }
                            let staged =
                                sqlx::query("SELECT object_key FROM blob_blocks WHERE account = $1")
                                    .bind(&name)
                                    .fetch_all(&mut *tx)
                                    .await?;
                            for r in staged {
                                keys.push(r.try_get::<String, _>(0)?);
                            }
                            // Explicit, child tables first: foreign-key
                            // enforcement is not something to rely on here.
                            for table in ["blob_blocks", "blobs", "blob_containers"] {
                                sqlx::query(&format!("DELETE FROM {table} WHERE account = $1"))
                                    .bind(&name)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            let done = sqlx::query("DELETE FROM storage_accounts WHERE name = $1")
                                .bind(&name)
                                .execute(&mut *tx)
                                .await?;
                            Ok((done.rows_affected() == 1).then_some(keys))
                        })
                    })
                    .await
                }

                async fn create_container(&self, c: &ContainerRecord) -> Result<bool> {
                    let c = c.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let account = sqlx::query("SELECT 1 FROM storage_accounts WHERE name = $1")
                                .bind(&c.account)
                                .fetch_optional(&mut *tx)
                                .await?;
                            if account.is_none() {
                                return Ok(false);
                            }
                            let done = sqlx::query(
                                "INSERT INTO blob_containers (account, name, metadata, etag, \
                                 last_modified) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                            )
                            .bind(&c.account)
                            .bind(&c.name)
                            .bind(&c.metadata)
                            .bind(&c.etag)
                            .bind(c.last_modified)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn container(&self, account: &str, name: &str) -> Result<Option<ContainerRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {CONTAINER_COLS} FROM blob_containers WHERE account = $1 AND name = $2"
                    ))
                    .bind(account)
                    .bind(name)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn list_containers(
                    &self,
                    account: &str,
                    prefix: &str,
                    marker: &str,
                    limit: u32,
                ) -> Result<Page<ContainerRecord>> {
                    let mut items: Vec<ContainerRecord> = sqlx::query_as(&format!(
                        "SELECT {CONTAINER_COLS} FROM blob_containers WHERE account = $1 \
                         AND name > $2 AND substr(name, 1, $3) = $4 ORDER BY name LIMIT $5"
                    ))
                    .bind(account)
                    .bind(marker)
                    .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
                    .bind(prefix)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(self.reader())
                    .await?;
                    let next = if items.len() > limit as usize {
                        items.truncate(limit as usize);
                        items.last().map(|c| c.name.clone())
                    } else {
                        None
                    };
                    Ok(Page { items, next })
                }

                async fn set_container_metadata(
                    &self,
                    account: &str,
                    name: &str,
                    metadata: &str,
                    etag: &str,
                    now: i64,
                ) -> Result<bool> {
                    let (account, name, metadata, etag) = (
                        account.to_owned(),
                        name.to_owned(),
                        metadata.to_owned(),
                        etag.to_owned(),
                    );
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE blob_containers SET metadata = $3, etag = $4, \
                                 last_modified = $5 WHERE account = $1 AND name = $2",
                            )
                            .bind(&account)
                            .bind(&name)
                            .bind(&metadata)
                            .bind(&etag)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn delete_container(
                    &self,
                    account: &str,
                    name: &str,
                ) -> Result<Option<Vec<String>>> {
                    let (account, name) = (account.to_owned(), name.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let mut keys = Vec::new();
                            let parts = sqlx::query(
                                "SELECT parts FROM blobs WHERE account = $1 AND container = $2",
                            )
                            .bind(&account)
                            .bind(&name)
                            .fetch_all(&mut *tx)
                            .await?;
                            for r in parts {
                                keys.extend(keys_of(&r.try_get::<String, _>(0)?));
                            }
                            let staged = sqlx::query(
                                "SELECT object_key FROM blob_blocks WHERE account = $1 AND container = $2",
                            )
                            .bind(&account)
                            .bind(&name)
                            .fetch_all(&mut *tx)
                            .await?;
                            for r in staged {
                                keys.push(r.try_get::<String, _>(0)?);
                            }
                            for table in ["blob_blocks", "blobs"] {
                                sqlx::query(&format!(
                                    "DELETE FROM {table} WHERE account = $1 AND container = $2"
                                ))
                                .bind(&account)
                                .bind(&name)
                                .execute(&mut *tx)
                                .await?;
                            }
                            let done = sqlx::query(
                                "DELETE FROM blob_containers WHERE account = $1 AND name = $2",
                            )
                            .bind(&account)
                            .bind(&name)
                            .execute(&mut *tx)
                            .await?;
                            Ok((done.rows_affected() == 1).then_some(keys))
                        })
                    })
                    .await
                }

                async fn blob(
                    &self,
                    account: &str,
                    container: &str,
                    name: &str,
                ) -> Result<Option<BlobRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {BLOB_COLS} FROM blobs WHERE account = $1 AND container = $2 AND name = $3"
                    ))
                    .bind(account)
                    .bind(container)
                    .bind(name)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn put_blob(&self, b: &BlobRecord, expect: Expect) -> Result<BlobWrite> {
                    let b = b.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let container = sqlx::query(
                                "SELECT 1 FROM blob_containers WHERE account = $1 AND name = $2",
                            )
                            .bind(&b.account)
                            .bind(&b.container)
                            .fetch_optional(&mut *tx)
                            .await?;
                            if container.is_none() {
                                return Ok(BlobWrite::NoContainer);
                            }
                            let replaced = match &expect {
                                Expect::Absent => {
                                    let done = sqlx::query(&format!(
                                        "INSERT INTO blobs ({BLOB_COLS}) VALUES ($1, $2, $3, $4, \
                                         $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                                         ON CONFLICT DO NOTHING"
                                    ))
                                    .bind(&b.account)
                                    .bind(&b.container)
                                    .bind(&b.name)
                                    .bind(&b.etag)
                                    .bind(b.created)
                                    .bind(b.last_modified)
                                    .bind(b.size)
                                    .bind(&b.content_type)
                                    .bind(&b.content_encoding)
                                    .bind(&b.content_language)
                                    .bind(&b.content_md5)
                                    .bind(&b.cache_control)
                                    .bind(&b.content_disposition)
                                    .bind(&b.metadata)
                                    .bind(&b.parts)
                                    .execute(&mut *tx)
                                    .await?;
                                    if done.rows_affected() != 1 {
                                        return Ok(BlobWrite::Changed);
                                    }
                                    None
                                }
                                Expect::Etag(etag) => {
                                    let old = sqlx::query(
                                        "SELECT parts FROM blobs WHERE account = $1 AND \
                                         container = $2 AND name = $3 AND etag = $4",
                                    )
                                    .bind(&b.account)
                                    .bind(&b.container)
                                    .bind(&b.name)
                                    .bind(etag)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                                    let Some(old) = old else {
                                        return Ok(BlobWrite::Changed);
                                    };
                                    let done = sqlx::query(
                                        "UPDATE blobs SET etag = $5, created = $6, last_modified = $7, \
                                         size = $8, content_type = $9, content_encoding = $10, \
                                         content_language = $11, content_md5 = $12, \
                                         cache_control = $13, content_disposition = $14, \
                                         metadata = $15, parts = $16 WHERE account = $1 AND \
                                         container = $2 AND name = $3 AND etag = $4",
                                    )
                                    .bind(&b.account)
                                    .bind(&b.container)
                                    .bind(&b.name)
                                    .bind(etag)
                                    .bind(&b.etag)
                                    .bind(b.created)
                                    .bind(b.last_modified)
                                    .bind(b.size)
                                    .bind(&b.content_type)
                                    .bind(&b.content_encoding)
                                    .bind(&b.content_language)
                                    .bind(&b.content_md5)
                                    .bind(&b.cache_control)
                                    .bind(&b.content_disposition)
                                    .bind(&b.metadata)
                                    .bind(&b.parts)
                                    .execute(&mut *tx)
                                    .await?;
                                    if done.rows_affected() != 1 {
                                        return Ok(BlobWrite::Changed);
                                    }
                                    Some(old.try_get::<String, _>(0)?)
                                }
                            };
                            // A committed write ends the blob's staging: its
                            // uncommitted blocks go (Azure discards them too).
                            let staged = sqlx::query(
                                "SELECT object_key FROM blob_blocks WHERE account = $1 AND \
                                 container = $2 AND blob = $3",
                            )
                            .bind(&b.account)
                            .bind(&b.container)
                            .bind(&b.name)
                            .fetch_all(&mut *tx)
                            .await?
                            .iter()
                            .map(|r| r.try_get::<String, _>(0))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                            sqlx::query(
                                "DELETE FROM blob_blocks WHERE account = $1 AND container = $2 AND blob = $3",
                            )
                            .bind(&b.account)
                            .bind(&b.container)
                            .bind(&b.name)
                            .execute(&mut *tx)
                            .await?;
                            Ok(BlobWrite::Written { replaced, staged })
                        })
                    })
                    .await
                }

                async fn delete_blob(
                    &self,
                    account: &str,
                    container: &str,
                    name: &str,
                    etag: Option<&str>,
                ) -> Result<Option<(String, Vec<String>)>> {
                    let (account, container, name) =
                        (account.to_owned(), container.to_owned(), name.to_owned());
                    let etag = etag.map(str::to_owned);
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let old = sqlx::query(
                                "SELECT parts, etag FROM blobs WHERE account = $1 AND \
                                 container = $2 AND name = $3",
                            )
                            .bind(&account)
                            .bind(&container)
                            .bind(&name)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(old) = old else { return Ok(None) };
                            let (parts, current): (String, String) = (old.try_get(0)?, old.try_get(1)?);
                            if etag.as_ref().is_some_and(|e| *e != current) {
                                return Ok(None);
                            }
                            let done = sqlx::query(
                                "DELETE FROM blobs WHERE account = $1 AND container = $2 \
                                 AND name = $3 AND etag = $4",
                            )
                            .bind(&account)
                            .bind(&container)
                            .bind(&name)
                            .bind(&current)
                            .execute(&mut *tx)
                            .await?;
                            if done.rows_affected() != 1 {
                                return Ok(None);
                            }
                            let staged = sqlx::query(
                                "DELETE FROM blob_blocks WHERE account = $1 AND container = $2 \
                                 AND blob = $3 RETURNING object_key",
                            )
                            .bind(&account)
                            .bind(&container)
                            .bind(&name)
                            .fetch_all(&mut *tx)
                            .await?
                            .iter()
                            .map(|r| r.try_get::<String, _>(0))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                            Ok(Some((parts, staged)))
                        })
                    })
                    .await
                }

                async fn list_blobs(
                    &self,
                    account: &str,
                    container: &str,
                    prefix: &str,
                    marker: &str,
                    limit: u32,
                ) -> Result<Page<BlobRecord>> {
                    let mut items: Vec<BlobRecord> = sqlx::query_as(&format!(
                        "SELECT {BLOB_COLS} FROM blobs WHERE account = $1 AND container = $2 \
                         AND name > $3 AND substr(name, 1, $4) = $5 ORDER BY name LIMIT $6"
                    ))
                    .bind(account)
                    .bind(container)
                    .bind(marker)
                    .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
                    .bind(prefix)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(self.reader())
                    .await?;
                    let next = if items.len() > limit as usize {
                        items.truncate(limit as usize);
                        items.last().map(|b| b.name.clone())
                    } else {
                        None
                    };
                    Ok(Page { items, next })
                }

                async fn put_block(&self, b: &BlockRecord) -> Result<(bool, Option<String>)> {
                    let b = b.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let container = sqlx::query(
                                "SELECT 1 FROM blob_containers WHERE account = $1 AND name = $2",
                            )
                            .bind(&b.account)
                            .bind(&b.container)
                            .fetch_optional(&mut *tx)
                            .await?;
                            if container.is_none() {
                                return Ok((false, None));
                            }
                            let old = sqlx::query(
                                "DELETE FROM blob_blocks WHERE account = $1 AND container = $2 \
                                 AND blob = $3 AND block_id = $4 RETURNING object_key",
                            )
                            .bind(&b.account)
                            .bind(&b.container)
                            .bind(&b.blob)
                            .bind(&b.block_id)
                            .fetch_optional(&mut *tx)
                            .await?
                            .map(|r| r.try_get::<String, _>(0))
                            .transpose()?;
                            sqlx::query(&format!(
                                "INSERT INTO blob_blocks ({BLOCK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                            ))
                            .bind(&b.account)
                            .bind(&b.container)
                            .bind(&b.blob)
                            .bind(&b.block_id)
                            .bind(&b.object_key)
                            .bind(b.size)
                            .bind(b.created)
                            .execute(&mut *tx)
                            .await?;
                            Ok((true, old))
                        })
                    })
                    .await
                }

                async fn blocks(
                    &self,
                    account: &str,
                    container: &str,
                    blob: &str,
                ) -> Result<Vec<BlockRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {BLOCK_COLS} FROM blob_blocks WHERE account = $1 AND container = $2 \
                         AND blob = $3 ORDER BY created, block_id"
                    ))
                    .bind(account)
                    .bind(container)
                    .bind(blob)
                    .fetch_all(self.reader())
                    .await?)
                }
            }
        }
    };
}

pub(crate) use blob_store;
