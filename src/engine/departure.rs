//! A caller that may leave while it waits.
//!
//! A long wait in a domain (a claim that long-polls for a job) must not take anything for a
//! caller that has gone: the HTTP layer knows when a client closed its connection, the domain
//! only asks. [`Departure::never`] is for callers that cannot leave (embedders, import).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// How a caller's presence is observed: a check now, and a future that ends when it leaves.
pub trait Presence: Send + Sync {
    /// Whether the caller has left (checked again right before anything is taken for it).
    fn gone(&self) -> bool;
    /// Ends when the caller leaves; pending while it stays.
    fn left(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Whether the caller of a wait is still there.
#[derive(Clone, Default)]
pub struct Departure(Option<Arc<dyn Presence>>);

impl Departure {
    /// A caller that never leaves early.
    pub fn never() -> Departure {
        Departure(None)
    }

    pub fn watching(p: Arc<dyn Presence>) -> Departure {
        Departure(Some(p))
    }

    /// Whether the caller has left.
    pub fn gone(&self) -> bool {
        self.0.as_ref().is_some_and(|p| p.gone())
    }

    /// Ends when the caller leaves; never for [`Departure::never`].
    pub async fn left(&self) {
        match &self.0 {
            Some(p) => p.left().await,
            None => std::future::pending().await,
        }
    }
}
