//! The storage engine: data directory, manifest, routing, shards and their writers.
//!
//! Domains (`kv`, …) use the engine through three calls: [`Engine::shard_for`] to route a key,
//! [`Shard::read`] for a read transaction on the calling thread, and [`Engine::write`] to run a
//! closure inside the shard writer's next group commit.

mod apply_error;
pub mod codec;
pub mod departure;
pub mod domain;
pub mod expiry;
pub mod feed;
pub mod manifest;
pub mod private;
pub mod redo;
pub mod replay;
pub mod router;
pub mod shard;
mod shard_state;
pub mod space;
pub mod staging;
pub mod wal;
pub mod writer;

use crate::base::config::Config;
mod error;
pub use error::{EngineError, StorageFailure};
pub use apply_error::OpError;
pub(crate) use apply_error::rejects;
use crate::base::clock::Clock;
use manifest::{DirLock, Manifest, FORMAT_VERSION};
pub use redo::LoggedTable;
pub use shard::{Shard, ShardState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wal::{Wal, WalConfig};
pub use writer::{ApplyCtx, Mutation};
use writer::{Writer, WriterConfig};

/// Shard count for a new data directory when none was asked for: one writer per CPU core (at
/// least 2, at most 16). Writers beyond the cores cannot run at once; they only split the group
/// commit into smaller batches and add context switches (measured in docs/benchmarks.md: on 2
/// cores, 2 shards take ~50% more durable puts than 8).
pub fn default_shards() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.clamp(2, 16) as u32
}

pub use domain::{Domain, DomainSpec};

/// A redb failure on `shard`, as the error every domain reports (one helper for all of them).
pub fn storage_error(shard: usize, e: impl Into<redb::Error>) -> EngineError {
    EngineError::Storage {
        shard,
        source: StorageFailure::redb(e),
    }
}

pub struct Engine {
    data_dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Shard>,
    wal: Arc<Wal>,
    /// What recovery did when this engine opened.
    replay: replay::ReplayReport,
    clock: Arc<dyn Clock>,
    closing: AtomicBool,
    /// Becomes true when shutdown starts (before writes stop), so long-polls and followers
    /// answer at once instead of holding up the drain.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Free disk space and the ballast ([`space`]).
    space: Arc<space::DiskSpace>,
    space_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The change feed over the log ([`feed`]).
    feed: feed::Feed,
    /// Why writes are refused, when they are: a standby following its primary, or a primary a
    /// standby took over from ([`EngineError::ReadOnly`]). The flag is checked on every write,
    /// the reason read only when it is set.
    read_only: AtomicBool,
    read_only_why: std::sync::Mutex<Option<(&'static str, String)>>,
    /// The commit watch's sender (the writers hold it too), for a standby's follower.
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    _lock: DirLock,
}

impl Engine {
    /// Opens (or creates) the data directory, every shard, and starts the writers.
    pub fn open(
        config: &Config,
        clock: Arc<dyn Clock>,
        domains: &[&DomainSpec],
    ) -> Result<Engine, EngineError> {
        let dir = config.data_dir.clone();
        private::create_dir_all(&dir)
            .map_err(|e| EngineError::Open(format!("cannot create {}: {e}", dir.display())))?;
        let lock = DirLock::acquire(&dir)?;
        // A restore or import stopped half-way: its staged copy (or, while copying, the old
        // data) is the truth, and opening would build a store over half of it.
        staging::remove_finished_staging(&dir)
            .map_err(|e| EngineError::Open(format!("{}: {e}", dir.display())))?;
        for (staging, what, staged, unstaged) in [
            (
                staging::staging_dir(&dir),
                "restore (restore.tmp)",
                "a restore was replacing the data when it stopped: run `shardbox restore` again to finish it",
                "a restore stopped while copying (the data is as it was): remove restore.tmp, or run `shardbox restore` again",
            ),
            (
                staging::import_staging_dir(&dir),
                "import (import.tmp)",
                "an import was replacing the data when it stopped: run the same `shardbox import` again to finish it",
                "an import stopped before it finished (the data is as it was before it): remove import.tmp, or run the import again",
            ),
        ] {
            if staging.exists() {
                let how = if staging::is_staged(&staging) {
                    staged
                } else {
                    unstaged
                };
                return Err(EngineError::Open(format!(
                    "{} holds an unfinished {what}: {how}",
                    dir.display()
                )));
            }
        }
        private::create_dir_all(&dir.join("shards"))
            .map_err(|e| EngineError::Open(format!("cannot create {}: {e}", dir.display())))?;
        let space =
            space::DiskSpace::open(&dir, config.engine.disk_reserve_bytes, config.engine.disk_ballast_bytes);
        let manifest = Self::load_or_create_manifest(&dir, config, clock.as_ref())?;
        let generation = feed::Generation::load_or_create(&dir)
            .map_err(|e| EngineError::Open(format!("{}: {e}", dir.display())))?;
        let generation_cell = Arc::new(feed::position::GenerationCell::new(generation));
        let holds = Arc::new(feed::holds::Holds::new());
        // Loaded before the log starts: the segments their consumers still need are kept.
        let cursors = Arc::new(
            feed::cursors::Cursors::load(&dir, generation_cell.clone(), holds.clone(), config.engine.feed_cursors_max)
                .map_err(|e| EngineError::Open(format!("{}: {e}", dir.display())))?,
        );
        let writer_cfg = WriterConfig {
            batch_ops_max: config.engine.batch_ops_max,
            batch_bytes_max: config.engine.batch_bytes_max,
            quick_repair: config.engine.quick_repair,
            checkpoint_log_bytes: config.engine.checkpoint_log_bytes,
            checkpoint_interval: Duration::from_millis(config.engine.checkpoint_interval_ms),
        };
        let n = manifest.shards as usize;
        // Open every shard file (redb repairs after an unclean stop) and read where it is.
        let mut dbs = Vec::with_capacity(n);
        let mut revisions = Vec::with_capacity(n);
        let mut applied = Vec::with_capacity(n);
        for id in 0..n {
            let path = shard_path(&dir, id);
            let storage_err =
                |e: redb::Error| EngineError::Open(format!("shard {id} ({}): {e}", path.display()));
            let db = redb::Builder::new()
                .set_cache_size(config.engine.shard_cache_bytes as usize)
                .create(&path)
                .map_err(|e| storage_err(e.into()))?;
            private::restrict(&path, private::FILE_MODE)
                .map_err(|e| EngineError::Open(format!("{}: {e}", path.display())))?;
            init_tables(&db, domains).map_err(storage_err)?;
            let (next_revision, lsn) = writer::load_meta(&db).map_err(storage_err)?;
            dbs.push(Arc::new(db));
            revisions.push(next_revision);
            applied.push(lsn);
        }
        // Bring every shard up to the log, then start a fresh log after it.
        let wal_dir = dir.join("wal");
        let report = replay::replay(&wal_dir, &dbs, &mut applied)?;
        for (id, db) in dbs.iter().enumerate() {
            if report.applied[id] > 0 {
                revisions[id] = writer::load_meta(db.as_ref())
                    .map_err(|e| EngineError::Open(format!("shard {id}: {e}")))?
                    .0;
            }
        }
        if report.scan.records > 0 {
            tracing::info!(
                records = report.scan.records,
                replayed = report.applied.iter().sum::<u64>(),
                millis = report.millis as u64,
                "write-ahead log recovered"
            );
        }
        let next_lsn = applied
            .iter()
            .map(|l| l + 1)
            .max()
            .unwrap_or(1)
            .max(report.scan.next_lsn);
        let old = report.scan.segments.clone();
        let wal = Arc::new(
            Wal::start(
                WalConfig {
                    dir: wal_dir,
                    segment_bytes: config.engine.wal_segment_bytes,
                    mode: config.engine.durability,
                    spare_segments_max: config.engine.wal_spare_segments_max,
                    shards: n,
                    space: Some(space.clone()),
                    holds: holds.clone(),
                    retain_bytes_max: config.engine.feed_retain_bytes_max,
                },
                next_lsn,
                old,
            )
            .map_err(EngineError::Open)?,
        );
        cursors.forget_gone(wal.oldest_lsn());
        let mut shards = Vec::with_capacity(n);
        let aborted = Arc::new(feed::Aborted::new(report.aborted.clone()));
        let (commits, committed) = tokio::sync::watch::channel(next_lsn - 1);
        let commits = Arc::new(commits);
        let mut states = Vec::with_capacity(n);
        for (id, db) in dbs.into_iter().enumerate() {
            let (tx, rx) = flume::bounded(config.engine.writer_queue_ops_max);
            let state = Arc::new(ShardState::default());
            // Every record in the log now is applied (or cancelled).
            state
                .committed_lsn
                .store(next_lsn - 1, std::sync::atomic::Ordering::Release);
            states.push(state.clone());
            let w = Writer {
                shard: id,
                db: db.clone(),
                rx,
                state: state.clone(),
                cfg: writer_cfg,
                clock: clock.clone(),
                wal: wal.clone(),
                space: space.clone(),
                next_revision: revisions[id],
                redo: Default::default(),
                dirty_since: None,
                aborted: aborted.clone(),
                commits: commits.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shard-{id:03}-writer"))
                .spawn(move || w.run())
                .map_err(|e| EngineError::Open(format!("cannot start writer {id}: {e}")))?;
            shards.push(Shard::new(
                id,
                db,
                state,
                tx,
                Duration::from_millis(config.engine.writer_queue_wait_ms),
                thread,
            ));
        }
        let space_thread = space
            .spawn(Duration::from_millis(config.engine.disk_check_interval_ms))
            .map_err(|e| EngineError::Open(format!("cannot start the disk space sampler: {e}")))?;
        // A lineage file naming the generation itself is a promotion that stopped between its
        // two writes: nothing continues.
        let lineage = feed::position::Lineage::load(&dir).filter(|l| l.previous != generation);
        let feed = feed::Feed {
            generation: generation_cell,
            lineage: std::sync::Mutex::new(lineage),
            standby_applied: std::sync::atomic::AtomicU64::new(u64::MAX),
            wal: wal.clone(),
            specs: domains.iter().filter_map(|d| d.feed).collect(),
            shards: states,
            aborted,
            holds,
            cursors,
            committed,
            hints: Default::default(),
        };
        Ok(Engine {
            feed,
            read_only: AtomicBool::new(false),
            read_only_why: std::sync::Mutex::new(None),
            commits,
            space,
            space_thread: std::sync::Mutex::new(Some(space_thread)),
            data_dir: dir,
            manifest,
            shards,
            wal,
            replay: report,
            clock,
            closing: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            _lock: lock,
        })
    }

    fn load_or_create_manifest(
        dir: &Path,
        config: &Config,
        clock: &dyn Clock,
    ) -> Result<Manifest, EngineError> {
        if let Some(m) = Manifest::read(dir)? {
            if config.engine.shards != 0 && config.engine.shards != m.shards {
                return Err(EngineError::Open(format!(
                    "data directory {} holds {} shards, but {} were asked for. The shard count is fixed \
                     when a directory is created: start with --shards {} (or leave --shards unset), \
                     or use a new --data directory for {} shards",
                    dir.display(),
                    m.shards,
                    config.engine.shards,
                    m.shards,
                    config.engine.shards
                )));
            }
            return Ok(m);
        }
        // No manifest: the directory must not already hold shard files from somewhere else.
        let existing = std::fs::read_dir(dir.join("shards"))
            .map(|d| d.count())
            .unwrap_or(0);
        if existing > 0 {
            return Err(EngineError::Open(format!(
                "{} has shard files but no MANIFEST; refusing to guess its shard count and seed",
                dir.display()
            )));
        }
        let shards = if config.engine.shards == 0 {
            default_shards()
        } else {
            config.engine.shards
        };
        let m = Manifest {
            format_version: FORMAT_VERSION,
            shards,
            hash_seed: rand::random(),
            created_at_ms: clock.now_ms(),
            created_by: format!("shardbox {}", env!("CARGO_PKG_VERSION")),
        };
        m.write_new(dir)?;
        Ok(m)
    }

    /// Size of shard `id`'s redb file (0 if it cannot be read).
    pub fn shard_file_bytes(&self, id: usize) -> u64 {
        std::fs::metadata(shard_path(&self.data_dir, id)).map_or(0, |m| m.len())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
    /// The shared write-ahead log.
    /// The change feed over the log.
    pub fn feed(&self) -> &feed::Feed {
        &self.feed
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }
    /// What recovery found and replayed when the engine opened.
    pub fn replay_report(&self) -> &replay::ReplayReport {
        &self.replay
    }
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The shard that owns `routing_key`.
    pub fn shard_for(&self, routing_key: &[u8]) -> usize {
        router::shard_for(routing_key, self.manifest.hash_seed, self.shards.len())
    }

    /// Runs `f` inside the next group commit of `shard` and returns its result once the commit
    /// holding it has returned. `bytes` is the payload size, for the batch byte bound.
    ///
    /// `f`'s [`OpError::Rejected`] comes back as `Err(e)` to this caller alone, and the rest of
    /// the batch commits; its [`OpError::Storage`] fails the whole batch (every caller in it gets
    /// the [`EngineError`]) and the shard stops accepting writes.
    ///
    /// This is for writes that add data: while the disk is low ([`space`]) they are refused with
    /// [`EngineError::InsufficientStorage`] before reaching the shard. Writes that free space or
    /// leave it about level go through [`Engine::write_freeing`].
    pub async fn write<R, E, F>(&self, shard: usize, bytes: usize, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut ApplyCtx<'_, '_>) -> Result<R, OpError<E>> + Send + 'static,
        R: Send + 'static,
        E: From<EngineError> + Send + 'static,
    {
        self.space.admit()?;
        self.write_freeing(shard, bytes, f).await
    }

    /// As [`Engine::write`], for a write that frees space or leaves it about level (delete, ack,
    /// claim, purge, trim): taken while the disk is low, so space can be freed through the API.
    pub async fn write_freeing<R, E, F>(&self, shard: usize, bytes: usize, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut ApplyCtx<'_, '_>) -> Result<R, OpError<E>> + Send + 'static,
        R: Send + 'static,
        E: From<EngineError> + Send + 'static,
    {
        if self.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown.into());
        }
        if self.read_only.load(Ordering::Acquire) {
            return Err(self.read_only_error().into());
        }
        let s = &self.shards[shard];
        let (tx, rx) = tokio::sync::oneshot::channel();
        let op = Box::new(Call {
            f: Some(f),
            result: None,
            tx: Some(tx),
            bytes,
        });
        s.submit(op).await?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(s.gone().into()),
        }
    }

    /// Queues an operation without waiting for room or for its result; false when the queue is
    /// full or closed. For background work (sweeps) that must never add to overload.
    pub fn try_write<F>(&self, shard: usize, f: F) -> bool
    where
        F: FnOnce(&mut ApplyCtx<'_, '_>) -> Result<(), redb::Error> + Send + 'static,
    {
        if self.closing.load(Ordering::Acquire) || self.read_only.load(Ordering::Acquire) {
            return false;
        }
        let op: Box<dyn Mutation> = Box::new(Call {
            f: Some(move |ctx: &mut ApplyCtx<'_, '_>| {
                f(ctx).map_err(OpError::<EngineError>::Storage)
            }),
            result: None,
            tx: None,
            bytes: 0,
        });
        self.shards[shard].try_submit(op)
    }

    /// Refuses every write from now on with `code` and `message` (409), until
    /// [`Engine::clear_read_only_if`] that code.
    pub fn set_read_only(&self, code: &'static str, message: String) {
        let mut why = self.read_only_why.lock().unwrap_or_else(|p| p.into_inner());
        *why = Some((code, message));
        self.read_only.store(true, Ordering::Release);
    }

    /// As [`Engine::set_read_only`], unless writes are refused already for another reason,
    /// which stays (a passing reason never hides a lasting one).
    pub fn set_read_only_unless_other(&self, code: &'static str, message: String) {
        let mut why = self.read_only_why.lock().unwrap_or_else(|p| p.into_inner());
        if why.as_ref().is_some_and(|(c, _)| *c != code) {
            return;
        }
        *why = Some((code, message));
        self.read_only.store(true, Ordering::Release);
    }

    /// Takes writes again if they are refused for `code`, and for nothing else.
    pub fn clear_read_only_if(&self, code: &str) {
        self.swap_read_only(code, None);
    }

    /// If writes are refused for `code`, refuses them for `to` instead (`None`: takes them
    /// again), in one step: no write slips through between.
    pub fn swap_read_only(&self, code: &str, to: Option<(&'static str, String)>) {
        let mut why = self.read_only_why.lock().unwrap_or_else(|p| p.into_inner());
        if why.as_ref().is_some_and(|(c, _)| *c == code) {
            self.read_only.store(to.is_some(), Ordering::Release);
            *why = to;
        }
    }

    /// Why writes are refused (`None`: they are not).
    pub fn read_only(&self) -> Option<(&'static str, String)> {
        if !self.read_only.load(Ordering::Acquire) {
            return None;
        }
        self.read_only_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn read_only_error(&self) -> EngineError {
        let (code, message) = self
            .read_only()
            .unwrap_or(("read_only", "this box takes no writes".into()));
        EngineError::ReadOnly { code, message }
    }

    /// The position this box's answers reflect: on a primary every record written to its log
    /// (a write's answer is at or after its own record), on a standby the last record it
    /// applied in order. The `Shardbox-Position` header of every answer.
    pub fn position(&self) -> feed::Position {
        let applied = self.feed.standby_applied.load(Ordering::Acquire);
        let lsn = if applied == u64::MAX {
            self.wal.written_lsn()
        } else {
            applied
        };
        feed::Position::after_record(self.feed.generation(), lsn)
    }

    /// Marks this engine a standby whose answers reflect record `lsn` (and everything before);
    /// `None` makes it a primary again.
    pub fn set_standby_applied(&self, lsn: Option<u64>) {
        self.feed
            .standby_applied
            .store(lsn.unwrap_or(u64::MAX), Ordering::Release);
        if let Some(lsn) = lsn {
            self.commits.send_modify(|at| *at = (*at).max(lsn));
        }
    }

    /// Puts a record copied from the primary's log (its whole frame, checked) into this log at
    /// its LSN, and hands a redo to its shard's writer. The receiver says when the shard holds
    /// it; records are appended in order, and applied in order within each shard.
    pub async fn replicate(
        &self,
        frame_bytes: &[u8],
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), EngineError>>, EngineError> {
        use wal::frame::{self, Kind};
        let bad = |what: &str| EngineError::Storage {
            shard: 0,
            source: StorageFailure::other(format!("a copied log record {what}")),
        };
        let h = frame::parse_header(frame_bytes)
            .filter(|h| h.frame_len() == frame_bytes.len())
            .ok_or_else(|| bad("is not a whole frame"))?;
        let payload = &frame_bytes[frame::RECORD_HEADER_BYTES..][..h.len];
        if !frame::payload_ok(&h, payload) {
            return Err(bad("fails its checksum"));
        }
        let shard = h.shard as usize;
        if shard >= self.shards.len() {
            return Err(bad(&format!("names shard {shard} of {}", self.shards.len())));
        }
        self.wal
            .append_copy(h.lsn, shard, h.kind, payload, h.payload_crc)
            .map_err(|e| EngineError::Storage {
                shard,
                source: e.into_failure(),
            })?;
        // An abort goes to its shard's writer as a record of no operation (the record it
        // cancels came as a no-op already): the shard's applied LSN passes it, so a checkpoint
        // lets the log go past it.
        let payload = match h.kind {
            Kind::Redo => payload,
            Kind::Abort => {
                if let Some(cancelled) = wal::recovery::aborted(&h, payload) {
                    self.feed
                        .aborted
                        .insert(cancelled.0, cancelled.1, self.wal.oldest_lsn());
                }
                redo::CANCELLED
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = writer::Msg::Replay(writer::Replay {
            lsn: h.lsn,
            payload: payload.to_vec(),
            done: tx,
        });
        self.shards[shard].send_replay(msg).await?;
        Ok(rx)
    }

    /// Makes `g` this store's generation now, continuing `lineage` (a promoted standby's new
    /// history, or the one a standby follows past its primary's promotion).
    pub fn switch_generation(
        &self,
        g: feed::Generation,
        lineage: feed::position::Lineage,
    ) -> Result<(), EngineError> {
        let io = |e: std::io::Error| EngineError::Open(format!("{}: {e}", self.data_dir.display()));
        // The lineage first: a crash between the two leaves the old generation with a lineage
        // file that names itself as previous, which nothing reads as a continuation.
        feed::position::Lineage::store(&self.data_dir, Some(lineage)).map_err(io)?;
        g.store(&self.data_dir).map_err(io)?;
        self.feed.generation.set(g);
        *self.feed.lineage.lock().unwrap_or_else(|p| p.into_inner()) = Some(lineage);
        Ok(())
    }

    /// Starts shutdown: every [`Engine::stopping`] future resolves, so parked long-polls answer
    /// with what they have. Writes keep working until [`Engine::close`]. Idempotent.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once shutdown has started (at once if it already has).
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Stops accepting writes, lets every writer commit what it holds (and fsync in periodic
    /// mode), and waits for the writer threads. Idempotent.
    pub fn close(&self) {
        self.begin_shutdown();
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        for s in &self.shards {
            s.stop();
        }
        // Every writer has checkpointed; the log syncs what it holds and stops.
        self.wal.stop();
        self.space.stop();
        let t = self
            .space_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// Free disk space under the data directory, as last sampled.
    pub fn space(&self) -> &Arc<space::DiskSpace> {
        &self.space
    }

    /// Whether shutdown has started ([`Engine::begin_shutdown`]).
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Shards that refuse writes, with the reason (every shard, when the log has failed).
    pub fn failed_shards(&self) -> Vec<(usize, String)> {
        let log = self.wal.failure();
        self.shards
            .iter()
            .filter_map(|s| s.state.failure().or_else(|| log.clone()).map(|r| (s.id, r)))
            .collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// The path of shard `id`'s redb file.
pub fn shard_path(dir: &Path, id: usize) -> PathBuf {
    dir.join("shards").join(format!("{id:03}.redb"))
}

fn init_tables(db: &redb::Database, domains: &[&DomainSpec]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(writer::META)?;
    for d in domains {
        (d.init_tables)(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// A closure run by the writer, with a channel back to its caller. `result` holds the
/// closure's own outcome (its value or its rejection) until the batch's fate is known.
struct Call<F, R, E> {
    f: Option<F>,
    result: Option<Result<R, E>>,
    tx: Option<tokio::sync::oneshot::Sender<Result<R, E>>>,
    bytes: usize,
}

impl<F, R, E> Mutation for Call<F, R, E>
where
    F: FnOnce(&mut ApplyCtx<'_, '_>) -> Result<R, OpError<E>> + Send,
    R: Send,
    E: From<EngineError> + Send,
{
    fn bytes(&self) -> usize {
        self.bytes
    }
    fn apply(&mut self, ctx: &mut ApplyCtx<'_, '_>) -> Result<(), redb::Error> {
        if let Some(f) = self.f.take() {
            self.result = Some(match f(ctx) {
                Ok(r) => Ok(r),
                // Changed nothing: the batch goes on, the caller gets the refusal.
                Err(OpError::Rejected(e)) => Err(e),
                Err(OpError::Storage(e)) => return Err(e),
            });
        }
        Ok(())
    }
    fn finish(mut self: Box<Self>, outcome: Result<(), EngineError>) {
        let reply = match (outcome, self.result.take()) {
            (Ok(()), Some(r)) => r,
            (Ok(()), None) => Err(EngineError::ShuttingDown.into()),
            (Err(e), _) => Err(e.into()),
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(reply);
        }
    }
}
