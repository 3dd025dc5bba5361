//! The cache domain: a foyer hybrid (memory + disk) cache with TTL, stale-while-revalidate,
//! stale-if-error, tags, O(1) purges, fill leases against stampedes and XFetch early refresh.
//!
//! No HTTP here. foyer keeps bytes; everything about time lives in the [`Entry`] and is checked
//! on every read. Purges bump persisted generations (`gens.rs`). The disk tier is a best-effort
//! extension of memory: it starts empty on every open (its directory is wiped), so nothing
//! purged, deleted or overwritten can come back after a restart.

mod error;
internal!(entry, gens);
pub use error::{CacheError, LeaseUse};
mod leases;
mod registry;
mod settings;
mod stats;

pub use entry::Entry;
pub use gens::PurgeTarget;
testing_pub! { use gens::{init_tables, DOMAIN}; }
use leases::{FillLease, WaiterSlot};
pub use settings::{Eviction, Settings};
pub use stats::{Counters, Summary};

use crate::base::invalid::Invalid;
use crate::engine::Engine;
use crate::engine::EngineError;
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, PsyncIoEngineConfig, RecoverMode, Source, UringIoEngineConfig,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest tag, in bytes.
pub const TAG_BYTES_MAX: usize = 128;
/// Namespaces with their own stats; beyond this only the global stats count.
pub const NAMESPACE_STATS_MAX: usize = 1024;

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
        }
    }
}

/// How fresh a served entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Within the stale-while-revalidate window.
    Stale,
    /// Past it, but a refresh failed and the stale-if-error window holds.
    StaleIfError,
}

/// The fill lease state a read hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// No lease involved (fresh hit).
    None,
    /// This caller holds the fill lease.
    Granted(String),
    /// Another caller holds it.
    Pending,
    /// The lease table is full; fill without a lease.
    Unavailable,
}

/// A pinned entry of the memory tier (no copy of the value).
pub type Handle = foyer::HybridCacheEntry<Vec<u8>, Entry>;

/// The answer to a read.
#[derive(Debug)]
pub enum Lookup {
    Hit {
        entry: Handle,
        tier: Tier,
        freshness: Freshness,
        lease: Lease,
        /// The caller waited for another caller's fill and got it.
        collapsed: bool,
    },
    Miss {
        lease: Lease,
    },
}

/// Options of a cache write.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub ttl_ms: Option<u64>,
    pub swr_ms: u64,
    pub sie_ms: u64,
    pub tags: Vec<String>,
    pub content_type: Option<String>,
    /// The fill lease token this write completes.
    pub fill_token: Option<String>,
}

/// The hybrid cache with its bookkeeping.
pub struct Cache {
    hybrid: HybridCache<Vec<u8>, Entry>,
    engine: Arc<Engine>,
    generations: gens::Generations,
    leases: Mutex<HashMap<Vec<u8>, FillLease>>,
    /// While the lease table is full, no lease expires before this time (ms).
    leases_swept_until: AtomicU64,
    waiters: AtomicUsize,
    settings: Settings,
    global: Counters,
    namespaces: std::sync::RwLock<HashMap<String, Arc<Counters>>>,
    registry: registry::Registry,
    /// Serialise a key's inserts with the read-check-remove of an expired or purged entry, so
    /// a reader dropping a dead entry can never drop a value written a moment later.
    key_locks: Box<[Mutex<()>]>,
}

const KEY_LOCKS: usize = 256;

/// True when two entries are the same write (same value buffer and time).
fn same_write(a: &Entry, b: &Entry) -> bool {
    a.stored_at_ms == b.stored_at_ms
        && a.value.as_ptr() == b.value.as_ptr()
        && a.value.len() == b.value.len()
}

/// The foyer key of `ns`/`key`.
fn cache_key(ns: &str, key: &str) -> Vec<u8> {
    crate::base::names::stored_key(ns, key)
}

impl Cache {
    /// A record copied from the primary set a purge generation ([`gens::Generations`]).
    pub(crate) fn replayed_generation(&self, key: &[u8], generation: u64) {
        self.generations.replayed(key, generation);
    }

    testing_pub! {
        /// Builds the cache (inside the tokio runtime, as foyer needs). The disk tier's directory is
        /// wiped first: the disk tier always starts empty.
        async fn open(engine: Arc<Engine>, settings: Settings) -> Result<Self, CacheError> {
            let generations = gens::Generations::load(&engine)?;
            let registry = registry::Registry::default();
            let memory = usize::try_from(settings.memory_bytes).unwrap_or(usize::MAX);
            // Each memory shard must hold several of the largest entries.
            let shards = (memory / (8 * settings.value_bytes_max.max(1))).clamp(1, 16);
            let builder = HybridCacheBuilder::new()
                .with_name("shardbox")
                .with_policy(HybridCachePolicy::WriteOnEviction)
                .with_flush_on_close(false)
                .with_metrics_registry(Box::new(registry.clone()))
                .memory(memory)
                .with_shards(shards)
                .with_eviction_config(settings.eviction.foyer_config())
                .with_weighter(|k: &Vec<u8>, v: &Entry| k.len() + v.weight())
                .storage();
            let hybrid = if settings.disk_bytes > 0 {
                if settings.dir.exists() {
                    std::fs::remove_dir_all(&settings.dir).map_err(|e| {
                        CacheError::Unavailable(format!(
                            "cannot clear the cache directory {}: {e}",
                            settings.dir.display()
                        ))
                    })?;
                }
                crate::engine::private::create_dir_all(&settings.dir).map_err(|e| {
                    CacheError::Unavailable(format!(
                        "cannot create the cache directory {}: {e}",
                        settings.dir.display()
                    ))
                })?;
                let device = FsDeviceBuilder::new(&settings.dir)
                    .with_capacity(usize::try_from(settings.disk_bytes).unwrap_or(usize::MAX))
                    .build()
                    .map_err(|e| CacheError::Unavailable(format!("cache disk tier: {e}")))?;
                let io: Box<dyn foyer::IoEngineConfig> = if settings.disk_io_uring {
                    Box::new(UringIoEngineConfig::new().with_threads(1))
                } else {
                    PsyncIoEngineConfig::new().into()
                };
                builder
                    .with_io_engine_config(io)
                    .with_engine_config(
                        BlockEngineConfig::new(device)
                            .with_block_size(settings.disk_block_bytes as usize),
                    )
                    .with_recover_mode(RecoverMode::None)
                    .build()
                    .await
            } else {
                builder.build().await
            }
            .map_err(|e| CacheError::Unavailable(format!("cannot open the cache: {e}")))?;
            Ok(Self {
                hybrid,
                engine,
                generations,
                leases: Mutex::new(HashMap::new()),
                leases_swept_until: AtomicU64::new(0),
                waiters: AtomicUsize::new(0),
                settings,
                global: Counters::default(),
                namespaces: std::sync::RwLock::new(HashMap::new()),
                registry,
                key_locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            })
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Lets foyer finish its flushes and stop its tasks.
    pub async fn close(&self) -> Result<(), CacheError> {
        self.hybrid
            .close()
            .await
            .map_err(|e| CacheError::Unavailable(format!("closing the cache: {e}")))
    }

    fn key_lock(&self, k: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let i = (xxhash_rust::xxh3::xxh3_64(k) as usize) % KEY_LOCKS;
        self.key_locks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts under the key's lock.
    fn insert(&self, k: Vec<u8>, entry: Entry) {
        let _g = self.key_lock(&k);
        self.hybrid.insert(k, entry);
    }

    /// Removes `k` only while it still holds the write `seen` (not one that landed since).
    fn remove_if_same(&self, k: &[u8], seen: &Entry) {
        let _g = self.key_lock(k);
        match self.hybrid.memory().get(k) {
            Some(cur) if !same_write(cur.value(), seen) => {}
            _ => self.hybrid.remove(k),
        }
    }

    fn now(&self) -> u64 {
        self.engine.now_ms()
    }

    /// Reads `ns`/`key`. On a miss or a stale hit one caller per key gets the fill lease. With
    /// `wait`, a miss whose fill is pending waits (bounded) for the fill and answers after it.
    pub async fn get(
        &self,
        ns: &str,
        key: &str,
        wait: Option<Duration>,
    ) -> Result<Lookup, CacheError> {
        self.read(ns, key, wait, true).await
    }

    /// As [`Cache::get`], for a reader that will not fill the entry (a dashboard, the shell
    /// client): it takes no fill lease, so it keeps none from a caller that would. A miss says
    /// [`Lease::Pending`] while another caller holds the lease (and `wait` waits for its fill),
    /// else [`Lease::None`].
    pub async fn peek(
        &self,
        ns: &str,
        key: &str,
        wait: Option<Duration>,
    ) -> Result<Lookup, CacheError> {
        self.read(ns, key, wait, false).await
    }

    async fn read(
        &self,
        ns: &str,
        key: &str,
        wait: Option<Duration>,
        lease: bool,
    ) -> Result<Lookup, CacheError> {
        crate::base::names::validate_name("namespace", ns)?;
        crate::base::names::validate_key(key)?;
        let k = cache_key(ns, key);
        let first = self.lookup(ns, &k, lease).await?;
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return Ok(first);
        };
        if !matches!(
            first,
            Lookup::Miss {
                lease: Lease::Pending
            }
        ) {
            return Ok(first);
        }
        let wait = wait.min(Duration::from_millis(self.settings.wait_max_ms));
        if self.waiters.fetch_add(1, Ordering::AcqRel) >= self.settings.waiters_max {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            return Ok(first);
        }
        let _slot = WaiterSlot(&self.waiters);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let done = {
                let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                leases.get(&k).map(|l| l.done.clone())
            };
            if let Some(done) = done {
                let notified = done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // The fill may have landed between the lookup and `enable`.
                let still_pending = {
                    let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                    leases.get(&k).is_some_and(|l| Arc::ptr_eq(&l.done, &done))
                };
                if still_pending && tokio::time::timeout_at(deadline, notified).await.is_err() {
                    self.count(ns, |c| &c.waits_timed_out);
                    return self.lookup(ns, &k, lease).await;
                }
            }
            let again = self.lookup(ns, &k, lease).await?;
            match again {
                Lookup::Hit {
                    entry,
                    tier,
                    freshness,
                    lease,
                    ..
                } => {
                    self.count(ns, |c| &c.waits_served);
                    return Ok(Lookup::Hit {
                        entry,
                        tier,
                        freshness,
                        lease,
                        collapsed: true,
                    });
                }
                Lookup::Miss {
                    lease: Lease::Pending,
                } if tokio::time::Instant::now() < deadline => continue,
                other => return Ok(other),
            }
        }
    }

    /// One read without waiting. A miss that raced with a write landing retries, so no caller
    /// is handed a fill lease for a key that already holds a fresh value.
    async fn lookup(&self, ns: &str, k: &[u8], lease: bool) -> Result<Lookup, CacheError> {
        for _ in 0..3 {
            if let Some(found) = self.lookup_once(ns, k, lease).await? {
                return Ok(found);
            }
        }
        self.count(ns, |c| &c.misses);
        Ok(Lookup::Miss {
            lease: Lease::Unavailable,
        })
    }

    /// The miss answer, or `None` when a fresh value landed meanwhile (look again). Without
    /// `lease`: no lease taken, [`Lease::Pending`] if someone holds one.
    fn miss(&self, ns: &str, k: &[u8], now: u64, lease: bool) -> Option<Lookup> {
        let lease = if lease {
            self.try_lease(ns, k, now, true)?
        } else {
            self.lease_pending(k, now)
        };
        self.count(ns, |c| &c.misses);
        Some(Lookup::Miss { lease })
    }

    async fn lookup_once(
        &self,
        ns: &str,
        k: &[u8],
        take_lease: bool,
    ) -> Result<Option<Lookup>, CacheError> {
        let now = self.now();
        // Memory hits are answered without foyer's hybrid-get machinery (no allocation).
        let got = match self.hybrid.memory().get(k) {
            Some(e) => Some(e),
            None => self
                .hybrid
                .get(k)
                .await
                .map_err(|e| CacheError::Unavailable(format!("cache read failed: {e}")))?,
        };
        let Some(handle) = got else {
            return Ok(self.miss(ns, k, now, take_lease));
        };
        let entry = handle;
        let tier = if entry.source() == Source::Disk {
            Tier::Disk
        } else {
            Tier::Memory
        };
        let current = self
            .generations
            .is_current(ns, entry.ns_generation, &entry.tags);
        if !current || now >= entry.dead_at_ms() {
            self.remove_if_same(k, entry.value());
            drop(entry);
            return Ok(self.miss(ns, k, now, take_lease));
        }
        let freshness = if now < entry.expires_at_ms {
            Freshness::Fresh
        } else if now < entry.stale_until_ms {
            Freshness::Stale
        } else if entry.refresh_failed && now < entry.stale_if_error_until_ms {
            Freshness::StaleIfError
        } else {
            // Past its windows but kept in case a refresh fails within stale-if-error.
            return Ok(self.miss(ns, k, now, take_lease));
        };
        let lease = match freshness {
            _ if !take_lease => {
                if freshness != Freshness::Fresh {
                    self.count(ns, |c| &c.stale_hits);
                }
                Lease::None
            }
            Freshness::Fresh => {
                if self.early_refresh(entry.value(), now) {
                    match self.try_lease(ns, k, now, false) {
                        Some(Lease::Granted(t)) => {
                            self.count(ns, |c| &c.early_refreshes);
                            Lease::Granted(t)
                        }
                        _ => Lease::None,
                    }
                } else {
                    Lease::None
                }
            }
            Freshness::Stale | Freshness::StaleIfError => {
                self.count(ns, |c| &c.stale_hits);
                self.try_lease(ns, k, now, false).unwrap_or(Lease::None)
            }
        };
        match tier {
            Tier::Memory => self.count(ns, |c| &c.hits_memory),
            Tier::Disk => self.count(ns, |c| &c.hits_disk),
        }
        Ok(Some(Lookup::Hit {
            entry,
            tier,
            freshness,
            lease,
            collapsed: false,
        }))
    }

    /// XFetch: refresh early with probability exp(-remaining / (delta · beta)), where delta is
    /// the entry's measured fill time (or a tenth of its TTL when unknown).
    fn early_refresh(&self, entry: &Entry, now: u64) -> bool {
        let beta = self.settings.xfetch_beta;
        if beta <= 0.0 {
            return false;
        }
        let ttl = entry.expires_at_ms.saturating_sub(entry.stored_at_ms);
        let delta = if entry.fill_ms > 0 {
            entry.fill_ms
        } else {
            ttl / 10
        };
        if delta == 0 {
            return false;
        }
        let remaining = entry.expires_at_ms.saturating_sub(now) as f64;
        let r: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
        (delta as f64) * beta * -r.ln() >= remaining
    }

    /// Stores a value. With a fill token the write completes that lease (409 when the token is
    /// not the live lease); every write ends the key's pending fill and wakes its waiters.
    pub fn put(
        &self,
        ns: &str,
        key: &str,
        value: Bytes,
        opts: PutOptions,
    ) -> Result<(), CacheError> {
        crate::base::names::validate_name("namespace", ns)?;
        crate::base::names::validate_key(key)?;
        if value.len() > self.settings.value_bytes_max {
            return Err(CacheError::TooLarge {
                len: value.len(),
                max: self.settings.value_bytes_max,
            });
        }
        let ttl_ms = match opts.ttl_ms {
            Some(t) => t,
            None if self.settings.default_ttl_ms > 0 => self.settings.default_ttl_ms,
            None => return Err(Invalid::TtlRequired.into()),
        };
        if ttl_ms == 0 {
            return Err(Invalid::TtlZero.into());
        }
        if opts.tags.len() > self.settings.tags_max {
            return Err(Invalid::TooMany {
                items: "tags",
                got: opts.tags.len(),
                max: self.settings.tags_max,
                per: "entry",
                setting: "cache_tags_max",
            }
            .into());
        }
        for t in &opts.tags {
            validate_tag(t)?;
        }
        if let Some(ct) = &opts.content_type {
            crate::base::names::validate_content_type(ct)?;
        }
        let k = cache_key(ns, key);
        let now = self.now();
        let granted = match &opts.fill_token {
            None => None,
            Some(token) => Some(
                self.live_lease(&k, token, now)
                    .ok_or(CacheError::LeaseInvalid(LeaseUse::Put))?,
            ),
        };
        let mut tags = opts.tags;
        tags.sort();
        tags.dedup();
        let (ns_generation, tags) = self.generations.snapshot(ns, &tags);
        let expires_at_ms = now.saturating_add(ttl_ms);
        let entry = Entry {
            value,
            content_type: opts.content_type,
            stored_at_ms: now,
            expires_at_ms,
            stale_until_ms: expires_at_ms.saturating_add(opts.swr_ms),
            stale_if_error_until_ms: expires_at_ms.saturating_add(opts.sie_ms),
            ns_generation,
            tags,
            fill_ms: granted.map_or(0, |g| now.saturating_sub(g)),
            refresh_failed: false,
        };
        self.insert(k.clone(), entry);
        self.count(ns, |c| &c.puts);
        if self.end_lease(&k, None).is_some() && opts.fill_token.is_some() {
            self.count(ns, |c| &c.fills_completed);
        }
        Ok(())
    }

    /// Removes `ns`/`key` from both tiers and cancels its pending fill.
    pub fn delete(&self, ns: &str, key: &str) -> Result<(), CacheError> {
        crate::base::names::validate_name("namespace", ns)?;
        crate::base::names::validate_key(key)?;
        let k = cache_key(ns, key);
        {
            let _g = self.key_lock(&k);
            self.hybrid.remove(&k);
        }
        self.end_lease(&k, None);
        self.count(ns, |c| &c.deletes);
        Ok(())
    }

    /// O(1) purge: bumps the namespace's or the tags' generations (persisted).
    pub async fn purge(&self, ns: &str, target: PurgeTarget) -> Result<(), CacheError> {
        crate::base::names::validate_name("namespace", ns)?;
        if let PurgeTarget::Tags(tags) = &target {
            if tags.is_empty() {
                return Err(Invalid::NoTags.into());
            }
            if tags.len() > 1000 {
                return Err(Invalid::AtMost {
                    items: "tags",
                    max: 1000,
                    per: "purge",
                }
                .into());
            }
            for t in tags {
                validate_tag(t)?;
            }
        }
        self.generations.purge(&self.engine, ns, target).await?;
        self.count(ns, |c| &c.purges);
        Ok(())
    }

    /// Waits until the disk tier has written what it was handed (tests and benchmarks).
    pub async fn flush_disk(&self) {
        self.hybrid.storage().wait().await;
    }
}

/// Checks a tag: 1–128 bytes of visible ASCII without `,`.
pub fn validate_tag(tag: &str) -> Result<(), CacheError> {
    if tag.is_empty() || tag.len() > TAG_BYTES_MAX {
        return Err(Invalid::TagLength {
            len: tag.len(),
            max: TAG_BYTES_MAX,
        }
        .into());
    }
    if let Some(ch) = tag.chars().find(|c| !c.is_ascii_graphic() || *c == ',') {
        return Err(Invalid::TagChar {
            tag: tag.to_string(),
            ch,
        }
        .into());
    }
    Ok(())
}

impl From<EngineError> for CacheError {
    fn from(e: EngineError) -> Self {
        CacheError::Engine(e)
    }
}
