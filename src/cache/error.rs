//! The cache domain's errors.

use crate::base::invalid::Invalid;
use crate::engine::EngineError;

/// Which call brought a fill lease token that is no longer the key's live lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseUse {
    /// A write completing the fill: the value was not stored.
    Put,
    /// A report that the refresh failed.
    FillError,
}

impl LeaseUse {
    fn message(self) -> &'static str {
        match self {
            LeaseUse::Put => "this fill lease is no longer valid (it expired, the key was deleted, or another write landed first); the value was not stored",
            LeaseUse::FillError => "this fill lease is no longer valid (it expired, the key was deleted, or a value landed)",
        }
    }
}

/// Errors of the cache domain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A value over `cache_value_bytes_max`.
    #[error("value is {len} bytes; the cache takes at most {max} (cache_value_bytes_max)")]
    TooLarge { len: usize, max: usize },
    #[error("{}", .0.message())]
    LeaseInvalid(LeaseUse),
    /// The cache could not be opened or foyer failed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(EngineError),
}
