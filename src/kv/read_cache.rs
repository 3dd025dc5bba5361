//! Read caching for KV: point reads served from a foyer memory cache, filled on read.
//!
//! The classic race — a reader reads the old value, a writer commits and invalidates, then the
//! reader puts the old value into the cache where it lives on — is closed with stamps. Keys hash
//! into stripes, each with a counter. A reader takes the stripe's counter *before* it opens its
//! read transaction and stores it with the value. The writer, after the commit returns and before
//! any caller is answered, bumps the counters of the keys it wrote (and removes them). A cached
//! value is served only while its stamp equals the stripe's counter: a stamp equal to the current
//! counter was taken after the last bump, so its read transaction began after the last commit
//! that touched the stripe and saw it. A prefix delete bumps a cache-wide epoch instead.

use super::Value;
use crate::engine::writer::ApplyCtx;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const STRIPES: usize = 4096;

#[derive(Debug, Clone)]
struct Cached {
    value: Value,
    stamp: u64,
    epoch: u64,
}

/// The KV read cache.
pub struct ReadCache {
    cache: foyer::Cache<Vec<u8>, Cached>,
    stripes: Box<[AtomicU64]>,
    epoch: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// The stamp a reader takes before its read transaction.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    stripe: usize,
    stamp: u64,
    epoch: u64,
}

fn stripe(sk: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(sk) as usize) % STRIPES
}

impl ReadCache {
    pub fn new(bytes: u64, eviction: foyer::EvictionConfig) -> Self {
        let capacity = usize::try_from(bytes).unwrap_or(usize::MAX);
        let cache = foyer::CacheBuilder::new(capacity)
            .with_shards((capacity >> 22).clamp(1, 16))
            .with_eviction_config(eviction)
            .with_weighter(|k: &Vec<u8>, v: &Cached| {
                k.len()
                    + v.value.payload.len()
                    + 64
                    + v.value.content_type.as_ref().map_or(0, |c| c.len())
            })
            .build();
        Self {
            cache,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A cached, still valid, unexpired value; on a miss, the stamp to fill with. The stamp is
    /// taken here, so before the caller opens the read transaction that produces the fill.
    pub fn lookup(&self, sk: &[u8], now_ms: u64) -> Result<Value, Stamp> {
        let i = stripe(sk);
        let stamp = self.stripes[i].load(Ordering::SeqCst);
        let epoch = self.epoch.load(Ordering::SeqCst);
        if let Some(e) = self.cache.get(sk) {
            if e.stamp == stamp
                && e.epoch == epoch
                && e.value.expires_at_ms.is_none_or(|t| t > now_ms)
            {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(e.value.clone());
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Err(Stamp {
            stripe: i,
            stamp,
            epoch,
        })
    }

    /// Fills after a store read.
    pub fn fill(&self, sk: &[u8], value: &Value, stamp: Stamp) {
        if self.epoch.load(Ordering::SeqCst) != stamp.epoch {
            return;
        }
        // Not worth inserting what a concurrent write already made stale.
        if self.stripes[stamp.stripe].load(Ordering::SeqCst) != stamp.stamp {
            return;
        }
        self.cache.insert(
            sk.to_vec(),
            Cached {
                value: value.clone(),
                stamp: stamp.stamp,
                epoch: stamp.epoch,
            },
        );
    }

    /// After a commit that wrote `sk`: bump its stripe, drop the cached copy.
    pub fn invalidate(&self, sk: &[u8]) {
        self.stripes[stripe(sk)].fetch_add(1, Ordering::SeqCst);
        self.cache.remove(sk);
    }

    /// After a commit of a prefix delete: every cached value is suspect.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn usage_bytes(&self) -> usize {
        self.cache.usage()
    }
}

/// Registers invalidation of `keys` to run in the writer after this batch's commit.
pub(crate) fn after_commit(
    ctx: &mut ApplyCtx<'_, '_>,
    cache: &Option<Arc<ReadCache>>,
    keys: Vec<Vec<u8>>,
) {
    if let Some(c) = cache {
        let c = c.clone();
        ctx.after_commit(move || {
            for k in &keys {
                c.invalidate(k);
            }
        });
    }
}

/// Appends the KV read cache's counters.
impl ReadCache {
    /// Appends the cache's counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let c = self;
    for (name, help, kind, v) in [
        (
            "shardbox_kv_cache_hits_total",
            "KV point reads answered from the read cache.",
            "counter",
            c.hits.load(Ordering::Relaxed),
        ),
        (
            "shardbox_kv_cache_misses_total",
            "KV point reads that went to the store.",
            "counter",
            c.misses.load(Ordering::Relaxed),
        ),
        (
            "shardbox_kv_cache_bytes",
            "Bytes held by the KV read cache.",
            "gauge",
            c.usage_bytes() as u64,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(rev: u64) -> Value {
        Value {
            payload: bytes::Bytes::from_static(b"v"),
            revision: rev,
            expires_at_ms: None,
            content_type: None,
        }
    }

    fn stamp_of(c: &ReadCache, k: &[u8]) -> Stamp {
        match c.lookup(k, 0) {
            Err(stamp) => stamp,
            Ok(_) => panic!("expected a miss"),
        }
    }

    #[test]
    fn a_fill_from_before_an_invalidation_is_never_served() {
        let c = ReadCache::new(1 << 20, foyer::S3FifoConfig::default().into());
        // Reader takes its stamp and reads revision 1; the writer commits revision 2 and
        // invalidates; only then does the reader fill.
        let stamp = stamp_of(&c, b"k");
        c.invalidate(b"k");
        c.fill(b"k", &value(1), stamp);
        assert_eq!(c.lookup(b"k", 0).ok(), None);
        // The same, with the fill landing before the invalidation.
        let stamp = stamp_of(&c, b"k");
        c.fill(b"k", &value(2), stamp);
        assert_eq!(c.lookup(b"k", 0).ok().map(|v| v.revision), Some(2));
        c.invalidate(b"k");
        assert_eq!(c.lookup(b"k", 0).ok(), None);
        // A prefix delete invalidates everything filled before it.
        let stamp = stamp_of(&c, b"j");
        c.fill(b"j", &value(3), stamp);
        c.invalidate_all();
        assert_eq!(c.lookup(b"j", 0).ok(), None);
        // Expired values are not served.
        let mut v = value(4);
        v.expires_at_ms = Some(10);
        c.fill(b"e", &v, stamp_of(&c, b"e"));
        assert!(c.lookup(b"e", 9).is_ok());
        assert!(c.lookup(b"e", 10).is_err());
    }
}
