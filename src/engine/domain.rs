//! What the engine knows of a domain: its tables and how `shardbox check` verifies them.
//!
//! Every domain (KV, queue, events, cache) exports one [`DomainSpec`]; [`crate::store::DOMAINS`] lists
//! them, and the store creates tables and `shardbox check` walks records from that one list, so a
//! domain cannot be forgotten by either. The running side of a domain (background tasks,
//! metrics) is [`crate::engine::Domain`].

use std::sync::Arc;

/// Creates the tables a domain needs in a fresh or existing shard.
pub type TableInit = fn(&redb::WriteTransaction) -> Result<(), redb::Error>;

/// Verifies a domain's records in one shard (read-only, server stopped).
pub type CheckFn = fn(&redb::ReadTransaction, usize, &mut Checked<'_>) -> Result<(), redb::Error>;

/// Opens a domain's running side over the engine, from its settings section.
pub type OpenFn = fn(Arc<super::Engine>, &crate::base::config::Config) -> Arc<dyn Domain>;

/// A domain as the engine sees it.
pub struct DomainSpec {
    pub name: &'static str,
    pub init_tables: TableInit,
    pub check: CheckFn,
    /// Its running side; `None` for one the store opens itself (the cache needs the runtime).
    pub open: Option<OpenFn>,
    /// How its operations decode into the change feed; `None` for a domain not in the feed
    /// (the cache is disposable, kept idempotency answers are not changes).
    pub feed: Option<&'static super::feed::FeedSpec>,
}

/// The running side of a domain: what it does by itself and what it reports. The store holds
/// every domain as one of these; its shorthands (`Store::kv`, …) hand back the typed ones.
pub trait Domain: std::any::Any + Send + Sync {
    /// Tasks that run by themselves (sweeps, timers, schedules, retention) until aborted.
    fn background(
        self: Arc<Self>,
        config: &crate::base::config::Config,
    ) -> Vec<futures_util::future::BoxFuture<'static, ()>>;
    /// Appends its Prometheus metrics.
    fn render_metrics(&self, out: &mut String);
}

/// What a domain's check found in one shard.
pub struct Checked<'a> {
    pub records: u64,
    /// One line per damaged record or broken invariant, naming shard, table and key.
    pub problems: Vec<String>,
    /// Called per record (progress display).
    pub on_record: &'a mut dyn FnMut(),
}

impl Checked<'_> {
    pub fn record(&mut self) {
        self.records += 1;
        (self.on_record)();
    }
    pub fn problem(&mut self, p: String) {
        self.problems.push(p);
    }
}

/// Opens a table for checking: `None` when the shard never created it.
pub fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, redb::Error> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
