//! Free disk space under the data directory, and what the store does when it runs low.
//!
//! - Below `disk_reserve_bytes` free, writes that add data are refused with 507
//!   `insufficient_storage` before they reach a shard, so redb and the log never meet ENOSPC
//!   from shardbox's own growth; writes that free space (deletes, acks, purges, trims) still run.
//! - A ballast file (`<data>/ballast`, `disk_ballast_bytes`) holds space back for the case
//!   where something else fills the disk: when the disk is nearly full (or a write met ENOSPC)
//!   the ballast is deleted, which gives the log and the shards room to commit the deletes that
//!   free space. It is made again once there is room for it and the reserve.
//! - A thread samples free space every `disk_check_interval_ms`; writes are taken again by
//!   themselves as soon as space is back. Nothing here is on the request path but one atomic load.

use crate::engine::EngineError;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Name of the ballast file in the data directory.
pub const BALLAST_FILE: &str = "ballast";
const BALLAST_TMP: &str = "ballast.tmp";

/// The data directory's free space, as last sampled.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    ballast_bytes: u64,
    free: AtomicU64,
    low: AtomicBool,
    ballast_present: AtomicBool,
    /// Laying and releasing the ballast, one thread at a time (the sampler and the writers).
    ballast_lock: Mutex<()>,
    /// Times writes were refused for want of space, and ballast releases.
    pub refused: AtomicU64,
    pub ballast_released: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Free bytes for an unprivileged writer on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether `dir` holds a whole ballast (a partial one, left by a crash while it was laid, or one
/// of another size is removed so it can be laid again).
fn ballast_ok(dir: &Path, bytes: u64) -> bool {
    let _ = std::fs::remove_file(dir.join(BALLAST_TMP));
    let path = dir.join(BALLAST_FILE);
    match std::fs::metadata(&path) {
        Ok(m) if bytes > 0 && m.len() == bytes && m.blocks() * 512 >= bytes => true,
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(_) => false,
    }
}

impl DiskSpace {
    /// Samples the disk and lays the ballast if there is room for it.
    pub fn open(dir: &Path, reserve: u64, ballast_bytes: u64) -> Arc<Self> {
        let s = Arc::new(DiskSpace {
            dir: dir.to_path_buf(),
            reserve,
            ballast_bytes,
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
            ballast_present: AtomicBool::new(ballast_ok(dir, ballast_bytes)),
            ballast_lock: Mutex::new(()),
            refused: AtomicU64::new(0),
            ballast_released: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        s.refresh();
        s
    }

    /// Free bytes at the last sample (`u64::MAX` when the filesystem cannot tell).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether writes that add data are refused now.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    /// Admits a write that adds data, or refuses it with 507 while space is low.
    pub fn admit(&self) -> Result<(), EngineError> {
        if !self.is_low() {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(EngineError::InsufficientStorage {
            message: format!(
                "the disk holding {} has {} bytes free, under disk_reserve_bytes ({}); free space \
                 (delete keys, ack or purge jobs, trim streams) or grow the disk",
                self.dir.display(),
                self.free(),
                self.reserve
            ),
        })
    }

    /// A commit is about to add about `bytes` to the shards: the free estimate drops by them,
    /// and once it falls under the reserve a fresh sample decides at once. A writer faster than
    /// the sampler (tens of MiB between two samples on a fast disk) cannot run past the
    /// reserve into ENOSPC in between.
    pub fn grew(&self, bytes: u64) {
        let before = self
            .free
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some(f.saturating_sub(bytes))
            })
            .unwrap_or(0);
        if before.saturating_sub(bytes) < self.reserve && !self.is_low() {
            self.refresh();
        }
    }

    /// The error for a write that met ENOSPC itself.
    pub fn full_error(&self, detail: &dyn std::fmt::Display) -> EngineError {
        EngineError::InsufficientStorage {
            message: format!("the disk holding {} is full: {detail}", self.dir.display()),
        }
    }

    /// Called by a writer before it commits or checkpoints: while space is low, samples again
    /// (one `statvfs`) so that a disk filled by someone else since the last sample releases the
    /// ballast *before* redb needs the room — redb fails every later operation after an I/O
    /// error, so the room must be there first.
    pub fn before_commit(&self) {
        if self.is_low() {
            self.refresh();
        }
    }

    /// A write met ENOSPC: refuse growth at once and release the ballast so that deletes can
    /// commit.
    pub fn on_full(&self) {
        self.low.store(true, Ordering::Release);
        self.release_ballast("a write met a full disk");
    }

    fn release_ballast(&self, why: &str) {
        let _one = self.ballast_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.ballast_present.swap(false, Ordering::AcqRel) {
            match std::fs::remove_file(self.dir.join(BALLAST_FILE)) {
                Ok(()) => {
                    self.ballast_released.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        bytes = self.ballast_bytes,
                        why,
                        "released the disk ballast to leave room for deletes"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, "cannot remove the disk ballast"),
            }
        }
    }

    /// Lays the ballast; true if it laid one now.
    fn lay_ballast(&self) -> bool {
        let _one = self.ballast_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.ballast_bytes == 0 || self.ballast_present.load(Ordering::Acquire) {
            return false;
        }
        // Laid under a temporary name and renamed: a crash never leaves a partial ballast that
        // would be taken for a whole one.
        let tmp = self.dir.join(BALLAST_TMP);
        let made = crate::engine::private::create_file(&tmp).and_then(|f| {
            rustix::fs::fallocate(
                &f,
                rustix::fs::FallocateFlags::empty(),
                0,
                self.ballast_bytes,
            )
            .map_err(std::io::Error::from)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(BALLAST_FILE))
        });
        match made {
            Ok(()) => {
                self.ballast_present.store(true, Ordering::Release);
                tracing::info!(bytes = self.ballast_bytes, "laid the disk ballast");
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(error = %e, "cannot lay the disk ballast yet");
                false
            }
        }
    }

    /// Samples free space; releases or lays the ballast; sets whether growth is refused.
    pub fn refresh(&self) {
        let Some(free) = free_bytes(&self.dir) else {
            return;
        };
        self.free.store(free, Ordering::Relaxed);
        // Nearly full (a quarter of the reserve left): the ballast goes, deletes need the room.
        if free < self.reserve / 4 {
            self.release_ballast("free space fell under a quarter of disk_reserve_bytes");
        }
        let present = self.ballast_present.load(Ordering::Acquire);
        let laid = !present
            && free
                >= self
                    .reserve
                    .saturating_add(self.ballast_bytes.saturating_mul(2))
            && self.lay_ballast();
        let free = if laid {
            free_bytes(&self.dir).unwrap_or(free)
        } else {
            free
        };
        self.free.store(free, Ordering::Relaxed);
        // Without its ballast (released, or never laid, also across a restart) growth stays
        // refused until there is room for the reserve and the ballast: else a release would
        // just make room for more puts.
        let need = if self.ballast_bytes > 0 && !self.ballast_present.load(Ordering::Acquire) {
            self.reserve.saturating_add(self.ballast_bytes)
        } else {
            self.reserve
        };
        let low = free < need;
        let was = self.low.swap(low, Ordering::AcqRel);
        if was != low {
            if was {
                tracing::info!(free, "disk space is back: writes are taken again");
            } else {
                tracing::warn!(
                    free,
                    reserve = self.reserve,
                    "disk space is low: writes that add data are refused (507)"
                );
            }
        }
    }

    /// Samples every `every` until [`DiskSpace::stop`].
    pub fn spawn(
        self: &Arc<Self>,
        every: Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("shardbox-space".into())
            .spawn(move || loop {
                let stop = me.stop.lock().unwrap_or_else(|p| p.into_inner());
                // Checked before waiting too: a stop() while refresh() ran is not missed.
                if *stop {
                    return;
                }
                let (stop, _) = me
                    .wake
                    .wait_timeout(stop, every)
                    .unwrap_or_else(|p| p.into_inner());
                if *stop {
                    return;
                }
                drop(stop);
                me.refresh();
            })
    }

    pub fn stop(&self) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }
}
