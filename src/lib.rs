//! shardbox: one process that gives a single host a sharded durable key-value store, a hybrid
//! memory/disk cache, time-bucketed event streams and a durable work queue with cron, behind a
//! small HTTP API — and the same store as a library, for an appliance that embeds it.
//!
//! # Embedding
//!
//! [`Store::open`] opens (creating if needed) a data directory; its domains are then
//! [`Store::kv`], [`Store::queues`], [`Store::events`] and [`Store::cache`]. Each call has the
//! semantics of its HTTP route (the HTTP handlers call exactly these): a write returns once it
//! is durable under the configured [`config::DurabilityMode`], bounds and errors are the same.
//! The work that runs by itself (TTL sweeps, queue timers, cron, retention) starts with
//! [`Store::start_background`]; [`http::run`] starts it too and serves the store over HTTP in one
//! call. [`Store::close`] commits what the writers hold and stops them.
//!
//! The store needs a tokio runtime for its async calls (the writers are threads of their own).
//!
//! ## KV: put, get, conditional writes, counters
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use shardbox::kv::{Cond, KvError, PutOptions};
//! use shardbox::{Config, Store};
//!
//! let store = Store::open(Config::with_data_dir(dir.path()))?;
//! let kv = store.kv();
//! let put = kv.put("app", "greeting", b"hello".to_vec(), PutOptions::default()).await?;
//! let v = kv.get("app", "greeting")?.expect("just written");
//! assert_eq!((&v.payload[..], v.revision), (&b"hello"[..], put.revision));
//!
//! // Compare-and-set: a write naming an old revision is refused, and changes nothing.
//! let stale = PutOptions { cond: Cond::IfRevision(put.revision + 1), ..Default::default() };
//! let refused = kv.put("app", "greeting", b"bye".to_vec(), stale).await;
//! assert!(matches!(refused, Err(KvError::PreconditionFailed(_))));
//!
//! let (n, _revision) = kv.incr("app", "visits", 5, None).await?;
//! assert_eq!(n, 5);
//! store.close();
//! # Ok(()) }
//! ```
//!
//! ## Queue: enqueue, claim with a lease, ack
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use shardbox::queue::{Departure, NewJob};
//! use std::time::Duration;
//!
//! let store = shardbox::Store::open(shardbox::Config::with_data_dir(dir.path()))?;
//! let queues = store.queues();
//! let job = NewJob { payload: br#"{"email":"a@example.com"}"#.to_vec(), ..Default::default() };
//! let ids = queues.enqueue("mail", vec![job]).await?;
//!
//! // Up to 10 jobs, each leased for 30 s (None: the queue's default lease), waiting up to
//! // 1 s for one; `Departure::never()`: this caller never goes away mid-wait.
//! let claimed = queues
//!     .claim("mail", 10, Some(30_000), Duration::from_secs(1), &Departure::never())
//!     .await?;
//! assert_eq!(claimed.len(), 1);
//! assert_eq!(claimed[0].id, ids[0].id);
//! let token = claimed[0].lease_token.as_deref().expect("a claimed job has a lease");
//! queues.ack("mail", claimed[0].id, token).await?;
//! assert_eq!(queues.stats("mail")?.map(|s| s.totals.acked), Some(1));
//! store.close();
//! # Ok(()) }
//! ```
//!
//! ## Events: append, read a range
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use shardbox::events::{NewEvent, RangeQuery};
//!
//! let store = shardbox::Store::open(shardbox::Config::with_data_dir(dir.path()))?;
//! let events = store.events();
//! let e = |kind: &str| NewEvent { ts: None, kind: Some(kind.into()), data: br#"{"v":1}"#.to_vec() };
//! let ids = events.append("sensors", vec![e("temp"), e("door")]).await?;
//! assert_eq!(ids.len(), 2);
//!
//! let all = RangeQuery { from: None, to: None, kind: None, desc: false, limit: 100, after: None };
//! let (page, more) = events.range("sensors", &all)?;
//! assert_eq!(page.iter().map(|e| e.id()).collect::<Vec<_>>(), ids);
//! assert!(!more);
//! store.close();
//! # Ok(()) }
//! ```
//!
//! ## Cache: put, get (memory, then disk)
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use shardbox::cache::{Lookup, PutOptions};
//!
//! let store = shardbox::Store::open(shardbox::Config::with_data_dir(dir.path()))?;
//! let cache = store.cache().await?; // opened on first use, inside the runtime
//! let opts = PutOptions { ttl_ms: Some(60_000), ..Default::default() };
//! cache.put("pages", "/home", b"<html>".to_vec().into(), opts)?;
//! match cache.get("pages", "/home", None).await? {
//!     Lookup::Hit { entry, .. } => assert_eq!(&entry.value[..], b"<html>"),
//!     Lookup::Miss { .. } => unreachable!("just written"),
//! }
//! store.close_cache().await;
//! store.close();
//! # Ok(()) }
//! ```
//!
//! ## Serving it over HTTP
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let config = shardbox::Config::with_data_dir(dir.path());
//! // Beyond loopback, configure tokens (`config.http.tokens`); `check_exposure` refuses an
//! // open non-loopback address as `shardbox serve` does.
//! config.check_exposure()?;
//! let store = shardbox::Store::open(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(shardbox::http::run(listener, store.clone(), async {
//!     let _ = stopped.await;
//! }));
//! // ... the store answers HTTP and in-process calls at once ...
//! let _ = stop.send(());
//! server.await??;
//! store.close();
//! # Ok(()) }
//! ```
//!
//! `examples/embedded.rs` is a whole program: it opens a store, feeds it from its own code and
//! serves it (`cargo run --example embedded`).
//!
//! # What is public, and stable
//!
//! What this crate root and the modules [`kv`], [`queue`], [`events`], [`cache`] and [`http`]
//! export is the API: [`Store`], [`Config`] and its typed sections ([`config`]), the clocks, the
//! domain handles with their request and answer types, the errors ([`EngineError`] with
//! [`StorageFailure`], [`KvError`], [`CacheError`], [`queue::QueueError`],
//! [`events::EventError`], [`Invalid`], and [`ApiError`] as HTTP answers), [`tokens`],
//! [`backup`], [`export`], [`check`] and [`http::run`]. Within 0.x a minor version may change it
//! and says so in its notes; the data directory's format is versioned separately (its MANIFEST,
//! docs/design.md). Everything else — the engine, the write-ahead log, the on-disk records — is
//! private: the compiler refuses a use of it from outside (the `testing` feature, for this
//! crate's own tests, is not part of the API).

#![cfg_attr(not(feature = "testing"), warn(unnameable_types))]

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

/// An item the tests reach but an embedder does not: `pub` (hidden from the docs) with the
/// `testing` feature, `pub(crate)` otherwise. For functions, methods and re-exports.
macro_rules! testing_pub {
    ($(#[$m:meta])* fn $($rest:tt)*) => {
        $(#[$m])*
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub fn $($rest)*
        $(#[$m])*
        #[cfg(not(feature = "testing"))]
        #[allow(dead_code)]
        pub(crate) fn $($rest)*
    };
    ($(#[$m:meta])* async fn $($rest:tt)*) => {
        $(#[$m])*
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub async fn $($rest)*
        $(#[$m])*
        #[cfg(not(feature = "testing"))]
        #[allow(dead_code)]
        pub(crate) async fn $($rest)*
    };
    ($(#[$m:meta])* const $($rest:tt)*) => {
        $(#[$m])*
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub const $($rest)*
        $(#[$m])*
        #[cfg(not(feature = "testing"))]
        pub(crate) const $($rest)*
    };
    ($(#[$m:meta])* use $($rest:tt)*) => {
        $(#[$m])*
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub use $($rest)*
        $(#[$m])*
        #[cfg(not(feature = "testing"))]
        #[allow(unused_imports)]
        pub(crate) use $($rest)*
    };
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
pub use base::invalid::{Invalid, ItemKind};
pub use base::progress::{self, Progress};
pub use base::tokens;
pub use cache::CacheError;
pub use engine::{EngineError, StorageFailure};
testing_pub! { use engine::Domain; }
pub use http::error::ApiError;
pub use kv::KvError;
pub use store::{backup, check, export, snapshot, Store};

/// What only the tests use, with the `testing` feature: fault points.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::base::failpoint;
}
