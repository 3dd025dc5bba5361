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

/// A staging directory beside the data directory (a backup may not go inside it), named after
/// it: `.<name>.<what>-<random>`.
fn staging(data: &Path, what: &str) -> Result<PathBuf, String> {
    // `.` or `x/..` name no directory to stand beside: the absolute, normalised path does.
    let data = backup::resolve_path(data)?;
    let name = data
        .file_name()
        .map_or("shardbox-data".into(), |n| n.to_string_lossy().into_owned());
    let parent = data
        .parent()
        .ok_or_else(|| format!("{}: no directory to stage beside", data.display()))?;
    Ok(parent.join(format!(".{name}.{what}-{:016x}", rand::random::<u64>())))
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
        let dir = staging(data, "from-nats")?;
        let attempt = restore_one(&js, &store, cfg, id, &dir, data, force, progress).await;
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
    data: &Path,
    force: bool,
    progress: &Progress,
) -> Result<Restored, Failed> {
    use sha2::Digest;
    let snap: Snapshot = read_object(store, &format!("{id}/{DONE}"))
        .await
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(Failed::Snapshot)?;
    crate::engine::private::create_dir_all(&dir.join("shards"))
        .map_err(|e| Failed::Target(format!("{}: {e}", dir.display())))?;
    for rel in &snap.files {
        let safe = rel == backup::SUMS
            || rel == "MANIFEST"
            || (rel.starts_with("shards/") && !rel.contains("..") && rel.matches('/').count() == 1);
        if !safe {
            return Err(Failed::Snapshot(format!("a file named {rel}")));
        }
        let bytes = read_object(store, &format!("{id}/{rel}"))
            .await
            .map_err(Failed::Snapshot)?;
        progress.inc(bytes.len() as u64);
        tokio::fs::write(dir.join(rel), bytes)
            .await
            .map_err(|e| Failed::Target(format!("{}: {e}", dir.join(rel).display())))?;
    }
    // Its files against its sums (the sums file names exactly the MANIFEST's shards).
    let sums = backup::read_sums(dir).map_err(Failed::Snapshot)?;
    for (sum, rel) in &sums {
        let bytes = tokio::fs::read(dir.join(rel))
            .await
            .map_err(|e| Failed::Snapshot(format!("{rel}: {e}")))?;
        let got = crate::base::util::hex(&sha2::Sha256::digest(&bytes));
        if &got != sum {
            return Err(Failed::Snapshot(format!(
                "{rel}: checksum mismatch (expected {sum}, the hub has {got}): the snapshot is damaged"
            )));
        }
    }
    // The log after it, whole, of the same history.
    let frames = log_after(js, cfg, &snap).await.map_err(Failed::Snapshot)?;
    let records = frames.len() as u64;
    let last_lsn = frames.last().map_or(snap.first_lsn - 1, |(lsn, _)| *lsn);
    let first_lsn = snap.first_lsn;
    let (d2, data2) = (dir.to_path_buf(), data.to_path_buf());
    let bytes = tokio::task::spawn_blocking(move || {
        backup::restore_with(&d2, &data2, force, &Progress::quiet(), |staged| {
            write_log(staged, first_lsn, &frames)
        })
    })
    .await
    .map_err(|e| Failed::Target(e.to_string()))?
    .map_err(Failed::Target)?;
    progress.finish();
    Ok(Restored {
        snapshot: snap.id,
        skipped: Vec::new(),
        bytes,
        records,
        last_lsn,
    })
}

/// The log records after `snap` (from its first LSN on) from the box's log stream, as checked
/// frames: consecutive LSNs of the snapshot's generation, a record in parts put together from
/// its parts in order, each frame whole and matching its checksums — or why not.
async fn log_after(
    js: &jetstream::Context,
    cfg: &NatsSinkConfig,
    snap: &Snapshot,
) -> Result<Vec<(u64, Vec<u8>)>, String> {
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
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    if last_seq == 0 || last_seq < first_seq {
        return Ok(out);
    }
    type Place = (crate::engine::feed::Position, Option<(u32, u32)>);
    let place_of = |m: &jetstream::message::StreamMessage| -> Result<Place, String> {
        let pos: crate::engine::feed::Position = m
            .headers
            .get("Shardbox-Position")
            .ok_or("a log message without Shardbox-Position")?
            .as_str()
            .parse()?;
        let part = match m.headers.get("Shardbox-Part") {
            None => None,
            Some(p) => {
                let bad = || format!("a log message with Shardbox-Part `{}`", p.as_str());
                let (k, n) = p.as_str().split_once('/').ok_or_else(bad)?;
                Some((k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?))
            }
        };
        Ok((pos, part))
    };
    // The first message at or after the snapshot's first LSN (LSNs grow with the sequence).
    let (mut lo, mut hi) = (first_seq, last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let m = stream
            .get_raw_message(mid)
            .await
            .map_err(|e| format!("stream {name} message {mid}: {e}"))?;
        if place_of(&m)?.0.lsn < snap.first_lsn {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut expect = snap.first_lsn;
    let mut record: Vec<u8> = Vec::new();
    let mut parts: Option<(u32, u32)> = None;
    for seq in lo..=last_seq {
        let m = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| format!("stream {name} message {seq}: {e}"))?;
        let (pos, part) = place_of(&m)?;
        if pos.generation.to_string() != snap.generation {
            return Err(format!(
                "the log stream holds generation {} at sequence {seq}, the snapshot {}: another history",
                pos.generation, snap.generation
            ));
        }
        if pos.lsn != expect {
            return Err(format!(
                "the log stream has LSN {} where {expect} was due (sequence {seq}): the log after the snapshot is not whole",
                pos.lsn
            ));
        }
        let (k, n) = part.unwrap_or((1, 1));
        let follows = match parts {
            None => k == 1,
            Some((pk, pn)) => pn == n && k == pk + 1,
        };
        if !follows || k > n {
            return Err(format!(
                "record {expect} arrives as part {k}/{n} after {parts:?} (sequence {seq}): its parts are not whole"
            ));
        }
        record.extend_from_slice(&m.payload);
        if k < n {
            parts = Some((k, n));
            continue;
        }
        parts = None;
        let frame = std::mem::take(&mut record);
        check_frame(expect, &frame)?;
        out.push((expect, frame));
        expect += 1;
    }
    Ok(out)
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

/// Writes `frames` (LSNs `first_lsn`, `first_lsn + 1`, …, checked) as the log of the staged
/// copy at `staged`: one segment the next open replays (each shard skips what it holds).
fn write_log(staged: &Path, first_lsn: u64, frames: &[(u64, Vec<u8>)]) -> Result<(), String> {
    use std::io::Write;
    if frames.is_empty() {
        return Ok(());
    }
    let wal = staged.join("wal");
    crate::engine::private::create_dir_all(&wal).map_err(|e| format!("{}: {e}", wal.display()))?;
    let path = wal.join(frame::segment_name(1));
    let mut f = crate::engine::private::file_options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(&mut f);
    w.write_all(&frame::encode_segment_header(frame::SegmentHeader {
        seq: 1,
        first_lsn,
    }))
    .map_err(|e| format!("{}: {e}", path.display()))?;
    for (_, body) in frames {
        w.write_all(body)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    drop(w);
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
    crate::engine::manifest::sync_dir(&wal).map_err(|e| e.to_string())?;
    Ok(())
}
