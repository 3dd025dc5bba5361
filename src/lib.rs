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

pub mod cache;
pub mod check;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod fuzzing;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod names;
pub mod queue;
pub mod util;

pub use config::Config;
pub use engine::clock::{Clock, ManualClock, SystemClock};
pub use error::{ApiError, CacheError, EngineError, KvError};

use engine::Engine;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Every domain's tables and check, in the order their tables are created. Adding a domain is
/// its folder plus one line here (and its route table in `http::router::TABLES`).
pub const DOMAINS: &[&engine::DomainSpec] =
    &[&kv::DOMAIN, &queue::DOMAIN, &events::DOMAIN, &cache::DOMAIN];

/// The running side of a domain: what it does by itself and what it reports.
pub trait Domain: Send + Sync {
    /// Tasks that run by themselves (sweeps, timers, schedules, retention) until aborted.
    fn background(self: Arc<Self>, config: &Config) -> Vec<BoxFuture<'static, ()>>;
    /// Appends its Prometheus metrics.
    fn render_metrics(&self, out: &mut String);
}

/// An open data directory with its domains.
#[derive(Clone)]
pub struct Store {
    config: Arc<Config>,
    engine: Arc<Engine>,
    kv: kv::Kv,
    queues: Arc<queue::Queues>,
    events: Arc<events::Events>,
    /// The same domains, as one list (background tasks, metrics).
    domains: Vec<Arc<dyn Domain>>,
    /// Built on first use inside the tokio runtime (foyer needs one); see [`Store::cache`].
    cache: Arc<tokio::sync::OnceCell<Arc<cache::Cache>>>,
}

impl Store {
    /// Opens (creating if needed) the data directory named in `config`, with the system clock.
    pub fn open(config: Config) -> Result<Store, EngineError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Opens with an injected clock (tests move time without sleeping).
    pub fn open_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Store, EngineError> {
        config.validate().map_err(EngineError::Open)?;
        let engine = Arc::new(Engine::open(&config, clock, DOMAINS)?);
        let kv = kv::Kv::from_config(engine.clone(), &config);
        let queues = Arc::new(queue::Queues::from_config(engine.clone(), &config));
        let events = Arc::new(events::Events::from_config(engine.clone(), &config));
        let domains: Vec<Arc<dyn Domain>> =
            vec![Arc::new(kv.clone()), queues.clone(), events.clone()];
        Ok(Store {
            config: Arc::new(config),
            engine,
            kv,
            queues,
            events,
            domains,
            cache: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
    pub fn kv(&self) -> &kv::Kv {
        &self.kv
    }
    pub fn queues(&self) -> &Arc<queue::Queues> {
        &self.queues
    }
    pub fn events(&self) -> &Arc<events::Events> {
        &self.events
    }

    /// The hybrid cache, opened on first call (inside the tokio runtime). `serve` opens it at
    /// start so a bad cache directory fails fast.
    pub async fn cache(&self) -> Result<&Arc<cache::Cache>, CacheError> {
        self.cache
            .get_or_try_init(|| async {
                let settings = cache::Settings::from_config(&self.config);
                cache::Cache::open(self.engine.clone(), settings)
                    .await
                    .map(Arc::new)
            })
            .await
    }

    /// Closes the cache if it was opened (foyer finishes its flushes and stops its tasks).
    pub async fn close_cache(&self) {
        if let Some(c) = self.cache.get() {
            if let Err(e) = c.close().await {
                tracing::warn!(error = %e, "closing the cache");
            }
        }
    }

    /// Starts the work that runs by itself — TTL sweeper, queue timers, cron schedules, event
    /// retention — on the current tokio runtime. [`http::run`] calls it; an embedder that uses
    /// the store without HTTP calls it once. Abort the handles (or close the store) to stop.
    pub fn start_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.domains
            .iter()
            .flat_map(|d| d.clone().background(&self.config))
            .map(tokio::spawn)
            .collect()
    }

    /// Every domain's Prometheus metrics.
    pub fn render_domain_metrics(&self, out: &mut String) {
        for d in &self.domains {
            d.render_metrics(out);
        }
    }

    /// Commits what the writers hold (fsync in periodic mode) and stops them. Further writes
    /// fail with `ShuttingDown`. Idempotent.
    pub fn close(&self) {
        self.engine.close();
    }
}
