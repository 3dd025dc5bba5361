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
//!   ([`super::sink::Source::Log`]): every record as its frame, consecutive LSNs.
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
    let data = store.engine().data_dir().to_path_buf();
    let generation = store.engine().feed().generation.to_string();
    let store = store.clone();
    take(cfg, &data, generation, move |out| {
        backup::backup(&store, out, &Progress::quiet())
    })
    .await
}

/// Takes a snapshot every `snapshot_interval_ms` (the first at once when the hub has none,
/// or only an older one), until the task is dropped. Failures are logged and tried again at
/// the next turn.
pub async fn schedule(store: super::Store, cfg: NatsSinkConfig) {
    if cfg.snapshot_interval_ms == 0 {
        return;
    }
    let every = std::time::Duration::from_millis(cfg.snapshot_interval_ms);
    let now = || crate::base::clock::Clock::now_ms(&crate::base::clock::SystemClock);
    // When the newest snapshot was made (0: none, or the hub cannot be asked yet).
    let newest = list(&cfg)
        .await
        .ok()
        .and_then(|l| l.last().map(|s| s.created_ms))
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

/// A staging directory beside the data directory (a backup may not go inside it).
fn staging(data: &Path, what: &str) -> PathBuf {
    let name = data
        .file_name()
        .map_or("shardbox-data".into(), |n| n.to_string_lossy().into_owned());
    let parent = data.parent().filter(|p| !p.as_os_str().is_empty());
    parent
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.{what}-{:016x}", rand::random::<u64>()))
}

/// Takes a snapshot: `backup_into` writes an online backup of the running store into the
/// directory it is given; it is uploaded, then older snapshots are pruned.
pub async fn take(
    cfg: &NatsSinkConfig,
    data: &Path,
    generation: String,
    backup_into: impl FnOnce(&Path) -> Result<Report, String> + Send + 'static,
) -> Result<Snapshot, String> {
    let dir = staging(data, "snapshot");
    let d2 = dir.clone();
    let made = tokio::task::spawn_blocking(move || {
        let report = backup_into(&d2)?;
        let applied = report.applied.clone();
        Ok::<_, String>((report, applied))
    })
    .await
    .map_err(|e| format!("the snapshot's backup: {e}"));
    let result = async {
        let (report, applied) = made??;
        let first_lsn = applied.iter().copied().min().unwrap_or(0) + 1;
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
    force: bool,
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
        let dir = staging(data, "from-nats");
        let attempt = restore_one(&js, &store, cfg, id, &dir, data, force, progress).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        match attempt {
            Ok(mut r) => {
                r.skipped = skipped;
                return Ok(r);
            }
            // The target was touched or refused: no other snapshot can do better.
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

#[allow(clippy::too_many_arguments)]
async fn restore_one(
    js: &jetstream::Context,
    store: &ObjectStore,
    cfg: &NatsSinkConfig,
    id: &str,
    dir: &Path,
    data: &Path,
    force: bool,
    progress: &Progress,
) -> Result<Restored, Failed> {
    let snap: Snapshot = read_object(store, &format!("{id}/{DONE}"))
        .await
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(Failed::Snapshot)?;
    crate::engine::private::create_dir_all(&dir.join("shards"))
        .map_err(|e| Failed::Target(format!("{}: {e}", dir.display())))?;
    for rel in &snap.files {
        if rel.contains("..") || rel.starts_with('/') {
            return Err(Failed::Snapshot(format!("a file named {rel}")));
        }
        let bytes = read_object(store, &format!("{id}/{rel}"))
            .await
            .map_err(Failed::Snapshot)?;
        tokio::fs::write(dir.join(rel), bytes)
            .await
            .map_err(|e| Failed::Target(format!("{}: {e}", dir.join(rel).display())))?;
    }
    // The log after it, whole, before anything is replaced.
    let frames = log_after(js, cfg, snap.first_lsn)
        .await
        .map_err(Failed::Snapshot)?;
    let (d2, data2) = (dir.to_path_buf(), data.to_path_buf());
    let bytes = {
        let p = Progress::quiet();
        // The sums are checked before the target is touched (a damaged file fails here).
        tokio::task::spawn_blocking(move || backup::restore(&d2, &data2, force, &p))
            .await
            .map_err(|e| Failed::Target(e.to_string()))?
            .map_err(|e| {
                if e.contains("checksum") || e.contains("SHA256") || e.contains("sum") {
                    Failed::Snapshot(e)
                } else {
                    Failed::Target(e)
                }
            })?
    };
    progress.finish();
    let records = frames.len() as u64;
    let last_lsn = frames.last().map_or(snap.first_lsn - 1, |(lsn, _)| *lsn);
    write_log(data, snap.first_lsn, &frames).map_err(Failed::Target)?;
    Ok(Restored {
        snapshot: snap.id,
        skipped: Vec::new(),
        bytes,
        records,
        last_lsn,
    })
}

/// The log records from `first_lsn` on, as frames, from the box's log stream: consecutive (a
/// record in parts is put together), or why not.
async fn log_after(
    js: &jetstream::Context,
    cfg: &NatsSinkConfig,
    first_lsn: u64,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let name = cfg.log_stream_name();
    let mut stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream.info().await.map_err(|e| format!("stream {name}: {e}"))?;
    let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    if last_seq == 0 {
        return Ok(out);
    }
    let lsn_of = |m: &jetstream::message::StreamMessage| -> Result<(u64, Option<(u32, u32)>), String> {
        let pos: crate::engine::feed::Position = m
            .headers
            .get("Shardbox-Position")
            .ok_or("a log message without Shardbox-Position")?
            .as_str()
            .parse()?;
        let part = m.headers.get("Shardbox-Part").and_then(|p| {
            let (k, n) = p.as_str().split_once('/')?;
            Some((k.parse().ok()?, n.parse().ok()?))
        });
        Ok((pos.lsn, part))
    };
    // The first message at or after `first_lsn` (LSNs grow with the stream's sequence).
    let (mut lo, mut hi) = (first_seq, last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let m = stream
            .get_raw_message(mid)
            .await
            .map_err(|e| format!("stream {name} message {mid}: {e}"))?;
        if lsn_of(&m)?.0 < first_lsn {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut expect = first_lsn;
    let mut record: Vec<u8> = Vec::new();
    for seq in lo..=last_seq {
        let m = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| format!("stream {name} message {seq}: {e}"))?;
        let (lsn, part) = lsn_of(&m)?;
        if lsn != expect {
            return Err(format!(
                "the log stream has LSN {lsn} where {expect} was due (sequence {seq}): the log after the snapshot is not whole"
            ));
        }
        let (k, n) = part.unwrap_or((1, 1));
        if k == 1 {
            record.clear();
        }
        record.extend_from_slice(&m.payload);
        if k == n {
            out.push((lsn, std::mem::take(&mut record)));
            expect += 1;
        }
    }
    Ok(out)
}

/// Writes `frames` (LSNs `first_lsn`, `first_lsn + 1`, …) as the restored directory's log: one
/// segment the next open replays (each shard skips the records it already holds).
fn write_log(data: &Path, first_lsn: u64, frames: &[(u64, Vec<u8>)]) -> Result<(), String> {
    use std::io::Write;
    if frames.is_empty() {
        return Ok(());
    }
    let wal = data.join("wal");
    crate::engine::private::create_dir_all(&wal).map_err(|e| format!("{}: {e}", wal.display()))?;
    // Nothing else is in a freshly restored log.
    let path = wal.join(frame::segment_name(1));
    let mut f = crate::engine::private::file_options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::with_capacity(frame::SEGMENT_HEADER_BYTES);
    out.extend_from_slice(&frame::encode_segment_header(frame::SegmentHeader {
        seq: 1,
        first_lsn,
    }));
    for (lsn, body) in frames {
        let header = frame::parse_header(body)
            .filter(|h| h.lsn == *lsn && body.len() == h.frame_len())
            .ok_or_else(|| format!("log record {lsn} from the hub is not a whole frame"))?;
        if !frame::payload_ok(&header, &body[frame::RECORD_HEADER_BYTES..][..header.len]) {
            return Err(format!("log record {lsn} from the hub fails its checksum"));
        }
        out.extend_from_slice(body);
    }
    f.write_all(&out)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    crate::engine::manifest::sync_dir(&wal).map_err(|e| e.to_string())?;
    Ok(())
}
