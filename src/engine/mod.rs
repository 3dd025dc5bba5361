//! The storage engine: data directory, manifest, routing, shards and their writers.
//!
//! Domains (`kv`, …) use the engine through three calls: [`Engine::shard_for`] to route a key,
//! [`Shard::read`] for a read transaction on the calling thread, and [`Engine::write`] to run a
//! closure inside the shard writer's next group commit.

pub mod clock;
pub mod codec;
pub mod manifest;
pub mod router;
pub mod shard;
pub mod writer;

use crate::config::Config;
use crate::error::EngineError;
use clock::Clock;
use manifest::{DirLock, Manifest, FORMAT_VERSION};
pub use shard::{Shard, ShardState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use writer::{ApplyCtx, Mutation};
use writer::{Writer, WriterConfig};

/// Shard count used when a new data directory is created and none was asked for.
pub const DEFAULT_SHARDS: u32 = 8;

/// Creates the tables a domain needs in a fresh or existing shard.
pub type TableInit = fn(&redb::WriteTransaction) -> Result<(), redb::Error>;

pub struct Engine {
    data_dir: PathBuf,
    manifest: Manifest,
    shards: Vec<Shard>,
    clock: Arc<dyn Clock>,
    closing: AtomicBool,
    /// Becomes true when shutdown starts (before writes stop), so long-polls and followers
    /// answer at once instead of holding up the drain.
    stopping: tokio::sync::watch::Sender<bool>,
    _lock: DirLock,
}

impl Engine {
    /// Opens (or creates) the data directory, every shard, and starts the writers.
    pub fn open(
        config: &Config,
        clock: Arc<dyn Clock>,
        init: &[TableInit],
    ) -> Result<Engine, EngineError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(dir.join("shards"))
            .map_err(|e| EngineError::Open(format!("cannot create {}: {e}", dir.display())))?;
        let lock = DirLock::acquire(&dir)?;
        let manifest = Self::load_or_create_manifest(&dir, config, clock.as_ref())?;
        let writer_cfg = WriterConfig {
            batch_ops_max: config.batch_ops_max,
            batch_bytes_max: config.batch_bytes_max,
            durability: config.durability_mode(),
            quick_repair: config.quick_repair,
        };
        let mut shards = Vec::with_capacity(manifest.shards as usize);
        for id in 0..manifest.shards as usize {
            let path = shard_path(&dir, id);
            let db = redb::Builder::new()
                .set_cache_size(config.shard_cache_bytes as usize)
                .create(&path)
                .map_err(|e| EngineError::Open(format!("shard {id} ({}): {e}", path.display())))?;
            let db = Arc::new(db);
            let storage_err =
                |e: redb::Error| EngineError::Open(format!("shard {id} ({}): {e}", path.display()));
            init_tables(&db, init).map_err(storage_err)?;
            let next_revision = writer::load_next_revision(&db).map_err(storage_err)?;
            let (tx, rx) = flume::bounded(config.writer_queue_ops_max);
            let state = Arc::new(ShardState::default());
            let w = Writer {
                shard: id,
                db: db.clone(),
                rx,
                state: state.clone(),
                cfg: writer_cfg,
                clock: clock.clone(),
                next_revision,
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
                Duration::from_millis(config.writer_queue_wait_ms),
                thread,
            ));
        }
        Ok(Engine {
            data_dir: dir,
            manifest,
            shards,
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
            if config.shards != 0 && config.shards != m.shards {
                return Err(EngineError::Open(format!(
                    "data directory {} holds {} shards, but {} were asked for. The shard count is fixed \
                     when a directory is created: start with --shards {} (or leave --shards unset), \
                     or use a new --data directory for {} shards",
                    dir.display(),
                    m.shards,
                    config.shards,
                    m.shards,
                    config.shards
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
        let shards = if config.shards == 0 {
            DEFAULT_SHARDS
        } else {
            config.shards
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

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The shard that owns `routing_key`.
    pub fn shard_for(&self, routing_key: &[u8]) -> usize {
        router::shard_for(routing_key, self.manifest.hash_seed, self.shards.len())
    }

    /// Runs `f` inside the next group commit of `shard` and returns its result once the commit
    /// holding it has returned. `bytes` is the payload size, for the batch byte bound.
    pub async fn write<R, F>(&self, shard: usize, bytes: usize, f: F) -> Result<R, EngineError>
    where
        F: FnOnce(&mut ApplyCtx<'_>) -> Result<R, redb::Error> + Send + 'static,
        R: Send + 'static,
    {
        if self.closing.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
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
            Err(_) => Err(s.gone()),
        }
    }

    /// Queues an operation without waiting for room or for its result; false when the queue is
    /// full or closed. For background work (sweeps) that must never add to overload.
    pub fn try_write<F>(&self, shard: usize, f: F) -> bool
    where
        F: FnOnce(&mut ApplyCtx<'_>) -> Result<(), redb::Error> + Send + 'static,
    {
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let op: Box<dyn Mutation> = Box::new(Call {
            f: Some(f),
            result: None,
            tx: None,
            bytes: 0,
        });
        self.shards[shard].try_submit(op)
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
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Shards that refuse writes, with the reason.
    pub fn failed_shards(&self) -> Vec<(usize, String)> {
        self.shards
            .iter()
            .filter_map(|s| s.state.failure().map(|r| (s.id, r)))
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

fn init_tables(db: &redb::Database, init: &[TableInit]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(writer::META)?;
    for f in init {
        f(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// A closure run by the writer, with a channel back to its caller.
struct Call<F, R> {
    f: Option<F>,
    result: Option<R>,
    tx: Option<tokio::sync::oneshot::Sender<Result<R, EngineError>>>,
    bytes: usize,
}

impl<F, R> Mutation for Call<F, R>
where
    F: FnOnce(&mut ApplyCtx<'_>) -> Result<R, redb::Error> + Send,
    R: Send,
{
    fn bytes(&self) -> usize {
        self.bytes
    }
    fn apply(&mut self, ctx: &mut ApplyCtx<'_>) -> Result<(), redb::Error> {
        if let Some(f) = self.f.take() {
            self.result = Some(f(ctx)?);
        }
        Ok(())
    }
    fn finish(mut self: Box<Self>, outcome: Result<(), EngineError>) {
        let reply = match (outcome, self.result.take()) {
            (Ok(()), Some(r)) => Ok(r),
            (Ok(()), None) => Err(EngineError::ShuttingDown),
            (Err(e), _) => Err(e),
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(reply);
        }
    }
}
