//! The per-shard writer: group commit on top of the shared write-ahead log.
//!
//! Every mutation of a shard goes through its writer thread. The writer takes the first
//! operation, drains whatever else waits (up to `batch_ops_max` operations and `batch_bytes_max`
//! bytes) and applies them all in one redb write transaction, recording their physical effects
//! (the redo). It appends the redo to the log, waits until the log has it (on disk in
//! `immediate` mode, written in `periodic`), commits redb with `Durability::None` and only then
//! replies. Readers therefore never see a batch before its log record is durable.
//!
//! An operation whose own precondition fails records that failure and changes nothing (check
//! before mutate), so it never spoils the batch. A storage error fails the whole batch and the
//! shard stops accepting writes: nothing uncommitted is ever acknowledged.
//!
//! A checkpoint is a `Durability::Immediate` commit: it makes every earlier commit of the shard
//! durable in its own file, after which the log no longer needs the shard's records. The writer
//! checkpoints when the log it pins passes `checkpoint_log_bytes`, when its oldest
//! uncheckpointed commit is `checkpoint_interval_ms` old, and when it stops.

use crate::base::clock::Clock;
use super::redo::{self, Cached, Logged, LoggedTable, Redo, TableCache};
use super::shard_state::ShardState;
use super::wal::{frame::Kind, Wal, WalError};
use crate::engine::{EngineError, StorageFailure};
use redb::{Database, Durability, Key, ReadableTable, TableDefinition, WriteTransaction};
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shard-wide metadata, kept in every shard file.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key in [`META`] holding the next revision number to hand out.
pub const META_NEXT_REVISION: &str = "next_revision";
/// The key in [`META`] holding the LSN of the last log record applied to this shard. Written in
/// the same transaction as the batch (not logged itself): after a crash the shard's file says
/// exactly which records replay must apply.
pub const META_LSN: &str = "lsn";

/// How often an idle writer with uncheckpointed commits looks at the log's size.
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// What an operation sees while it is applied.
/// `'c` is the batch's own state, `'t` the redb write transaction it applies to.
pub struct ApplyCtx<'c, 't> {
    txn: &'t WriteTransaction,
    redo: &'c RefCell<Redo>,
    tables: &'c TableCache<'t>,
    pub shard: usize,
    /// Wall-clock time of this batch, ms since the epoch.
    pub now_ms: u64,
    next_revision: &'c mut u64,
    after_commit: &'c mut Vec<AfterCommit>,
}

/// Work the writer runs once the batch's commit has returned (whether it succeeded or not),
/// before any caller of the batch gets its reply: cache invalidation and waking waiters live
/// here, so no acknowledged write can be followed by a read of an older cached value, and no
/// waiter is woken before what it waits for is durable.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

impl<'c, 't> ApplyCtx<'c, 't> {
    /// Opens (creating if needed) a table of this shard for the batch. Reads go straight to
    /// redb; inserts and removes are also recorded in the batch's log record.
    pub fn table<K: Logged + Key, V: Logged>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<LoggedTable<'c, 't, K, V>, redb::Error>
    where
        redb::Table<'t, K, V>: Cached<'t>,
    {
        LoggedTable::open(self.txn, self.redo, self.tables, def)
    }

    /// Drops a whole table (and records it); true if it existed.
    pub fn delete_table<K: Logged + Key, V: Logged>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<bool, redb::Error> {
        redo::drop_table(self.txn, self.redo, self.tables, def)
    }

    /// A fresh revision: unique and increasing within the shard, across restarts. Revisions are
    /// shard-wide (not per key) so a deleted and re-created key never reuses an old revision and
    /// a stale `If-Match` can never match again.
    pub fn next_revision(&mut self) -> u64 {
        let r = *self.next_revision;
        *self.next_revision += 1;
        r
    }

    /// Says what the operation being applied does, for the change feed: a note its domain's
    /// decoder reads back with the physical ops that follow it ([`crate::engine::feed`]).
    pub fn note(&mut self, note: &[u8]) -> NoteMark {
        NoteMark(self.redo.borrow_mut().note(note))
    }

    /// Overwrites bytes of a note this operation recorded (`offset` within the note).
    pub fn patch_note(&mut self, mark: NoteMark, offset: usize, bytes: &[u8]) {
        self.redo.borrow_mut().patch_note(mark.0, offset, bytes);
    }

    /// Runs `f` in the writer after this batch's commit returns and before any reply is sent.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }
}

/// Where a note sits in its record, to patch it ([`ApplyCtx::patch_note`]).
#[derive(Debug, Clone, Copy)]
pub struct NoteMark(usize);

/// One operation for a shard writer.
pub trait Mutation: Send {
    /// Payload bytes this operation adds to a batch (for `batch_bytes_max`).
    fn bytes(&self) -> usize;
    /// Applies the operation inside the batch's transaction. A failed precondition is recorded in
    /// the operation and returns `Ok` without mutating; an `Err` is a storage failure and aborts
    /// the whole batch.
    fn apply(&mut self, ctx: &mut ApplyCtx<'_, '_>) -> Result<(), redb::Error>;
    /// Delivers the result once the batch's fate is known.
    fn finish(self: Box<Self>, outcome: Result<(), EngineError>);
}

pub(crate) enum Msg {
    Op(Box<dyn Mutation>),
    /// A record copied from the primary's log, already in this log: apply it as it is.
    Replay(Replay),
    /// Finish what is queued before this message, checkpoint, and exit.
    Stop,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    pub batch_ops_max: usize,
    pub batch_bytes_max: usize,
    pub quick_repair: bool,
    pub checkpoint_log_bytes: u64,
    pub checkpoint_interval: Duration,
}

pub(crate) struct Writer {
    pub shard: usize,
    pub db: Arc<Database>,
    pub rx: flume::Receiver<Msg>,
    pub state: Arc<ShardState>,
    pub space: Arc<super::space::DiskSpace>,
    pub cfg: WriterConfig,
    pub clock: Arc<dyn Clock>,
    pub wal: Arc<Wal>,
    pub next_revision: u64,
    pub redo: RefCell<Redo>,
    /// When the oldest commit not yet checkpointed was made.
    pub dirty_since: Option<Instant>,
    /// Records whose commit failed after they were logged (the feed skips them).
    pub aborted: Arc<super::feed::Aborted>,
    /// The latest committed LSN, for the feed's followers.
    pub commits: Arc<tokio::sync::watch::Sender<u64>>,
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

/// A copied record for [`Msg::Replay`] and where its outcome goes.
pub(crate) struct Replay {
    pub lsn: u64,
    pub payload: Vec<u8>,
    pub done: tokio::sync::oneshot::Sender<Result<(), EngineError>>,
}

enum Next {
    Op(Box<dyn Mutation>),
    Replay(Replay),
    Tick,
    Stop,
}

/// How one batch ended.
enum BatchError {
    /// The shard's storage or the log failed: the shard stops taking writes.
    Storage(StorageFailure),
    /// This batch alone is refused and rolled back (an operation panicked, or the batch cannot
    /// be logged); the shard keeps going.
    Rejected(String),
}

fn storage(e: impl Into<redb::Error>) -> BatchError {
    BatchError::Storage(StorageFailure::redb(e))
}

/// A fault point's injected I/O error, as the storage failure it stands for.
fn injected(point: &str) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
    move |e| BatchError::Storage(StorageFailure::io(format!("fault point {point}"), e))
}

impl Writer {
    pub(crate) fn run(mut self) {
        let _guard = PanicGuard(self.state.clone());
        let mut carry: Option<Box<dyn Mutation>> = None;
        loop {
            let first = match carry.take() {
                Some(op) => op,
                None => match self.next_message() {
                    Next::Op(op) => op,
                    Next::Replay(r) => {
                        self.replay(r);
                        self.checkpoint_if_due();
                        continue;
                    }
                    Next::Tick => {
                        self.checkpoint_if_due();
                        continue;
                    }
                    Next::Stop => break,
                },
            };
            let mut stop = false;
            let mut replay = None;
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
                    Ok(Msg::Replay(r)) => {
                        replay = Some(r);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            if let Some(r) = replay {
                self.replay(r);
            }
            self.checkpoint_if_due();
            if stop {
                if let Some(op) = carry.take() {
                    op.finish(Err(EngineError::ShuttingDown));
                }
                break;
            }
        }
        if self.dirty_since.is_some() {
            self.checkpoint();
        }
        // Anything still queued was never applied: its callers learn the store is closing.
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Op(op) => op.finish(Err(EngineError::ShuttingDown)),
                Msg::Replay(r) => {
                    let _ = r.done.send(Err(EngineError::ShuttingDown));
                }
                Msg::Stop => {}
            }
        }
    }

    fn next_message(&self) -> Next {
        let msg = if self.dirty_since.is_some() {
            match self.rx.recv_timeout(CHECKPOINT_POLL) {
                Ok(m) => m,
                Err(flume::RecvTimeoutError::Timeout) => return Next::Tick,
                Err(flume::RecvTimeoutError::Disconnected) => return Next::Stop,
            }
        } else {
            match self.rx.recv() {
                Ok(m) => m,
                Err(_) => return Next::Stop,
            }
        };
        match msg {
            Msg::Op(op) => Next::Op(op),
            Msg::Replay(r) => Next::Replay(r),
            Msg::Stop => Next::Stop,
        }
    }

    /// Applies a record copied from the primary (already appended to this log at its LSN) in
    /// a commit of its own, as replay at open would: the physical ops as they are, the shard's
    /// applied LSN, and the next revision the record left (so a promoted standby hands out the
    /// primary's next one).
    fn replay(&mut self, r: Replay) {
        let outcome = self.replay_one(r.lsn, &r.payload);
        let _ = r.done.send(outcome);
    }

    fn replay_one(&mut self, lsn: u64, payload: &[u8]) -> Result<(), EngineError> {
        if let Some(reason) = self.state.failure() {
            return Err(EngineError::ShardUnavailable {
                shard: self.shard,
                reason,
            });
        }
        self.space.before_commit();
        let started = Instant::now();
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::None).map_err(storage)?;
            super::redo::apply(&txn, payload).map_err(|e| match e {
                super::redo::ReplayError::Storage(e) => storage(e),
                other => BatchError::Rejected(format!("record {lsn}: {other}")),
            })?;
            let next = {
                let mut meta = txn.open_table(META).map_err(storage)?;
                meta.insert(META_LSN, lsn).map_err(storage)?;
                let next = meta.get(META_NEXT_REVISION).map_err(storage)?;
                next.map(|g| g.value())
            };
            self.wal
                .wait(lsn)
                .map_err(|e| BatchError::Storage(e.into_failure()))?;
            txn.commit().map_err(storage)?;
            Ok(next)
        })();
        match result {
            Ok(next) => {
                if let Some(next) = next {
                    self.next_revision = self.next_revision.max(next);
                }
                use std::sync::atomic::Ordering;
                self.state.logged_lsn.store(lsn, Ordering::SeqCst);
                self.state.committed_lsn.store(lsn, Ordering::Release);
                self.commits.send_modify(|at| *at = (*at).max(lsn));
                self.state.record_commit(1, started.elapsed());
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            Err(BatchError::Storage(failure)) => {
                tracing::error!(shard = self.shard, lsn, error = %failure, "applying a copied record failed; shard stops");
                self.state.fail(format!("applying copied record {lsn}: {failure}"));
                Err(EngineError::Storage {
                    shard: self.shard,
                    source: failure,
                })
            }
            Err(BatchError::Rejected(message)) => {
                // A record that does not decode leaves the shard behind the log: it stops.
                tracing::error!(shard = self.shard, lsn, %message, "a copied record does not apply; shard stops");
                self.state.fail(message.clone());
                Err(EngineError::Storage {
                    shard: self.shard,
                    source: StorageFailure::other(message),
                })
            }
        }
    }

    fn checkpoint_if_due(&mut self) {
        let Some(since) = self.dirty_since else {
            return;
        };
        if self.wal.pinned_bytes(self.shard) >= self.cfg.checkpoint_log_bytes
            || since.elapsed() >= self.cfg.checkpoint_interval
        {
            self.checkpoint();
        }
    }

    /// A durable (fsync'd, empty) redb commit: every earlier commit of the shard is now in its
    /// file, so the log no longer needs the shard's records.
    fn checkpoint(&mut self) {
        if self.state.failure().is_some() {
            return;
        }
        self.space.before_commit();
        let started = Instant::now();
        let result = self.db.begin_write().map_err(storage).and_then(|mut txn| {
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            txn.set_quick_repair(self.cfg.quick_repair);
            crate::base::failpoint::hit_at("checkpoint.commit", self.shard)
                .map_err(injected("checkpoint.commit"))?;
            txn.commit().map_err(storage)
        });
        match result {
            Ok(()) => {
                // Between the durable commit and the log learning of it a crash only means a
                // replay of records the shard already has (idempotent).
                let _ = crate::base::failpoint::hit("checkpoint.after_commit");
                self.wal.checkpointed(
                    self.shard,
                    self.state
                        .committed_lsn
                        .load(std::sync::atomic::Ordering::Acquire),
                );
                self.dirty_since = None;
                self.state.record_checkpoint(started.elapsed());
            }
            Err(BatchError::Storage(failure)) => {
                if failure.is_disk_full() {
                    self.space.on_full();
                }
                tracing::error!(shard = self.shard, error = %failure, "checkpoint failed; shard stops accepting writes");
                self.state.fail(format!("checkpoint failed: {failure}"));
            }
            Err(BatchError::Rejected(_)) => {}
        }
    }

    /// Applies, logs and commits one batch, then replies to every operation in it.
    fn commit_batch(&mut self, mut batch: Vec<Box<dyn Mutation>>) {
        if let Some(reason) = self.state.failure() {
            let err = EngineError::ShardUnavailable {
                shard: self.shard,
                reason,
            };
            for op in batch {
                op.finish(Err(err.clone()));
            }
            return;
        }
        self.space.before_commit();
        let started = Instant::now();
        let mut next_revision = self.next_revision;
        let mut hooks = Vec::new();
        let result = self.apply_log_commit(&mut batch, &mut next_revision, &mut hooks);
        // Invalidation is safe to run even when the commit failed (it only drops cached copies).
        for hook in hooks {
            if catch_unwind(AssertUnwindSafe(hook)).is_err() {
                tracing::error!(shard = self.shard, "an after-commit hook panicked");
            }
        }
        let n = batch.len() as u64;
        let err = match result {
            Ok(()) => {
                self.next_revision = next_revision;
                let took = started.elapsed();
                self.state.record_commit(n, took);
                crate::base::metrics::families::record_commit(self.shard, n, took);
                for op in batch {
                    op.finish(Ok(()));
                }
                return;
            }
            Err(BatchError::Storage(failure)) if failure.is_disk_full() => {
                // redb fails every later operation after an I/O error: the shard needs a
                // restart (nothing acknowledged is lost; the log holds it). Growth is refused
                // from now on so the other shards do not follow.
                self.space.on_full();
                tracing::error!(shard = self.shard, error = %failure, "disk full in a commit; shard stops accepting writes until restart");
                self.state.fail(format!("disk full: {failure}"));
                self.space.full_error(&failure)
            }
            Err(BatchError::Storage(failure)) => {
                tracing::error!(shard = self.shard, error = %failure, "storage error; shard stops accepting writes");
                self.state.fail(failure.to_string());
                EngineError::Storage {
                    shard: self.shard,
                    source: failure,
                }
            }
            Err(BatchError::Rejected(message)) => {
                tracing::error!(shard = self.shard, %message, "batch rolled back");
                EngineError::Storage {
                    shard: self.shard,
                    source: StorageFailure::other(message),
                }
            }
        };
        for op in batch {
            op.finish(Err(err.clone()));
        }
    }

    fn apply_log_commit(
        &mut self,
        batch: &mut [Box<dyn Mutation>],
        next_revision: &mut u64,
        after_commit: &mut Vec<AfterCommit>,
    ) -> Result<(), BatchError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        let now_ms = self.clock.now_ms();
        {
            let mut redo = self.redo.borrow_mut();
            redo.clear();
            // The batch's time, first in its record (the feed's `at_ms`).
            redo.note(&super::feed::note::batch_time(now_ms));
        }
        let start_revision = *next_revision;
        {
            let tables = TableCache::default();
            let mut ctx = ApplyCtx {
                txn: &txn,
                redo: &self.redo,
                tables: &tables,
                shard: self.shard,
                now_ms,
                next_revision,
                after_commit,
            };
            for op in batch.iter_mut() {
                match catch_unwind(AssertUnwindSafe(|| op.apply(&mut ctx))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(storage(e)),
                    Err(_) => {
                        return Err(BatchError::Rejected(
                            "internal error while applying the batch; nothing was written".into(),
                        ))
                    }
                }
            }
            if *ctx.next_revision != start_revision {
                let rev = *ctx.next_revision;
                ctx.table(META)
                    .and_then(|mut m| m.insert(META_NEXT_REVISION, rev).map(|_| ()))
                    .map_err(storage)?;
            }
        }
        let redo = self.redo.borrow();
        if redo.is_empty() {
            // Nothing changed (every precondition failed, or the ops only read): nothing to log.
            drop(redo);
            txn.abort().map_err(storage)?;
            return Ok(());
        }
        // While the record is being appended its LSN is not known yet, but it will be above
        // every LSN written so far: the feed's end stays at or below that floor meanwhile.
        self.state.appending_floor.store(
            self.wal.written_lsn() + 1,
            std::sync::atomic::Ordering::SeqCst,
        );
        let appended = self
            .wal
            .append(self.shard, Kind::Redo, redo.bytes(), batch.len() as u64)
            .map_err(|e| match e {
                // Nothing was logged: only this batch is refused.
                WalError::TooLarge(_) => BatchError::Rejected(e.to_string()),
                _ => BatchError::Storage(e.into_failure()),
            });
        if let Ok(lsn) = appended {
            self.state
                .logged_lsn
                .store(lsn, std::sync::atomic::Ordering::SeqCst);
        }
        self.state
            .appending_floor
            .store(0, std::sync::atomic::Ordering::SeqCst);
        let lsn = appended?;
        // The shard's file grows by about the redo's size (twice: redb copies on write).
        self.space.grew(2 * redo.bytes().len() as u64);
        drop(redo);
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_LSN, lsn).map_err(storage)?;
        }
        // The batch becomes visible to readers only once its record may be acknowledged.
        self.wal
            .wait(lsn)
            .map_err(|e| BatchError::Storage(e.into_failure()))?;
        let committed = crate::base::failpoint::hit_at("writer.commit", self.shard)
            .map_err(injected("writer.commit"))
            .and_then(|()| txn.commit().map_err(storage));
        if committed.is_ok() {
            self.state
                .committed_lsn
                .store(lsn, std::sync::atomic::Ordering::Release);
            // Wakes the feed's followers, on every commit (shards commit out of LSN order, and
            // a reader waiting for a lower LSN must wake too). The feed's own receiver is
            // always there: with no other, nobody waits and the lock is not taken.
            if self.commits.receiver_count() > 1 {
                self.commits.send_modify(|at| *at = (*at).max(lsn));
            }
        }
        if let Err(e) = committed {
            // The record is in the log but not in the shard: tell replay to skip it.
            self.aborted
                .insert(self.shard as u32, lsn, self.wal.oldest_lsn());
            if let Ok(abort) = self
                .wal
                .append(self.shard, Kind::Abort, &lsn.to_le_bytes(), 0)
            {
                let _ = self.wal.wait(abort);
            }
            return Err(e);
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }
}

/// Reads the persisted next revision and applied LSN of a shard (1 and 0 for a new shard),
/// in a read transaction (also `shardbox check`, on a read-only database).
pub(crate) fn load_meta(db: &impl redb::ReadableDatabase) -> Result<(u64, u64), redb::Error> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(m) => m,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((1, 0)),
        Err(e) => return Err(e.into()),
    };
    let next = meta.get(META_NEXT_REVISION)?.map(|g| g.value());
    let lsn = meta.get(META_LSN)?.map(|g| g.value());
    Ok((next.unwrap_or(1), lsn.unwrap_or(0)))
}
