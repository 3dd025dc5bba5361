//! `shardbox check`: verify a stopped data directory.
//!
//! Opens every shard read-only and runs every domain's check (`DOMAINS`): KV envelopes
//! and crc32s and the expiry index, queue jobs against their indexes and counts, schedules, event
//! buckets against their counters, cache generations. With `deep`, it instead opens each shard for writing
//! and runs redb's own integrity check (every page checksum; it also repairs the allocator state
//! after an unclean shutdown). Either way it holds the directory lock, so it never runs beside a
//! server.

use crate::engine::manifest::{DirLock, Manifest};
use crate::engine::shard_path;
use crate::engine::EngineError;
use std::fmt::Write;
use std::path::Path;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub shards: usize,
    pub records: u64,
    /// Records in the write-ahead log, and how many of them the shards do not have yet (the
    /// next start replays those).
    pub log_records: u64,
    pub log_pending: u64,
    /// How the log ends (a torn last record is normal after a crash and is not a problem).
    pub log_tail: Option<String>,
    /// One line per damaged record or shard, naming shard and key.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "checked {} shards, {} records (the items each domain checks; a backup's `rows` also counts index and bookkeeping rows), {} log records ({} to replay at the next start): {}\n",
            self.shards,
            self.records,
            self.log_records,
            self.log_pending,
            if self.is_clean() { "OK" } else { "DAMAGED" }
        );
        if let Some(t) = &self.log_tail {
            let _ = writeln!(s, "  note: {t}");
        }
        for p in &self.problems {
            let _ = writeln!(s, "  {p}");
        }
        s
    }
}

/// Checks the data directory at `dir`; `progress` draws a bar (use on a terminal).
pub fn run(dir: &Path, progress: bool) -> Result<Report, EngineError> {
    run_with(dir, progress, false)
}

/// As [`run`]; `deep` runs redb's page-level integrity check (and repair) too.
pub fn run_with(dir: &Path, progress: bool, deep: bool) -> Result<Report, EngineError> {
    let manifest = Manifest::read(dir)?.ok_or_else(|| {
        EngineError::Open(format!(
            "{} has no MANIFEST: not a shardbox data directory",
            dir.display()
        ))
    })?;
    let _lock = DirLock::acquire(dir)?;
    let bar = if progress {
        indicatif::ProgressBar::new(manifest.shards as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut report = Report {
        shards: manifest.shards as usize,
        ..Report::default()
    };
    let mut applied = vec![0u64; manifest.shards as usize];
    for (id, applied_lsn_slot) in applied.iter_mut().enumerate() {
        bar.set_message(format!("shard {id:03}"));
        let path = shard_path(dir, id);
        if !path.exists() {
            report
                .problems
                .push(format!("shard {id}: file {} is missing", path.display()));
            bar.inc(1);
            continue;
        }
        if deep {
            match redb::Database::open(&path) {
                Ok(mut db) => match db.check_integrity() {
                    Ok(true) => {}
                    Ok(false) => report.problems.push(format!(
                        "shard {id}: redb integrity check failed and the file was repaired"
                    )),
                    Err(e) => report
                        .problems
                        .push(format!("shard {id}: redb integrity: {e}")),
                },
                Err(e) => report
                    .problems
                    .push(format!("shard {id}: cannot open: {e}")),
            }
        }
        match redb::Builder::new().open_read_only(&path) {
            Ok(db) => {
                *applied_lsn_slot = applied_lsn(&db);
                let mut n = 0u64;
                let mut on_record = || {
                    n += 1;
                    if n.is_multiple_of(65_536) {
                        bar.set_message(format!("shard {id:03}: {n} records"));
                    }
                };
                match check_shard(&db, id, &mut on_record) {
                    Ok((count, problems)) => {
                        report.records += count;
                        report.problems.extend(problems);
                    }
                    Err(e) => report
                        .problems
                        .push(format!("shard {id}: cannot read: {e}")),
                }
            }
            Err(redb::DatabaseError::RepairAborted) => report.problems.push(format!(
                "shard {id}: was not shut down cleanly and needs repair; run `shardbox check --deep` \
                 (or start the server once) to repair it, then check again"
            )),
            Err(e) => report.problems.push(format!("shard {id}: cannot open: {e}")),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    check_log(dir, &mut report, &applied);
    Ok(report)
}

/// Runs every domain's check ([`crate::store::DOMAINS`]) on one shard, in one read transaction.
fn check_shard(
    db: &redb::ReadOnlyDatabase,
    shard: usize,
    on_record: &mut dyn FnMut(),
) -> Result<(u64, Vec<String>), redb::Error> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let mut checked = crate::engine::domain::Checked {
        records: 0,
        problems: Vec::new(),
        on_record,
    };
    for d in crate::store::DOMAINS {
        // One domain that cannot be read does not hide what the others find.
        if let Err(e) = (d.check)(&txn, shard, &mut checked) {
            checked
                .problems
                .push(format!("shard {shard}: {}: cannot read: {e}", d.name));
        }
    }
    Ok((checked.records, checked.problems))
}

/// The LSN each shard's file holds (0 when unreadable: then every record counts as pending).
fn applied_lsn(db: &redb::ReadOnlyDatabase) -> u64 {
    crate::engine::writer::load_meta(db).map_or(0, |(_, lsn)| lsn)
}

/// Walks the write-ahead log: every frame's checksums, every redo payload, the torn-tail and
/// damage rules recovery applies (see `engine::wal::recovery`).
fn check_log(dir: &Path, report: &mut Report, applied: &[u64]) {
    use crate::engine::wal::{frame::Kind, recovery};
    let wal = dir.join("wal");
    let mut problems = Vec::new();
    let mut pending = 0u64;
    let scanned = recovery::scan(&wal, |h, payload, segment, offset| {
        if h.kind == Kind::Redo {
            if let Err(e) = crate::engine::redo::validate(payload) {
                problems.push(format!(
                    "log {} offset {offset}: record LSN {} does not decode: {e}",
                    segment.display(),
                    h.lsn
                ));
            }
            match applied.get(h.shard as usize) {
                Some(a) if h.lsn > *a => pending += 1,
                Some(_) => {}
                None => problems.push(format!(
                    "log {} offset {offset}: record LSN {} names shard {}, but there are {} shards",
                    segment.display(),
                    h.lsn,
                    h.shard,
                    applied.len()
                )),
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
    match scanned {
        Ok(scan) => {
            report.log_records = scan.records;
            if let recovery::Tail::Torn {
                segment,
                offset,
                detail,
            } = scan.tail
            {
                report.log_tail = Some(format!(
                    "the log ends with an incomplete record at {} offset {offset} ({detail}); it was never acknowledged and is discarded",
                    segment.display()
                ));
            }
        }
        Err(recovery::ScanFailure::Log(e)) => problems.push(e.to_string()),
        Err(recovery::ScanFailure::Visit(never)) => match never {},
    }
    report.log_pending = pending;
    report.problems.extend(problems);
}
