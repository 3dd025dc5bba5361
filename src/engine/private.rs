//! Files and directories that only their owner may read, whatever the process's umask.
//!
//! Stored values are the users' data: the data directory, its shard and log files, backups,
//! exports and import staging are created owner-only (directories 0700, files 0600). The data
//! directory's mode alone keeps other users out of everything inside it, files made by the
//! libraries under us (redb, foyer) included; the files get 0600 too, so a copy made with
//! `cp -p` or a directory opened up by hand does not expose them.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory the store makes.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the store makes.
pub const FILE_MODE: u32 = 0o600;

/// Writes `text` as `dir/name`, durably and whole or not at all: to `name.tmp` (owner-only),
/// synced, renamed over `name`, the directory synced.
pub fn write_synced(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = create_file(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents owner-only, and makes `dir` itself owner-only if it
/// was there already (a directory made by hand, or by an older release).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    restrict(dir, DIR_MODE)
}

/// Sets `path`'s mode to `mode` unless it already has no bits beyond it. A path owned by
/// someone else (a shared parent) is left as it is.
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let m = std::fs::metadata(path)?;
    if m.permissions().mode() & 0o777 & !mode == 0 {
        return Ok(());
    }
    match std::fs::set_permissions(path, Permissions::from_mode(mode)) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        r => r,
    }
}

/// Options that create a file owner-only (`.write(true).create(true)` still to be chosen).
pub fn file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates (truncates) `path` owner-only for writing, as `File::create` does.
pub fn create_file(path: &Path) -> io::Result<std::fs::File> {
    let f = file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Copies `from` to a new owner-only `to` and fsyncs it; returns the bytes copied.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<u64> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = create_file(to)?;
    let n = io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    Ok(n)
}
