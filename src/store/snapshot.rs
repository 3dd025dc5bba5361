//! Snapshots to the hub, and a box rebuilt from them (`[sink.nats] ship_log = true`).
//!
//! - **Snapshot.** An online backup ([`super::backup`]: each shard at one instant, with
//!   `SHA256SUMS`) uploaded to the JetStream object store `<stream>_<box>_SNAPSHOTS`, one object
//!   per file under `<id>/`, then `<id>/DONE` naming what it holds. The id is
//!   `<first LSN, 20 digits>-<generation>`: the first log record a restore must replay after it
//!   (every shard of the snapshot holds everything before it), so ids sort oldest first. Once a
//!   snapshot is whole, all but the newest `snapshots_keep` are deleted, and so is any
//!   incomplete one older than the newest whole one.
//! - **The log after it** is in stream `<stream>_<box>_LOG`, shipped by the log sink
//!   (`Source::Log` of the sink): every record as its frame, consecutive LSNs.
//! - **Restore** ([`restore`]): the newest snapshot whose files download and match their sums
//!   (an older one otherwise) is restored like a local backup, the log records from its first
//!   LSN on are written into the new directory's log, and the next open replays them into the
//!   shards (a shard skips the records it already holds) — ids, revisions and leases as they
//!   were. A restore starts a new generation.

use super::backup::{self, Report};
use crate::base::config::NatsSinkConfig;
use crate::base::progress::Progress;
use crate::engine::wal::frame;
use async_nats::jetstream::{self, object_store::ObjectStore};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};

/// The object that marks a snapshot whole.
const DONE: &str = "DONE";

/// One snapshot at a time per process (the admin route's and the schedule's).
pub static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A snapshot of `store` ([`take`] with its online backup).
pub async fn take_of(store: &super::Store, cfg: &NatsSinkConfig) -> Result<Snapshot, String> {
    // A standby's or a fenced box's copy is not the box's: it would go among the primary's.
    if let Some((code, why)) = store.engine().read_only() {
        return Err(format!("this box takes no snapshot ({code}): {why}"));
    }
    let data = store.engine().data_dir().to_path_buf();
    let generation = store.engine().feed().generation().to_string();
    // Nothing decided since the newest snapshot (the same first record, the same history):
    // it stands, and no copy is made.
    let unchanged = format!("{:020}-{generation}", store.engine().feed().end().lsn + 1);
    if let Ok(existing) = list(cfg).await {
        if let Some(s) = existing.into_iter().rev().find(|s| s.id == unchanged) {
            return Ok(s);
        }
    }
    let store = store.clone();
    take(cfg, &data, generation, move |out| {
        backup::backup(&store, out, &Progress::quiet())
    })
    .await
}

/// Takes a snapshot every `snapshot_interval_ms` (the first at once when the hub has none,
/// or only an older one, or only another history's), until the task is dropped. Failures are logged and tried again at
/// the next turn.
pub async fn schedule(store: super::Store, cfg: NatsSinkConfig) {
    if cfg.snapshot_interval_ms == 0 {
        return;
    }
    let every = std::time::Duration::from_millis(cfg.snapshot_interval_ms);
    let now = || crate::base::clock::Clock::now_ms(&crate::base::clock::SystemClock);
    // When the newest snapshot was made (0: none, or the hub cannot be asked yet).
    // A snapshot of another history (the primary a promoted standby took over from) does not
    // count: the first of this one is taken at once.
    let ours = store.engine().feed().generation().to_string();
    let newest = list(&cfg)
        .await
        .ok()
        .and_then(|l| l.last().filter(|s| s.generation == ours).map(|s| s.created_ms))
        .unwrap_or(0);
    let first = (newest + cfg.snapshot_interval_ms).saturating_sub(now());
    tokio::time::sleep(std::time::Duration::from_millis(first.min(cfg.snapshot_interval_ms)))
        .await;
    loop {
        match RUNNING.try_lock() {
            Ok(_running) => match take_of(&store, &cfg).await {
                Ok(s) => tracing::info!(snapshot = %s.id, bytes = s.bytes, "snapshot shipped to the NATS hub"),
                Err(e) => tracing::warn!(error = %e, "scheduled snapshot failed; trying again at the next turn"),
            },
            Err(_) => tracing::info!("a snapshot is running already; the scheduled one is skipped"),
        }
        tokio::time::sleep(every).await;
    }
}

/// What a snapshot holds (its `DONE` object).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub id: String,
    /// The generation of the box's history it was taken in.
    pub generation: String,
    /// The first log record a restore replays after it.
    pub first_lsn: u64,
    /// Each shard's last applied record in it.
    pub applied: Vec<u64>,
    /// Its files (MANIFEST, shards, SHA256SUMS), relative to the snapshot.
    pub files: Vec<String>,
    pub bytes: u64,
    pub created_ms: u64,
}

async fn bucket(js: &jetstream::Context, cfg: &NatsSinkConfig) -> Result<ObjectStore, String> {
    let name = cfg.snapshot_bucket();
    if let Ok(b) = js.get_object_store(&name).await {
        return Ok(b);
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket: name.clone(),
        description: Some(format!("shardbox snapshots of box {}", cfg.box_name)),
        storage: jetstream::stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating object store {name}: {e}"))
}

/// A staging directory beside the data directory (a backup may not go inside it), named after
/// it: `.<name>.<what>`. What an interrupted run left there is removed first (one snapshot
/// runs at a time per data directory), so a crash or a stop midway does not leave a full copy
/// behind for good.
fn staging(data: &Path, what: &str) -> Result<PathBuf, String> {
    // `.` or `x/..` name no directory to stand beside: the absolute, normalised path does.
    let data = backup::resolve_path(data)?;
    let name = data
        .file_name()
        .map_or("shardbox-data".into(), |n| n.to_string_lossy().into_owned());
    let parent = data
        .parent()
        .ok_or_else(|| format!("{}: no directory to stage beside", data.display()))?;
    let dir = parent.join(format!(".{name}.{what}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(dir)
}

/// Takes a snapshot: `backup_into` writes an online backup of the running store into the
/// directory it is given; it is uploaded, then older snapshots are pruned.
pub async fn take(
    cfg: &NatsSinkConfig,
    data: &Path,
    generation: String,
    backup_into: impl FnOnce(&Path) -> Result<Report, String> + Send + 'static,
) -> Result<Snapshot, String> {
    let dir = staging(data, "snapshot")?;
    let d2 = dir.clone();
    let made = tokio::task::spawn_blocking(move || {
        let report = backup_into(&d2)?;
        let applied = report.applied.clone();
        // Every record up to the feed's end when the copy began is in it; past the lowest
        // shard's too (an idle shard's applied LSN may be far behind both).
        let through = applied
            .iter()
            .copied()
            .min()
            .unwrap_or(0)
            .max(report.through_lsn);
        Ok::<_, String>((report, applied, through))
    })
    .await
    .map_err(|e| format!("the snapshot's backup: {e}"));
    let result = async {
        let (report, applied, through) = made??;
        let first_lsn = through + 1;
        let mut files: Vec<String> = backup::read_sums(&dir)?
            .into_iter()
            .map(|(_, rel)| rel)
            .collect();
        files.push(backup::SUMS.to_string());
        let snap = Snapshot {
            id: format!("{first_lsn:020}-{generation}"),
            generation,
            first_lsn,
            applied,
            files,
            bytes: report.bytes,
            created_ms: crate::base::clock::Clock::now_ms(&crate::base::clock::SystemClock),
        };
        let client = super::sink::connect(cfg, None).await?;
        let js = jetstream::new(client);
        let store = bucket(&js, cfg).await?;
        // Nothing written since the last one (the same first record, the same history): it
        // stands, and is not uploaded over while a restore may be reading it.
        if whole(&names(&store).await?).contains(&snap.id) {
            return Ok(snap);
        }
        for rel in &snap.files {
            let path = dir.join(rel);
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            store
                .put(format!("{}/{rel}", snap.id).as_str(), &mut file)
                .await
                .map_err(|e| format!("uploading {rel}: {e}"))?;
        }
        let done = serde_json::to_vec(&snap).map_err(|e| e.to_string())?;
        store
            .put(format!("{}/{DONE}", snap.id).as_str(), &mut done.as_slice())
            .await
            .map_err(|e| format!("uploading the snapshot's {DONE}: {e}"))?;
        prune(&store, cfg.snapshots_keep).await?;
        Ok(snap)
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

/// Every object name of the bucket (deleted ones left out).
async fn names(store: &ObjectStore) -> Result<Vec<String>, String> {
    let mut list = store.list().await.map_err(|e| format!("listing snapshots: {e}"))?;
    let mut out = Vec::new();
    while let Some(o) = list.next().await {
        let o = o.map_err(|e| format!("listing snapshots: {e}"))?;
        if !o.deleted {
            out.push(o.name);
        }
    }
    Ok(out)
}

/// The ids of whole snapshots, oldest first.
fn whole(names: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(&format!("/{DONE}")))
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

/// Deletes all but the newest `keep` whole snapshots, and what is left of incomplete ones
/// older than the newest whole one.
async fn prune(store: &ObjectStore, keep: usize) -> Result<(), String> {
    let names = names(store).await?;
    let ids = whole(&names);
    let Some(newest) = ids.last() else {
        return Ok(());
    };
    let kept: Vec<&String> = ids.iter().rev().take(keep).collect();
    for n in &names {
        let Some((id, _)) = n.split_once('/') else {
            continue;
        };
        let id = id.to_string();
        if kept.contains(&&id) || id > *newest {
            continue;
        }
        store
            .delete(n.as_str())
            .await
            .map_err(|e| format!("deleting {n}: {e}"))?;
    }
    Ok(())
}

/// The snapshots the hub holds for the box, oldest first.
pub async fn list(cfg: &NatsSinkConfig) -> Result<Vec<Snapshot>, String> {
    let client = super::sink::connect(cfg, None).await?;
    let js = jetstream::new(client);
    let store = js
        .get_object_store(cfg.snapshot_bucket())
        .await
        .map_err(|e| format!("object store {}: {e}", cfg.snapshot_bucket()))?;
    let mut out = Vec::new();
    for id in whole(&names(&store).await?) {
        if let Ok(bytes) = read_object(&store, &format!("{id}/{DONE}")).await {
            if let Ok(s) = serde_json::from_slice::<Snapshot>(&bytes) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Downloads object `name` into a new file at `path` as it arrives (a shard may be larger than
/// memory); returns its SHA-256 in hex and its size.
async fn download(store: &ObjectStore, name: &str, path: &Path) -> Result<(String, u64), String> {
    use sha2::Digest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut o = store
        .get(name)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let file = crate::engine::private::file_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = o
            .read(&mut buf)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        size += n as u64;
    }
    file.flush()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((crate::base::util::hex(&hash.finalize()), size))
}

/// A small object (a snapshot's `DONE`) in memory.
async fn read_object(store: &ObjectStore, name: &str) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut o = store
        .get(name)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let mut out = Vec::new();
    o.read_to_end(&mut out)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(out)
}

/// What [`restore`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub snapshot: String,
    /// The history the last record restored belongs to.
    pub generation: String,
    /// Snapshots passed over (damaged, or the log after them is not whole), with why.
    pub skipped: Vec<String>,
    pub bytes: u64,
    /// Log records written after it (the next open replays them).
    pub records: u64,
    /// The last log record the box had shipped: the restored directory holds everything up to it.
    pub last_lsn: u64,
}

/// Rebuilds `data` from the hub: the newest usable snapshot and the log records after it.
pub async fn restore(
    cfg: &NatsSinkConfig,
    data: &Path,
    (force, keep_generation): (bool, bool),
    segment_bytes: u64,
    progress: &Progress,
) -> Result<Restored, String> {
    let client = super::sink::connect(cfg, None).await?;
    let js = jetstream::new(client);
    let store = js
        .get_object_store(cfg.snapshot_bucket())
        .await
        .map_err(|e| format!("object store {} (has the box shipped a snapshot?): {e}", cfg.snapshot_bucket()))?;
    let ids = whole(&names(&store).await?);
    if ids.is_empty() {
        return Err(format!(
            "object store {} holds no whole snapshot of box {}",
            cfg.snapshot_bucket(),
            cfg.box_name
        ));
    }
    let mut skipped = Vec::new();
    for id in ids.iter().rev() {
        let dir = staging(data, "from-nats")?;
        let attempt = restore_one(
            &js,
            &store,
            cfg,
            id,
            &dir,
            (data, force, keep_generation, segment_bytes),
            progress,
        )
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        match attempt {
            Ok(mut r) => {
                r.skipped = skipped;
                return Ok(r);
            }
            // The target was refused or touched: no other snapshot can do better.
            Err(Failed::Target(e)) => return Err(e),
            Err(Failed::Snapshot(e)) => {
                tracing::warn!(snapshot = %id, error = %e, "restore: snapshot not usable; trying an older one");
                skipped.push(format!("{id}: {e}"));
            }
        }
    }
    Err(format!(
        "no snapshot of box {} could be restored: {}",
        cfg.box_name,
        skipped.join("; ")
    ))
}

enum Failed {
    /// This snapshot (or the log after it) is not usable: an older one may be.
    Snapshot(String),
    /// The restore into the data directory failed.
    Target(String),
}

/// Restores snapshot `id` into `data`: everything it needs is downloaded and checked first —
/// the files against their sums, the log after it record by record — so a damaged snapshot is
/// a [`Failed::Snapshot`] before anything is touched; then the checked copy and its log are
/// swapped in together ([`backup::restore_with`]).
#[allow(clippy::too_many_arguments)]
async fn restore_one(
    js: &jetstream::Context,
    store: &ObjectStore,
    cfg: &NatsSinkConfig,
    id: &str,
    dir: &Path,
    (data, force, keep_generation, segment_bytes): (&Path, bool, bool, u64),
    progress: &Progress,
) -> Result<Restored, Failed> {
    let snap: Snapshot = read_object(store, &format!("{id}/{DONE}"))
        .await
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(Failed::Snapshot)?;
    crate::engine::private::create_dir_all(&dir.join("shards"))
        .map_err(|e| Failed::Target(format!("{}: {e}", dir.display())))?;
    // Each file hashed as it arrives; then checked against its sums (the sums file names
    // exactly the MANIFEST's shards).
    let mut got = std::collections::HashMap::new();
    for rel in &snap.files {
        let safe = rel == backup::SUMS
            || rel == "MANIFEST"
            || (rel.starts_with("shards/") && !rel.contains("..") && rel.matches('/').count() == 1);
        if !safe {
            return Err(Failed::Snapshot(format!("a file named {rel}")));
        }
        let (sum, size) = download(store, &format!("{id}/{rel}"), &dir.join(rel))
            .await
            .map_err(Failed::Snapshot)?;
        progress.inc(size);
        got.insert(rel.clone(), sum);
    }
    for (sum, rel) in backup::read_sums(dir).map_err(Failed::Snapshot)? {
        match got.get(&rel) {
            Some(have) if *have == sum => {}
            have => {
                return Err(Failed::Snapshot(format!(
                    "{rel}: checksum mismatch (expected {sum}, the hub has {}): the snapshot is damaged",
                    have.map_or("no such file", |h| h.as_str())
                )))
            }
        }
    }
    // The log after it, whole, of the same history, written as log segments beside the files.
    let segment = dir.join("wal");
    let (records, last_lsn, generation) = log_after(js, cfg, &snap, &segment, segment_bytes)
        .await
        .map_err(Failed::Snapshot)?;
    let (d2, data2) = (dir.to_path_buf(), data.to_path_buf());
    let bytes = tokio::task::spawn_blocking(move || {
        backup::restore_with(&d2, &data2, force, &Progress::quiet(), |staged| {
            place_log(staged, &segment, records)
        })
    })
    .await
    .map_err(|e| Failed::Target(e.to_string()))?
    .map_err(Failed::Target)?;
    // A standby goes on in the history it copies; a rebuilt box starts its own (made by the
    // restore), continuing this one up to its last record.
    let lineage = crate::engine::feed::position::Lineage {
        previous: generation,
        through_lsn: last_lsn,
    };
    let kept = match keep_generation {
        true => crate::engine::feed::position::Lineage::store(data, None)
            .and_then(|()| generation.store(data)),
        false => crate::engine::feed::position::Lineage::store(data, Some(lineage)),
    };
    kept.map_err(|e| Failed::Target(format!("{}: {e}", data.display())))?;
    progress.finish();
    Ok(Restored {
        generation: generation.to_string(),
        snapshot: snap.id,
        skipped: Vec::new(),
        bytes,
        records,
        last_lsn,
    })
}

/// Log segments written one after the other into a directory, each up to about `max` bytes
/// (the restored box's first open reads a segment whole), with consecutive sequence numbers.
struct Segments {
    dir: PathBuf,
    max: u64,
    seq: u64,
    /// The segment being written and its size.
    open: Option<(std::io::BufWriter<std::fs::File>, u64)>,
}

impl Segments {
    fn new(dir: &Path, max: u64) -> Result<Segments, String> {
        crate::engine::private::create_dir_all(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            max,
            seq: 0,
            open: None,
        })
    }

    /// Appends record `lsn`'s frame, in a new segment when this one would pass `max`.
    fn push(&mut self, lsn: u64, frame_bytes: &[u8]) -> Result<(), String> {
        use std::io::Write;
        let full = self.open.as_ref().is_some_and(|(_, bytes)| {
            *bytes > frame::SEGMENT_HEADER_BYTES as u64 && bytes + frame_bytes.len() as u64 > self.max
        });
        if full || self.open.is_none() {
            self.close()?;
            self.seq += 1;
            let path = self.dir.join(frame::segment_name(self.seq));
            let io = |e: std::io::Error| format!("{}: {e}", path.display());
            let file = crate::engine::private::file_options()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io)?;
            let mut out = std::io::BufWriter::new(file);
            out.write_all(&frame::encode_segment_header(frame::SegmentHeader {
                seq: self.seq,
                first_lsn: lsn,
            }))
            .map_err(io)?;
            self.open = Some((out, frame::SEGMENT_HEADER_BYTES as u64));
        }
        if let Some((out, bytes)) = self.open.as_mut() {
            out.write_all(frame_bytes)
                .map_err(|e| format!("{}: {e}", self.dir.display()))?;
            *bytes += frame_bytes.len() as u64;
        }
        Ok(())
    }

    /// Flushes and syncs the segment being written.
    fn close(&mut self) -> Result<(), String> {
        if let Some((out, _)) = self.open.take() {
            let io = |e: std::io::Error| format!("{}: {e}", self.dir.display());
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
        }
        Ok(())
    }
}

/// Writes the log records after `snap` (from its first LSN on) from the box's log stream as
/// log segments into `dir`, as checked frames: consecutive LSNs of the snapshot's generation, a
/// record in parts put together from its parts in order (at most a frame's largest size),
/// each frame whole and matching its checksums — or says why not. One record is in memory at a
/// time. Returns the records written and the last one's LSN.
async fn log_after(
    js: &jetstream::Context,
    cfg: &NatsSinkConfig,
    snap: &Snapshot,
    dir: &Path,
    segment_bytes: u64,
) -> Result<(u64, u64, crate::engine::feed::Generation), String> {
    let mut out = Segments::new(dir, segment_bytes)?;
    let mut written = 0u64;
    let name = cfg.log_stream_name();
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
    let generation: crate::engine::feed::Generation = snap
        .generation
        .parse()
        .map_err(|e| format!("snapshot {}: {e}", snap.id))?;
    let finish = |mut out: Segments, written: u64, generation| {
        out.close()?;
        crate::engine::manifest::sync_dir(&out.dir).map_err(|e| e.to_string())?;
        Ok((written, snap.first_lsn.saturating_sub(1) + written, generation))
    };
    if last_seq == 0 || last_seq < first_seq {
        return finish(out, 0, generation);
    }
    // From the record before the first one needed: a promotion's mark right after it (it
    // carries that record's LSN) is read, and the copy goes on in the new generation.
    let lo = seq_at_or_after(
        &stream,
        &name,
        first_seq,
        last_seq,
        snap.first_lsn.saturating_sub(1),
    )
    .await?;
    let mut asm = Assembler::new(generation, snap.first_lsn);
    for seq in lo..=last_seq {
        let m = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| format!("stream {name} message {seq}: {e}"))?;
        match asm.take(&m.headers, &m.payload, seq)? {
            Step::Frame(lsn, frame) => {
                out.push(lsn, &frame)?;
                written += 1;
            }
            Step::Skip | Step::Promoted { .. } => {}
        }
    }
    let generation = asm.generation;
    finish(out, written, generation)
}

/// The first message of the log stream whose record is at or after `lsn` (`last_seq + 1` when
/// none is): LSNs grow with the stream's sequence, so a binary search of `get`s.
pub(crate) async fn seq_at_or_after(
    stream: &jetstream::stream::Stream,
    name: &str,
    first_seq: u64,
    last_seq: u64,
    lsn: u64,
) -> Result<u64, String> {
    let (mut lo, mut hi) = (first_seq, last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let m = stream
            .get_raw_message(mid)
            .await
            .map_err(|e| format!("stream {name} message {mid}: {e}"))?;
        if place_of(&m.headers)?.0.lsn < lsn {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// A log message's position and part (`k/n`), from its headers.
fn place_of(
    headers: &async_nats::HeaderMap,
) -> Result<(crate::engine::feed::Position, Option<(u32, u32)>), String> {
    let pos: crate::engine::feed::Position = headers
        .get("Shardbox-Position")
        .ok_or("a log message without Shardbox-Position")?
        .as_str()
        .parse()?;
    let part = match headers.get("Shardbox-Part") {
        None => None,
        Some(p) => {
            let bad = || format!("a log message with Shardbox-Part `{}`", p.as_str());
            let (k, n) = p.as_str().split_once('/').ok_or_else(bad)?;
            Some((k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?))
        }
    };
    Ok((pos, part))
}

/// What one message of the log stream is to a reader that copies the log in order.
pub(crate) enum Step {
    /// A record it already has (or a part of one still coming).
    Skip,
    /// Record `lsn`'s whole frame, checked.
    Frame(u64, Vec<u8>),
    /// A standby was promoted here: the history goes on as `generation`.
    Promoted {
        generation: crate::engine::feed::Generation,
        through: u64,
    },
}

/// Puts the log stream's messages back together as the log's frames, checking as it goes:
/// consecutive LSNs of one history (a promotion's mark moves it to the next generation), a
/// record's parts in order, each frame whole and matching its checksums.
pub(crate) struct Assembler {
    pub generation: crate::engine::feed::Generation,
    /// The next record due.
    pub expect: u64,
    record: Vec<u8>,
    parts: Option<(u32, u32)>,
    /// The history this copy's generation continues: its records up to the fork, and the mark
    /// there, are this copy's too.
    lineage: Option<crate::engine::feed::position::Lineage>,
}

impl Assembler {
    pub fn new(generation: crate::engine::feed::Generation, expect: u64) -> Assembler {
        Assembler {
            generation,
            expect,
            record: Vec::new(),
            parts: None,
            lineage: None,
        }
    }

    /// Also takes the records of the generation `lineage` continues, up to its fork, as held.
    pub fn with_lineage(mut self, lineage: Option<crate::engine::feed::position::Lineage>) -> Self {
        self.lineage = lineage;
        self
    }

    pub fn take(
        &mut self,
        headers: &async_nats::HeaderMap,
        payload: &[u8],
        seq: u64,
    ) -> Result<Step, String> {
        let (pos, part) = place_of(headers)?;
        if let Some(mark) = headers.get(super::sink::PROMOTED_HEADER) {
            let (g, l) = mark
                .as_str()
                .split_once(':')
                .ok_or_else(|| format!("a promotion mark `{}` at sequence {seq}", mark.as_str()))?;
            let (prev, through): (crate::engine::feed::Generation, u64) = (
                g.parse()?,
                l.parse().map_err(|_| format!("a promotion mark `{}`", mark.as_str()))?,
            );
            // The fork this copy already went through.
            if self.lineage.is_some_and(|l| l.previous == prev && l.through_lsn == through)
                && pos.generation == self.generation
            {
                return Ok(Step::Skip);
            }
            if prev != self.generation || through.checked_add(1) != Some(self.expect) {
                return Err(format!(
                    "a standby was promoted at record {through} of generation {prev} (sequence {seq}), where this copy is at record {} of generation {}: another history",
                    self.expect.saturating_sub(1),
                    self.generation
                ));
            }
            // Parts of a record the old primary never finished: not in its history.
            self.parts = None;
            self.record.clear();
            self.generation = pos.generation;
            return Ok(Step::Promoted {
                generation: pos.generation,
                through,
            });
        }
        if pos.lsn < self.expect && self.parts.is_none() && pos.generation == self.generation {
            return Ok(Step::Skip);
        }
        // The history this copy forked from: its records up to the fork are this copy's, and
        // any past it (parts of a record the old primary never finished) are not its history.
        if self.parts.is_none() && self.lineage.is_some_and(|l| l.previous == pos.generation) {
            return Ok(Step::Skip);
        }
        if pos.generation != self.generation {
            return Err(format!(
                "the log stream holds generation {} at sequence {seq}, this copy {}: another history",
                pos.generation, self.generation
            ));
        }
        if pos.lsn != self.expect {
            return Err(format!(
                "the log stream has LSN {} where {} was due (sequence {seq}): the log is not whole",
                pos.lsn, self.expect
            ));
        }
        let (k, n) = part.unwrap_or((1, 1));
        let follows = match self.parts {
            None => k == 1,
            Some((pk, pn)) => pn == n && k == pk + 1,
        };
        if !follows || k > n {
            return Err(format!(
                "record {} arrives as part {k}/{n} after {:?} (sequence {seq}): its parts are not whole",
                self.expect, self.parts
            ));
        }
        self.record.extend_from_slice(payload);
        if self.record.len() > frame::frame_len(frame::PAYLOAD_BYTES_MAX) {
            return Err(format!(
                "record {}'s parts pass the largest frame a log holds",
                self.expect
            ));
        }
        if k < n {
            self.parts = Some((k, n));
            return Ok(Step::Skip);
        }
        self.parts = None;
        let record = std::mem::take(&mut self.record);
        check_frame(self.expect, &record)?;
        let lsn = self.expect;
        self.expect += 1;
        Ok(Step::Frame(lsn, record))
    }
}

/// Whether `body` is the whole frame of record `lsn`, matching its checksums.
fn check_frame(lsn: u64, body: &[u8]) -> Result<(), String> {
    let header = frame::parse_header(body)
        .filter(|h| h.lsn == lsn && body.len() == h.frame_len())
        .ok_or_else(|| format!("log record {lsn} from the hub is not a whole frame"))?;
    if !frame::payload_ok(&header, &body[frame::RECORD_HEADER_BYTES..][..header.len]) {
        return Err(format!("log record {lsn} from the hub fails its checksum"));
    }
    Ok(())
}

/// Puts the checked log segments (`records` records, in `segments`) into the staged copy as
/// its log, where the next open replays them (each shard skips what it holds).
fn place_log(staged: &Path, segments: &Path, records: u64) -> Result<(), String> {
    if records == 0 {
        return Ok(());
    }
    let wal = staged.join("wal");
    // Beside the data directory, so mostly the same filesystem; else a copy.
    if std::fs::rename(segments, &wal).is_err() {
        crate::engine::private::create_dir_all(&wal)
            .map_err(|e| format!("{}: {e}", wal.display()))?;
        for entry in std::fs::read_dir(segments).map_err(|e| format!("{}: {e}", segments.display()))? {
            let from = entry.map_err(|e| e.to_string())?.path();
            let Some(name) = from.file_name() else { continue };
            let to = wal.join(name);
            std::fs::copy(&from, &to)
                .and_then(|_| std::fs::File::open(&to)?.sync_all())
                .map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    crate::engine::manifest::sync_dir(&wal).map_err(|e| e.to_string())
}
