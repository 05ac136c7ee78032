//! The blob service: storage accounts with sealed keys, containers and block
//! blobs whose metadata is in storage and whose content is on an
//! `object_store` (a local directory by default, S3 when nodes share it).
//!
//! Content is written before the row that names it, under a fresh key, so
//! a crash leaves at worst an orphan object, never a row without content;
//! replaced content is deleted after the row that dropped it committed.

use crate::names;
use crate::xml::BlockRef;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald_core::seal::MasterKey;
use herald_storage::{
    BlobRecord, BlobWrite, BlockRecord, ContainerRecord, Expect, Page, Storage,
    StorageAccountRecord, StorageError,
};
use md5::{Digest, Md5};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Largest Put Blob body (Herald's limit; Azure's is higher).
pub const MAX_PUT_BLOB: u64 = 256 * 1024 * 1024;
/// Largest Put Block body (Azure's limit for versions before 2019-12-12).
pub const MAX_BLOCK: u64 = 100 * 1024 * 1024;
/// Most committed blocks in one blob, and uncommitted ones staged (Azure's).
pub const MAX_BLOCKS: usize = 50_000;
/// Most uncommitted blocks a blob may have staged (Azure's).
pub const MAX_STAGED: usize = 100_000;
/// Most items in one listing page (Azure's).
pub const MAX_RESULTS: u32 = 5000;

/// A client-facing failure, with Azure's status, code and message.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The client's mistake (4xx).
    #[error("{code}: {message}")]
    Client {
        /// HTTP status.
        status: u16,
        /// Azure's error code (`ContainerNotFound`, ...).
        code: &'static str,
        /// A message saying what to do.
        message: String,
    },
    /// A `304 Not Modified` answer to a conditional read.
    #[error("not modified")]
    NotModified,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object store failed.
    #[error("object store: {0}")]
    Content(#[from] object_store::Error),
    /// Stored data could not be used.
    #[error("{0}")]
    Corrupt(String),
}

impl BlobError {
    fn client(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            message: message.into(),
        }
    }

    fn container_not_found() -> Self {
        Self::client(
            404,
            "ContainerNotFound",
            "The specified container does not exist.",
        )
    }

    fn blob_not_found() -> Self {
        Self::client(404, "BlobNotFound", "The specified blob does not exist.")
    }

    fn condition_not_met() -> Self {
        Self::client(
            412,
            "ConditionNotMet",
            "The condition specified using HTTP conditional header(s) is not met.",
        )
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(400, code, message)
    }
}

type R<T> = Result<T, BlobError>;

/// A body as it arrives: chunks, or an error that ends it.
pub type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// HTTP conditions of a request (`If-Match` and friends).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// `If-Match`: an ETag or `*`.
    pub if_match: Option<String>,
    /// `If-None-Match`: an ETag or `*`.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`, unix seconds.
    pub if_modified_since: Option<i64>,
    /// `If-Unmodified-Since`, unix seconds.
    pub if_unmodified_since: Option<i64>,
}

impl Conditions {
    fn is_empty(&self) -> bool {
        self.if_match.is_none()
            && self.if_none_match.is_none()
            && self.if_modified_since.is_none()
            && self.if_unmodified_since.is_none()
    }

    /// Checks a write against the current blob, as Azure answers: a blob
    /// that exists under `If-None-Match: *` is a 409 `BlobAlreadyExists`,
    /// any other unmet condition a 412.
    fn check_write(&self, current: Option<&BlobRecord>) -> R<()> {
        if let Some(m) = &self.if_match {
            match current {
                Some(b) if m == "*" || etag_eq(m, &b.etag) => {}
                _ => return Err(BlobError::condition_not_met()),
            }
        }
        if let Some(m) = &self.if_none_match {
            match current {
                Some(_) if m == "*" => {
                    return Err(BlobError::client(
                        409,
                        "BlobAlreadyExists",
                        "The specified blob already exists.",
                    ));
                }
                Some(b) if etag_eq(m, &b.etag) => return Err(BlobError::condition_not_met()),
                _ => {}
            }
        }
        if let (Some(since), Some(b)) = (self.if_modified_since, current)
            && b.last_modified / 1000 <= since
        {
            return Err(BlobError::condition_not_met());
        }
        if let (Some(since), Some(b)) = (self.if_unmodified_since, current)
            && b.last_modified / 1000 > since
        {
            return Err(BlobError::condition_not_met());
        }
        Ok(())
    }

    /// Checks a read: unmet `If-None-Match` / `If-Modified-Since` are a 304.
    fn check_read(&self, b: &BlobRecord) -> R<()> {
        if let Some(m) = &self.if_match
            && m != "*"
            && !etag_eq(m, &b.etag)
        {
            return Err(BlobError::condition_not_met());
        }
        if let Some(since) = self.if_unmodified_since
            && b.last_modified / 1000 > since
        {
            return Err(BlobError::condition_not_met());
        }
        if let Some(m) = &self.if_none_match
            && (m == "*" || etag_eq(m, &b.etag))
        {
            return Err(BlobError::NotModified);
        }
        if let Some(since) = self.if_modified_since
            && b.last_modified / 1000 <= since
        {
            return Err(BlobError::NotModified);
        }
        Ok(())
    }
}

fn etag_eq(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t.trim_matches('"') == etag.trim_matches('"'))
}

/// Properties a client sets on a blob (`x-ms-blob-content-*` and friends).
#[derive(Debug, Clone, Default)]
pub struct BlobHeaders {
    /// Content-Type; `application/octet-stream` when unset.
    pub content_type: Option<String>,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// Content-MD5 (base64) the client declares for the whole blob.
    pub content_md5: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
}

/// What a write that creates a blob's content sets besides it (Put Blob,
/// Put Block List).
#[derive(Debug, Clone, Copy)]
pub struct NewBlob<'a> {
    /// Content headers to keep with the blob.
    pub headers: &'a BlobHeaders,
    /// `x-ms-meta-*` pairs.
    pub metadata: &'a [(String, String)],
    /// The request's HTTP conditions.
    pub conditions: &'a Conditions,
}

/// One stored piece of a blob's content.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Part {
    /// The block id (base64), empty for a Put Blob body.
    id: String,
    /// Object key of the content.
    key: String,
    size: u64,
}

/// A storage account with its keys opened.
#[derive(Debug, Clone)]
pub struct AccountKeys {
    /// The account's name.
    pub name: String,
    /// Creation time, unix ms.
    pub created: i64,
    /// key1 and key2 as base64 text (what connection strings carry).
    pub keys: [Zeroizing<String>; 2],
}

/// A blob read: the record and its content.
pub struct BlobRead {
    /// The blob.
    pub blob: BlobRecord,
    /// The byte range served (start, end inclusive), when a range was asked.
    pub range: Option<(u64, u64)>,
    /// The content, streamed part by part.
    pub body: BodyStream,
}

/// What a blob listing returns: blobs and, with a delimiter, prefixes.
#[derive(Debug)]
pub struct BlobListing {
    /// Blobs and virtual directories, in name order.
    pub entries: Vec<Entry>,
    /// Where the next page starts.
    pub next_marker: Option<String>,
}

/// One listing entry.
#[derive(Debug)]
pub enum Entry {
    /// A blob.
    Blob(BlobRecord),
    /// A virtual directory (`BlobPrefix`).
    Prefix(String),
}

type KeyCache = RwLock<HashMap<String, (Arc<Vec<Vec<u8>>>, Instant)>>;

/// The blob service.
#[derive(Clone)]
pub struct BlobService {
    storage: Arc<dyn Storage>,
    master: MasterKey,
    content: Arc<dyn ObjectStore>,
    /// Parent domain of account hosts: `{account}.{base}`.
    base: String,
    keys: Arc<KeyCache>,
}

impl std::fmt::Debug for BlobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobService")
            .field("base", &self.base)
            .finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn key_aad(account: &str, which: u8) -> Vec<u8> {
    format!("storage-account/{account}/key{which}").into_bytes()
}

/// A fresh ETag in Azure's shape (`"0x8DD..."`).
fn new_etag() -> String {
    let n = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    format!("\"0x{:X}{:04X}\"", n, rand::random::<u16>())
}

fn new_key() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 64]);
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), bytes.as_mut());
    Zeroizing::new(B64.encode(bytes.as_ref()))
}

const KEY_TTL: Duration = Duration::from_secs(5);

impl BlobService {
    /// A service over `storage`, keeping content in `content`; account keys
    /// are sealed under `master`, accounts addressed as `{name}.{base}`.
    pub fn new(
        storage: Arc<dyn Storage>,
        master: MasterKey,
        content: Arc<dyn ObjectStore>,
        base: &str,
    ) -> Self {
        Self {
            storage,
            master,
            content,
            base: base.trim_matches('.').to_ascii_lowercase(),
            keys: Arc::default(),
        }
    }

    /// The parent domain of account hosts.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The account a host name addresses (`{account}.{base}[:port]`).
    pub fn account_of_host<'h>(&self, host: &'h str) -> Option<&'h str> {
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let (account, rest) = host.split_once('.')?;
        rest.eq_ignore_ascii_case(&self.base).then_some(account)
    }

    // --- accounts ---

    /// Creates an account with two fresh keys.
    pub async fn create_account(&self, name: &str) -> R<AccountKeys> {
        names::parse_account(name).map_err(|e| BlobError::bad("AccountNameInvalid", e.0))?;
        let keys = [new_key(), new_key()];
        let rec = StorageAccountRecord {
            name: name.to_owned(),
            key1: self
                .master
                .seal_direct(keys[0].as_bytes(), &key_aad(name, 1)),
            key2: self
                .master
                .seal_direct(keys[1].as_bytes(), &key_aad(name, 2)),
            created: now_ms(),
        };
        if !self.storage.create_storage_account(&rec).await? {
            return Err(BlobError::client(
                409,
                "StorageAccountAlreadyExists",
                format!("The storage account named {name} already exists."),
            ));
        }
        tracing::info!(account = name, "storage account created");
        Ok(AccountKeys {
            name: rec.name,
            created: rec.created,
            keys,
        })
    }

    fn open_keys(&self, rec: &StorageAccountRecord) -> R<AccountKeys> {
        let open = |sealed: &[u8], which: u8| -> R<Zeroizing<String>> {
            let plain = self
                .master
                .open_direct(sealed, &key_aad(&rec.name, which))
                .map_err(|_| {
                    BlobError::Corrupt(format!(
                        "key{which} of storage account {} does not open with this master key",
                        rec.name
                    ))
                })?;
            String::from_utf8(plain.to_vec())
                .map(Zeroizing::new)
                .map_err(|_| BlobError::Corrupt("an account key is not text".into()))
        };
        Ok(AccountKeys {
            name: rec.name.clone(),
            created: rec.created,
            keys: [open(&rec.key1, 1)?, open(&rec.key2, 2)?],
        })
    }

    fn account_not_found(name: &str) -> BlobError {
        BlobError::client(
            404,
            "ResourceNotFound",
            format!(
                "The storage account {name} was not found. Create it with: herald storage account create {name}"
            ),
        )
    }

    /// The account with its keys.
    pub async fn account(&self, name: &str) -> R<AccountKeys> {
        let rec = self
            .storage
            .storage_account(name)
            .await?
            .ok_or_else(|| Self::account_not_found(name))?;
        self.open_keys(&rec)
    }

    /// Every account, with keys.
    pub async fn accounts(&self) -> R<Vec<AccountKeys>> {
        self.storage
            .list_storage_accounts()
            .await?
            .iter()
            .map(|r| self.open_keys(r))
            .collect()
    }

    /// Replaces key1 or key2 with a fresh key.
    pub async fn regenerate_key(&self, name: &str, which: u8) -> R<AccountKeys> {
        if which != 1 && which != 2 {
            return Err(BlobError::bad(
                "InvalidInput",
                "keyName must be key1 or key2.",
            ));
        }
        let key = new_key();
        let sealed = self
            .master
            .seal_direct(key.as_bytes(), &key_aad(name, which));
        if !self
            .storage
            .set_storage_account_key(name, which, &sealed)
            .await?
        {
            return Err(Self::account_not_found(name));
        }
        if let Ok(mut cache) = self.keys.write() {
            cache.remove(name);
        }
        tracing::info!(
            account = name,
            key = which,
            "storage account key regenerated"
        );
        self.account(name).await
    }

    /// Deletes the account, its containers and blobs.
    pub async fn delete_account(&self, name: &str) -> R<()> {
        let keys = self
            .storage
            .delete_storage_account(name)
            .await?
            .ok_or_else(|| Self::account_not_found(name))?;
        if let Ok(mut cache) = self.keys.write() {
            cache.remove(name);
        }
        self.forget(keys).await;
        tracing::info!(account = name, "storage account deleted");
        Ok(())
    }

    /// The decoded keys requests are signed with; `None` for no account.
    /// Cached briefly: every request needs them.
    pub async fn signing_keys(&self, name: &str) -> R<Option<Arc<Vec<Vec<u8>>>>> {
        if let Ok(cache) = self.keys.read()
            && let Some((keys, at)) = cache.get(name)
            && at.elapsed() < KEY_TTL
        {
            return Ok(Some(keys.clone()));
        }
        let Some(rec) = self.storage.storage_account(name).await? else {
            return Ok(None);
        };
        let opened = self.open_keys(&rec)?;
        let keys: Vec<Vec<u8>> = opened
            .keys
            .iter()
            .filter_map(|k| B64.decode(k.as_bytes()).ok())
            .collect();
        let keys = Arc::new(keys);
        if let Ok(mut cache) = self.keys.write() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(name.to_owned(), (keys.clone(), Instant::now()));
        }
        Ok(Some(keys))
    }

    // --- containers ---

    /// Creates a container.
    pub async fn create_container(
        &self,
        account: &str,
        name: &str,
        metadata: &[(String, String)],
    ) -> R<ContainerRecord> {
        names::parse_container(name).map_err(|e| BlobError::bad("InvalidResourceName", e.0))?;
        let rec = ContainerRecord {
            account: account.to_owned(),
            name: name.to_owned(),
            metadata: meta_json(metadata),
            etag: new_etag(),
            last_modified: now_ms(),
        };
        if !self.storage.create_container(&rec).await? {
            return Err(BlobError::client(
                409,
                "ContainerAlreadyExists",
                "The specified container already exists.",
            ));
        }
        tracing::info!(account, container = name, "container created");
        Ok(rec)
    }

    /// A container.
    pub async fn container(&self, account: &str, name: &str) -> R<ContainerRecord> {
        self.storage
            .container(account, name)
            .await?
            .ok_or_else(BlobError::container_not_found)
    }

    /// A page of containers.
    pub async fn list_containers(
        &self,
        account: &str,
        prefix: &str,
        marker: &str,
        max: Option<u32>,
    ) -> R<Page<ContainerRecord>> {
        let limit = max.unwrap_or(MAX_RESULTS).clamp(1, MAX_RESULTS);
        Ok(self
            .storage
            .list_containers(account, prefix, marker, limit)
            .await?)
    }

    /// Replaces a container's metadata.
    pub async fn set_container_metadata(
        &self,
        account: &str,
        name: &str,
        metadata: &[(String, String)],
    ) -> R<ContainerRecord> {
        let (etag, now) = (new_etag(), now_ms());
        if !self
            .storage
            .set_container_metadata(account, name, &meta_json(metadata), &etag, now)
            .await?
        {
            return Err(BlobError::container_not_found());
        }
        self.container(account, name).await
    }

    /// Deletes a container and its blobs.
    pub async fn delete_container(&self, account: &str, name: &str) -> R<()> {
        let keys = self
            .storage
            .delete_container(account, name)
            .await?
            .ok_or_else(BlobError::container_not_found)?;
        self.forget(keys).await;
        tracing::info!(account, container = name, "container deleted");
        Ok(())
    }

    // --- blobs ---

    async fn current(&self, account: &str, container: &str, name: &str) -> R<Option<BlobRecord>> {
        Ok(self.storage.blob(account, container, name).await?)
    }

    /// A blob, or `BlobNotFound` (`ContainerNotFound` when that is why).
    pub async fn blob(&self, account: &str, container: &str, name: &str) -> R<BlobRecord> {
        if let Some(b) = self.current(account, container, name).await? {
            return Ok(b);
        }
        self.container(account, container).await?;
        Err(BlobError::blob_not_found())
    }

    /// Writes `body` as one object, bounded by `limit`; returns its key,
    /// size and MD5. Memory stays bounded: the body goes out in parts.
    async fn write_content(&self, mut body: BodyStream, limit: u64) -> R<(String, u64, [u8; 16])> {
        let key = format!("c/{}", uuid::Uuid::new_v4().simple());
        let path = ObjectPath::from(key.as_str());
        let mut md5 = Md5::new();
        let mut size = 0u64;
        // Small bodies (the common case) go in one put; larger ones stream
        // through a multipart upload in 8 MiB parts.
        const PART: usize = 8 * 1024 * 1024;
        let mut buf = bytes::BytesMut::new();
        let mut upload: Option<object_store::WriteMultipart> = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                BlobError::bad("InvalidInput", format!("the request body ended early: {e}"))
            })?;
            size += chunk.len() as u64;
            if size > limit {
                if let Some(u) = upload.take() {
                    let _ = u.abort().await;
                }
                return Err(BlobError::client(
                    413,
                    "RequestBodyTooLarge",
                    format!(
                        "The request body is too large and exceeds the maximum permissible limit ({limit} bytes)."
                    ),
                ));
            }
            md5.update(&chunk);
            buf.extend_from_slice(&chunk);
            if buf.len() >= PART {
                let u = match upload.as_mut() {
                    Some(u) => u,
                    None => {
                        let m = self.content.put_multipart(&path).await?;
                        upload.insert(object_store::WriteMultipart::new_with_chunk_size(m, PART))
                    }
                };
                u.wait_for_capacity(2).await?;
                u.put(buf.split().freeze());
            }
        }
        match upload {
            Some(mut u) => {
                if !buf.is_empty() {
                    u.put(buf.freeze());
                }
                u.finish().await?;
            }
            None => {
                self.content
                    .put(&path, object_store::PutPayload::from(buf.freeze()))
                    .await?;
            }
        }
        Ok((key, size, md5.finalize().into()))
    }

    /// Deletes objects no row names any more. Failures leave orphans,
    /// logged; they are never a client's error.
    async fn forget(&self, keys: Vec<String>) {
        for k in keys {
            if let Err(e) = self.content.delete(&ObjectPath::from(k.as_str())).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(key = %k, error = %e, "could not delete blob content; it is orphaned");
            }
        }
    }

    /// Commits a blob record by compare-and-set against `current`, then
    /// deletes what it replaced.
    async fn commit(
        &self,
        rec: BlobRecord,
        current: Option<&BlobRecord>,
        keep: &[String],
        last_writer_wins: bool,
    ) -> R<BlobRecord> {
        let mut expect = match current {
            Some(b) => Expect::Etag(b.etag.clone()),
            None => Expect::Absent,
        };
        let mut tries = 0;
        let written = loop {
            match self.storage.put_blob(&rec, expect.clone()).await? {
                // An unconditional write that raced another: Azure's answer
                // is last writer wins, so compare-and-set against what is
                // there now (the content is this request's own).
                BlobWrite::Changed if last_writer_wins && tries < 8 => {
                    tries += 1;
                    expect = match self
                        .storage
                        .blob(&rec.account, &rec.container, &rec.name)
                        .await?
                    {
                        Some(b) => Expect::Etag(b.etag),
                        None => Expect::Absent,
                    };
                }
                other => break other,
            }
        };
        match written {
            BlobWrite::Written { replaced, staged } => {
                let mut gone: Vec<String> = replaced
                    .map(|p| parts_of(&p).into_iter().map(|p| p.key).collect())
                    .unwrap_or_default();
                gone.extend(staged);
                gone.retain(|k| !keep.contains(k));
                self.forget(gone).await;
                Ok(rec)
            }
            // Another writer won the race: to this request, the condition
            // it was checked against no longer holds.
            BlobWrite::Changed => Err(BlobError::condition_not_met()),
            BlobWrite::NoContainer => Err(BlobError::container_not_found()),
        }
    }

    /// Put Blob: the whole content in one request.
    pub async fn put_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        body: BodyStream,
        write: NewBlob<'_>,
    ) -> R<BlobRecord> {
        let NewBlob {
            headers,
            metadata,
            conditions: cond,
        } = write;
        names::parse_blob_name(name).map_err(|e| BlobError::bad("InvalidResourceName", e.0))?;
        let before = self.current(account, container, name).await?;
        cond.check_write(before.as_ref())?;
        let (key, size, md5) = self.write_content(body, MAX_PUT_BLOB).await?;
        let md5 = B64.encode(md5);
        if let Some(declared) = &headers.content_md5
            && *declared != md5
        {
            self.forget(vec![key]).await;
            return Err(BlobError::bad(
                "Md5Mismatch",
                "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
            ));
        }
        let now = now_ms();
        let parts = vec![Part {
            id: String::new(),
            key: key.clone(),
            size,
        }];
        let rec = record(
            account,
            container,
            name,
            now,
            before.as_ref(),
            headers,
            Some(md5),
            metadata,
            size,
            &parts,
        );
        match self
            .commit(
                rec,
                before.as_ref(),
                std::slice::from_ref(&key),
                cond.is_empty(),
            )
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => {
                self.forget(vec![key]).await;
                Err(e)
            }
        }
    }

    /// Put Block: stages one block of a blob.
    pub async fn put_block(
        &self,
        account: &str,
        container: &str,
        name: &str,
        block_id: &str,
        body: BodyStream,
    ) -> R<[u8; 16]> {
        names::parse_blob_name(name).map_err(|e| BlobError::bad("InvalidResourceName", e.0))?;
        names::parse_block_id(block_id).map_err(|e| {
            BlobError::bad("InvalidQueryParameterValue", format!("Value for one of the query parameters specified in the request URI is invalid: blockid ({})", e.0))
        })?;
        let (key, size, md5) = self.write_content(body, MAX_BLOCK).await?;
        let rec = BlockRecord {
            account: account.to_owned(),
            container: container.to_owned(),
            blob: name.to_owned(),
            block_id: block_id.to_owned(),
            object_key: key.clone(),
            size: size as i64,
            created: now_ms(),
        };
        match self.storage.put_block(&rec).await {
            Ok((true, replaced)) => {
                self.forget(replaced.into_iter().collect()).await;
                Ok(md5)
            }
            Ok((false, _)) => {
                self.forget(vec![key]).await;
                Err(BlobError::container_not_found())
            }
            Err(e) => {
                self.forget(vec![key]).await;
                Err(e.into())
            }
        }
    }

    /// Put Block List: commits the blob from staged and committed blocks.
    pub async fn put_block_list(
        &self,
        account: &str,
        container: &str,
        name: &str,
        list: &[BlockRef],
        write: NewBlob<'_>,
    ) -> R<BlobRecord> {
        let NewBlob {
            headers,
            metadata,
            conditions: cond,
        } = write;
        names::parse_blob_name(name).map_err(|e| BlobError::bad("InvalidResourceName", e.0))?;
        if list.len() > MAX_BLOCKS {
            return Err(BlobError::client(
                409,
                "BlockCountExceedsLimit",
                "The committed block count cannot exceed the maximum limit of 50,000 blocks.",
            ));
        }
        let before = self.current(account, container, name).await?;
        cond.check_write(before.as_ref())?;
        let staged: HashMap<String, BlockRecord> = self
            .storage
            .blocks(account, container, name)
            .await?
            .into_iter()
            .map(|b| (b.block_id.clone(), b))
            .collect();
        let committed: HashMap<String, Part> = before
            .as_ref()
            .map(|b| parts_of(&b.parts))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !p.id.is_empty())
            .map(|p| (p.id.clone(), p))
            .collect();
        let mut parts = Vec::with_capacity(list.len());
        for r in list {
            let (id, part) = match r {
                BlockRef::Uncommitted(id) => (id, staged.get(id).map(Part::from)),
                BlockRef::Committed(id) => (id, committed.get(id).cloned()),
                BlockRef::Latest(id) => (
                    id,
                    staged
                        .get(id)
                        .map(Part::from)
                        .or_else(|| committed.get(id).cloned()),
                ),
            };
            let Some(part) = part else {
                return Err(BlobError::bad(
                    "InvalidBlockList",
                    format!(
                        "The specified block list is invalid: block {id} is not staged or committed."
                    ),
                ));
            };
            parts.push(part);
        }
        let size = parts.iter().map(|p| p.size).sum::<u64>();
        let keep: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
        let rec = record(
            account,
            container,
            name,
            now_ms(),
            before.as_ref(),
            headers,
            headers.content_md5.clone(),
            metadata,
            size,
            &parts,
        );
        self.commit(rec, before.as_ref(), &keep, false).await
    }

    /// Get Block List: committed blocks and, when asked, uncommitted ones.
    pub async fn block_list(
        &self,
        account: &str,
        container: &str,
        name: &str,
    ) -> R<(Vec<(String, u64)>, Vec<(String, u64)>)> {
        let committed = match self.current(account, container, name).await? {
            Some(b) => parts_of(&b.parts)
                .into_iter()
                .filter(|p| !p.id.is_empty())
                .map(|p| (p.id, p.size))
                .collect(),
            None => Vec::new(),
        };
        let staged = self
            .storage
            .blocks(account, container, name)
            .await?
            .into_iter()
            .map(|b| (b.block_id, b.size as u64))
            .collect::<Vec<_>>();
        if committed.is_empty() && staged.is_empty() {
            self.blob(account, container, name).await?;
        }
        Ok((committed, staged))
    }

    /// Get Blob, whole or a byte range (`start`, inclusive `end`).
    pub async fn get_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        range: Option<(u64, Option<u64>)>,
        cond: &Conditions,
    ) -> R<BlobRead> {
        let blob = self.blob(account, container, name).await?;
        if !cond.is_empty() {
            cond.check_read(&blob)?;
        }
        let size = blob.size as u64;
        let range = match range {
            None => None,
            Some((start, end)) => {
                if start >= size {
                    return Err(BlobError::client(
                        416,
                        "InvalidRange",
                        "The range specified is invalid for the current size of the resource.",
                    ));
                }
                let end = end.unwrap_or(size - 1).min(size - 1);
                if end < start {
                    return Err(BlobError::client(
                        416,
                        "InvalidRange",
                        "The range specified is invalid for the current size of the resource.",
                    ));
                }
                Some((start, end))
            }
        };
        let (from, to) = range.unwrap_or((0, size.saturating_sub(1)));
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for p in parts_of(&blob.parts) {
            let (lo, hi) = (offset, offset + p.size);
            offset = hi;
            if size == 0 || hi <= from || lo > to {
                continue;
            }
            let a = from.saturating_sub(lo);
            let b = (to + 1).min(hi) - lo;
            pieces.push((p.key, a, b, p.size));
        }
        let content = self.content.clone();
        let body = futures_util::stream::iter(pieces)
            .then(move |(key, a, b, whole)| {
                let content = content.clone();
                async move {
                    let path = ObjectPath::from(key.as_str());
                    let opts = object_store::GetOptions {
                        range: (a != 0 || b != whole)
                            .then_some(object_store::GetRange::Bounded(a..b)),
                        ..Default::default()
                    };
                    content
                        .get_opts(&path, opts)
                        .await
                        .map(|r| r.into_stream())
                        .map_err(std::io::Error::other)
                }
            })
            .map(|s| match s {
                Ok(s) => s.map(|c| c.map_err(std::io::Error::other)).boxed(),
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Ok(BlobRead {
            blob,
            range,
            body: Box::pin(body),
        })
    }

    /// Get Blob Properties (conditions as for reads).
    pub async fn blob_properties(
        &self,
        account: &str,
        container: &str,
        name: &str,
        cond: &Conditions,
    ) -> R<BlobRecord> {
        let b = self.blob(account, container, name).await?;
        if !cond.is_empty() {
            cond.check_read(&b)?;
        }
        Ok(b)
    }

    /// Set Blob Properties (the HTTP headers) or, with `metadata`, Set
    /// Blob Metadata. Either gets a new ETag.
    pub async fn update_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        headers: Option<BlobHeaders>,
        metadata: Option<&[(String, String)]>,
        cond: &Conditions,
    ) -> R<BlobRecord> {
        let before = self.blob(account, container, name).await?;
        cond.check_write(Some(&before))?;
        let mut rec = before.clone();
        if let Some(h) = headers {
            rec.content_type = h
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into());
            rec.content_encoding = h.content_encoding;
            rec.content_language = h.content_language;
            rec.content_md5 = h.content_md5;
            rec.cache_control = h.cache_control;
            rec.content_disposition = h.content_disposition;
        }
        if let Some(m) = metadata {
            rec.metadata = meta_json(m);
        }
        rec.etag = new_etag();
        rec.last_modified = now_ms();
        let keep = parts_of(&rec.parts)
            .into_iter()
            .map(|p| p.key)
            .collect::<Vec<_>>();
        // Same parts: nothing replaced is deleted, but staged blocks are
        // kept too (a property change does not end staging).
        match self
            .storage
            .put_blob(&rec, Expect::Etag(before.etag.clone()))
            .await?
        {
            BlobWrite::Written { replaced, .. } => {
                let mut gone: Vec<String> = replaced
                    .map(|p| parts_of(&p).into_iter().map(|p| p.key).collect())
                    .unwrap_or_default();
                gone.retain(|k| !keep.contains(k));
                self.forget(gone).await;
                Ok(rec)
            }
            BlobWrite::Changed => Err(BlobError::condition_not_met()),
            BlobWrite::NoContainer => Err(BlobError::container_not_found()),
        }
    }

    /// Delete Blob.
    pub async fn delete_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        cond: &Conditions,
    ) -> R<()> {
        let before = self.blob(account, container, name).await?;
        cond.check_write(Some(&before))?;
        let Some((parts, staged)) = self
            .storage
            .delete_blob(account, container, name, Some(&before.etag))
            .await?
        else {
            return Err(BlobError::condition_not_met());
        };
        let mut gone: Vec<String> = parts_of(&parts).into_iter().map(|p| p.key).collect();
        gone.extend(staged);
        self.forget(gone).await;
        Ok(())
    }

    /// List Blobs, flat or, with a delimiter, one level of a hierarchy.
    pub async fn list_blobs(
        &self,
        account: &str,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        marker: &str,
        max: Option<u32>,
    ) -> R<BlobListing> {
        self.container(account, container).await?;
        let limit = max.unwrap_or(MAX_RESULTS).clamp(1, MAX_RESULTS) as usize;
        let mut entries = Vec::new();
        let mut marker = marker.to_owned();
        let delimiter = delimiter.filter(|d| !d.is_empty());
        loop {
            let page = self
                .storage
                .list_blobs(account, container, prefix, &marker, (limit + 1) as u32)
                .await?;
            let mut cut = false;
            for b in page.items {
                if entries.len() == limit {
                    return Ok(BlobListing {
                        next_marker: Some(marker),
                        entries,
                    });
                }
                if let Some(d) = delimiter
                    && let Some(at) = b.name.get(prefix.len()..).and_then(|rest| rest.find(d))
                {
                    let p = b.name[..prefix.len() + at + d.len()].to_owned();
                    // Everything under this prefix sorts before `p` + U+10FFFF:
                    // the next query starts after the whole virtual directory.
                    marker = format!("{p}\u{10FFFF}");
                    entries.push(Entry::Prefix(p));
                    cut = true;
                    break;
                }
                marker = b.name.clone();
                entries.push(Entry::Blob(b));
            }
            if !cut && page.next.is_none() {
                break;
            }
        }
        Ok(BlobListing {
            entries,
            next_marker: None,
        })
    }
}

impl From<&BlockRecord> for Part {
    fn from(b: &BlockRecord) -> Self {
        Part {
            id: b.block_id.clone(),
            key: b.object_key.clone(),
            size: b.size as u64,
        }
    }
}

fn parts_of(json: &str) -> Vec<Part> {
    serde_json::from_str(json).unwrap_or_default()
}

fn meta_json(metadata: &[(String, String)]) -> String {
    let m: BTreeMap<&str, &str> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
}

/// A record's metadata as name/value pairs, in name order.
pub fn metadata_of(json: &str) -> Vec<(String, String)> {
    serde_json::from_str::<BTreeMap<String, String>>(json)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn record(
    account: &str,
    container: &str,
    name: &str,
    now: i64,
    before: Option<&BlobRecord>,
    h: &BlobHeaders,
    md5: Option<String>,
    metadata: &[(String, String)],
    size: u64,
    parts: &[Part],
) -> BlobRecord {
    BlobRecord {
        account: account.to_owned(),
        container: container.to_owned(),
        name: name.to_owned(),
        etag: new_etag(),
        created: before.map_or(now, |b| b.created),
        last_modified: now,
        size: size as i64,
        content_type: h
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
        content_encoding: h.content_encoding.clone(),
        content_language: h.content_language.clone(),
        content_md5: md5,
        cache_control: h.cache_control.clone(),
        content_disposition: h.content_disposition.clone(),
        metadata: meta_json(metadata),
        parts: serde_json::to_string(parts).unwrap_or_else(|_| "[]".into()),
    }
}

/// Where content lives: `url` `s3://bucket[/prefix]` (credentials and
/// endpoint from the `AWS_*` variables), a directory path, or when unset
/// `{data_dir}/blobs`. Local files are created 0600 by the directory's
/// owner-only mode (the data dir is 0700).
pub fn open_content(
    data_dir: &std::path::Path,
    url: Option<&str>,
) -> Result<Arc<dyn ObjectStore>, String> {
    match url {
        Some(u) if u.starts_with("s3://") => {
            let rest = &u["s3://".len()..];
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("blob URL {u} names no bucket"));
            }
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| format!("configuring the S3 blob store {u}: {e}"))?;
            Ok(if prefix.trim_matches('/').is_empty() {
                Arc::new(store)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    store,
                    prefix.trim_matches('/'),
                ))
            })
        }
        other => {
            let dir = other.map_or_else(|| data_dir.join("blobs"), std::path::PathBuf::from);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating blob directory {}: {e}", dir.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| format!("opening blob directory {}: {e}", dir.display()))?;
            Ok(Arc::new(fs))
        }
    }
}
