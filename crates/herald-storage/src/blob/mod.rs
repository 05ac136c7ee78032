//! Records and the store for blob storage: accounts (with sealed keys),
//! containers, block blobs and uncommitted blocks. Content lives in an
//! object store; these rows name it (`parts`, `object_key`). The rules
//! (names, Shared Key, SAS, conditions) live in `herald-blob`.
//!
//! Every write to a blob is a compare-and-set on its ETag ([`Expect`]), so
//! Azure's conditional requests are atomic on both engines without
//! engine-specific locking: the service reads a blob, evaluates the
//! request's conditions against it, and writes only if it is unchanged.

use crate::Result;
use async_trait::async_trait;

pub(crate) mod store;

/// A storage account; the keys are sealed by the service.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StorageAccountRecord {
    pub name: String,
    pub key1: Vec<u8>,
    pub key2: Vec<u8>,
    pub created: i64,
}

/// A container. `metadata` is a JSON object of name to value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ContainerRecord {
    pub account: String,
    pub name: String,
    pub metadata: String,
    pub etag: String,
    pub last_modified: i64,
}

/// A committed block blob. `parts` is its block list as JSON
/// (`[{"id": .., "key": .., "size": ..}]`), `metadata` a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BlobRecord {
    pub account: String,
    pub container: String,
    pub name: String,
    pub etag: String,
    pub created: i64,
    pub last_modified: i64,
    pub size: i64,
    pub content_type: String,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub content_md5: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub metadata: String,
    pub parts: String,
}

/// An uncommitted block, staged by Put Block.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BlockRecord {
    pub account: String,
    pub container: String,
    pub blob: String,
    pub block_id: String,
    pub object_key: String,
    pub size: i64,
    pub created: i64,
}

/// What a blob write expects to find: the condition of its compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No blob of that name.
    Absent,
    /// The blob with exactly this ETag.
    Etag(String),
}

/// The outcome of a blob write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobWrite {
    /// Written; `replaced` is the old blob's `parts` (content to delete)
    /// and `staged` the object keys of uncommitted blocks the write
    /// discarded.
    Written {
        replaced: Option<String>,
        staged: Vec<String>,
    },
    /// The blob was not as expected (someone else wrote it first).
    Changed,
    /// The container does not exist.
    NoContainer,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
}

/// Storage accounts, containers and blobs.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Creates the account; `false` if the name is taken.
    async fn create_storage_account(&self, a: &StorageAccountRecord) -> Result<bool>;
    async fn storage_account(&self, name: &str) -> Result<Option<StorageAccountRecord>>;
    async fn list_storage_accounts(&self) -> Result<Vec<StorageAccountRecord>>;
    /// Replaces one key (`1` or `2`); `false` if there is no such account.
    async fn set_storage_account_key(&self, name: &str, which: u8, sealed: &[u8]) -> Result<bool>;
    /// Deletes the account with its containers and blobs; returns the
    /// object keys to delete, or `None` if there was no such account.
    async fn delete_storage_account(&self, name: &str) -> Result<Option<Vec<String>>>;

    /// Creates the container; `false` if it exists (or the account does not).
    async fn create_container(&self, c: &ContainerRecord) -> Result<bool>;
    async fn container(&self, account: &str, name: &str) -> Result<Option<ContainerRecord>>;
    /// Containers whose name starts with `prefix`, after `marker`, in name order.
    async fn list_containers(
        &self,
        account: &str,
        prefix: &str,
        marker: &str,
        limit: u32,
    ) -> Result<Page<ContainerRecord>>;
    /// Replaces the metadata and ETag; `false` if there is no such container.
    async fn set_container_metadata(
        &self,
        account: &str,
        name: &str,
        metadata: &str,
        etag: &str,
        now: i64,
    ) -> Result<bool>;
    /// Deletes the container and its blobs; returns the object keys to
    /// delete, or `None` if there was no such container.
    async fn delete_container(&self, account: &str, name: &str) -> Result<Option<Vec<String>>>;

    async fn blob(&self, account: &str, container: &str, name: &str) -> Result<Option<BlobRecord>>;
    /// Writes `b` if the current blob is as `expect` says. With `commit`,
    /// the blob's uncommitted blocks are discarded (Put Blob and Put Block
    /// List end a blob's staging).
    async fn put_blob(&self, b: &BlobRecord, expect: Expect) -> Result<BlobWrite>;
    /// Deletes the blob if it has ETag `etag` (any ETag when `None`);
    /// returns its `parts`, or `None` if it was not there (or changed).
    async fn delete_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        etag: Option<&str>,
    ) -> Result<Option<(String, Vec<String>)>>;
    /// Blobs whose name starts with `prefix`, after `marker`, in name order.
    async fn list_blobs(
        &self,
        account: &str,
        container: &str,
        prefix: &str,
        marker: &str,
        limit: u32,
    ) -> Result<Page<BlobRecord>>;

    /// Stages a block, replacing one with the same id; returns the object
    /// key it replaced. `false`-like `Err` is not used: a missing container
    /// is `Ok(None)` with nothing written, signalled by the bool.
    async fn put_block(&self, b: &BlockRecord) -> Result<(bool, Option<String>)>;
    async fn blocks(&self, account: &str, container: &str, blob: &str) -> Result<Vec<BlockRecord>>;
}
