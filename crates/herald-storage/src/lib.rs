//! Herald's storage seam.
//!
//! Every service talks to [`Storage`], never to a database driver, so the
//! engine can change (SQLite embedded by default, PostgreSQL for several
//! nodes) without touching domain code. Engines are chosen by URL scheme in
//! [`open`]. Each mutating method is one transaction: a secret version and
//! the event announcing it commit together or not at all.

mod automation;
mod blob;
pub mod copy;
mod engine;
mod hubs;
mod identity;
mod router;
mod vault;

pub use automation::*;
pub use blob::*;
pub use hubs::*;
pub use identity::*;
pub use router::*;
pub use vault::*;

use async_trait::async_trait;
use herald_core::EventGridEvent;
use std::sync::Arc;

pub use engine::postgres::PgStorage;
pub use engine::sqlite::SqliteStorage;

/// Storage faults. `Conflict`-like outcomes are modelled in return types;
/// this is for the engine failing.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine error: {0}")]
    Engine(#[from] sqlx::Error),
    #[error("storage migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("write transaction failed to commit: {0}")]
    Commit(String),
    #[error("the storage writer has stopped")]
    WriterStopped,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Which integrity rule a write broke, when it broke one. Races between a
/// create and the delete of its parent (a subscription PUT while its topic
/// is deleted) end in a foreign-key violation, which callers answer as the
/// parent's 404, never as a 500; a unique violation is a 409 conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The row's parent is gone.
    ForeignKey,
    /// Another row already holds the key.
    Unique,
}

impl StorageError {
    /// The integrity rule this error reports breaking, if any.
    pub fn violation(&self) -> Option<Violation> {
        let StorageError::Engine(sqlx::Error::Database(db)) = self else {
            return None;
        };
        match db.kind() {
            sqlx::error::ErrorKind::ForeignKeyViolation => Some(Violation::ForeignKey),
            sqlx::error::ErrorKind::UniqueViolation => Some(Violation::Unique),
            _ => None,
        }
    }
}

/// The integrity rule broken anywhere in an error's chain (domain errors
/// wrap storage errors in `anyhow`).
pub fn violation_in(err: &(dyn std::error::Error + 'static)) -> Option<Violation> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<StorageError>()
            && let Some(v) = s.violation()
        {
            return Some(v);
        }
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            match db.kind() {
                sqlx::error::ErrorKind::ForeignKeyViolation => return Some(Violation::ForeignKey),
                sqlx::error::ErrorKind::UniqueViolation => return Some(Violation::Unique),
                _ => {}
            }
        }
        cur = e.source();
    }
    None
}

/// How hard a commit pushes to disk. `Normal` survives a process crash
/// (kill -9); `Full` also survives power loss at the price of an fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Normal,
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created: i64,
}

/// A stored event with its position in its topic's log.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub seq: i64,
    pub topic_id: router::TopicId,
    pub event: EventGridEvent,
}

/// Held while this node runs a singleton duty; dropping it lets another
/// node take the duty over.
pub struct SingletonGuard(pub Box<dyn std::any::Any + Send + Sync>);

/// What several nodes on one database need to share work.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Takes the named singleton duty if no live node holds it.
    async fn try_singleton(&self, name: &str) -> Result<Option<SingletonGuard>>;
    /// Wake-up hints from other nodes (`job:<group>`, `topic:<id>`); `None`
    /// on a single-node engine, where in-process signals suffice.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<String>>;
}

/// A storage engine: every domain's store, behind one object.
pub trait Storage:
    VaultStore
    + RouterStore
    + AutomationStore
    + HubStore
    + IdentityStore
    + BlobStore
    + Coordination
    + Send
    + Sync
    + 'static
{
    /// Short engine name for logs and `herald status`.
    fn engine(&self) -> &'static str;
}

/// Opens the engine named by the URL's scheme and runs its migrations.
pub async fn open(url: &str, durability: Durability) -> Result<Arc<dyn Storage>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStorage::open(path, durability).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgStorage::open(url).await?));
    }
    Err(StorageError::UnsupportedUrl(url.to_owned()))
}
