//! Purge generations: the O(1) purge.
//!
//! Every namespace and every (namespace, tag) has a generation, 0 until first purged. An entry
//! records the generations current when it was written; a purge bumps one counter, and from then
//! on every entry written under the older generation reads as a miss. The counters are persisted
//! in the namespace's shard through its writer and the in-memory copy is updated in the writer
//! after the commit, before the purge is acknowledged — so a restart (even after kill -9) can
//! never bring a purged entry back, and no read after the acknowledgment sees one.

use crate::engine::Engine;
use crate::engine::EngineError;
use redb::{ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// `ns ‖ 0x00` (namespace generation) or `ns ‖ 0x00 ‖ tag` → generation.
pub const CACHE_GENERATIONS: TableDefinition<&[u8], u64> =
    TableDefinition::new("cache_generations");

/// Creates the generations table in a shard.
pub fn init_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(CACHE_GENERATIONS)?;
    Ok(())
}

/// The generations of one namespace.
#[derive(Debug, Default, Clone)]
struct NsGenerations {
    ns: u64,
    tags: HashMap<String, u64>,
}

/// In-memory generations, loaded from the shards at open.
#[derive(Debug, Default, Clone)]
pub struct Generations {
    map: Arc<RwLock<HashMap<String, NsGenerations>>>,
}

fn row_key(ns: &str, tag: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + tag.map_or(0, str::len));
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    if let Some(t) = tag {
        k.extend_from_slice(t.as_bytes());
    }
    k
}

/// What a purge bumps.
#[derive(Debug, Clone)]
pub enum PurgeTarget {
    Namespace,
    Tags(Vec<String>),
}

impl Generations {
    /// A record copied from the primary set row `key` (namespace, NUL, tag) to `generation`
    /// (a standby's follower, after the record's commit: `store::follow`).
    pub(crate) fn replayed(&self, key: &[u8], generation: u64) {
        let Some(at) = key.iter().position(|b| *b == 0) else {
            return;
        };
        let (Ok(ns), Ok(tag)) = (
            std::str::from_utf8(&key[..at]),
            std::str::from_utf8(&key[at + 1..]),
        ) else {
            return;
        };
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(ns.to_string()).or_default();
        if tag.is_empty() {
            e.ns = e.ns.max(generation);
        } else {
            let t = e.tags.entry(tag.to_string()).or_default();
            *t = (*t).max(generation);
        }
    }

    /// Reads every shard's generations table.
    pub fn load(engine: &Engine) -> Result<Self, EngineError> {
        let mut map: HashMap<String, NsGenerations> = HashMap::new();
        for (shard, s) in engine.shards().iter().enumerate() {
            let txn = s.read()?;
            let table = txn
                .open_table(CACHE_GENERATIONS)
                .map_err(|e| crate::engine::storage_error(shard, e))?;
            for row in table
                .iter()
                .map_err(|e| crate::engine::storage_error(shard, e))?
            {
                let (k, v) = row.map_err(|e| crate::engine::storage_error(shard, e))?;
                let k = k.value();
                let Some(split) = k.iter().position(|b| *b == 0) else {
                    continue;
                };
                let ns = String::from_utf8_lossy(&k[..split]).into_owned();
                let tag = &k[split + 1..];
                let e = map.entry(ns).or_default();
                if tag.is_empty() {
                    e.ns = v.value();
                } else {
                    e.tags
                        .insert(String::from_utf8_lossy(tag).into_owned(), v.value());
                }
            }
        }
        Ok(Self {
            map: Arc::new(RwLock::new(map)),
        })
    }

    /// The namespace generation and each tag's generation, as a new entry records them.
    pub fn snapshot(&self, ns: &str, tags: &[String]) -> (u64, Vec<(String, u64)>) {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        match map.get(ns) {
            None => (0, tags.iter().map(|t| (t.clone(), 0)).collect()),
            Some(g) => (
                g.ns,
                tags.iter()
                    .map(|t| (t.clone(), g.tags.get(t).copied().unwrap_or(0)))
                    .collect(),
            ),
        }
    }

    /// The namespace generation and its purged tags with their generations.
    pub fn describe(&self, ns: &str) -> (u64, usize) {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(ns).map_or((0, 0), |g| (g.ns, g.tags.len()))
    }

    /// True when nothing the entry was written under has been purged since.
    pub fn is_current(&self, ns: &str, ns_generation: u64, tags: &[(String, u64)]) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        match map.get(ns) {
            None => ns_generation == 0 && tags.iter().all(|(_, g)| *g == 0),
            Some(g) => {
                g.ns == ns_generation
                    && tags
                        .iter()
                        .all(|(t, gen)| g.tags.get(t).copied().unwrap_or(0) == *gen)
            }
        }
    }

    /// Bumps the generations of `target` in one commit of the namespace's shard; the in-memory
    /// copy changes in the writer right after the commit, before this returns.
    pub async fn purge(
        &self,
        engine: &Engine,
        ns: &str,
        target: PurgeTarget,
    ) -> Result<(), EngineError> {
        let shard = engine.shard_for(ns.as_bytes());
        let map = self.map.clone();
        let ns = ns.to_string();
        let bytes = match &target {
            PurgeTarget::Namespace => ns.len(),
            PurgeTarget::Tags(t) => t.iter().map(|t| ns.len() + t.len()).sum(),
        };
        engine
            .write_freeing(shard, bytes, move |ctx| {
                let mut table = ctx.table(CACHE_GENERATIONS)?;
                let names: Vec<Option<String>> = match &target {
                    PurgeTarget::Namespace => vec![None],
                    PurgeTarget::Tags(tags) => tags.iter().cloned().map(Some).collect(),
                };
                let mut bumped = Vec::with_capacity(names.len());
                for name in names {
                    let k = row_key(&ns, name.as_deref());
                    let next = table.get(k.as_slice())?.map_or(0, |g| g.value()) + 1;
                    table.insert(k.as_slice(), next)?;
                    bumped.push((name, next));
                }
                ctx.after_commit(move || {
                    let mut map = map.write().unwrap_or_else(|p| p.into_inner());
                    let e = map.entry(ns).or_default();
                    for (name, generation) in bumped {
                        match name {
                            None => e.ns = generation,
                            Some(t) => {
                                e.tags.insert(t, generation);
                            }
                        }
                    }
                });
                Ok(())
            })
            .await
    }
}

testing_pub! {
    /// The cache domain as the engine sees it (its shard tables hold purge generations only).
    const DOMAIN: crate::engine::DomainSpec = crate::engine::DomainSpec {
        name: "cache",
        init_tables,
        check,
        // Opened by `Store::cache` inside the tokio runtime (foyer needs one).
        open: None,
        feed: None,
    };
}

/// `shardbox check` for the cache: the generation table is readable (its values are plain u64s).
fn check(
    txn: &redb::ReadTransaction,
    _shard: usize,
    c: &mut crate::engine::domain::Checked<'_>,
) -> Result<(), redb::Error> {
    if let Some(t) = crate::engine::domain::open(txn, CACHE_GENERATIONS)? {
        for item in t.iter()? {
            item?;
            c.record();
        }
    }
    Ok(())
}
