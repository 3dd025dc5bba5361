//! The write-ahead log: one log for all shards, group-committed by one thread.
//!
//! A shard writer applies a batch in a redb transaction, hands the batch's redo to
//! [`Wal::append`] (which gives it the next LSN), and waits with [`Wal::wait`]. The log thread
//! takes everything appended since its last write, writes it with one call and makes it durable
//! with one `fdatasync`, then releases every waiter up to there. A group is simply what arrived
//! while the previous sync ran: nothing waits on a timer to form one. In `periodic` mode the
//! thread still writes each group at once (so a killed process loses nothing) but syncs only
//! every interval.
//!
//! Segments are preallocated (zero-filled, so a sync never has to update file metadata) and
//! recycled once every shard has checkpointed past their last record. After the first failed
//! write or sync the log refuses everything (redb's `PreviousIo` rule): what it would
//! acknowledge next could depend on bytes the disk never took.

pub mod frame;
pub mod recovery;

use crate::engine::StorageFailure;
use frame::{Kind, SegmentHeader, SEGMENT_HEADER_BYTES};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When a reply may be sent: after the record is on disk (`Immediate`), or after it is written
/// to the OS with a sync every interval (`Periodic`).
pub use crate::base::config::DurabilityMode as SyncMode;

/// Settings of the log.
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub mode: SyncMode,
    /// Recycled segments kept ready for reuse; more are deleted.
    pub spare_segments_max: usize,
    pub shards: usize,
    /// Told when the disk is full (releases the ballast); `None` in tools that only read.
    pub space: Option<Arc<crate::engine::space::DiskSpace>>,
    /// The change feed's holds: segments they need are not recycled ([`crate::engine::feed`]).
    pub holds: Arc<crate::engine::feed::holds::Holds>,
    /// Segment bytes kept for holds alone before the oldest holds are dropped.
    pub retain_bytes_max: u64,
}

/// Where a record starts: its LSN, its segment's sequence number and its offset there. The
/// log keeps one at each segment's first record and then about every [`INDEX_SPACING`] bytes,
/// for the segments it still has, so the feed finds a record without reading a whole segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub lsn: u64,
    pub seq: u64,
    pub offset: u64,
}

/// Bytes between two index entries of a segment.
pub const INDEX_SPACING: u64 = 64 << 10;

/// Why the log did not take or keep a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("the write-ahead log failed and refuses writes until restart: {0}")]
    Failed(StorageFailure),
    #[error("the write-ahead log is closed")]
    Closed,
    #[error("a batch of {0} bytes is larger than one log record can hold (1 GiB)")]
    TooLarge(usize),
    /// A copied record is not the next one this log holds ([`Wal::append_copy`]).
    #[error("log record {got} arrived where record {expected} was due")]
    OutOfOrder { expected: u64, got: u64 },
}

impl WalError {
    /// The storage failure behind this error, its source kept.
    pub fn into_failure(self) -> StorageFailure {
        match self {
            WalError::Failed(f) => {
                f.within("the write-ahead log failed and refuses writes until restart")
            }
            other => StorageFailure::other(other.to_string()),
        }
    }
}

/// Counters of the log (monotonic since start).
#[derive(Debug, Default)]
pub struct WalStats {
    pub syncs: AtomicU64,
    pub sync_micros: AtomicU64,
    pub writes: AtomicU64,
    pub records: AtomicU64,
    /// Operations carried by the records (what "writes per fsync" counts).
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub largest_group_records: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_recycled: AtomicU64,
    pub segments_deleted: AtomicU64,
    /// Segment files on disk (live + spare).
    pub segment_files: AtomicU64,
}

struct Pending {
    buf: Vec<u8>,
    records: u64,
    ops: u64,
    next_lsn: u64,
    stop: bool,
    failure: Option<StorageFailure>,
}

struct Shared {
    cfg: WalConfig,
    state: Mutex<Pending>,
    /// The log thread waits here for work.
    work: Condvar,
    /// Appenders wait here for their LSN.
    done: Condvar,
    durable: AtomicU64,
    written: AtomicU64,
    /// Bytes appended since start (a position, for checkpoint pressure).
    appended: AtomicU64,
    /// Per shard: LSN and position of its oldest record not yet checkpointed (MAX = none).
    oldest_lsn: Vec<AtomicU64>,
    oldest_pos: Vec<AtomicU64>,
    stats: WalStats,
    /// Record starts of the segments still on disk ([`IndexEntry`]), oldest first.
    index: Mutex<VecDeque<IndexEntry>>,
    /// Per shard, the copied records ([`Wal::append_copy`]) and their positions, until the
    /// shard's checkpoint covers them: a standby appends ahead of its writers, and a checkpoint
    /// must not let go of what they have not applied yet.
    copies: Mutex<Vec<VecDeque<(u64, u64)>>>,
}

/// The log handle shared by the engine and every shard writer.
pub struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A closed segment (of this run or an earlier one) with the last LSN it holds.
pub use recovery::SegmentInfo as OldSegment;

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wal {
    /// Starts the log: a new segment after `old` (segments of earlier runs, all checkpointed),
    /// its first record getting `next_lsn`.
    pub fn start(cfg: WalConfig, next_lsn: u64, old: Vec<OldSegment>) -> Result<Wal, String> {
        crate::engine::private::create_dir_all(&cfg.dir)
            .map_err(|e| format!("cannot create {}: {e}", cfg.dir.display()))?;
        let shards = cfg.shards;
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending {
                buf: Vec::new(),
                records: 0,
                ops: 0,
                next_lsn,
                stop: false,
                failure: None,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            durable: AtomicU64::new(next_lsn - 1),
            written: AtomicU64::new(next_lsn - 1),
            appended: AtomicU64::new(0),
            oldest_lsn: (0..shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
            oldest_pos: (0..shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
            stats: WalStats::default(),
            index: Mutex::new(VecDeque::new()),
            copies: Mutex::new((0..shards).map(|_| VecDeque::new()).collect()),
            cfg,
        });
        let mut log = LogFiles::open(&shared, next_lsn, old).map_err(|e| e.to_string())?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || {
                let _guard = FailOnPanic(s.clone());
                log.run(&s);
            })
            .map_err(|e| format!("cannot start the log thread: {e}"))?;
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Appends a record for `shard` and returns its LSN. `ops` is how many operations it
    /// carries (for the writes-per-sync counter). The record is neither written nor durable
    /// yet: [`Wal::wait`] for that.
    pub fn append(
        &self,
        shard: usize,
        kind: Kind,
        payload: &[u8],
        ops: u64,
    ) -> Result<u64, WalError> {
        if payload.len() > frame::PAYLOAD_BYTES_MAX {
            return Err(WalError::TooLarge(payload.len()));
        }
        // An empty record would start with eight zero bytes, which recovery reads as the end.
        debug_assert!(!payload.is_empty());
        self.append_inner(shard, kind, payload, ops, crc32fast::hash(payload), None)
    }

    /// Appends a record copied from another box's log (a standby's): it must be the next LSN
    /// this log holds, with its own payload checksum. Nothing is appended otherwise.
    pub fn append_copy(
        &self,
        lsn: u64,
        shard: usize,
        kind: Kind,
        payload: &[u8],
        crc: u32,
    ) -> Result<(), WalError> {
        if payload.is_empty() || payload.len() > frame::PAYLOAD_BYTES_MAX {
            return Err(WalError::TooLarge(payload.len()));
        }
        if shard >= self.shared.oldest_lsn.len() {
            return Err(WalError::Failed(StorageFailure::other(format!(
                "a copied record names shard {shard}; this store has {}",
                self.shared.oldest_lsn.len()
            ))));
        }
        self.append_inner(shard, kind, payload, 1, crc, Some(lsn))
            .map(|_| ())
    }

    /// The last LSN appended (written to the OS or not).
    pub fn appended_lsn(&self) -> u64 {
        lock(&self.shared.state).next_lsn - 1
    }

    fn append_inner(
        &self,
        shard: usize,
        kind: Kind,
        payload: &[u8],
        ops: u64,
        crc: u32,
        expect: Option<u64>,
    ) -> Result<u64, WalError> {
        let sh = &self.shared;
        let mut st = lock(&sh.state);
        if let Some(f) = &st.failure {
            return Err(WalError::Failed(f.clone()));
        }
        if st.stop {
            return Err(WalError::Closed);
        }
        if let Some(got) = expect.filter(|l| *l != st.next_lsn) {
            return Err(WalError::OutOfOrder {
                expected: st.next_lsn,
                got,
            });
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        let before = st.buf.len();
        frame::encode_with_crc(&mut st.buf, lsn, shard as u32, kind, payload, crc);
        let len = (st.buf.len() - before) as u64;
        st.records += 1;
        st.ops += ops;
        let pos = sh.appended.fetch_add(len, Ordering::AcqRel);
        // Under the lock, so a segment can never be recycled between this record getting its
        // LSN and the shard saying it needs it.
        if sh.oldest_lsn[shard].load(Ordering::Acquire) == u64::MAX {
            sh.oldest_pos[shard].store(pos, Ordering::Release);
            sh.oldest_lsn[shard].store(lsn, Ordering::Release);
        }
        if expect.is_some() {
            sh.copies.lock().unwrap_or_else(|p| p.into_inner())[shard].push_back((lsn, pos));
        }
        drop(st);
        sh.work.notify_one();
        Ok(lsn)
    }

    /// Waits until `lsn` may be acknowledged: on disk (`immediate`) or written to the OS
    /// (`periodic`).
    pub fn wait(&self, lsn: u64) -> Result<(), WalError> {
        let sh = &self.shared;
        let mark = match sh.cfg.mode {
            SyncMode::Immediate => &sh.durable,
            SyncMode::Periodic { .. } => &sh.written,
        };
        if mark.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let mut st = lock(&sh.state);
        loop {
            if mark.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            if let Some(f) = &st.failure {
                return Err(WalError::Failed(f.clone()));
            }
            st = sh.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Says every record of `shard` up to `applied` is in a durable redb commit: the log no
    /// longer needs them (nor any other record of the shard, but copies not applied yet).
    /// Called by the shard's writer right after a checkpoint.
    pub fn checkpointed(&self, shard: usize, applied: u64) {
        // Under the append lock, as the pin is taken there.
        let _st = lock(&self.shared.state);
        let mut copies = self.shared.copies.lock().unwrap_or_else(|p| p.into_inner());
        let queue = &mut copies[shard];
        while queue.front().is_some_and(|(lsn, _)| *lsn <= applied) {
            queue.pop_front();
        }
        // A copied record appended and not yet applied keeps the log from there.
        let (lsn, pos) = queue.front().copied().unwrap_or((u64::MAX, u64::MAX));
        self.shared.oldest_pos[shard].store(pos, Ordering::Release);
        self.shared.oldest_lsn[shard].store(lsn, Ordering::Release);
    }

    /// Log bytes appended since the oldest record of `shard` that is not checkpointed (0 when
    /// there is none): what the shard keeps the log from recycling.
    pub fn pinned_bytes(&self, shard: usize) -> u64 {
        let pos = self.shared.oldest_pos[shard].load(Ordering::Acquire);
        if pos == u64::MAX {
            return 0;
        }
        self.shared
            .appended
            .load(Ordering::Acquire)
            .saturating_sub(pos)
    }

    pub fn durable_lsn(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.cfg.dir
    }

    /// The index entry to start reading from to find `lsn` (the last at or before it); `None`
    /// when `lsn` is older than every segment still on disk.
    pub fn find(&self, lsn: u64) -> Option<IndexEntry> {
        let ix = self.shared.index.lock().unwrap_or_else(|p| p.into_inner());
        let at = ix.partition_point(|e| e.lsn <= lsn);
        at.checked_sub(1).and_then(|i| ix.get(i).copied())
    }

    /// The first later segment than `after_seq` whose first record is `lsn` (segments of a
    /// run that wrote nothing are passed over), when the log still has it.
    pub fn segment_starting(&self, after_seq: u64, lsn: u64) -> Option<IndexEntry> {
        let ix = self.shared.index.lock().unwrap_or_else(|p| p.into_inner());
        ix.iter()
            .find(|e| e.seq > after_seq && e.offset == SEGMENT_HEADER_BYTES as u64 && e.lsn >= lsn)
            .filter(|e| e.lsn == lsn)
            .copied()
    }

    /// The oldest record the log still has (`None`: none yet).
    pub fn oldest_lsn(&self) -> Option<u64> {
        let ix = self.shared.index.lock().unwrap_or_else(|p| p.into_inner());
        ix.front().map(|e| e.lsn)
    }

    /// Highest LSN written to the OS (at or above [`Wal::durable_lsn`]).
    pub fn written_lsn(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Bytes the log's segment files take on disk (live and spare: segments are preallocated).
    pub fn disk_bytes(&self) -> u64 {
        self.shared.stats.segment_files.load(Ordering::Relaxed) * self.shared.cfg.segment_bytes
    }

    /// Why the log refuses writes, if it does.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.state)
            .failure
            .as_ref()
            .map(ToString::to_string)
    }

    /// Writes and syncs what is pending, then stops the thread. Idempotent.
    pub fn stop(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.stop = true;
        }
        self.shared.work.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the log failed if its thread unwinds, so no writer waits forever on a dead thread.
struct FailOnPanic(Arc<Shared>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            fail(&self.0, "the log thread panicked".into());
        }
    }
}

fn fail(sh: &Shared, failure: StorageFailure) {
    tracing::error!(error = %failure, "write-ahead log failed; writes are refused until restart");
    let mut st = lock(&sh.state);
    if st.failure.is_none() {
        st.failure = Some(failure);
    }
    drop(st);
    sh.done.notify_all();
}

/// The segment being written.
struct Active {
    seq: u64,
    file: File,
    /// Where the next record goes.
    pos: u64,
    size: u64,
    last_lsn: Option<u64>,
    first_lsn: u64,
}

type Closed = OldSegment;

/// The log thread's files: the active segment, closed ones still needed, spares.
struct LogFiles {
    dir: PathBuf,
    active: Active,
    closed: VecDeque<Closed>,
    spares: Vec<PathBuf>,
    last_sync: Instant,
}

/// How long a group waits for disk space to start a new segment before the log fails.
const DISK_FULL_WAIT: Duration = Duration::from_secs(60);

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageFailure {
    StorageFailure::io(format!("{what} {}", path.display()), e)
}

fn sync_dir(dir: &Path) -> Result<(), StorageFailure> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync directory", dir, e))
}

/// Records in the index that a chunk of records starting at `lsn` went to `seq` at `offset`:
/// kept when it starts a segment or lies [`INDEX_SPACING`] past the last entry.
fn note_start(sh: &Shared, lsn: u64, seq: u64, offset: u64) {
    let mut ix = sh.index.lock().unwrap_or_else(|p| p.into_inner());
    let keep = match ix.back() {
        Some(last) => last.seq != seq || offset >= last.offset + INDEX_SPACING,
        None => true,
    };
    if keep {
        ix.push_back(IndexEntry { lsn, seq, offset });
    }
}

fn spare_name(seq: u64) -> String {
    format!("spare-{seq:020}")
}

impl LogFiles {
    fn open(sh: &Shared, next_lsn: u64, old: Vec<OldSegment>) -> Result<LogFiles, StorageFailure> {
        let dir = sh.cfg.dir.clone();
        let mut spares = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("spare-") {
                    spares.push(e.path());
                }
            }
        }
        let seq = old.iter().map(|o| o.seq).max().map_or(1, |s| s + 1);
        // The old segments' first records, for the feed (their headers say where they start).
        for o in &old {
            if o.last_lsn.is_none() {
                continue;
            }
            note_start(sh, o.first_lsn, o.seq, SEGMENT_HEADER_BYTES as u64);
        }
        let mut closed: VecDeque<Closed> = old.into();
        // Segments of earlier runs that every shard has checkpointed past become spares first,
        // so a restart reuses them instead of preallocating a new file.
        recycle_into(sh, &dir, &mut closed, &mut spares)?;
        let active = new_segment(sh, &mut spares, seq, next_lsn)?;
        let files = LogFiles {
            dir,
            active,
            closed,
            spares,
            last_sync: Instant::now(),
        };
        files.count_files(sh);
        Ok(files)
    }

    fn count_files(&self, sh: &Shared) {
        let n = 1 + self.closed.len() + self.spares.len();
        sh.stats.segment_files.store(n as u64, Ordering::Relaxed);
    }

    /// Closes the active segment (durably) and starts the next one at `first_lsn`. The old
    /// segment is synced once: a failed fsync is never retried (Linux may drop the dirty pages
    /// and report a later fsync clean). Creating the next segment on a full disk releases the
    /// ballast and retries for up to [`DISK_FULL_WAIT`] (the group waits, nothing is dropped or
    /// reordered), unless the log is stopping; then the log fails.
    fn roll(&mut self, sh: &Shared, first_lsn: u64) -> Result<(), StorageFailure> {
        let path = self.dir.join(frame::segment_name(self.active.seq));
        self.active
            .file
            .sync_data()
            .map_err(|e| io("cannot sync", &path, e))?;
        let started = Instant::now();
        let next = loop {
            match new_segment(sh, &mut self.spares, self.active.seq + 1, first_lsn) {
                Err(message)
                    if message.is_disk_full()
                        && started.elapsed() < DISK_FULL_WAIT
                        && !lock(&sh.state).stop =>
                {
                    if let Some(space) = &sh.cfg.space {
                        space.on_full();
                    }
                    tracing::warn!(%message, "the log cannot start a segment: the disk is full; retrying");
                    let _ = self.recycle(sh);
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let old = std::mem::replace(&mut self.active, next);
        self.closed.push_back(Closed {
            seq: old.seq,
            path,
            last_lsn: old.last_lsn,
            used_bytes: old.pos,
            first_lsn: old.first_lsn,
        });
        self.recycle(sh)?;
        self.count_files(sh);
        Ok(())
    }

    /// Turns closed segments that no shard needs any more into spares (or deletes them).
    fn recycle(&mut self, sh: &Shared) -> Result<(), StorageFailure> {
        if recycle_into(sh, &self.dir, &mut self.closed, &mut self.spares)? {
            self.count_files(sh);
        }
        Ok(())
    }

    /// Writes one group: frames in LSN order, rolling to a new segment where the next frame
    /// does not fit (a frame larger than a whole segment grows its segment).
    fn write_group(&mut self, sh: &Shared, group: &[u8]) -> Result<(), StorageFailure> {
        let mut start = 0;
        while start < group.len() {
            let room = self.active.size.saturating_sub(self.active.pos) as usize;
            // Take whole frames while they fit.
            let mut end = start;
            let mut last = None;
            while end < group.len() {
                let Some(h) = frame::parse_header(&group[end..]) else {
                    return Err("internal: a pending record does not parse".into());
                };
                let len = h.frame_len();
                let fits = end - start + len <= room;
                let alone_in_fresh = end == start && self.active.last_lsn.is_none();
                if !fits && !alone_in_fresh {
                    break;
                }
                last = Some(h.lsn);
                end += len;
                if !fits {
                    break; // an oversized frame goes alone into a fresh segment
                }
            }
            if end == start {
                let Some(h) = frame::parse_header(&group[start..]) else {
                    return Err("internal: a pending record does not parse".into());
                };
                self.roll(sh, h.lsn)?;
                continue;
            }
            let path = || self.dir.join(frame::segment_name(self.active.seq));
            crate::base::failpoint::hit("wal.write").map_err(|e| io("cannot write", &path(), e))?;
            self.active
                .file
                .write_all_at(&group[start..end], self.active.pos)
                .map_err(|e| io("cannot write", &path(), e))?;
            if let Some(h) = frame::parse_header(&group[start..]) {
                note_start(sh, h.lsn, self.active.seq, self.active.pos);
            }
            self.active.pos += (end - start) as u64;
            self.active.size = self.active.size.max(self.active.pos);
            self.active.last_lsn = last;
            sh.stats.writes.fetch_add(1, Ordering::Relaxed);
            start = end;
        }
        Ok(())
    }

    fn sync(&mut self, sh: &Shared) -> Result<(), StorageFailure> {
        let started = Instant::now();
        crate::base::failpoint::hit("wal.sync").map_err(|e| {
            io(
                "cannot sync",
                &self.dir.join(frame::segment_name(self.active.seq)),
                e,
            )
        })?;
        self.active.file.sync_data().map_err(|e| {
            io(
                "cannot sync",
                &self.dir.join(frame::segment_name(self.active.seq)),
                e,
            )
        })?;
        self.last_sync = Instant::now();
        sh.stats.syncs.fetch_add(1, Ordering::Relaxed);
        sh.stats
            .sync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The log thread.
    fn run(&mut self, sh: &Shared) {
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let (mut group, last_lsn, records, ops, stopping) = {
                let mut st = lock(&sh.state);
                loop {
                    if st.failure.is_some() {
                        return;
                    }
                    if !st.buf.is_empty() {
                        break;
                    }
                    let unsynced =
                        sh.written.load(Ordering::Acquire) > sh.durable.load(Ordering::Acquire);
                    if st.stop {
                        drop(st);
                        if unsynced {
                            self.sync_written(sh);
                        }
                        return;
                    }
                    match sh.cfg.mode {
                        SyncMode::Periodic { interval: every } if unsynced => {
                            let due = every.saturating_sub(self.last_sync.elapsed());
                            if due.is_zero() {
                                drop(st);
                                self.sync_written(sh);
                                st = lock(&sh.state);
                                continue;
                            }
                            st = sh
                                .work
                                .wait_timeout(st, due)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        _ => st = sh.work.wait(st).unwrap_or_else(|p| p.into_inner()),
                    }
                }
                let group = std::mem::replace(&mut st.buf, std::mem::take(&mut spare));
                let out = (group, st.next_lsn - 1, st.records, st.ops, st.stop);
                st.records = 0;
                st.ops = 0;
                out
            };
            stamp_group(&mut group, sh.durable.load(Ordering::Acquire));
            let result = self.write_group(sh, &group).and_then(|()| {
                sh.written.store(last_lsn, Ordering::Release);
                let sync_now = match sh.cfg.mode {
                    SyncMode::Immediate => true,
                    SyncMode::Periodic { interval: every } => {
                        stopping || self.last_sync.elapsed() >= every
                    }
                };
                if sync_now {
                    self.sync(sh)?;
                    sh.durable.store(last_lsn, Ordering::Release);
                }
                Ok(())
            });
            if let Err(message) = result {
                fail(sh, message);
                return;
            }
            sh.stats.records.fetch_add(records, Ordering::Relaxed);
            sh.stats.ops.fetch_add(ops, Ordering::Relaxed);
            sh.stats
                .bytes
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            sh.stats
                .largest_group_records
                .fetch_max(records, Ordering::Relaxed);
            {
                let _st = lock(&sh.state);
                sh.done.notify_all();
            }
            if let Err(message) = self.recycle(sh) {
                fail(sh, message);
                return;
            }
            group.clear();
            group.shrink_to(crate::engine::redo::REDO_KEEP_BYTES);
            spare = group;
        }
    }

    fn sync_written(&mut self, sh: &Shared) {
        let upto = sh.written.load(Ordering::Acquire);
        match self.sync(sh) {
            Ok(()) => {
                sh.durable.store(upto, Ordering::Release);
                let _st = lock(&sh.state);
                sh.done.notify_all();
            }
            Err(message) => fail(sh, message),
        }
    }
}

/// Moves the closed segments below every shard's oldest needed record to `spares` (up to
/// `spare_segments_max`; the rest are deleted). Returns whether anything moved.
fn recycle_into(
    sh: &Shared,
    dir: &Path,
    closed: &mut VecDeque<Closed>,
    spares: &mut Vec<PathBuf>,
) -> Result<bool, StorageFailure> {
    let shards_need = sh
        .oldest_lsn
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .min()
        .unwrap_or(u64::MAX);
    let holds = &sh.cfg.holds;
    // Segments kept for the feed's holds alone may take `retain_bytes_max`: past it, the holds
    // keeping the oldest of them are dropped (their readers must resnapshot; writes go on).
    if holds.min_lsn() < shards_need {
        let for_holds: Vec<&Closed> = closed
            .iter()
            .filter(|c| c.last_lsn.is_some_and(|l| l >= holds.min_lsn() && l < shards_need))
            .collect();
        // The bytes they hold (a segment of a run that wrote little counts what it wrote, not
        // its preallocated size), newest first: the segments past the bound go.
        let mut kept = 0u64;
        let over = for_holds.iter().rev().position(|c| {
            kept = kept.saturating_add(c.used_bytes);
            kept > sh.cfg.retain_bytes_max
        });
        if let Some(from_newest) = over {
            // The first segment that may stay: holds needing anything before it are dropped.
            let cut = for_holds[for_holds.len() - 1 - from_newest]
                .last_lsn
                .map_or(0, |l| l + 1);
            let n = holds.drop_before(cut);
            tracing::warn!(
                dropped = n,
                retain_bytes_max = sh.cfg.retain_bytes_max,
                "change feed readers fell behind past feed_retain_bytes_max: they must resnapshot"
            );
        }
    }
    let needed = shards_need.min(holds.min_lsn());
    let mut changed = false;
    while let Some(front) = closed.front() {
        if front.last_lsn.is_some_and(|l| l >= needed) {
            break;
        }
        let Some(seg) = closed.pop_front() else {
            break;
        };
        {
            // Its records are gone for the feed too.
            let mut ix = sh.index.lock().unwrap_or_else(|p| p.into_inner());
            while ix.front().is_some_and(|e| e.seq <= seg.seq) {
                ix.pop_front();
            }
        }
        if spares.len() < sh.cfg.spare_segments_max {
            let to = dir.join(spare_name(seg.seq));
            std::fs::rename(&seg.path, &to).map_err(|e| io("cannot recycle", &seg.path, e))?;
            spares.push(to);
        } else {
            std::fs::remove_file(&seg.path).map_err(|e| io("cannot delete", &seg.path, e))?;
            sh.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
        }
        changed = true;
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(changed)
}

/// Starts segment `seq` whose first record is `first_lsn`: a spare renamed, or a new zero-filled
/// file. Header and directory entry are durable before any record goes in.
fn new_segment(
    sh: &Shared,
    spares: &mut Vec<PathBuf>,
    seq: u64,
    first_lsn: u64,
) -> Result<Active, StorageFailure> {
    let dir = &sh.cfg.dir;
    let path = dir.join(frame::segment_name(seq));
    let file = match spares.pop() {
        Some(spare) => {
            std::fs::rename(&spare, &path).map_err(|e| io("cannot reuse", &spare, e))?;
            sh.stats.segments_recycled.fetch_add(1, Ordering::Relaxed);
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("cannot open", &path, e))?
        }
        None => {
            let f = crate::engine::private::file_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io("cannot create", &path, e))?;
            if let Err(e) = zero_fill(&f, sh.cfg.segment_bytes) {
                // A half-made segment would hold space a full disk needs back.
                drop(f);
                let _ = std::fs::remove_file(&path);
                return Err(io("cannot preallocate", &path, e));
            }
            sh.stats.segments_created.fetch_add(1, Ordering::Relaxed);
            f
        }
    };
    let header = frame::encode_segment_header(SegmentHeader { seq, first_lsn });
    file.write_all_at(&header, 0)
        .map_err(|e| io("cannot write", &path, e))?;
    crate::base::failpoint::hit("wal.segment_sync").map_err(|e| io("cannot sync", &path, e))?;
    file.sync_all().map_err(|e| io("cannot sync", &path, e))?;
    sync_dir(dir)?;
    let size = file
        .metadata()
        .map(|m| m.len())
        .unwrap_or(sh.cfg.segment_bytes);
    Ok(Active {
        seq,
        file,
        pos: SEGMENT_HEADER_BYTES as u64,
        size,
        last_lsn: None,
        first_lsn,
    })
}

/// Stamps every frame of a group with the LSN durable before the group is written.
fn stamp_group(group: &mut [u8], synced: u64) {
    let mut at = 0;
    while at + frame::RECORD_HEADER_BYTES <= group.len() {
        let len = match frame::parse_header(&group[at..]) {
            Some(h) => h.frame_len(),
            None => return,
        };
        frame::stamp_synced(&mut group[at..], synced);
        at += len;
    }
}

/// Writes zeros over the whole file, so later writes never allocate blocks (and a data sync
/// never has to update metadata). The caller syncs the file once its header is in.
fn zero_fill(f: &File, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        let n = chunk.len().min((bytes - at) as usize);
        f.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
