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
use crate::engine::private;
use crate::engine::{shard_path, Engine};
use crate::base::progress::Progress;
use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, TableDefinition, TableHandle,
    Value,
};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Owner-only directories and files (0700 / 0600 whatever the umask), for the commands that
/// write beside a store: exports, staged imports.
pub use crate::engine::private::{create_dir_all, file_options};

pub use crate::engine::staging::{
    copy_stopped, finish_staged, import_staging_dir, is_staged, mark_staged, remove_finished_staging,
    STAGED,
    staging_dir, swap_in,
};

/// Whether `dir` is a shardbox data directory (it holds a MANIFEST).
pub fn is_data_dir(dir: &Path) -> bool {
    Manifest::path(dir).exists()
}

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
    /// Each shard's last applied log record in the copy (read in the copy's transaction).
    #[serde(skip)]
    pub applied: Vec<u64>,
    /// Every log record up to this one is in the copy or was cancelled (the feed's end before
    /// the first shard was read: all of them were decided then, and every shard's copy is
    /// later). A replay of the log after the copy starts after it or after the lowest of
    /// `applied`, whichever is higher.
    #[serde(skip)]
    pub through_lsn: u64,
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

/// `path` made absolute and resolved as the filesystem would: its longest existing ancestor
/// canonicalized (symlinks, `/proc/self/root`, `..` through them), the rest (which does not
/// exist yet) appended with `.` and `..` applied.
pub fn resolve_path(path: &Path) -> Result<PathBuf, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("the current directory: {e}"))?
            .join(path)
    };
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    let mut resolved = loop {
        match std::fs::canonicalize(base) {
            Ok(p) => break p,
            Err(_) => match (base.parent(), base.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    base = parent;
                }
                // A last component of `..` or `.`: kept for the lexical pass below.
                (Some(parent), None) => {
                    rest.push(base.components().next_back().map_or_else(
                        || std::ffi::OsString::from("."),
                        |c| c.as_os_str().to_os_string(),
                    ));
                    base = parent;
                }
                (None, _) => break PathBuf::from("/"),
            },
        }
    };
    for part in rest.iter().rev() {
        match part.to_str() {
            Some(".") => {}
            Some("..") => {
                resolved.pop();
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved)
}

/// Refuses a backup destination inside the data directory, however it is spelled (symlinks,
/// `..`, `/proc/self/root`): a backup there would be copied into itself, and one in
/// `restore.tmp` would make the next start refuse the directory.
pub fn refuse_inside(data: &Path, out: &Path) -> Result<(), String> {
    let data_r = resolve_path(data)?;
    let out_r = resolve_path(out)?;
    if out_r.starts_with(&data_r) || data_r.starts_with(&out_r) {
        return Err(format!(
            "out `{}` is inside the data directory {} (or holds it): back up somewhere else",
            out.display(),
            data_r.display()
        ));
    }
    Ok(())
}

/// Why a directory cannot take a backup.
#[derive(Debug)]
pub enum TargetError {
    /// It holds files already (the HTTP API's 409).
    NotEmpty(String),
    /// It cannot be read as a directory: not one, or not permitted (the request's fault: 400).
    Unusable(String),
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::NotEmpty(m) | TargetError::Unusable(m) => f.write_str(m),
        }
    }
}

impl From<TargetError> for String {
    fn from(e: TargetError) -> String {
        e.to_string()
    }
}

/// Checks that `out` can take a backup: absent, or an empty directory.
pub fn check_target(out: &Path) -> Result<(), TargetError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(TargetError::NotEmpty(format!(
                    "{} is not empty: back up into a new or empty directory",
                    out.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TargetError::Unusable(err(out, e))),
    }
}

/// Backs up every shard of an open store into `out` (absent or empty), while it serves.
pub fn backup(store: &super::Store, out: &Path, progress: &Progress) -> Result<Report, String> {
    let engine: &Engine = store.engine();
    let started = Instant::now();
    check_target(out)?;
    refuse_inside(engine.data_dir(), out)?;
    private::create_dir_all(out)
        .and_then(|_| private::create_dir_all(&out.join("shards")))
        .map_err(|e| err(out, e))?;
    // Made now: checked again, so a symlink swapped in meanwhile cannot lead into the data.
    refuse_inside(engine.data_dir(), out)?;
    let manifest_from = Manifest::path(engine.data_dir());
    let manifest_to = Manifest::path(out);
    private::copy_file(&manifest_from, &manifest_to).map_err(|e| err(&manifest_to, e))?;
    let mut files = vec![sum_file(out, &manifest_to)?];
    let mut rows = 0;
    let mut applied = Vec::with_capacity(engine.shards().len());
    let through_lsn = engine.feed().end().lsn;
    progress.set_total(engine.shards().len() as u64);
    for shard in engine.shards() {
        // The consistent view: one read transaction for the whole shard.
        let txn = shard
            .db
            .begin_read()
            .map_err(|e| format!("shard {}: {e}", shard.id))?;
        let path = shard_path(out, shard.id);
        applied.push(applied_lsn(&txn).map_err(|e| format!("shard {}: {e}", shard.id))?);
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
        applied,
        through_lsn,
    })
}

/// The last log record applied to a shard, as its `meta` table says in `txn`.
fn applied_lsn(txn: &ReadTransaction) -> Result<u64, String> {
    match txn.open_table(crate::engine::writer::META) {
        Ok(t) => Ok(t
            .get(crate::engine::writer::META_LSN)
            .map_err(|e| e.to_string())?
            .map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies every table of `txn` into a new redb file at `path`; returns the rows copied.
fn copy_shard(txn: &ReadTransaction, path: &Path) -> Result<u64, String> {
    let tmp = path.with_extension("redb.tmp");
    let db = Database::builder()
        .set_cache_size(16 << 20)
        .create(&tmp)
        .map_err(|e| err(&tmp, e))?;
    private::restrict(&tmp, private::FILE_MODE).map_err(|e| err(&tmp, e))?;
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
        use redb::ReadableTable;
        let mut rows = src.iter().map_err(|e| e.to_string())?;
        loop {
            let mut wtxn = self.take_txn()?;
            let mut done = false;
            {
                // Opened once per commit (and so made even when the table is empty).
                let mut dst = wtxn.open_table(def).map_err(|e| e.to_string())?;
                while self.pending < ROWS_PER_COMMIT {
                    let Some(row) = rows.next() else {
                        done = true;
                        break;
                    };
                    let (k, v) = row.map_err(|e| format!("table `{name}`: {e}"))?;
                    dst.insert(k.value(), v.value())
                        .map_err(|e| format!("table `{name}`: {e}"))?;
                    self.rows += 1;
                    self.pending += 1;
                }
            }
            if done {
                self.txn = Some(wtxn);
                return Ok(true);
            }
            wtxn.set_durability(Durability::None)
                .map_err(|e| e.to_string())?;
            wtxn.commit().map_err(|e| e.to_string())?;
            self.pending = 0;
        }
    }
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
    Ok((crate::base::util::hex(&h.finalize()), n))
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
    let mut f = private::create_file(&path).map_err(|e| err(&path, e))?;
    for s in files {
        writeln!(f, "{}  {}", s.sha256, s.path).map_err(|e| err(&path, e))?;
    }
    f.sync_all().map_err(|e| err(&path, e))
}

/// Reads `SHA256SUMS`: the files a backup promises and their sums. Only `MANIFEST` and
/// `shards/NNN.redb` may be named, each once, and the MANIFEST and every shard it counts must
/// be; the sums themselves are checked while the files are copied ([`restore`]).
pub fn read_sums(from: &Path) -> Result<Vec<(String, String)>, String> {
    let sums = from.join(SUMS);
    let text = std::fs::read_to_string(&sums).map_err(|e| {
        err(
            &sums,
            format!("{e} (is {} a shardbox backup?)", from.display()),
        )
    })?;
    let manifest = Manifest::read(from)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no MANIFEST", from.display()))?;
    let expected: Vec<String> = std::iter::once("MANIFEST".to_string())
        .chain((0..manifest.shards as usize).map(|id| format!("shards/{id:03}.redb")))
        .collect();
    let mut files = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (sum, rel) = line
            .split_once("  ")
            .ok_or_else(|| format!("{SUMS} line {}: expected `<sha256>  <path>`", i + 1))?;
        if !expected.iter().any(|e| e == rel) || files.iter().any(|(_, r)| r == rel) {
            return Err(format!(
                "{SUMS} line {}: `{rel}` is not a file of a backup with {} shards (or is named twice)",
                i + 1,
                manifest.shards
            ));
        }
        files.push((sum.to_string(), rel.to_string()));
    }
    if let Some(missing) = expected
        .iter()
        .find(|e| !files.iter().any(|(_, r)| r == *e))
    {
        return Err(format!(
            "{missing} is missing from {SUMS} (the MANIFEST has {} shards)",
            manifest.shards
        ));
    }
    Ok(files)
}

/// Copies `src` to `dst` (fsync'd), hashing what it reads; `Err` unless the hash is `sum`.
fn copy_checked(src: &Path, dst: &Path, sum: &str, progress: &Progress) -> Result<u64, String> {
    let mut from = std::fs::File::open(src).map_err(|e| err(src, e))?;
    let mut to = private::create_file(dst).map_err(|e| err(dst, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = from.read(&mut buf).map_err(|e| err(src, e))?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        to.write_all(&buf[..got]).map_err(|e| err(dst, e))?;
        n += got as u64;
        progress.inc(got as u64);
    }
    to.sync_all().map_err(|e| err(dst, e))?;
    let got = crate::base::util::hex(&h.finalize());
    if got != sum {
        return Err(format!(
            "{}: checksum mismatch (expected {sum}, file has {got}): the backup is damaged",
            src.display()
        ));
    }
    Ok(n)
}

/// Restores the backup at `from` into `data`. Every file is copied into `data/restore.tmp`
/// and checked against its sum first; only when all are there and right is the old data (of a
/// non-empty `data`, which needs `force` and must be a shardbox directory) removed and the new
/// renamed into place, the MANIFEST last. A failure before that leaves `data` as it was.
pub fn restore(from: &Path, data: &Path, force: bool, progress: &Progress) -> Result<u64, String> {
    restore_with(from, data, force, progress, |_| Ok(()))
}

/// [`restore`], with `more` adding to the staged copy once it is checked and before it
/// replaces anything (a restore from the hub writes the log after the snapshot there, so the
/// swap brings the shards and their log in together).
pub fn restore_with(
    from: &Path,
    data: &Path,
    force: bool,
    progress: &Progress,
    more: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<u64, String> {
    let staging = staging_dir(data);
    if staging.join(STAGED).exists() {
        // A restore that was checked and complete, interrupted while replacing: finish it.
        let _lock = DirLock::acquire(data).map_err(|e| e.to_string())?;
        let was = std::fs::read_to_string(staging.join(STAGED)).unwrap_or_default();
        swap_in(data, &staging)?;
        renew_generation(data)?;
        return Err(format!(
            "an interrupted restore into {} (from {was}) was finished; run restore again (with --force) to restore {} instead",
            data.display(),
            from.display()
        ));
    }
    let files = read_sums(from)?;
    // A LOCK, and the staging of a restore that stopped while copying, are not data.
    let non_empty = std::fs::read_dir(data)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name() != "LOCK" && e.file_name() != "restore.tmp")
        })
        .unwrap_or(false);
    if non_empty && !force {
        return Err(format!(
            "{} is not empty: restore into a new directory, or pass --force to replace its data",
            data.display()
        ));
    }
    if non_empty && !Manifest::path(data).exists() {
        return Err(format!(
            "{} is not empty and has no MANIFEST: not a shardbox data directory, not replacing it",
            data.display()
        ));
    }
    private::create_dir_all(data).map_err(|e| err(data, e))?;
    // No server may run on it meanwhile.
    let _lock = DirLock::acquire(data).map_err(|e| e.to_string())?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| err(&staging, e))?;
    }
    private::create_dir_all(&staging.join("shards")).map_err(|e| err(&staging, e))?;
    progress.set_total(
        files
            .iter()
            .map(|(_, rel)| std::fs::metadata(from.join(rel)).map_or(0, |m| m.len()))
            .sum(),
    );
    let mut total = 0;
    let copied = (|| {
        for (sum, rel) in &files {
            total += copy_checked(&from.join(rel), &staging.join(rel), sum, progress)?;
        }
        sync_dir(&staging.join("shards")).map_err(|e| e.to_string())?;
        more(&staging)?;
        sync_dir(&staging).map_err(|e| e.to_string())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Everything is here and checked: mark it so, durably. From here on the staged copy is
    // the data: a crash while replacing leaves a directory the server refuses to open and the
    // next restore finishes (`swap_in` can be run again from any point).
    mark_staged(&staging, &from.display().to_string())?;
    swap_in(data, &staging)?;
    renew_generation(data)?;
    progress.finish();
    Ok(total)
}

/// A restored directory's history is not the one its change-feed readers followed: it gets a
/// new generation, so their positions answer 409 instead of reading the wrong changes.
fn renew_generation(data: &Path) -> Result<(), String> {
    crate::engine::feed::Generation::renew(data)
        .map(|_| ())
        .map_err(|e| err(data, e))
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
