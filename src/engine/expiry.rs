//! The sweeper of every domain whose records expire through an index keyed
//! `be(expires_at_ms) ‖ record key` (KV TTLs, idempotency records). Expired records are already
//! invisible to reads; sweeping reclaims their space.
//!
//! Every `interval`, for each shard, a read transaction peeks at the head of the index; only
//! when something is due does it queue the domain's sweep through the shard's writer (never
//! waiting for room: a busy shard sweeps on a later tick). One sweep deletes at most
//! `batch_max` records, so it never holds a writer for long.

use super::{ApplyCtx, Engine, Shard};
use redb::{ReadableTable, TableDefinition};
use std::sync::Arc;
use std::time::Duration;

/// An expiry index: `be(expires_at_ms) ‖ record key` → ().
pub type Index = TableDefinition<'static, &'static [u8], ()>;

/// The index key of `record_key` expiring at `at_ms` (entries sort by expiry time).
pub fn key(at_ms: u64, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + record_key.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(record_key);
    k
}

/// A domain's sweep: deletes up to `batch_max` due records in one batch; returns how many index
/// entries it read.
pub type SweepFn = fn(&mut ApplyCtx<'_, '_>, usize) -> Result<usize, redb::Error>;

/// Runs until the engine closes. Spawn it on the runtime.
pub async fn run(
    engine: Arc<Engine>,
    interval: Duration,
    index: Index,
    sweep: SweepFn,
    batch_max: usize,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if engine.is_closing() {
            return;
        }
        let e = engine.clone();
        let _ = tokio::task::spawn_blocking(move || sweep_once(&e, index, sweep, batch_max)).await;
    }
}

/// Queues one sweep on every shard with due entries in `index`; returns how many were queued.
pub fn sweep_once(engine: &Engine, index: Index, sweep: SweepFn, batch_max: usize) -> usize {
    let now = engine.now_ms();
    let mut queued = 0;
    for shard in engine.shards() {
        if has_due(shard, index, now)
            && engine.try_write(shard.id, move |ctx| sweep(ctx, batch_max).map(|_| ()))
        {
            queued += 1;
        }
    }
    queued
}

/// Whether the index's first entry is due (an entry too short to hold a time is garbage the
/// sweep removes: due too).
fn has_due(shard: &Shard, index: Index, now_ms: u64) -> bool {
    let Ok(txn) = shard.read() else { return false };
    let Ok(table) = txn.open_table(index) else {
        return false;
    };
    let Ok(Some(first)) = table.first() else {
        return false;
    };
    first
        .0
        .value()
        .first_chunk::<8>()
        .is_none_or(|at| u64::from_be_bytes(*at) <= now_ms)
}
