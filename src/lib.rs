//! shardbox: one process that gives a single host a sharded durable key-value store (and, as
//! the project grows, a cache, event tables and a work queue) behind a small HTTP API.
//!
//! The layers: [`http`] parses requests and calls a domain ([`kv`]); a domain calls the
//! [`engine`] (shards, routing, group-commit writers, the on-disk envelope). Embed a [`Store`]
//! to use the domains in-process without HTTP:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = shardbox::Store::open(shardbox::Config::with_data_dir("/tmp/sb"))?;
//! store.kv().put("app", "greeting", b"hello".to_vec(), Default::default()).await?;
//! let v = store.kv().get("app", "greeting")?;
//! assert_eq!(v.map(|v| v.payload), Some(b"hello".to_vec()));
//! store.close();
//! # Ok(()) }
//! ```

/// Declares modules an embedder does not see: public (and hidden from the docs) when the
/// `testing` feature is on — the integration tests and fuzz targets reach into them — and
/// private otherwise, so the compiler keeps the API to what this file re-exports.
macro_rules! internal {
    ($($m:ident),* $(,)?) => {$(
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub mod $m;
        #[cfg(not(feature = "testing"))]
        pub(crate) mod $m;
    )*};
}

internal!(base, engine, idempotency, store);
pub mod cache;
pub mod events;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod kv;
pub mod queue;

pub use base::clock::{Clock, ManualClock, SystemClock};
pub use base::config::{self, Config};
pub use base::progress::{self, Progress};
pub use base::tokens;
pub use cache::CacheError;
pub use engine::{Domain, EngineError};
pub use http::error::ApiError;
pub use kv::KvError;
pub use store::{backup, check, export, Store};

/// What only the tests use, with the `testing` feature: fault points.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::base::failpoint;
}
