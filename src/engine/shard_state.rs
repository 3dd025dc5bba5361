//! A shard's health and counters, shared by its writer thread and the request handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Health and counters of a shard, shared by its writer and the request handlers.
#[derive(Debug, Default)]
pub struct ShardState {
    failure: Mutex<Option<String>>,
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub largest_batch: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_micros_total: AtomicU64,
    /// The LSN of the shard's last batch committed to redb (readers and the change feed see
    /// it from then on).
    pub committed_lsn: AtomicU64,
    /// The LSN of the shard's last batch written to the log (committed to redb or not yet):
    /// the feed's end stops before it while it is not committed.
    pub logged_lsn: AtomicU64,
    /// While the writer appends a record: one more than an LSN its record will be above (0
    /// otherwise).
    pub appending_floor: AtomicU64,
}

impl ShardState {
    /// Records why the shard stopped accepting writes (the first reason wins).
    pub fn fail(&self, reason: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(reason);
        }
    }
    /// Why the shard refuses writes, if it does.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub(crate) fn record_checkpoint(&self, took: Duration) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_micros_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
    pub(crate) fn record_commit(&self, ops: u64, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.commit_micros_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.largest_batch.fetch_max(ops, Ordering::Relaxed);
    }
}
