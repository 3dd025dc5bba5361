//! The cache's settings section: eviction policy and the bounds it is built with.

use super::*;

pub use crate::base::config::EvictionPolicy as Eviction;

/// Cache settings (from [`crate::base::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub disk_block_bytes: u64,
    pub value_bytes_max: usize,
    pub eviction: Eviction,
    pub default_ttl_ms: u64,
    pub fill_lease_ms: u64,
    pub fill_leases_max: usize,
    pub wait_max_ms: u64,
    pub waiters_max: usize,
    pub xfetch_beta: f64,
    pub tags_max: usize,
    /// Disk tier I/O through io_uring instead of pread/pwrite on blocking threads.
    pub disk_io_uring: bool,
}

impl Settings {
    pub fn from_config(c: &crate::base::config::Config) -> Self {
        Self {
            dir: c.data_dir.join("cache"),
            memory_bytes: c.cache.cache_memory_bytes,
            disk_bytes: c.cache.cache_disk_bytes,
            disk_block_bytes: c.cache.cache_disk_block_bytes,
            value_bytes_max: c.cache.cache_value_bytes_max,
            eviction: c.cache.cache_eviction,
            default_ttl_ms: c.cache.cache_default_ttl_ms,
            fill_lease_ms: c.cache.cache_fill_lease_ms,
            fill_leases_max: c.cache.cache_fill_leases_max,
            wait_max_ms: c.cache.cache_wait_max_ms,
            waiters_max: c.cache.cache_waiters_max,
            xfetch_beta: c.cache.cache_xfetch_beta,
            tags_max: c.cache.cache_tags_max,
            // `Config::validate` allows only psync and uring.
            disk_io_uring: c.cache.cache_disk_io == crate::base::config::DiskIo::Uring,
        }
    }
}
