//! The queue domain's errors.

use crate::base::invalid::{Invalid, ItemKind};
use crate::engine::EngineError;

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
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A payload over `job_bytes_max` (`job`: its index in an enqueue).
    #[error("{}payload is {len} bytes; job_bytes_max is {max}", ItemKind::Job.label(*.job))]
    TooLarge {
        job: Option<usize>,
        len: usize,
        max: usize,
    },
    /// A stored record that does not decode (the decoder's message).
    #[error("queue record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

crate::engine::rejects!(QueueError);
