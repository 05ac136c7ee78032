//! What the two engines differ in, and nothing else.
//!
//! Each store (vault, router, automation) is written once, in its own
//! folder, against [`Engine`]: a pool for reads, one write transaction, and
//! the few dialect pieces where SQLite and PostgreSQL spell SQL differently.
//! The shared store bodies are instantiated for each engine by a macro in
//! the store's `store.rs`, so every statement exists once, with `$N`
//! placeholders (both sqlx drivers accept them), and the compiler checks it
//! against each driver's concrete types.
//!
//! What is left in `sqlite/` and `postgres/` is where the engines really
//! differ in concurrency: SQLite serialises every write through one group
//! committer, so it needs no row locks; PostgreSQL has several nodes writing
//! at once, so claims, settles, appends with dense sequence numbers and
//! retention take row or advisory locks, and wake-ups travel by NOTIFY.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::Result;
use std::future::Future;
use std::pin::Pin;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The connection a write transaction runs on.
pub(crate) type Conn<E> = <<E as Engine>::Db as sqlx::Database>::Connection;

/// A storage engine as the shared stores see it.
pub(crate) trait Engine: Send + Sync + 'static {
    type Db: sqlx::Database;

    /// Current unix seconds, as an SQL expression.
    const UNIX_NOW: &'static str;
    /// Appended to a `SELECT` that reads rows it will then update: a row
    /// lock on PostgreSQL; nothing on SQLite, whose single writer already
    /// serialises the transaction.
    const FOR_UPDATE: &'static str;
    /// Boolean literals. SQLite stores booleans as 0 and 1, and its
    /// planner applies a partial index only to the literal the index was
    /// declared with, so conditions say `= {FALSE}` rather than `NOT x`.
    const TRUE: &'static str;
    const FALSE: &'static str;
    /// Most bind parameters one statement may carry.
    const MAX_BINDS: usize;
    /// Appended to an `ORDER BY` of text: byte order on both engines
    /// (SQLite compares text as bytes already; PostgreSQL needs `"C"`).
    const BYTE_ORDER: &'static str;
    /// The function `f(haystack, needle)` that returns where `needle`
    /// starts in `haystack`, 0 when it does not occur.
    const INSTR: &'static str;

    /// Takes the transaction-scoped lock named by `space` and `key` on
    /// PostgreSQL, which other nodes' transactions on the same name wait
    /// for until this one ends; nothing on SQLite, whose single writer
    /// already serialises the transaction.
    fn advisory_lock<'c>(
        tx: &'c mut Conn<Self>,
        space: &'static str,
        key: &'c str,
    ) -> BoxFuture<'c, Result<()>>;

    /// `clause` (a row-locking clause such as `" FOR NO KEY UPDATE OF s"`)
    /// where the engine has row locks; nothing on SQLite.
    fn row_lock(clause: &'static str) -> &'static str;

    /// The pool reads go to; it sees every committed write.
    fn reader(&self) -> &sqlx::Pool<Self::Db>;

    /// Runs `work` as one transaction and answers after it committed. The
    /// closure owns what it uses (`'static`), because SQLite runs it on its
    /// writer task, grouped with other callers' work.
    fn write<T, F>(&self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn<Self>) -> BoxFuture<'c, Result<T>> + Send + 'static;

    /// Queues a wake-up hint (`job:<group>`, `topic:<id>`) for other nodes,
    /// delivered only if the transaction commits. SQLite has no other nodes.
    fn notify<'c>(tx: &'c mut Conn<Self>, payload: String) -> BoxFuture<'c, Result<()>>;

    /// Appended to a `SELECT` of queue rows the caller takes for itself
    /// (lapsed leases, a pruning batch): on PostgreSQL it locks them and
    /// passes over rows another node's transaction holds, so two nodes
    /// never take the same row nor wait on each other; nothing on SQLite,
    /// whose single writer already serialises the transaction.
    const SKIP_LOCKED: &'static str;
}
