//! Counters per namespace and for the whole cache, and the stats the API reports.

use super::*;

/// See [`Cache::summary`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub hits_memory: u64,
    pub hits_disk: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// Counters of one namespace (or of the whole cache).
#[derive(Debug, Default)]
pub struct Counters {
    pub hits_memory: AtomicU64,
    pub hits_disk: AtomicU64,
    pub misses: AtomicU64,
    pub stale_hits: AtomicU64,
    pub fills_granted: AtomicU64,
    pub fills_completed: AtomicU64,
    pub fill_errors: AtomicU64,
    pub early_refreshes: AtomicU64,
    pub waits_served: AtomicU64,
    pub waits_timed_out: AtomicU64,
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
    pub purges: AtomicU64,
}

impl Counters {
    pub(super) fn add(field: &AtomicU64) {
        field.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "hits": g(&self.hits_memory) + g(&self.hits_disk),
            "hits_memory": g(&self.hits_memory),
            "hits_disk": g(&self.hits_disk),
            "misses": g(&self.misses),
            "stale_hits": g(&self.stale_hits),
            "fills_granted": g(&self.fills_granted),
            "fills_completed": g(&self.fills_completed),
            "fill_errors": g(&self.fill_errors),
            "early_refreshes": g(&self.early_refreshes),
            "waits_served": g(&self.waits_served),
            "waits_timed_out": g(&self.waits_timed_out),
            "puts": g(&self.puts),
            "deletes": g(&self.deletes),
            "purges": g(&self.purges),
        })
    }
}

impl Cache {
    pub(super) fn counters(&self, ns: &str) -> Option<Arc<Counters>> {
        {
            let map = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = map.get(ns) {
                return Some(c.clone());
            }
        }
        let mut map = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(ns) {
            return Some(c.clone());
        }
        if map.len() >= NAMESPACE_STATS_MAX {
            return None;
        }
        let c = Arc::new(Counters::default());
        map.insert(ns.to_string(), c.clone());
        Some(c)
    }

    pub(super) fn count(&self, ns: &str, f: impl Fn(&Counters) -> &AtomicU64) {
        Counters::add(f(&self.global));
        if let Some(c) = self.counters(ns) {
            Counters::add(f(&c));
        }
    }

    /// Stats of one namespace.
    pub fn namespace_stats(&self, ns: &str) -> Result<serde_json::Value, CacheError> {
        crate::base::names::validate_name("namespace", ns)?;
        let map = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        let counters = map
            .get(ns)
            .map(|c| c.to_json())
            .unwrap_or_else(|| Counters::default().to_json());
        let (generation, purged_tags) = self.generations.describe(ns);
        Ok(serde_json::json!({
            "namespace": ns,
            "generation": generation,
            "purged_tags": purged_tags,
            "counters": counters,
        }))
    }

    /// Bytes held by the disk tier: blocks holding entries (being written, full, or being
    /// reclaimed) × block size.
    fn disk_bytes(&self) -> u64 {
        let r = &self.registry;
        (r.get("foyer_storage_block_engine_block/writing")
            + r.get("foyer_storage_block_engine_block/evictable")
            + r.get("foyer_storage_block_engine_block/reclaiming"))
            * r.get("foyer_storage_block_engine_block_size_bytes")
    }

    /// The figures the status page and the metrics show: lookups by tier and result, bytes
    /// per tier.
    pub fn summary(&self) -> Summary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.global;
        Summary {
            hits_memory: g(&c.hits_memory),
            hits_disk: g(&c.hits_disk),
            misses: g(&c.misses),
            stale_hits: g(&c.stale_hits),
            memory_bytes: self.hybrid.memory().usage() as u64,
            disk_bytes: self.disk_bytes(),
        }
    }

    /// Stats of the whole cache, with foyer's own tier figures.
    pub fn stats(&self) -> serde_json::Value {
        let r = &self.registry;
        // Live leases only: expired ones (their holder never filled) are dropped here, their
        // waiters told to retry, so the figure is what is held now.
        let leases = {
            let now = self.now();
            let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            l.retain(|_, lease| {
                let live = lease.expires_at_ms > now;
                if !live {
                    lease.done.notify_waiters();
                }
                live
            });
            l.len()
        };
        serde_json::json!({
            "counters": self.global.to_json(),
            "evictions": r.get("foyer_memory_op_total/evict"),
            "disk_dropped": r.get("foyer_storage_inner_op_total/buffer_overflow")
                + r.get("foyer_storage_inner_op_total/channel_overflow"),
            "memory": {
                "bytes": self.hybrid.memory().usage(),
                "capacity_bytes": self.hybrid.memory().capacity(),
                "entries": r.get("foyer_memory_entries"),
                "eviction": self.settings.eviction.to_string(),
            },
            "disk": {
                "enabled": self.hybrid.is_hybrid(),
                "capacity_bytes": if self.hybrid.is_hybrid() { self.settings.disk_bytes } else { 0 },
                "bytes": self.disk_bytes(),
                "written_bytes": r.get("foyer_storage_disk_io_bytes_total/write"),
                "read_bytes": r.get("foyer_storage_disk_io_bytes_total/read"),
                "hits": r.get("foyer_storage_op_total/hit"),
                "misses": r.get("foyer_storage_op_total/miss"),
                "enqueued": r.get("foyer_storage_op_total/enqueue"),
            },
            "fill_leases": leases,
            "waiters": self.waiters.load(Ordering::Relaxed),
        })
    }
}
