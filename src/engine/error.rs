//! The storage engine's errors (shards, writers, codec, data directory).

/// Errors of the storage engine (shards, writers, codec, data directory).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// redb reported an I/O or storage failure. The shard stops accepting writes.
    #[error("shard {shard}: storage error: {message}")]
    Storage { shard: usize, message: String },
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
    /// The data directory cannot be opened as asked (manifest mismatch, in use, bad files).
    #[error("{0}")]
    Open(String),
}
