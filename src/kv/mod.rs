//! The key-value domain: get/put/delete with TTL and CAS, counters, batches, prefix listing.
//!
//! No HTTP here. Keys are stored as `namespace ‖ 0x00 ‖ key` (a namespace cannot contain 0x00),
//! which is also the routing key, so a namespace's keys sort together inside every shard.

mod apply;
mod error;
mod feed;
pub use error::{KvError, Precondition};
mod list;
internal!(read_cache, sweep);

use crate::base::invalid::{Invalid, ItemKind};
use crate::engine::codec;
use crate::engine::Engine;
use crate::engine::EngineError;
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use list::{decode_cursor as list_cursor, encode_cursor, ListEntry, ListPage};

/// Values by stored key.
pub const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Expiry index: `expires_at_ms (u64 BE) ‖ stored key` → (). The sweeper walks it in order.
pub const KV_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("kv_expiry");

pub use crate::base::names::{KEY_BYTES_MAX, NAME_BYTES_MAX as NAMESPACE_BYTES_MAX};

/// Creates the KV tables in a shard.
pub fn init_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(KV)?;
    txn.open_table(KV_EXPIRY)?;
    Ok(())
}

/// A stored value as read back. The payload is shared, not copied, by the read cache and the
/// responses that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub payload: bytes::Bytes,
    pub revision: u64,
    pub expires_at_ms: Option<u64>,
    pub content_type: Option<String>,
}

/// A write precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cond {
    #[default]
    None,
    /// Only if the current revision is this one (`If-Match: "<rev>"`).
    IfRevision(u64),
    /// Only if the key exists (`If-Match: *`).
    IfExists,
    /// Only if the key is absent or expired (`If-None-Match: *`).
    IfAbsent,
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub ttl_ms: Option<u64>,
    pub content_type: Option<String>,
    pub cond: Cond,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub revision: u64,
    /// True when the key was absent (or expired) before.
    pub created: bool,
}

/// One operation of a batch write.
#[derive(Debug, Clone)]
pub enum BatchOp {
    Put {
        key: String,
        value: bytes::Bytes,
        ttl_ms: Option<u64>,
        if_revision: Option<u64>,
    },
    Delete {
        key: String,
        if_revision: Option<u64>,
    },
}

impl BatchOp {
    fn key(&self) -> &str {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }
    fn bytes(&self) -> usize {
        match self {
            BatchOp::Put { key, value, .. } => key.len() + value.len(),
            BatchOp::Delete { key, .. } => key.len(),
        }
    }
}

/// The result of one batch operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOpResult {
    Put(PutResult),
    /// Deleted; `existed` false when the key was already absent.
    Deleted {
        existed: bool,
    },
    /// The precondition of operation `op` (its index in the request) failed; no operation of
    /// its shard was applied.
    PreconditionFailed {
        op: usize,
        reason: Precondition,
    },
    /// Another operation on the same shard failed its precondition, so this one was not applied.
    Aborted,
}

/// Checks a namespace: 1–64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_namespace(ns: &str) -> Result<(), KvError> {
    Ok(crate::base::names::validate_name("namespace", ns)?)
}

/// Checks a TTL: 1 ms to `DURATION_MS_MAX` (100 years), so every expiry the
/// store holds can be rendered by every read path.
pub fn validate_ttl(ttl_ms: Option<u64>) -> Result<(), KvError> {
    match ttl_ms {
        Some(0) => Err(Invalid::TtlZero.into()),
        Some(ms) if ms > crate::base::util::DURATION_MS_MAX => {
            Err(Invalid::TtlTooLong { ms }.into())
        }
        _ => Ok(()),
    }
}

/// Checks a key: 1–1024 bytes of UTF-8.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    Ok(crate::base::names::validate_key(key)?)
}

pub use crate::base::names::{display_key, stored_key};

/// The KV domain over an engine.
#[derive(Clone)]
pub struct Kv {
    engine: Arc<Engine>,
    limits: Limits,
    /// Point-read cache (`kv_cache_bytes`; `None` when 0).
    cache: Option<Arc<read_cache::ReadCache>>,
}

impl Kv {
    /// A record copied from the primary wrote stored key `sk` (`None`: dropped the table) —
    /// a standby's read cache lets go of it, after the record's commit
    /// (`store::follow`).
    pub(crate) fn replayed(&self, sk: Option<&[u8]>) {
        if let Some(c) = &self.cache {
            match sk {
                Some(sk) => c.invalidate(sk),
                None => c.invalidate_all(),
            }
        }
    }
}

/// The limits the domain enforces itself (the HTTP layer enforces body sizes).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub value_bytes_max: usize,
    pub batch_keys_max: usize,
    pub list_limit_max: usize,
    pub delete_batch_keys_max: usize,
}

impl Kv {
    testing_pub! {
        /// The KV domain with its settings section of `config` (limits and the read cache).
        fn from_config(engine: Arc<Engine>, config: &crate::base::config::Config) -> Kv {
            Kv::new(
                engine,
                Limits {
                    value_bytes_max: config.kv.value_bytes_max,
                    batch_keys_max: config.kv.batch_keys_max,
                    list_limit_max: config.kv.list_limit_max,
                    delete_batch_keys_max: config.kv.delete_batch_keys_max,
                },
            )
            .with_read_cache(
                config.kv.kv_cache_bytes,
                config.cache.cache_eviction.foyer_config(),
            )
        }
    }

    testing_pub! {
        fn new(engine: Arc<Engine>, limits: Limits) -> Self {
            Self {
                engine,
                limits,
                cache: None,
            }
        }
    }

    /// Serves point reads from a memory cache of `bytes` (0 = no cache).
    pub fn with_read_cache(mut self, bytes: u64, eviction: foyer::EvictionConfig) -> Self {
        self.cache = (bytes > 0).then(|| Arc::new(read_cache::ReadCache::new(bytes, eviction)));
        self
    }

    testing_pub! {
        /// The read cache, when on.
        fn read_cache(&self) -> Option<&Arc<read_cache::ReadCache>> {
            self.cache.as_ref()
        }
    }

    testing_pub! {
        fn engine(&self) -> &Arc<Engine> {
            &self.engine
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.limits.value_bytes_max {
            return Err(KvError::TooLarge {
                op: None,
                len: value.len(),
                max: self.limits.value_bytes_max,
            });
        }
        Ok(())
    }

    /// Reads a key; `None` when absent or expired.
    pub fn get(&self, ns: &str, key: &str) -> Result<Option<Value>, KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        // The stored key on the stack when it fits (a point read allocates nothing for it).
        let mut room = [0u8; 256];
        let owned;
        let sk: &[u8] = if ns.len() + 1 + key.len() <= room.len() {
            let n = ns.len();
            room[..n].copy_from_slice(ns.as_bytes());
            room[n] = 0; // as in `stored_key`
            room[n + 1..n + 1 + key.len()].copy_from_slice(key.as_bytes());
            &room[..n + 1 + key.len()]
        } else {
            owned = stored_key(ns, key);
            &owned
        };
        let now = self.engine.now_ms();
        let stamp = match self.cache.as_ref().map(|c| c.lookup(sk, now)) {
            Some(Ok(v)) => return Ok(Some(v)),
            Some(Err(stamp)) => Some(stamp),
            None => None,
        };
        let shard = self.engine.shard_for(sk);
        let txn = self.engine.shards()[shard].read()?;
        let table = txn.open_table(KV).map_err(|e| storage(shard, e))?;
        let v = read_value(&table, shard, sk, now)?;
        if let (Some(c), Some(stamp), Some(v)) = (&self.cache, stamp, &v) {
            c.fill(sk, v, stamp);
        }
        Ok(v)
    }

    /// Reads many keys of one namespace with one read transaction per shard.
    pub fn batch_get(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Value>>, KvError> {
        validate_namespace(ns)?;
        if keys.len() > self.limits.batch_keys_max {
            return Err(Invalid::TooMany {
                items: "keys",
                got: keys.len(),
                max: self.limits.batch_keys_max,
                per: "batch",
                setting: "batch_keys_max",
            }
            .into());
        }
        let mut by_shard: BTreeMap<usize, Vec<(usize, Vec<u8>)>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            validate_key(key)?;
            let sk = stored_key(ns, key);
            by_shard
                .entry(self.engine.shard_for(&sk))
                .or_default()
                .push((i, sk));
        }
        let now = self.engine.now_ms();
        let mut out = vec![None; keys.len()];
        for (shard, items) in by_shard {
            // Cached values first; stamps for the rest are taken before the read transaction.
            let mut rest = Vec::with_capacity(items.len());
            for (i, sk) in items {
                match self.cache.as_ref().map(|c| c.lookup(&sk, now)) {
                    Some(Ok(v)) => out[i] = Some(v),
                    Some(Err(stamp)) => rest.push((i, Some(stamp), sk)),
                    None => rest.push((i, None, sk)),
                }
            }
            if rest.is_empty() {
                continue;
            }
            let txn = self.engine.shards()[shard].read()?;
            let table = txn.open_table(KV).map_err(|e| storage(shard, e))?;
            for (i, stamp, sk) in rest {
                let v = read_value(&table, shard, &sk, now)?;
                if let (Some(c), Some(stamp), Some(v)) = (&self.cache, stamp, &v) {
                    c.fill(&sk, v, stamp);
                }
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Stores a value. `value` travels as `Bytes` (a `Vec<u8>` converts without a copy) to the
    /// writer, which encodes it once, into the batch's log record.
    pub async fn put(
        &self,
        ns: &str,
        key: &str,
        value: impl Into<bytes::Bytes>,
        opts: PutOptions,
    ) -> Result<PutResult, KvError> {
        let value: bytes::Bytes = value.into();
        validate_namespace(ns)?;
        validate_key(key)?;
        self.check_value(&value)?;
        if let Some(ct) = &opts.content_type {
            crate::base::names::validate_content_type(ct)?;
        }
        validate_ttl(opts.ttl_ms)?;
        let sk = stored_key(ns, key);
        let shard = self.engine.shard_for(&sk);
        let bytes = sk.len() + value.len();
        let rc = self.cache.clone();
        self.engine
            .write(shard, bytes, move |ctx| {
                let r = apply::put(ctx, &sk, &value, &opts);
                read_cache::after_commit(ctx, &rc, vec![sk]);
                r
            })
            .await
    }

    /// Deletes a key; returns the revision it had.
    pub async fn delete(&self, ns: &str, key: &str, cond: Cond) -> Result<u64, KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        let sk = stored_key(ns, key);
        let shard = self.engine.shard_for(&sk);
        let rc = self.cache.clone();
        self.engine
            .write_freeing(shard, sk.len(), move |ctx| {
                let r = apply::delete(ctx, &sk, cond);
                read_cache::after_commit(ctx, &rc, vec![sk]);
                r
            })
            .await
    }

    /// Adds `by` to an integer counter (created at 0). `ttl_ms` applies when the counter is
    /// created. Returns (new value, revision).
    pub async fn incr(
        &self,
        ns: &str,
        key: &str,
        by: i64,
        ttl_ms: Option<u64>,
    ) -> Result<(i64, u64), KvError> {
        validate_namespace(ns)?;
        validate_key(key)?;
        validate_ttl(ttl_ms)?;
        let sk = stored_key(ns, key);
        let shard = self.engine.shard_for(&sk);
        let rc = self.cache.clone();
        self.engine
            .write(shard, sk.len() + 20, move |ctx| {
                let r = apply::incr(ctx, &sk, by, ttl_ms);
                read_cache::after_commit(ctx, &rc, vec![sk]);
                r
            })
            .await
    }

    /// Applies a batch of writes. Operations are grouped by shard; each shard's group is atomic
    /// (all applied in one commit, or none when one of its preconditions fails). Groups on
    /// different shards commit independently.
    pub async fn batch_write(
        &self,
        ns: &str,
        ops: Vec<BatchOp>,
    ) -> Result<Vec<BatchOpResult>, KvError> {
        validate_namespace(ns)?;
        if ops.len() > self.limits.batch_keys_max {
            return Err(Invalid::TooMany {
                items: "ops",
                got: ops.len(),
                max: self.limits.batch_keys_max,
                per: "batch",
                setting: "batch_keys_max",
            }
            .into());
        }
        let mut groups: BTreeMap<usize, Vec<(usize, Vec<u8>, BatchOp)>> = BTreeMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            let at = |e: KvError| match e {
                KvError::Invalid(e) => KvError::Invalid(e.at(ItemKind::Op, i)),
                KvError::TooLarge { len, max, .. } => KvError::TooLarge {
                    op: Some(i),
                    len,
                    max,
                },
                e => e,
            };
            validate_key(op.key()).map_err(at)?;
            if let BatchOp::Put { ttl_ms, value, .. } = &op {
                validate_ttl(*ttl_ms).map_err(at)?;
                self.check_value(value).map_err(at)?;
            }
            let sk = stored_key(ns, op.key());
            groups
                .entry(self.engine.shard_for(&sk))
                .or_default()
                .push((i, sk, op));
        }
        let total: usize = groups.values().map(|g| g.len()).sum();
        // One task per shard so every shard's writer works on its group at the same time.
        let mut tasks = Vec::with_capacity(groups.len());
        for (shard, group) in groups {
            let bytes = group.iter().map(|(_, sk, op)| sk.len() + op.bytes()).sum();
            let engine = self.engine.clone();
            let rc = self.cache.clone();
            tasks.push(tokio::spawn(async move {
                let idx: Vec<usize> = group.iter().map(|(i, _, _)| *i).collect();
                let results = engine
                    .write(shard, bytes, move |ctx| {
                        let r = apply::batch(ctx, &group);
                        let keys = group.into_iter().map(|(_, sk, _)| sk).collect();
                        read_cache::after_commit(ctx, &rc, keys);
                        r
                    })
                    .await;
                (idx, results)
            }));
        }
        let mut out = vec![BatchOpResult::Aborted; total];
        let mut first_err = None;
        for task in tasks {
            let Ok((idx, results)) = task.await else {
                first_err = first_err.or(Some(KvError::Engine(EngineError::ShuttingDown)));
                continue;
            };
            match results {
                Ok(rs) => {
                    for (i, r) in idx.into_iter().zip(rs) {
                        out[i] = r;
                    }
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Lists keys of `ns` starting with `prefix`, after `after` (exclusive), in byte order
    /// across all shards. Runs off the async threads.
    pub async fn list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<ListPage, KvError> {
        validate_namespace(ns)?;
        if limit == 0 || limit > self.limits.list_limit_max {
            return Err(Invalid::OutOfRange {
                field: "limit",
                min: 1,
                max: self.limits.list_limit_max as u64,
            }
            .into());
        }
        let engine = self.engine.clone();
        let (ns, prefix) = (ns.to_string(), prefix.to_string());
        tokio::task::spawn_blocking(move || list::list(&engine, &ns, &prefix, after, limit))
            .await
            .map_err(|e| {
                KvError::Engine(EngineError::Storage {
                    shard: 0,
                    source: crate::engine::StorageFailure::other(format!(
                        "listing task failed: {e}"
                    )),
                })
            })?
    }

    /// Deletes every key of `ns` that starts with `prefix`, `delete_batch_keys_max` keys per
    /// commit, so a huge prefix never holds a writer for long.
    pub async fn delete_prefix(&self, ns: &str, prefix: &str) -> Result<u64, KvError> {
        validate_namespace(ns)?;
        let start = stored_key(ns, prefix);
        let max = self.limits.delete_batch_keys_max;
        let mut deleted = 0;
        for shard in 0..self.engine.shards().len() {
            loop {
                let p = start.clone();
                let rc = self.cache.clone();
                let (n, more) = self
                    .engine
                    .write_freeing(shard, max * 64, move |ctx| {
                        let r = apply::delete_prefix(ctx, &p, max);
                        if let Some(c) = rc {
                            ctx.after_commit(move || c.invalidate_all());
                        }
                        r
                    })
                    .await?;
                deleted += n;
                if !more {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

pub(crate) use crate::engine::storage_error as storage;

/// Reads and verifies one value; expired values read as `None`.
fn read_value(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    shard: usize,
    sk: &[u8],
    now_ms: u64,
) -> Result<Option<Value>, KvError> {
    let Some(guard) = table.get(sk).map_err(|e| storage(shard, e))? else {
        return Ok(None);
    };
    let (header, payload) = codec::decode(guard.value()).map_err(|e| {
        crate::base::metrics::CORRUPT_RECORDS.inc();
        tracing::error!(shard, key = %display_key(sk), error = %e, "corrupt record");
        EngineError::Corrupt {
            shard,
            key: display_key(sk),
            detail: e.to_string(),
        }
    })?;
    if header.is_expired(now_ms) {
        return Ok(None);
    }
    Ok(Some(Value {
        payload: bytes::Bytes::copy_from_slice(payload),
        revision: header.revision,
        expires_at_ms: header.expires_at_ms,
        content_type: header.content_type,
    }))
}

testing_pub! {
    /// The KV domain as the engine sees it.
    const DOMAIN: crate::engine::DomainSpec = crate::engine::DomainSpec {
        name: "kv",
        init_tables,
        check,
        open: Some(|engine, config| std::sync::Arc::new(Kv::from_config(engine, config))),
        feed: Some(&feed::FEED),
    };
}

/// `shardbox check` for KV: every record's envelope and crc32, and the expiry index entry of
/// every record that expires (invariant 7).
fn check(
    txn: &redb::ReadTransaction,
    shard: usize,
    c: &mut crate::engine::domain::Checked<'_>,
) -> Result<(), redb::Error> {
    use crate::engine::domain::open;
    let Some(table) = open(txn, KV)? else {
        return Ok(());
    };
    let expiry = open(txn, KV_EXPIRY)?;
    for item in table.iter()? {
        let (k, v) = item?;
        c.record();
        match codec::decode(v.value()) {
            Err(e) => c.problem(format!(
                "shard {shard}: kv key {:?}: {e}",
                display_key(k.value())
            )),
            Ok((header, _)) if header.expires_at_ms.is_some() => {
                let at = header.expires_at_ms.unwrap_or_default();
                let ek = apply::expiry_key(at, k.value());
                let indexed = match &expiry {
                    Some(t) => t.get(ek.as_slice())?.is_some(),
                    None => false,
                };
                if !indexed {
                    c.problem(format!(
                        "shard {shard}: kv key {:?} expires at {} but kv_expiry has no entry for it (it would never be swept)",
                        display_key(k.value()),
                        at
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

impl crate::engine::Domain for Kv {
    fn background(
        self: Arc<Self>,
        config: &crate::base::config::Config,
    ) -> Vec<futures_util::future::BoxFuture<'static, ()>> {
        vec![Box::pin(sweep::run(
            self.engine.clone(),
            std::time::Duration::from_millis(config.kv.sweep_interval_ms),
            config.kv.delete_batch_keys_max,
        ))]
    }
    fn render_metrics(&self, out: &mut String) {
        if let Some(c) = &self.cache {
            c.render_metrics(out);
        }
    }
}
