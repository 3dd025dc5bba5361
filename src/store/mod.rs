//! Layer 3, the store: an open data directory with every domain ([`Store`]), and what works on
//! a whole store — online backup and restore, export and import, the offline check.

pub mod backup;
pub mod check;
pub mod export;
pub mod follow;
pub mod lease;
pub mod sink;
pub mod snapshot;

use crate::base::clock::{Clock, SystemClock};
use crate::base::config::{self, Config};
use crate::cache::{self, CacheError};
use crate::engine::{self, Domain, Engine, EngineError};
use crate::{events, idempotency, kv, queue};
use std::sync::Arc;

testing_pub! {
    /// Every domain: its tables, its check and how it opens. Adding a domain is its folder plus one
    /// line here (and, to serve it over HTTP, its route table in `http::dispatch::TABLES`); the store
    /// opens, starts, checks and renders the metrics of every domain from this list.
    const DOMAINS: &[&engine::DomainSpec] = &[
        &kv::DOMAIN,
        &queue::DOMAIN,
        &events::DOMAIN,
        &cache::DOMAIN,
        &idempotency::DOMAIN,
    ];
}

fn find_domain<T: Domain>(domains: &[Arc<dyn Domain>]) -> Option<Arc<T>> {
    domains.iter().find_map(|d| {
        let any: Arc<dyn std::any::Any + Send + Sync> = d.clone();
        any.downcast::<T>().ok()
    })
}

/// A domain every build registers in [`DOMAINS`] (every test that opens a store reaches it).
fn registered<T: Domain>(domains: &[Arc<dyn Domain>]) -> Arc<T> {
    match find_domain(domains) {
        Some(d) => d,
        None => unreachable!(
            "{} is not registered in DOMAINS",
            std::any::type_name::<T>()
        ),
    }
}

/// An open data directory with its domains.
#[derive(Clone)]
pub struct Store {
    config: Arc<Config>,
    engine: Arc<Engine>,
    /// Every domain opened from [`DOMAINS`] (background tasks, metrics, typed access).
    domains: Vec<Arc<dyn Domain>>,
    /// The shorthands' handles, looked up in `domains` once at open (not per request).
    kv: Arc<kv::Kv>,
    queues: Arc<queue::Queues>,
    events: Arc<events::Events>,
    idempotency: Arc<idempotency::Idempotency>,
    /// Built on first use inside the tokio runtime (foyer needs one); see [`Store::cache`].
    cache: Arc<tokio::sync::OnceCell<Arc<cache::Cache>>>,
    /// The NATS JetStream sink, when `[sink.nats]` is set; it runs with the background work.
    sink: Option<Arc<sink::Sink>>,
    log_sink: Option<Arc<sink::Sink>>,
    /// Set when this store is a standby copying its primary (`store::follow`).
    standby: Arc<std::sync::OnceLock<Arc<follow::Standby>>>,
    /// The primary's lease in the hub, with `failover = "auto"` (`store::lease`).
    lease: Option<Arc<lease::Lease>>,
    /// This data directory's own id ([`node_id`]; empty without `[sink.nats]`).
    node: Arc<str>,
}

/// This data directory's own id, `<data>/NODE` (made on first use). No backup, snapshot or
/// restore carries it, so a directory rebuilt elsewhere gets its own: the lease's holder and
/// the role bucket's promoted directory are told apart by it.
fn node_id(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("NODE");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = crate::engine::feed::Generation::fresh().to_string();
    crate::engine::private::write_synced(dir, "NODE", &format!("{id}\n"))?;
    Ok(id)
}

impl Store {
    /// Opens (creating if needed) the data directory named in `config`, with the system clock.
    pub fn open(config: Config) -> Result<Store, EngineError> {
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Opens with an injected clock (tests move time without sleeping).
    pub fn open_with_clock(
        mut config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, EngineError> {
        // Defaults for the smallest box: disk settings scale to the filesystem they find.
        if let Some(fs) = config::filesystem_bytes(&config.data_dir) {
            let scaled = config.fit_to_disk(fs).map_err(EngineError::Open)?;
            if !scaled.is_empty() {
                tracing::info!(
                    filesystem_bytes = fs,
                    scaled = %scaled.join(", "),
                    "disk settings scaled to a small filesystem"
                );
            }
        }
        config.validate().map_err(EngineError::Open)?;
        let engine = Arc::new(Engine::open(&config, clock, DOMAINS)?);
        let domains: Vec<Arc<dyn Domain>> = DOMAINS
            .iter()
            .filter_map(|d| d.open)
            .map(|open| open(engine.clone(), &config))
            .collect();
        let log_sink = config
            .sink
            .nats
            .clone()
            .filter(|c| c.ship_log)
            .map(|c| Arc::new(sink::Sink::new(c, sink::Source::Log)));
        let sink = config.sink.nats.clone().map(|c| {
            let changes = sink::Sink::new(c, sink::Source::Changes);
            Arc::new(match &log_sink {
                Some(log) => changes.held_behind(log),
                None => changes,
            })
        });
        // A sink turned off leaves no cursor holding the log for it.
        for (on, cursor) in [
            (sink.is_some(), sink::CURSOR),
            (log_sink.is_some(), sink::LOG_CURSOR),
        ] {
            if !on {
                if let Err(e) = engine.feed().cursors.delete(cursor) {
                    tracing::warn!(error = ?e, cursor, "cannot remove a NATS sink's cursor");
                }
            }
        }
        let node: Arc<str> = match &config.sink.nats {
            Some(_) => node_id(&config.data_dir)
                .map_err(|e| {
                    EngineError::Open(format!(
                        "{}: {e}",
                        config.data_dir.join("NODE").display()
                    ))
                })?
                .into(),
            None => "".into(),
        };
        let lease = config
            .sink
            .nats
            .clone()
            .filter(|c| c.failover == config::Failover::Auto)
            .map(|c| Arc::new(lease::Lease::new(c, node.to_string())));
        Ok(Store {
            kv: registered(&domains),
            queues: registered(&domains),
            events: registered(&domains),
            idempotency: registered(&domains),
            config: Arc::new(config),
            engine,
            domains,
            cache: Arc::new(tokio::sync::OnceCell::new()),
            sink,
            log_sink,
            standby: Arc::new(std::sync::OnceLock::new()),
            lease,
            node,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    testing_pub! {
        /// The engine under the domains.
        fn engine(&self) -> &Arc<Engine> {
            &self.engine
        }
    }
    /// How many shards the data directory has (fixed when it was created).
    pub fn shard_count(&self) -> usize {
        self.engine.shards().len()
    }
    pub fn kv(&self) -> &Arc<kv::Kv> {
        &self.kv
    }
    pub fn queues(&self) -> &Arc<queue::Queues> {
        &self.queues
    }
    pub fn events(&self) -> &Arc<events::Events> {
        &self.events
    }
    testing_pub! {
        fn idempotency(&self) -> &Arc<idempotency::Idempotency> {
            &self.idempotency
        }
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
    /// The cache if it is open; never opens it (for metrics and status, which must not).
    pub fn cache_if_open(&self) -> Option<&Arc<cache::Cache>> {
        self.cache.get()
    }

    pub async fn close_cache(&self) {
        if let Some(c) = self.cache.get() {
            if let Err(e) = c.close().await {
                tracing::warn!(error = %e, "closing the cache");
            }
        }
    }

    /// Starts the work that runs by itself — TTL sweeper, queue timers, cron schedules, event
    /// retention — on the current tokio runtime. [`crate::http::run`] calls it; an embedder that uses
    /// the store without HTTP calls it once. Abort the handles (or close the store) to stop.
    pub fn start_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        // A standby copies its primary and nothing else writes; its promotion starts the rest.
        if let Some(standby) = self.standby.get() {
            if standby.state() != follow::State::Promoted {
                let mut tasks = vec![tokio::spawn(standby.clone().run(self.clone()))];
                if let Some(lease) = &self.lease {
                    tasks.push(tokio::spawn(
                        lease.clone().watch(standby.clone(), self.clone()),
                    ));
                }
                return tasks;
            }
        }
        self.start_primary_tasks()
    }

    /// The background work of a primary ([`Store::start_background`]), also started by a
    /// standby's promotion.
    pub fn start_primary_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        // A promoted standby: it takes writes from here (with a lease, once it holds it).
        let promoted = self
            .standby
            .get()
            .is_some_and(|s| s.state() == follow::State::Promoted);
        if promoted {
            match &self.lease {
                // Its `gate` just below opens writes if it holds the lease.
                Some(_) => self.engine.swap_read_only(
                    "standby",
                    Some((
                        lease::NO_LEASE,
                        "this box was promoted and is taking its lease".into(),
                    )),
                ),
                None => self.engine.clear_read_only_if("standby"),
            }
        }
        let lease = self.lease.as_ref().map(|lease| {
            // No write before the lease is held.
            lease.gate(&self.engine);
            tokio::spawn(lease.clone().hold(self.clone(), promoted))
        });
        let mut tasks: Vec<_> = self
            .domains
            .iter()
            .flat_map(|d| d.clone().background(&self.config))
            .map(tokio::spawn)
            .collect();
        if let Some(sink) = &self.sink {
            tasks.push(tokio::spawn(sink.clone().run(self.engine.clone())));
        }
        if let Some(sink) = &self.log_sink {
            tasks.push(tokio::spawn(sink.clone().run(self.engine.clone())));
            tasks.push(tokio::spawn(snapshot::schedule(
                self.clone(),
                sink.cfg.clone(),
            )));
        }
        tasks.extend(lease);
        tasks
    }

    /// Makes this store a standby of the box its `[sink.nats]` names (before it is served):
    /// it takes no writes and copies the primary's log stream (`store::follow`). `/readyz` says
    /// ready while it is at most `ready_lag_ms` behind.
    pub fn follow(&self, ready_lag_ms: u64) -> Result<(), String> {
        let cfg = self.config.sink.nats.clone().ok_or(
            "a standby copies the primary's log from the hub its [sink.nats] table names: the config has none",
        )?;
        if !cfg.ship_log {
            return Err("a standby copies the primary's log stream: set [sink.nats] ship_log = true (the primary needs it too)".into());
        }
        let standby = Arc::new(follow::Standby::new(cfg.clone(), ready_lag_ms));
        self.standby
            .set(standby.clone())
            .map_err(|_| "this store is a standby already".to_string())?;
        self.engine.set_read_only(
            "standby",
            format!(
                "this box is a read-only standby of box `{}` (stream {}): send writes to the primary; `shardbox promote` makes this box the primary",
                cfg.box_name,
                cfg.log_stream_name()
            ),
        );
        self.engine
            .set_standby_applied(Some(self.engine.wal().written_lsn()));
        Ok(())
    }

    /// This data directory's own id (`<data>/NODE`), with `[sink.nats]`.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    testing_pub! {
        /// The primary's lease, with `failover = "auto"`.
        fn lease(&self) -> Option<&Arc<lease::Lease>> {
            self.lease.as_ref()
        }
    }

    testing_pub! {
        /// The standby, when this store is one (or was, and was promoted).
        fn standby(&self) -> Option<&Arc<follow::Standby>> {
            self.standby.get()
        }
    }

    testing_pub! {
        /// The NATS JetStream sink, when configured.
        fn sink(&self) -> Option<&Arc<sink::Sink>> {
            self.sink.as_ref()
        }
    }

    testing_pub! {
        /// With `[sink.nats] ack = "hub"`: the sink whose acks a write's reply waits for (the
        /// log stream's with `ship_log`, else the changes'), and for how long.
        fn hub_ack(&self) -> Option<(&Arc<sink::Sink>, std::time::Duration)> {
            let cfg = self.config.sink.nats.as_ref()?;
            if cfg.ack != config::SinkAck::Hub {
                return None;
            }
            let sink = self.log_sink.as_ref().or(self.sink.as_ref())?;
            Some((sink, std::time::Duration::from_millis(cfg.ack_timeout_ms)))
        }
    }

    testing_pub! {
        /// The sink of the log's records (`ship_log`), when configured.
        fn log_sink(&self) -> Option<&Arc<sink::Sink>> {
            self.log_sink.as_ref()
        }
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
