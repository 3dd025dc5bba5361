//! Error enums of every layer, and the one function that maps them to HTTP statuses and the
//! JSON body `{"error":{"code":"…","message":"…"}}`.

use std::fmt;

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
    /// The data directory cannot be opened as asked (manifest mismatch, in use, bad files).
    #[error("{0}")]
    Open(String),
}

/// Errors of the KV domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("key not found")]
    NotFound,
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("the key holds a value that is not an integer counter")]
    NotACounter,
    #[error("counter overflow: {0}")]
    Overflow(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Errors of the queue domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} not found")]
    JobNotFound(u64),
    #[error("lease token is not current for job {0}: its lease expired or it was claimed again")]
    StaleLease(u64),
    #[error("job {0} is in flight; ack or nack it, or wait for its lease to expire")]
    InFlight(u64),
    #[error("queue is full: {depth} ready+delayed jobs, max_depth {max}")]
    Full { depth: u64, max: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("queue record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The single mapping from queue errors to HTTP.
impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let message = e.to_string();
        match e {
            QueueError::JobNotFound(_) => ApiError::not_found(message),
            QueueError::StaleLease(_) => ApiError::new(409, "stale_lease", message),
            QueueError::InFlight(_) => ApiError::new(409, "in_flight", message),
            QueueError::Full { .. } => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(429, "queue_full", message)
            },
            QueueError::Invalid(_) => ApiError::bad_request(message),
            QueueError::TooLarge(_) => ApiError::too_large(message),
            QueueError::Corrupt(_) => ApiError::new(500, "corrupt_record", message),
            QueueError::Engine(e) => e.into(),
        }
    }
}

/// Errors of the events domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventError {
    #[error("stream {0} does not exist")]
    StreamNotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("event record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The single mapping from event errors to HTTP.
impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        let message = e.to_string();
        match e {
            EventError::StreamNotFound(_) => ApiError::not_found(message),
            EventError::Invalid(_) => ApiError::bad_request(message),
            EventError::Conflict(_) => ApiError::new(409, "conflict", message),
            EventError::TooLarge(_) => ApiError::too_large(message),
            EventError::Corrupt(_) => ApiError::new(500, "corrupt_record", message),
            EventError::Engine(e) => e.into(),
        }
    }
}

/// Errors of the cache domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    LeaseInvalid(String),
    /// The cache could not be opened or foyer failed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(EngineError),
}

/// The single mapping from cache errors to HTTP.
impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        let message = e.to_string();
        match e {
            CacheError::Invalid(_) => ApiError::bad_request(message),
            CacheError::TooLarge(_) => ApiError::too_large(message),
            CacheError::LeaseInvalid(_) => ApiError::new(409, "fill_lease_invalid", message),
            CacheError::Unavailable(_) => ApiError::unavailable("cache_unavailable", message),
            CacheError::Engine(e) => e.into(),
        }
    }
}

/// An error as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header on 429/503.
    pub retry_after_s: Option<u64>,
    /// Methods for an `Allow` header on 405.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            allow: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "payload_too_large", message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(503, code, message)
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// The single mapping from engine errors to HTTP.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Storage { .. } => ApiError::new(500, "storage_error", message),
            EngineError::ShardUnavailable { .. } => {
                ApiError::unavailable("shard_unavailable", message)
            }
            EngineError::Overloaded { .. } => ApiError::unavailable("overloaded", message),
            EngineError::ShuttingDown => ApiError::unavailable("shutting_down", message),
            EngineError::Corrupt { .. } => ApiError::new(500, "corrupt_record", message),
            EngineError::Open(_) => ApiError::new(500, "internal", message),
        }
    }
}

/// The single mapping from KV errors to HTTP.
impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        let message = e.to_string();
        match e {
            KvError::NotFound => ApiError::not_found(message),
            KvError::PreconditionFailed(_) => ApiError::new(412, "precondition_failed", message),
            KvError::NotACounter => ApiError::new(409, "not_a_counter", message),
            KvError::Overflow(_) => ApiError::new(409, "overflow", message),
            KvError::Invalid(_) => ApiError::bad_request(message),
            KvError::TooLarge(_) => ApiError::too_large(message),
            KvError::Engine(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let s = |e: KvError| ApiError::from(e).status;
        assert_eq!(s(KvError::NotFound), 404);
        assert_eq!(s(KvError::PreconditionFailed("x".into())), 412);
        assert_eq!(s(KvError::NotACounter), 409);
        assert_eq!(
            s(KvError::Engine(EngineError::Overloaded { shard: 1 })),
            503
        );
        let e = ApiError::from(EngineError::Overloaded { shard: 1 });
        assert_eq!(e.retry_after_s, Some(1));
        let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(body["error"]["code"], "overloaded");
    }
}
