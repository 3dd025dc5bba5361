//! Labelled metrics and histograms, kept with the `prometheus-client` crate: HTTP requests by
//! route template, method and status with latency histograms; each shard's batch sizes and
//! commit latencies; and the per-name gauges (queues, streams) and per-tier cache figures set
//! at each scrape. Labels are route templates, shard numbers, tiers, states and queue or stream
//! names (at most [`NAMES_MAX`] of each), never keys, so cardinality is bounded.

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Queues and streams given their own series; more are left out of the per-name gauges (the
/// count of names left out is itself a gauge).
pub const NAMES_MAX: usize = 256;

type Labels = Vec<(&'static str, String)>;

/// The labels of a request: all static or a number, so recording one allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    shard: u32,
}

/// A histogram kept in atomic counters: an observation is two relaxed adds and no lock (the
/// crate's own histogram takes a write lock per observation), and its counts can be read back
/// (the status page's last minute, [`route_counts`]).
#[derive(Clone, Debug)]
pub struct Hist(Arc<HistInner>);

#[derive(Debug)]
struct HistInner {
    /// Upper bounds; `counts` has one more slot, for values above the last.
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// The sum of the observations times `scale`, as an integer (seconds in µs: a u64 holds
    /// 768 waiters of 60 s each for centuries).
    sum: AtomicU64,
    scale: f64,
}

impl Hist {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Hist(Arc::new(HistInner {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }))
    }

    /// Counts `v` in the first bucket whose bound is at least `v`.
    pub fn observe(&self, v: f64) {
        let h = &self.0;
        let i = h.bounds.partition_point(|b| *b < v);
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        h.sum.fetch_add((v * h.scale) as u64, Ordering::Relaxed);
    }

    /// Each bucket's own count (not cumulative), the last one above every bound.
    pub fn counts(&self) -> Vec<u64> {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl TypedMetric for Hist {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Hist {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        let sum = self.0.sum.load(Ordering::Relaxed) as f64 / self.0.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram's bucket bounds and the scale its sum is kept at.
#[derive(Clone)]
struct Buckets(&'static [f64], f64);

impl MetricConstructor<Hist> for Buckets {
    fn new_metric(&self) -> Hist {
        Hist::new(self.0, self.1)
    }
}

/// 25 µs to ~52 s, doubling.
static SECONDS: OnceLock<Vec<f64>> = OnceLock::new();
/// 1 to 4096 operations, doubling.
static OPS: OnceLock<Vec<f64>> = OnceLock::new();

/// The upper bounds of the latency histograms, in seconds.
pub fn seconds() -> &'static [f64] {
    SECONDS.get_or_init(|| exponential_buckets(0.000025, 2.0, 22).collect())
}
fn ops() -> &'static [f64] {
    OPS.get_or_init(|| exponential_buckets(1.0, 2.0, 13).collect())
}

pub struct Families {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Hist, Buckets>,
    batch_ops: Family<ShardLabels, Hist, Buckets>,
    commit_seconds: Family<ShardLabels, Hist, Buckets>,
    pub shard_file_bytes: Family<Labels, Gauge>,
    pub queue_jobs: Family<Labels, Gauge>,
    pub queue_oldest_ready_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    pub stream_events: Family<Labels, Gauge>,
    pub stream_buckets: Family<Labels, Gauge>,
    pub names_left_out: Family<Labels, Gauge>,
    pub cache_requests: Family<Labels, Gauge>,
    pub cache_bytes: Family<Labels, Gauge>,
}

static FAMILIES: OnceLock<Families> = OnceLock::new();

/// The process's families (made on first use).
pub fn get() -> &'static Families {
    FAMILIES.get_or_init(|| {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::new_with_constructor(Buckets(seconds(), 1e6));
        let batch_ops = Family::new_with_constructor(Buckets(ops(), 1.0));
        let commit_seconds = Family::new_with_constructor(Buckets(seconds(), 1e6));
        let f = Families {
            requests,
            request_seconds,
            batch_ops,
            commit_seconds,
            shard_file_bytes: Family::default(),
            queue_jobs: Family::default(),
            queue_oldest_ready_seconds: Family::default(),
            stream_events: Family::default(),
            stream_buckets: Family::default(),
            names_left_out: Family::default(),
            cache_requests: Family::default(),
            cache_bytes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "shardbox_http_requests",
            "HTTP requests by route template, method and status.",
            f.requests.clone(),
        );
        registry.register(
            "shardbox_http_request_duration_seconds",
            "Time from a request's head to its response's head, by route template and method.",
            f.request_seconds.clone(),
        );
        registry.register(
            "shardbox_shard_batch_ops",
            "Operations per group commit, by shard.",
            f.batch_ops.clone(),
        );
        registry.register(
            "shardbox_shard_commit_duration_seconds",
            "Time to apply and commit one batch, by shard.",
            f.commit_seconds.clone(),
        );
        registry.register(
            "shardbox_shard_file_bytes",
            "Size of each shard's redb file.",
            f.shard_file_bytes.clone(),
        );
        registry.register(
            "shardbox_queue_jobs",
            "Jobs by queue and state (ready, delayed, in_flight, dead).",
            f.queue_jobs.clone(),
        );
        registry.register(
            "shardbox_queue_oldest_ready_age_seconds",
            "Age of the oldest ready job, by queue (0 when none is ready).",
            f.queue_oldest_ready_seconds.clone(),
        );
        registry.register(
            "shardbox_stream_events",
            "Events held, by stream.",
            f.stream_events.clone(),
        );
        registry.register(
            "shardbox_stream_buckets",
            "Time buckets held, by stream.",
            f.stream_buckets.clone(),
        );
        registry.register(
            "shardbox_metrics_names_left_out",
            "Queues or streams beyond the per-name series limit, by kind.",
            f.names_left_out.clone(),
        );
        registry.register(
            "shardbox_cache_lookups",
            "Cache lookups by tier and result (hit in memory, hit on disk, stale hit, miss).",
            f.cache_requests.clone(),
        );
        registry.register(
            "shardbox_cache_bytes",
            "Bytes held by each cache tier.",
            f.cache_bytes.clone(),
        );
        Families { registry, ..f }
    })
}

/// Records one answered request: `route` and `method` are the matched route's template and
/// method (`"-"` for a request that matched none: its method is whatever the client sent).
pub fn record_request(
    route: &'static str,
    method: &'static str,
    status: u16,
    took: std::time::Duration,
) {
    let f = get();
    f.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    f.request_seconds
        .get_or_create(&RouteLabels { route, method })
        .observe(took.as_secs_f64());
}

/// Statuses whose request series each route keeps a handle to (others are looked up).
const STATUSES: [u16; 18] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 409, 412, 413, 422, 429, 500, 503, 507,
];

/// Routes with handles kept (the tables hold about 60).
const ROUTES_MAX: usize = 128;

/// A route's request series, resolved on its first request with each status.
#[derive(Default)]
struct RouteSlot {
    /// The route's template and its latency histogram.
    seconds: OnceLock<(&'static str, Hist)>,
    /// The part of `seconds` that requests which waited (long polls, follows) make: their
    /// time is their wait, which the status page leaves out of its latencies.
    waited: OnceLock<Hist>,
    counts: [OnceLock<Counter>; STATUSES.len()],
}

static ROUTE_SLOTS: OnceLock<Box<[RouteSlot]>> = OnceLock::new();

/// Records one answered request of the route at `index` of the router (the same series as
/// [`record_request`], whose labels are hashed into the families' maps only on a route's first
/// request with a status: after that it is an index and an atomic add). `waited`: it took a
/// place to wait (see [`RouteCounts::buckets`]).
pub fn record_route(
    index: usize,
    route: &'static str,
    method: &'static str,
    status: u16,
    took: std::time::Duration,
    waited: bool,
) {
    let slots = ROUTE_SLOTS.get_or_init(|| (0..ROUTES_MAX).map(|_| RouteSlot::default()).collect());
    let (Some(slot), Some(s)) = (slots.get(index), STATUSES.iter().position(|s| *s == status))
    else {
        return record_request(route, method, status, took);
    };
    let f = get();
    slot.counts[s]
        .get_or_init(|| {
            f.requests
                .get_or_create(&RequestLabels {
                    route,
                    method,
                    status,
                })
                .clone()
        })
        .inc();
    slot.seconds
        .get_or_init(|| {
            let h = f.request_seconds.get_or_create(&RouteLabels { route, method });
            (route, h.clone())
        })
        .1
        .observe(took.as_secs_f64());
    if waited {
        slot.waited
            .get_or_init(|| Hist::new(seconds(), 1e6))
            .observe(took.as_secs_f64());
    }
}

/// What one route has answered since start: its latency histogram's bucket counts
/// ([`seconds`] bounds), and its 4xx and 5xx answers.
pub struct RouteCounts {
    pub route: &'static str,
    /// Every request answered.
    pub requests: u64,
    /// Of the requests that did not wait (a long poll's time is its wait, not its cost).
    pub buckets: Vec<u64>,
    pub client_errors: u64,
    pub server_errors: u64,
}

/// Every route that has answered a request, as [`RouteCounts`] (requests of statuses outside
/// the kept list are in the histogram but not in the error counts).
pub fn route_counts() -> Vec<RouteCounts> {
    let Some(slots) = ROUTE_SLOTS.get() else {
        return Vec::new();
    };
    slots
        .iter()
        .filter_map(|slot| {
            let (route, hist) = slot.seconds.get()?;
            let count = |class: u16| -> u64 {
                STATUSES
                    .iter()
                    .zip(&slot.counts)
                    .filter(|(s, _)| **s / 100 == class)
                    .filter_map(|(_, c)| c.get().map(Counter::get))
                    .sum()
            };
            let mut buckets = hist.counts();
            let requests = buckets.iter().sum();
            if let Some(w) = slot.waited.get() {
                for (b, w) in buckets.iter_mut().zip(w.counts()) {
                    *b = b.saturating_sub(w);
                }
            }
            Some(RouteCounts {
                route,
                requests,
                buckets,
                client_errors: count(4),
                server_errors: count(5),
            })
        })
        .collect()
}

/// Records one group commit of a shard.
pub fn record_commit(shard: usize, ops: u64, took: std::time::Duration) {
    let f = get();
    let l = ShardLabels {
        shard: shard as u32,
    };
    f.batch_ops.get_or_create(&l).observe(ops as f64);
    f.commit_seconds
        .get_or_create(&l)
        .observe(took.as_secs_f64());
}

/// Appends the families in the Prometheus text format (0.0.4): the crate writes OpenMetrics,
/// whose counters are typed under their name without `_total`; those lines are renamed so one
/// scrape is one consistent format (`encode_registry` writes no `# EOF`, and no family here
/// has a unit).
pub fn render(out: &mut String) {
    let mut text = String::new();
    if encode_registry(&mut text, &get().registry).is_err() {
        return;
    }
    let counters: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(str::to_string)
        .collect();
    for line in text.lines() {
        let fixed = counters.iter().find_map(|c| {
            for prefix in ["# TYPE ", "# HELP "] {
                if let Some(rest) = line
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix(c.as_str()))
                {
                    if rest.starts_with(' ') {
                        return Some(format!("{prefix}{c}_total{rest}"));
                    }
                }
            }
            None
        });
        let line = fixed.as_deref().unwrap_or(line);
        // The crate ends every help text with a period of its own: one is enough.
        match line.strip_suffix("..").filter(|_| line.starts_with("# HELP ")) {
            Some(help) => {
                out.push_str(help);
                out.push('.');
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
}
