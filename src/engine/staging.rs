//! Replacing a data directory's state all at once (restore, import): the new state is built
//! in a staging directory inside the data directory, marked complete, then swapped in by a
//! step that can be rerun from any point after a crash. [`super::Engine::open`] refuses a
//! directory whose staging is unfinished.

use super::manifest::{sync_dir, DirLock, Manifest};
use super::{private, shard_path};
use std::io::Write;
use std::path::{Path, PathBuf};

fn err(p: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", p.display())
}

/// Where a restore stages its copy, inside the data directory.
pub fn staging_dir(data: &Path) -> PathBuf {
    data.join("restore.tmp")
}

/// Where an import builds the new state of a data directory, inside it: the data directory
/// changes only when the import is complete, all at once ([`swap_in`]).
pub fn import_staging_dir(data: &Path) -> PathBuf {
    data.join("import.tmp")
}

/// In the staging directory: the copy is complete and checked (holds the backup's path).
pub const STAGED: &str = "STAGED";

/// Marks a staging directory complete, durably: from here on it is the data, and a crash while
/// it replaces the old is finished by running [`swap_in`] again.
pub fn mark_staged(staging: &Path, what: &str) -> Result<(), String> {
    let marker = staging.join(STAGED);
    private::create_file(&marker)
        .and_then(|mut f| {
            f.write_all(what.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| err(&marker, e))?;
    sync_dir(staging).map_err(|e| e.to_string())
}

/// Copies the MANIFEST and every shard of a stopped, checkpointed data directory into
/// `staging` (owner-only, fsynced): the starting point of an import that merges.
pub fn copy_stopped(data: &Path, staging: &Path) -> Result<(), String> {
    let manifest = Manifest::read(data)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no MANIFEST", data.display()))?;
    private::create_dir_all(&staging.join("shards")).map_err(|e| err(staging, e))?;
    let copy = |from: &Path, to: &Path| private::copy_file(from, to).map_err(|e| err(to, e));
    copy(&Manifest::path(data), &Manifest::path(staging))?;
    for id in 0..manifest.shards as usize {
        copy(&shard_path(data, id), &shard_path(staging, id))?;
    }
    sync_dir(&staging.join("shards")).map_err(|e| e.to_string())?;
    sync_dir(staging).map_err(|e| e.to_string())
}

/// Puts a complete staged state (see [`mark_staged`]) in place of `data`'s, under the data
/// directory's lock.
pub fn finish_staged(data: &Path, staging: &Path) -> Result<(), String> {
    let _lock = DirLock::acquire(data).map_err(|e| e.to_string())?;
    swap_in(data, staging)
}

/// Whether a staging directory holds a complete, checked copy (its swap may have begun).
pub fn is_staged(staging: &Path) -> bool {
    staging.join(STAGED).exists()
}

/// Replaces `data`'s MANIFEST and shards with the staged ones. Every step checks what is
/// still to do, so after a crash at any point running it again completes the swap.
pub fn swap_in(data: &Path, staging: &Path) -> Result<(), String> {
    crate::base::failpoint::hit("restore.swap").map_err(|e| e.to_string())?;
    if staging.join("shards").exists() {
        // The old data goes (its MANIFEST first), then the staged shards take its place.
        for f in ["MANIFEST", "ballast"] {
            let p = data.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| err(&p, e))?;
            }
        }
        crate::base::failpoint::hit("restore.swap.removing").map_err(|e| e.to_string())?;
        for sub in ["shards", "wal", "cache"] {
            let p = data.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| err(&p, e))?;
            }
        }
        std::fs::rename(staging.join("shards"), data.join("shards")).map_err(|e| err(data, e))?;
        sync_dir(data).map_err(|e| e.to_string())?;
    }
    // A staged log (a restore from the hub: the records after its snapshot) follows its
    // shards, before the MANIFEST says the swap is done.
    let wal = staging.join("wal");
    if wal.exists() {
        std::fs::rename(&wal, data.join("wal")).map_err(|e| err(data, e))?;
        sync_dir(data).map_err(|e| e.to_string())?;
    }
    let manifest = staging.join("MANIFEST");
    if manifest.exists() {
        std::fs::rename(&manifest, Manifest::path(data)).map_err(|e| err(data, e))?;
    }
    // The staging directory goes in one rename, then is deleted: a crash while deleting it
    // leaves `*.done` (removed at the next open), never a half-deleted staging directory that
    // would be taken for an unfinished copy.
    let done = done_dir(staging);
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| err(&done, e))?;
    }
    std::fs::rename(staging, &done).map_err(|e| err(staging, e))?;
    sync_dir(data).map_err(|e| e.to_string())?;
    crate::base::failpoint::hit("restore.cleanup").map_err(|e| e.to_string())?;
    std::fs::remove_dir_all(&done).map_err(|e| err(&done, e))?;
    sync_dir(data).map_err(|e| e.to_string())
}

/// Where a finished staging directory is deleted from.
fn done_dir(staging: &Path) -> PathBuf {
    staging.with_extension("done")
}

/// Removes what a crash while deleting a finished staging directory left in `data`.
pub fn remove_finished_staging(data: &Path) -> std::io::Result<()> {
    for staging in [staging_dir(data), import_staging_dir(data)] {
        let done = done_dir(&staging);
        if done.exists() {
            std::fs::remove_dir_all(&done)?;
        }
    }
    Ok(())
}

