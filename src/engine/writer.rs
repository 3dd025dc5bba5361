//! The per-shard writer: group commit.
//!
//! Every mutation of a shard goes through its writer thread. The writer takes the first
//! operation, drains whatever else waits (up to `batch_ops_max` operations and `batch_bytes_max`
//! bytes), applies them all in one redb write transaction, commits once, and then replies to every
//! waiter. An operation whose own precondition fails records that failure and changes nothing
//! (check before mutate), so it never spoils the batch. A storage error fails the whole batch and
//! the shard stops accepting writes: nothing uncommitted is ever acknowledged.

use super::clock::Clock;
use super::shard::ShardState;
use crate::config::DurabilityMode;
use crate::error::EngineError;
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shard-wide metadata, kept in every shard file.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key in [`META`] holding the next revision number to hand out.
pub const META_NEXT_REVISION: &str = "next_revision";

/// What an operation sees while it is applied.
pub struct ApplyCtx<'a> {
    pub txn: &'a WriteTransaction,
    pub shard: usize,
    /// Wall-clock time of this batch, ms since the epoch.
    pub now_ms: u64,
    next_revision: &'a mut u64,
    after_commit: &'a mut Vec<AfterCommit>,
}

/// Work the writer runs once the batch's commit has returned (whether it succeeded or not),
/// before any caller of the batch gets its reply: cache invalidation lives here, so no
/// acknowledged write can be followed by a read of an older cached value.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

impl ApplyCtx<'_> {
    /// A fresh revision: unique and increasing within the shard, across restarts. Revisions are
    /// shard-wide (not per key) so a deleted and re-created key never reuses an old revision and
    /// a stale `If-Match` can never match again.
    pub fn next_revision(&mut self) -> u64 {
        let r = *self.next_revision;
        *self.next_revision += 1;
        r
    }

    /// Runs `f` in the writer after this batch's commit returns and before any reply is sent.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }
}

/// One operation for a shard writer.
pub trait Mutation: Send {
    /// Payload bytes this operation adds to a batch (for `batch_bytes_max`).
    fn bytes(&self) -> usize;
    /// Applies the operation inside the batch's transaction. A failed precondition is recorded in
    /// the operation and returns `Ok` without mutating; an `Err` is a storage failure and aborts
    /// the whole batch.
    fn apply(&mut self, ctx: &mut ApplyCtx<'_>) -> Result<(), redb::Error>;
    /// Delivers the result once the batch's fate is known.
    fn finish(self: Box<Self>, outcome: Result<(), EngineError>);
}

pub(crate) enum Msg {
    Op(Box<dyn Mutation>),
    /// Finish what is queued before this message, make it durable, and exit.
    Stop,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub batch_ops_max: usize,
    pub batch_bytes_max: usize,
    pub durability: DurabilityMode,
    pub quick_repair: bool,
}

pub(crate) struct Writer {
    pub shard: usize,
    pub db: Arc<Database>,
    pub rx: flume::Receiver<Msg>,
    pub state: Arc<ShardState>,
    pub cfg: WriterConfig,
    pub clock: Arc<dyn Clock>,
    pub next_revision: u64,
}

/// Marks the shard failed if the writer thread unwinds, so callers get a 503 instead of waiting
/// on a dead thread.
struct PanicGuard(Arc<ShardState>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the writer thread panicked".into());
        }
    }
}

impl Writer {
    pub(crate) fn run(mut self) {
        let _guard = PanicGuard(self.state.clone());
        let mut carry: Option<Box<dyn Mutation>> = None;
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            let first = match carry.take() {
                Some(op) => op,
                None => match self.next_message(last_sync, dirty) {
                    Next::Op(op) => op,
                    Next::SyncDue => {
                        dirty = !self.sync();
                        last_sync = Instant::now();
                        continue;
                    }
                    Next::Stop => break,
                },
            };
            let mut stop = false;
            let mut bytes = first.bytes();
            let mut batch = vec![first];
            while batch.len() < self.cfg.batch_ops_max && bytes < self.cfg.batch_bytes_max {
                match self.rx.try_recv() {
                    Ok(Msg::Op(op)) => {
                        if bytes + op.bytes() > self.cfg.batch_bytes_max {
                            carry = Some(op);
                            break;
                        }
                        bytes += op.bytes();
                        batch.push(op);
                    }
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if self.commit_batch(batch) {
                dirty = true;
            }
            if let DurabilityMode::Periodic { interval } = self.cfg.durability {
                if dirty && last_sync.elapsed() >= interval {
                    dirty = !self.sync();
                    last_sync = Instant::now();
                }
            }
            if stop {
                if let Some(op) = carry.take() {
                    op.finish(Err(EngineError::ShuttingDown));
                }
                break;
            }
        }
        if dirty {
            self.sync();
        }
        // Anything still queued was never applied: its callers learn the store is closing.
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Op(op) = msg {
                op.finish(Err(EngineError::ShuttingDown));
            }
        }
    }

    fn next_message(&self, last_sync: Instant, dirty: bool) -> Next {
        let msg = match self.cfg.durability {
            DurabilityMode::Periodic { interval } if dirty => {
                let left = interval.saturating_sub(last_sync.elapsed());
                match self.rx.recv_timeout(left.max(Duration::from_millis(1))) {
                    Ok(m) => m,
                    Err(flume::RecvTimeoutError::Timeout) => return Next::SyncDue,
                    Err(flume::RecvTimeoutError::Disconnected) => return Next::Stop,
                }
            }
            _ => match self.rx.recv() {
                Ok(m) => m,
                Err(_) => return Next::Stop,
            },
        };
        match msg {
            Msg::Op(op) => Next::Op(op),
            Msg::Stop => Next::Stop,
        }
    }

    /// Applies and commits one batch; returns true when something was committed.
    fn commit_batch(&mut self, mut batch: Vec<Box<dyn Mutation>>) -> bool {
        if let Some(reason) = self.state.failure() {
            let err = EngineError::ShardUnavailable {
                shard: self.shard,
                reason,
            };
            for op in batch {
                op.finish(Err(err.clone()));
            }
            return false;
        }
        let started = Instant::now();
        let mut next_revision = self.next_revision;
        let mut hooks = Vec::new();
        let result = self.apply_all(&mut batch, &mut next_revision, &mut hooks);
        // Invalidation is safe to run even when the commit failed (it only drops cached copies).
        for hook in hooks {
            if catch_unwind(AssertUnwindSafe(hook)).is_err() {
                tracing::error!(shard = self.shard, "an after-commit hook panicked");
            }
        }
        let n = batch.len() as u64;
        match result {
            Ok(()) => {
                self.next_revision = next_revision;
                self.state.record_commit(n, started.elapsed());
                for op in batch {
                    op.finish(Ok(()));
                }
                true
            }
            Err(BatchError::Storage(message)) => {
                tracing::error!(shard = self.shard, %message, "storage error; shard stops accepting writes");
                self.state.fail(message.clone());
                let err = EngineError::Storage {
                    shard: self.shard,
                    message,
                };
                for op in batch {
                    op.finish(Err(err.clone()));
                }
                false
            }
            Err(BatchError::Panic) => {
                tracing::error!(
                    shard = self.shard,
                    "an operation panicked; batch rolled back"
                );
                let err = EngineError::Storage {
                    shard: self.shard,
                    message: "internal error while applying the batch; nothing was written".into(),
                };
                for op in batch {
                    op.finish(Err(err.clone()));
                }
                false
            }
        }
    }

    fn apply_all(
        &self,
        batch: &mut [Box<dyn Mutation>],
        next_revision: &mut u64,
        after_commit: &mut Vec<AfterCommit>,
    ) -> Result<(), BatchError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        let durability = match self.cfg.durability {
            DurabilityMode::Immediate => Durability::Immediate,
            DurabilityMode::Periodic { .. } => Durability::None,
        };
        txn.set_durability(durability)
            .map_err(|e| BatchError::Storage(e.to_string()))?;
        txn.set_quick_repair(self.cfg.quick_repair);
        let start_revision = *next_revision;
        let mut ctx = ApplyCtx {
            txn: &txn,
            shard: self.shard,
            now_ms: self.clock.now_ms(),
            next_revision,
            after_commit,
        };
        for op in batch.iter_mut() {
            match catch_unwind(AssertUnwindSafe(|| op.apply(&mut ctx))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(storage(e)),
                Err(_) => return Err(BatchError::Panic),
            }
        }
        if *ctx.next_revision != start_revision {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_NEXT_REVISION, *ctx.next_revision)
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// An fsync'd (empty) commit that makes every earlier non-durable commit durable.
    fn sync(&self) -> bool {
        let result = self.db.begin_write().map_err(storage).and_then(|mut txn| {
            txn.set_durability(Durability::Immediate)
                .map_err(|e| BatchError::Storage(e.to_string()))?;
            txn.commit().map_err(storage)
        });
        match result {
            Ok(()) => true,
            Err(BatchError::Storage(message)) => {
                tracing::error!(shard = self.shard, %message, "periodic sync failed; shard stops accepting writes");
                self.state.fail(message);
                false
            }
            Err(BatchError::Panic) => false,
        }
    }
}

enum Next {
    Op(Box<dyn Mutation>),
    SyncDue,
    Stop,
}

enum BatchError {
    Storage(String),
    Panic,
}

fn storage(e: impl Into<redb::Error>) -> BatchError {
    BatchError::Storage(e.into().to_string())
}

/// Reads the persisted next revision of a shard (1 for a new shard).
pub(crate) fn load_next_revision(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_write()?;
    let next = {
        let meta = txn.open_table(META)?;
        let v = meta.get(META_NEXT_REVISION)?.map(|g| g.value());
        v.unwrap_or(1)
    };
    txn.commit()?;
    Ok(next)
}
