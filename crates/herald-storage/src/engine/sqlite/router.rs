//! The router store on SQLite: shared (router/store.rs) but for appends,
//! which go through the group committer like every other write.

use super::SqliteStorage;
use crate::Result;
use crate::engine::{BoxFuture, Conn, Engine};
use crate::router::NewLogEvent;
use crate::router::store::RouterEngine;

crate::router::store::router_store!(SqliteStorage);

impl RouterEngine for SqliteStorage {
    async fn append_to_log(&self, topic_id: String, events: Vec<NewLogEvent>) -> Result<i64> {
        self.write(move |tx| -> BoxFuture<'_, Result<_>> {
            Box::pin(async move {
                let lasts = router_store::append_in(tx, &topic_id, &[&events]).await?;
                Ok(lasts.into_iter().next().unwrap_or(0))
            })
        })
        .await
    }

    /// SQLite's planner keeps log reads on the index by itself.
    fn log_order_plan<'c>(_tx: &'c mut Conn<Self>, _no_sort: bool) -> BoxFuture<'c, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
