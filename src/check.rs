//! `shardbox check`: verify a stopped data directory.
//!
//! Opens every shard read-only, walks every table (which exercises redb's B-tree structure) and
//! verifies each record's envelope and crc32. With `deep`, it instead opens each shard for writing
//! and runs redb's own integrity check (every page checksum; it also repairs the allocator state
//! after an unclean shutdown). Either way it holds the directory lock, so it never runs beside a
//! server.

use crate::engine::manifest::{DirLock, Manifest};
use crate::engine::shard_path;
use crate::error::EngineError;
use std::fmt::Write;
use std::path::Path;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub shards: usize,
    pub records: u64,
    /// One line per damaged record or shard, naming shard and key.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "checked {} shards, {} records: {}\n",
            self.shards,
            self.records,
            if self.is_clean() { "OK" } else { "DAMAGED" }
        );
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
    for id in 0..manifest.shards as usize {
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
                let counter = &bar;
                let mut n = 0u64;
                match crate::kv::verify_shard(&db, id, || {
                    n += 1;
                    if n.is_multiple_of(65_536) {
                        counter.set_message(format!("shard {id:03}: {n} records"));
                    }
                }) {
                    Ok((count, damaged)) => {
                        report.records += count;
                        report.problems.extend(damaged);
                    }
                    Err(e) => report.problems.push(e.to_string()),
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
    Ok(report)
}
