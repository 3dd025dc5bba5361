//! The storage engine's errors (shards, writers, the log, the data directory). A storage
//! failure keeps the error it came from (redb's, or the `io::Error` of the log) and knows its
//! kind, so a full disk is recognised by `io::ErrorKind`, never by the text of a message.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

/// Errors of the storage engine (shards, writers, codec, data directory).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// redb or the log reported an I/O or storage failure. The shard stops accepting writes.
    #[error("shard {shard}: storage error: {source}")]
    Storage {
        shard: usize,
        #[source]
        source: StorageFailure,
    },
    /// The shard refuses writes since an earlier storage failure.
    #[error("shard {shard} is not accepting writes: {reason}")]
    ShardUnavailable { shard: usize, reason: String },
    /// The shard's writer queue stayed full for the whole wait.
    #[error("shard {shard} is overloaded: its writer queue is full")]
    Overloaded { shard: usize },
    /// The store is shutting down and accepts no more writes.
    #[error("shardbox is shutting down")]
    ShuttingDown,
    /// A stored record failed its checksum or could not be decoded.
    #[error("shard {shard}: record for key {key:?} is corrupt: {detail}")]
    Corrupt {
        shard: usize,
        key: String,
        detail: String,
    },
    /// The disk under the data directory is (nearly) full: the write was not applied.
    #[error("{message}")]
    InsufficientStorage { message: String },
    /// This box takes no writes: a standby (`code` `standby`, the message names its primary) or
    /// a primary a standby took over from (`fenced`).
    #[error("{message}")]
    ReadOnly { code: &'static str, message: String },
    /// The data directory cannot be opened as asked (manifest mismatch, in use, bad files).
    #[error("{0}")]
    Open(String),
}

impl EngineError {
    /// Whether this is, or was caused by, a full disk (ENOSPC, EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            EngineError::InsufficientStorage { .. } => true,
            EngineError::Storage { source, .. } => source.is_disk_full(),
            _ => false,
        }
    }
}

/// A failure of the storage under a shard or the log: what was being done, and the error that
/// said so, kept whole (shared, since one failure answers every write of a batch).
#[derive(Clone)]
pub struct StorageFailure {
    context: String,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
    kind: Option<io::ErrorKind>,
    disk_full: bool,
}

impl StorageFailure {
    /// An I/O error of the log or a data file, while doing `context` (`"cannot sync /data/wal/…"`).
    pub fn io(context: impl Into<String>, e: io::Error) -> Self {
        Self::with_source(context.into(), Arc::new(e))
    }

    /// A redb error.
    pub fn redb(e: impl Into<redb::Error>) -> Self {
        Self::redb_in(String::new(), e)
    }

    /// A redb error while doing `context` ("replaying LSN 7").
    pub fn redb_in(context: impl Into<String>, e: impl Into<redb::Error>) -> Self {
        let e = e.into();
        // redb's `Error` names no source: its I/O error is read from the variant.
        let io = match &e {
            redb::Error::Io(io) => Some(io),
            redb::Error::Backend(b) => io_error_in(b.as_ref()),
            _ => None,
        };
        let (kind, disk_full) = (io.map(io::Error::kind), io.is_some_and(is_disk_full));
        StorageFailure {
            context: context.into(),
            source: Some(Arc::new(e)),
            kind,
            disk_full,
        }
    }

    /// A failure with no error underneath (a task that died, a batch refused as a whole).
    pub fn other(context: impl Into<String>) -> Self {
        StorageFailure {
            context: context.into(),
            source: None,
            kind: None,
            disk_full: false,
        }
    }

    fn with_source(context: String, source: Arc<dyn StdError + Send + Sync + 'static>) -> Self {
        let io = io_error_in(source.as_ref());
        StorageFailure {
            context,
            kind: io.map(io::Error::kind),
            disk_full: io.is_some_and(is_disk_full),
            source: Some(source),
        }
    }

    /// The same failure, seen from `outer` (`"the log failed: …"`).
    pub fn within(mut self, outer: &str) -> Self {
        self.context = if self.context.is_empty() {
            outer.to_string()
        } else {
            format!("{outer}: {}", self.context)
        };
        self
    }

    /// Whether the disk is full (ENOSPC) or the quota used up (EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        self.disk_full
    }

    /// The kind of the `io::Error` underneath, if there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.kind
    }
}

/// A failure described in words only (an internal refusal): no kind, not a full disk.
impl From<String> for StorageFailure {
    fn from(context: String) -> Self {
        StorageFailure::other(context)
    }
}

impl From<&str> for StorageFailure {
    fn from(context: &str) -> Self {
        StorageFailure::other(context)
    }
}

/// The first `io::Error` in an error's chain of sources (redb wraps its own).
fn io_error_in<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

/// ENOSPC or EDQUOT, by kind or by the OS's own number.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(
        e.raw_os_error(),
        Some(n) if n == rustix::io::Errno::NOSPC.raw_os_error() || n == rustix::io::Errno::DQUOT.raw_os_error()
    )
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, self.context.is_empty()) {
            (Some(s), true) => write!(f, "{s}"),
            (Some(s), false) => write!(f, "{}: {s}", self.context),
            (None, _) => f.write_str(&self.context),
        }
    }
}

impl fmt::Debug for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageFailure")
            .field("context", &self.context)
            .field("source", &self.source)
            .field("kind", &self.kind)
            .finish()
    }
}

impl StdError for StorageFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_known_by_its_kind_and_keeps_its_source() {
        let enospc = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let f = StorageFailure::io("cannot write /d/wal/1", enospc);
        assert!(f.is_disk_full());
        assert_eq!(f.io_kind(), Some(io::ErrorKind::StorageFull));
        assert!(f.to_string().starts_with("cannot write /d/wal/1: "));
        let e = EngineError::Storage { shard: 2, source: f };
        assert!(e.is_disk_full());
        let io = StdError::source(&e)
            .and_then(StdError::source)
            .and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::StorageFull));

        // Through redb's own wrapping.
        let r = redb::StorageError::Io(io::Error::from_raw_os_error(
            rustix::io::Errno::DQUOT.raw_os_error(),
        ));
        assert!(StorageFailure::redb(r).is_disk_full());

        // The text alone decides nothing.
        let said = io::Error::other("No space left on device");
        assert!(!StorageFailure::io("x", said).is_disk_full());
        assert!(!StorageFailure::other("No space left on device").is_disk_full());
    }
}
