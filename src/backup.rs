//! Online backup and restore.
//!
//! A backup is a directory: `MANIFEST`, `shards/NNN.redb` and `SHA256SUMS` (the format of
//! `sha256sum`, so `cd DEST && sha256sum -c SHA256SUMS` verifies it by hand too). Each shard is
//! copied table by table from **one read transaction** of the live shard into a fresh redb file,
//! so the copy is that shard at one instant, taken while writers keep running. A write is
//! applied to its shard before its reply is sent, so every write acknowledged before the backup
//! started is in it. The shard's applied LSN travels in its `meta` table; a restored directory
//! starts with an empty log numbered past it.
//!
//! Restore verifies every checksum before it touches the target, refuses a non-empty target
//! without `force`, and writes each file under a temporary name, fsyncs and renames it.

use crate::engine::manifest::{sync_dir, DirLock, Manifest};
use crate::engine::{shard_path, Engine};
use crate::progress::Progress;
use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, TableDefinition, TableHandle,
    Value,
};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The checksum file of a backup.
pub const SUMS: &str = "SHA256SUMS";

/// Rows copied per commit of the new file (the last commit is the durable one).
const ROWS_PER_COMMIT: u64 = 50_000;

/// What a backup wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub out: PathBuf,
    pub shards: usize,
    pub rows: u64,
    pub bytes: u64,
    pub elapsed_ms: u64,
    pub files: Vec<FileSum>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileSum {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Checks that `out` can take a backup: absent, or an empty directory.
pub fn check_target(out: &Path) -> Result<(), String> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: back up into a new or empty directory",
                    out.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(out, e)),
    }
}

/// Backs up every shard of a running engine into `out` (absent or empty).
pub fn backup(engine: &Engine, out: &Path, progress: &Progress) -> Result<Report, String> {
    let started = Instant::now();
    check_target(out)?;
    std::fs::create_dir_all(out.join("shards")).map_err(|e| err(out, e))?;
    let manifest_from = Manifest::path(engine.data_dir());
    let manifest_to = Manifest::path(out);
    std::fs::copy(&manifest_from, &manifest_to).map_err(|e| err(&manifest_to, e))?;
    let mut files = vec![sum_file(out, &manifest_to)?];
    let mut rows = 0;
    progress.set_total(engine.shards().len() as u64);
    for shard in engine.shards() {
        // The consistent view: one read transaction for the whole shard.
        let txn = shard
            .db
            .begin_read()
            .map_err(|e| format!("shard {}: {e}", shard.id))?;
        let path = shard_path(out, shard.id);
        rows += copy_shard(&txn, &path).map_err(|e| format!("shard {}: {e}", shard.id))?;
        drop(txn);
        files.push(sum_file(out, &path)?);
        progress.inc(1);
    }
    write_sums(out, &files)?;
    sync_dir(&out.join("shards")).map_err(|e| e.to_string())?;
    sync_dir(out).map_err(|e| e.to_string())?;
    progress.finish();
    Ok(Report {
        out: out.to_path_buf(),
        shards: engine.shards().len(),
        rows,
        bytes: files.iter().map(|f| f.bytes).sum(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        files,
    })
}

/// Copies every table of `txn` into a new redb file at `path`; returns the rows copied.
fn copy_shard(txn: &ReadTransaction, path: &Path) -> Result<u64, String> {
    let tmp = path.with_extension("redb.tmp");
    let db = Database::builder()
        .set_cache_size(16 << 20)
        .create(&tmp)
        .map_err(|e| err(&tmp, e))?;
    let mut copier = Copier {
        db: &db,
        txn: None,
        pending: 0,
        rows: 0,
    };
    if txn
        .list_multimap_tables()
        .map_err(|e| e.to_string())?
        .next()
        .is_some()
    {
        return Err("has a multimap table; this version cannot back it up".into());
    }
    for table in txn.list_tables().map_err(|e| e.to_string())? {
        let name = table.name().to_string();
        // The table's types are not in its handle: try the kinds shardbox uses.
        let copied = copier.table::<&[u8], &[u8]>(txn, &name)?
            || copier.table::<&[u8], ()>(txn, &name)?
            || copier.table::<&[u8], u64>(txn, &name)?
            || copier.table::<&str, u64>(txn, &name)?;
        if !copied {
            return Err(format!(
                "table `{name}` has key/value types this version does not know"
            ));
        }
    }
    let mut last = copier.take_txn()?;
    last.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    last.commit().map_err(|e| err(&tmp, e))?;
    let rows = copier.rows;
    drop(db);
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    Ok(rows)
}

struct Copier<'d> {
    db: &'d Database,
    txn: Option<redb::WriteTransaction>,
    pending: u64,
    rows: u64,
}

impl Copier<'_> {
    fn take_txn(&mut self) -> Result<redb::WriteTransaction, String> {
        match self.txn.take() {
            Some(t) => Ok(t),
            None => self.db.begin_write().map_err(|e| e.to_string()),
        }
    }

    /// Copies table `name` if it has types `K, V`; `Ok(false)` if its types are others.
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        txn: &ReadTransaction,
        name: &str,
    ) -> Result<bool, String>
    where
        for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
    {
        let def = TableDefinition::<K, V>::new(name);
        let src = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableTypeMismatch { .. }) => return Ok(false),
            Err(e) => return Err(format!("table `{name}`: {e}")),
        };
        let mut wtxn = self.take_txn()?;
        // The table exists in the copy even when empty.
        drop(wtxn.open_table(def).map_err(|e| e.to_string())?);
        use redb::ReadableTable;
        for row in src.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| format!("table `{name}`: {e}"))?;
            {
                let mut dst = wtxn.open_table(def).map_err(|e| e.to_string())?;
                dst.insert(k.value(), v.value())
                    .map_err(|e| format!("table `{name}`: {e}"))?;
            }
            self.rows += 1;
            self.pending += 1;
            if self.pending >= ROWS_PER_COMMIT {
                wtxn.set_durability(Durability::None)
                    .map_err(|e| e.to_string())?;
                wtxn.commit().map_err(|e| e.to_string())?;
                wtxn = self.db.begin_write().map_err(|e| e.to_string())?;
                self.pending = 0;
            }
        }
        self.txn = Some(wtxn);
        Ok(true)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a file and its size.
fn hash_file(path: &Path) -> Result<(String, u64), String> {
    let mut f = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).map_err(|e| err(path, e))?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex(&h.finalize()), n))
}

fn sum_file(root: &Path, path: &Path) -> Result<FileSum, String> {
    let (sha256, bytes) = hash_file(path)?;
    let rel = path
        .strip_prefix(root)
        .map_err(|e| err(path, e))?
        .to_string_lossy()
        .into_owned();
    Ok(FileSum {
        path: rel,
        bytes,
        sha256,
    })
}

fn write_sums(out: &Path, files: &[FileSum]) -> Result<(), String> {
    let path = out.join(SUMS);
    let mut f = std::fs::File::create(&path).map_err(|e| err(&path, e))?;
    for s in files {
        writeln!(f, "{}  {}", s.sha256, s.path).map_err(|e| err(&path, e))?;
    }
    f.sync_all().map_err(|e| err(&path, e))
}

/// Reads `SHA256SUMS` and checks every file it names; returns the list. Refuses a backup whose
/// MANIFEST or any shard it promises is missing or differs.
pub fn verify(from: &Path) -> Result<Vec<FileSum>, String> {
    let sums = from.join(SUMS);
    let text = std::fs::read_to_string(&sums).map_err(|e| {
        err(
            &sums,
            format!("{e} (is {} a shardbox backup?)", from.display()),
        )
    })?;
    let mut files = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (sum, rel) = line
            .split_once("  ")
            .ok_or_else(|| format!("{SUMS} line {}: expected `<sha256>  <path>`", i + 1))?;
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "{SUMS} line {}: path `{rel}` leaves the backup",
                i + 1
            ));
        }
        let (got, bytes) = hash_file(&from.join(rel_path))?;
        if got != sum {
            return Err(format!(
                "{rel}: checksum mismatch (expected {sum}, file has {got}): the backup is damaged"
            ));
        }
        files.push(FileSum {
            path: rel.to_string(),
            bytes,
            sha256: got,
        });
    }
    let manifest = Manifest::read(from)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no MANIFEST", from.display()))?;
    if !files.iter().any(|f| f.path == "MANIFEST") {
        return Err(format!("{SUMS} does not cover the MANIFEST"));
    }
    for id in 0..manifest.shards as usize {
        let rel = format!("shards/{id:03}.redb");
        if !files.iter().any(|f| f.path == rel) {
            return Err(format!(
                "{rel} is missing from the backup (the MANIFEST has {} shards)",
                manifest.shards
            ));
        }
    }
    Ok(files)
}

/// Restores the backup at `from` into `data`. Verifies every checksum first; a non-empty
/// `data` needs `force` (its shards, log, cache and MANIFEST are then replaced).
pub fn restore(from: &Path, data: &Path, force: bool, progress: &Progress) -> Result<u64, String> {
    let files = verify(from)?;
    let non_empty = std::fs::read_dir(data)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !force {
        return Err(format!(
            "{} is not empty: restore into a new directory, or pass --force to replace its data",
            data.display()
        ));
    }
    std::fs::create_dir_all(data).map_err(|e| err(data, e))?;
    // No server may run on it meanwhile.
    let _lock = DirLock::acquire(data).map_err(|e| e.to_string())?;
    if non_empty {
        for sub in ["shards", "wal", "cache"] {
            let p = data.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| err(&p, e))?;
            }
        }
        for f in ["MANIFEST", "ballast"] {
            let p = data.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| err(&p, e))?;
            }
        }
    }
    std::fs::create_dir_all(data.join("shards")).map_err(|e| err(data, e))?;
    progress.set_total(files.iter().map(|f| f.bytes).sum());
    let mut total = 0;
    // Shards first, the MANIFEST last: a restore cut short leaves no MANIFEST, so nothing
    // starts on half a restore.
    let mut ordered: Vec<&FileSum> = files.iter().filter(|f| f.path != "MANIFEST").collect();
    ordered.extend(files.iter().filter(|f| f.path == "MANIFEST"));
    for f in ordered {
        let src = from.join(&f.path);
        let dst = data.join(&f.path);
        let tmp = dst.with_extension("restore.tmp");
        std::fs::copy(&src, &tmp).map_err(|e| err(&tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|h| h.sync_all())
            .map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| err(&dst, e))?;
        total += f.bytes;
        progress.inc(f.bytes);
    }
    sync_dir(&data.join("shards")).map_err(|e| e.to_string())?;
    sync_dir(data).map_err(|e| e.to_string())?;
    progress.finish();
    Ok(total)
}

/// Rewrites every shard of a stopped data directory compactly (redb's compaction): free pages
/// at the end of each file are given back. The log is left as it is (the next start replays
/// what the shards lack). Returns bytes before and after.
pub fn compact(data: &Path, progress: &Progress) -> Result<(u64, u64), String> {
    let manifest = Manifest::read(data)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} has no MANIFEST: not a shardbox data directory",
                data.display()
            )
        })?;
    let _lock = DirLock::acquire(data).map_err(|e| e.to_string())?;
    progress.set_total(manifest.shards as u64);
    let (mut before, mut after) = (0, 0);
    for id in 0..manifest.shards as usize {
        let path = shard_path(data, id);
        before += std::fs::metadata(&path).map_err(|e| err(&path, e))?.len();
        let mut db = Database::open(&path).map_err(|e| err(&path, e))?;
        db.compact().map_err(|e| err(&path, e))?;
        drop(db);
        after += std::fs::metadata(&path).map_err(|e| err(&path, e))?.len();
        progress.inc(1);
    }
    progress.finish();
    Ok((before, after))
}
