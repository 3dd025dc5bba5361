//! Recovery on open: each shard's redb file is at its last checkpoint; the log above each
//! shard's stored LSN is replayed into it, in order, and the shard is checkpointed.
//!
//! Replay is idempotent (a redo record is physical effects) and skips records the shard already
//! has (`lsn <= META lsn`) and records an `Abort` cancelled. A crash during replay leaves the
//! shard at its previous checkpoint and the log untouched, so the next open replays again.

use super::redo;
use super::wal::frame::Kind;
use super::wal::recovery::{self, Scan};
use super::writer::{META, META_LSN};
use crate::engine::EngineError;
use redb::{Database, Durability, WriteTransaction};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Records replayed into one transaction before it is committed (bounds redb's write buffer).
const RECORDS_PER_TXN: u64 = 4096;

/// Records in the shard's META the last LSN a replay transaction applied, and commits it.
fn commit(txn: WriteTransaction, lsn: u64) -> Result<(), redb::Error> {
    txn.open_table(META)?.insert(META_LSN, lsn)?;
    txn.commit()?;
    Ok(())
}

/// What replay did, for the log line and `check`.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub scan: Scan,
    /// Records applied per shard.
    pub applied: Vec<u64>,
    /// Records an `Abort` cancelled: (shard, LSN).
    pub aborted: HashSet<(u32, u64)>,
    pub millis: u128,
}

/// Scans the log under `wal_dir` and replays it into `dbs` (whose applied LSNs are
/// `applied_lsn`). Returns the report; `applied_lsn` is updated.
pub fn replay(
    wal_dir: &Path,
    dbs: &[Arc<Database>],
    applied_lsn: &mut [u64],
) -> Result<ReplayReport, EngineError> {
    let started = Instant::now();
    let failed = |e: recovery::ScanFailure<EngineError>| match e {
        recovery::ScanFailure::Log(e) => EngineError::Open(e.to_string()),
        recovery::ScanFailure::Visit(e) => e,
    };
    // Pass 1: which records never committed.
    let mut aborted: HashSet<(u32, u64)> = HashSet::new();
    recovery::scan(wal_dir, |h, payload, _, _| {
        if let Some(a) = recovery::aborted(h, payload) {
            aborted.insert(a);
        }
        Ok::<(), EngineError>(())
    })
    .map_err(failed)?;
    // Pass 2: apply.
    let mut txns: Vec<Option<WriteTransaction>> = dbs.iter().map(|_| None).collect();
    let mut counts = vec![0u64; dbs.len()];
    let scan = recovery::scan(wal_dir, |h, payload, segment, offset| {
        if h.kind != Kind::Redo {
            return Ok(());
        }
        let s = h.shard as usize;
        let Some(db) = dbs.get(s) else {
            return Err(EngineError::Open(format!(
                "write-ahead log record LSN {} ({} offset {offset}) names shard {s}, but this store has {} shards",
                h.lsn,
                segment.display(),
                dbs.len()
            )));
        };
        if h.lsn <= applied_lsn[s] || aborted.contains(&(h.shard, h.lsn)) {
            return Ok(());
        }
        let storage = |e: redb::Error| EngineError::Storage {
            shard: s,
            source: super::StorageFailure::redb_in(format!("replaying LSN {}", h.lsn), e),
        };
        if txns[s].is_none() {
            let mut t = db.begin_write().map_err(|e| storage(e.into()))?;
            t.set_durability(Durability::None)
                .map_err(|e| EngineError::Open(e.to_string()))?;
            txns[s] = Some(t);
        }
        let Some(txn) = txns[s].as_ref() else {
            return Ok(());
        };
        redo::apply(txn, payload).map_err(|e| {
            EngineError::Open(format!(
                "cannot replay write-ahead log record LSN {} of shard {s} ({} offset {offset}): {e}",
                h.lsn,
                segment.display()
            ))
        })?;
        applied_lsn[s] = h.lsn;
        counts[s] += 1;
        if counts[s].is_multiple_of(RECORDS_PER_TXN) {
            if let Some(t) = txns[s].take() {
                commit(t, h.lsn).map_err(storage)?;
            }
        }
        Ok(())
    })
    .map_err(failed)?;
    // Checkpoint every shard that moved: its file now holds what the log held for it.
    for (s, db) in dbs.iter().enumerate() {
        let storage = |e: redb::Error| EngineError::Storage {
            shard: s,
            source: super::StorageFailure::redb_in("checkpoint after replay", e),
        };
        if let Some(t) = txns[s].take() {
            commit(t, applied_lsn[s]).map_err(storage)?;
        }
        if counts[s] > 0 {
            let mut t = db.begin_write().map_err(|e| storage(e.into()))?;
            t.set_durability(Durability::Immediate)
                .map_err(|e| EngineError::Open(e.to_string()))?;
            t.set_quick_repair(true);
            t.commit().map_err(|e| storage(e.into()))?;
        }
    }
    Ok(ReplayReport {
        scan,
        aborted,
        applied: counts,
        millis: started.elapsed().as_millis(),
    })
}
