//! The events domain's errors.

use crate::base::invalid::Invalid;
use crate::engine::EngineError;

/// Errors of the events domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventError {
    #[error("stream {0} does not exist")]
    StreamNotFound(String),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A configure asked for another bucket width than the one the stream was created with.
    #[error("the bucket width of stream {stream} is fixed at creation ({bucket_ms} ms); create a new stream to change it")]
    BucketFixed { stream: String, bucket_ms: u64 },
    /// Event `event`'s data is over `event_bytes_max`.
    #[error("event {event}: data is {len} bytes; event_bytes_max is {max}")]
    TooLarge {
        event: usize,
        len: usize,
        max: usize,
    },
    /// A stored record that does not decode (the decoder's message).
    #[error("event record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

crate::engine::rejects!(EventError);
