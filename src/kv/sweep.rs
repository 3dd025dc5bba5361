//! The TTL sweeper: expired keys are already invisible to reads; this reclaims their space.
//!
//! Every `sweep_interval_ms`, for each shard, a read transaction peeks at the head of the expiry
//! index; only when something is due does it queue a sweep through the shard's writer (never
//! waiting for room: a busy shard sweeps on a later tick). One sweep deletes at most
//! `delete_batch_keys_max` keys, so it never holds a writer for long.

use super::{apply, KV_EXPIRY};
use crate::engine::Engine;
use redb::ReadableTable;
use std::sync::Arc;
use std::time::Duration;

/// Runs until the engine closes. Spawn it on the runtime.
pub async fn run(engine: Arc<Engine>, interval: Duration, batch_max: usize) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if engine.is_closing() {
            return;
        }
        let e = engine.clone();
        let _ = tokio::task::spawn_blocking(move || sweep_once(&e, batch_max)).await;
    }
}

/// Queues one sweep on every shard that has expired keys; returns how many were queued.
pub fn sweep_once(engine: &Engine, batch_max: usize) -> usize {
    let now = engine.now_ms();
    let mut queued = 0;
    for shard in engine.shards() {
        if has_due(shard, now)
            && engine.try_write(shard.id, move |ctx| {
                apply::sweep(ctx, batch_max).map(|_| ())
            })
        {
            queued += 1;
        }
    }
    queued
}

fn has_due(shard: &crate::engine::Shard, now_ms: u64) -> bool {
    let Ok(txn) = shard.read() else { return false };
    let Ok(table) = txn.open_table(KV_EXPIRY) else {
        return false;
    };
    let Ok(Some(first)) = table.first() else {
        return false;
    };
    let key = first.0.value();
    key.len() >= 8 && u64::from_be_bytes(key[..8].try_into().unwrap_or([0xff; 8])) <= now_ms
}
