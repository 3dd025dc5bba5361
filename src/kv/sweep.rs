//! The TTL sweeper: [`crate::engine::expiry`] over `kv_expiry` with [`apply::sweep`]
//! (`delete_batch_keys_max` keys per commit, every `sweep_interval_ms`).

use super::{apply, KV_EXPIRY};
use crate::engine::{expiry, Engine};
use std::sync::Arc;
use std::time::Duration;

/// Runs until the engine closes. Spawn it on the runtime.
pub async fn run(engine: Arc<Engine>, interval: Duration, batch_max: usize) {
    expiry::run(engine, interval, KV_EXPIRY, apply::sweep, batch_max).await
}

/// Queues one sweep on every shard that has expired keys; returns how many were queued.
#[cfg(feature = "testing")]
pub fn sweep_once(engine: &Engine, batch_max: usize) -> usize {
    expiry::sweep_once(engine, KV_EXPIRY, apply::sweep, batch_max)
}
