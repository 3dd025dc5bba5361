//! The KV domain's errors.

use crate::base::invalid::{Invalid, ItemKind};
use crate::engine::EngineError;
use std::fmt;

/// Why a conditional KV write was refused (412).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match` named another revision than the live one.
    RevisionMismatch { have: u64, want: u64 },
    /// The key is absent or expired; `expected` is the revision `If-Match` named, if any.
    Missing { expected: Option<u64> },
    /// `If-None-Match: *`, but the key exists.
    Exists { have: u64 },
    /// A batch operation's `if_revision` on a key an earlier operation of the batch wrote.
    WrittenInBatch,
}

impl fmt::Display for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precondition::RevisionMismatch { have, want } => {
                write!(f, "revision is {have}, not {want}")
            }
            Precondition::Missing {
                expected: Some(want),
            } => write!(f, "key does not exist (expected revision {want})"),
            Precondition::Missing { expected: None } => f.write_str("key does not exist"),
            Precondition::Exists { have } => write!(f, "key exists with revision {have}"),
            Precondition::WrittenInBatch => f.write_str("key was written earlier in this batch"),
        }
    }
}

/// Errors of the KV domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("key not found")]
    NotFound,
    #[error("precondition failed: {0}")]
    PreconditionFailed(Precondition),
    #[error("the key holds a value that is not an integer counter")]
    NotACounter,
    #[error("counter overflow: {value} + {by} does not fit in a signed 64-bit integer")]
    Overflow { value: i64, by: i64 },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A value over `value_bytes_max` (`op`: its index in a batch).
    #[error("{}value is {len} bytes; the limit (value_bytes_max) is {max}", ItemKind::Op.label(*.op))]
    TooLarge {
        op: Option<usize>,
        len: usize,
        max: usize,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

crate::engine::rejects!(KvError);
