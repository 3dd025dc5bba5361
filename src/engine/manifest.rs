//! The data directory's MANIFEST and its lock.
//!
//! The MANIFEST is a small JSON document written once, atomically (temp file, fsync, rename,
//! fsync of the directory), when the directory is created. It fixes the shard count and the hash
//! seed: opening with a different shard count is an error, never a silent re-hash.

use crate::engine::EngineError;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data directory layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest MANIFEST we read: it is a few hundred bytes, anything larger is not ours.
const MANIFEST_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub shards: u32,
    pub hash_seed: u64,
    pub created_at_ms: u64,
    pub created_by: String,
}

impl Manifest {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("MANIFEST")
    }

    /// Reads the MANIFEST of `data_dir`, or `None` when the directory has none yet.
    pub fn read(data_dir: &Path) -> Result<Option<Manifest>, EngineError> {
        let path = Self::path(data_dir);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(open_err(&path, e)),
        };
        if meta.len() > MANIFEST_BYTES_MAX {
            return Err(EngineError::Open(format!(
                "{} is {} bytes; a shardbox MANIFEST is under {MANIFEST_BYTES_MAX}: is this a shardbox data directory?",
                path.display(),
                meta.len()
            )));
        }
        let text = fs::read(&path).map_err(|e| open_err(&path, e))?;
        Self::parse(&text)
            .map(Some)
            .map_err(|e| EngineError::Open(format!("{}{e}", path.display())))
    }

    /// Decodes and checks a MANIFEST's bytes; the error text follows the file's path.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!(" is not a valid MANIFEST: {e}"))?;
        if m.format_version > FORMAT_VERSION {
            return Err(format!(
                " has format version {}, newer than this build ({FORMAT_VERSION}): upgrade shardbox",
                m.format_version
            ));
        }
        if m.shards == 0 || m.shards > 1024 {
            return Err(format!(": shard count {} is out of range", m.shards));
        }
        Ok(m)
    }

    /// Writes the MANIFEST atomically: temp file, fsync, rename, fsync the directory.
    pub fn write_new(&self, data_dir: &Path) -> Result<(), EngineError> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join("MANIFEST.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| EngineError::Open(format!("cannot encode MANIFEST: {e}")))?;
        let mut f = crate::engine::private::create_file(&tmp).map_err(|e| open_err(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| open_err(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| open_err(&path, e))?;
        sync_dir(data_dir)
    }
}

/// fsyncs a directory so a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| open_err(dir, e))
}

fn open_err(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Open(format!("{}: {e}", path.display()))
}

/// An exclusive lock on a data directory, held for the life of the process's store.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes `<data_dir>/LOCK`; a second process gets a clear "already in use" error.
    pub fn acquire(data_dir: &Path) -> Result<DirLock, EngineError> {
        let path = data_dir.join("LOCK");
        let file = crate::engine::private::file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| open_err(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(EngineError::Open(format!(
                "data directory {} is already in use by another shardbox process (lock held on {}); stop it or choose another --data",
                data_dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(open_err(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        let m = Manifest {
            format_version: FORMAT_VERSION,
            shards: 4,
            hash_seed: 99,
            created_at_ms: 1,
            created_by: "test".into(),
        };
        m.write_new(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(m));
        assert!(!dir.path().join("MANIFEST.tmp").exists());
    }

    #[test]
    fn garbage_manifest_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(Manifest::path(dir.path()), "{not json").unwrap();
        assert!(Manifest::read(dir.path()).is_err());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already in use"), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
