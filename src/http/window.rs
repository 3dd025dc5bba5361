//! The last minute, for the status page: a sample of the process-wide counters (each route's
//! latency histogram and error counts, the responses by class, each shard's operations, the
//! process's CPU time) is taken 12 times per `status_window_ms` (a minute by default) and kept
//! for one window; `/v1/status` compares a sample taken as it answers with the oldest kept, so
//! its rates and percentiles cover the window (or the time since start, on a server younger
//! than that) from its first answer on.
//! Requests pay nothing for it: the counters are the ones `/metrics` already keeps.

use crate::base::metrics::{families, HTTP_2XX, HTTP_3XX, HTTP_4XX, HTTP_5XX};
use crate::engine::Engine;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Samples kept per window (`status_window_ms`): one every twelfth of it.
const STEPS: u32 = 12;

/// The domains the page shows, in its order; a route belongs to the first whose prefix it has.
const DOMAINS: [(&str, &[&str]); 7] = [
    ("kv", &["/v1/kv"]),
    ("cache", &["/v1/cache"]),
    ("events", &["/v1/streams"]),
    ("queues", &["/v1/queues"]),
    ("schedules", &["/v1/schedules"]),
    ("feed", &["/v1/changes"]),
    ("other", &[""]),
];

fn domain_of(route: &str) -> usize {
    DOMAINS
        .iter()
        .position(|(_, prefixes)| prefixes.iter().any(|p| route.starts_with(p)))
        .unwrap_or(DOMAINS.len() - 1)
}

#[derive(Clone, Default)]
struct DomainCounts {
    requests: u64,
    /// Latency histogram bucket counts ([`families::seconds`] bounds) of the requests that did
    /// not wait (a long poll's time is its wait).
    buckets: Vec<u64>,
    client_errors: u64,
    server_errors: u64,
}

struct Sample {
    at: Instant,
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx (unmatched requests included).
    responses: [u64; 4],
    domains: Vec<DomainCounts>,
    shard_ops: Vec<u64>,
}

impl Sample {
    fn take(engine: &Engine) -> Sample {
        let mut domains = vec![DomainCounts::default(); DOMAINS.len()];
        for r in families::route_counts() {
            let d = &mut domains[domain_of(r.route)];
            if d.buckets.len() < r.buckets.len() {
                d.buckets.resize(r.buckets.len(), 0);
            }
            for (sum, n) in d.buckets.iter_mut().zip(&r.buckets) {
                *sum += n;
            }
            d.requests += r.requests;
            d.client_errors += r.client_errors;
            d.server_errors += r.server_errors;
        }
        let proc = super::metrics::proc_stat();
        Sample {
            at: Instant::now(),
            cpu_seconds: proc.as_ref().and_then(|p| p.cpu_seconds),
            resident_bytes: proc.and_then(|p| p.resident_bytes),
            responses: [&HTTP_2XX, &HTTP_3XX, &HTTP_4XX, &HTTP_5XX].map(|c| c.get()),
            domains,
            shard_ops: engine
                .shards()
                .iter()
                .map(|s| s.state.ops.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Samples of the last `span` (and one older, the base the newest figures are measured from).
pub struct Window {
    span: Duration,
    samples: Mutex<VecDeque<Sample>>,
}

impl Window {
    /// A window of `span` whose first sample is now: figures cover the time since.
    pub fn new(engine: &Engine, span: Duration) -> Window {
        Window {
            span,
            samples: Mutex::new(VecDeque::from([Sample::take(engine)])),
        }
    }

    /// How often [`Window::tick`] is to be called.
    pub fn step(&self) -> Duration {
        self.span / STEPS
    }

    /// Keeps a sample of now, and lets go of those no longer needed as the base of a
    /// `span`-long window (at most [`STEPS`] + 2 are kept).
    pub fn tick(&self, engine: &Engine) {
        let sample = Sample::take(engine);
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = sample.at;
        q.push_back(sample);
        while q
            .get(1)
            .is_some_and(|next| now.duration_since(next.at) >= self.span)
        {
            q.pop_front();
        }
    }

    /// The figures from the oldest kept sample to now.
    pub fn figures(&self, engine: &Engine) -> Figures {
        let now = Sample::take(engine);
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(base) = q.front() else {
            return Figures::default();
        };
        let secs = now.at.duration_since(base.at).as_secs_f64().max(1e-3);
        let per_s = |n: u64| round(n as f64 / secs, 2);
        let bounds = families::seconds();
        let mut all = vec![0u64; bounds.len() + 1];
        let domains: Vec<Value> = DOMAINS
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let (cur, old) = (&now.domains[i], &base.domains[i]);
                let buckets: Vec<u64> = (0..cur.buckets.len())
                    .map(|b| {
                        let was = old.buckets.get(b).copied().unwrap_or(0);
                        cur.buckets[b].saturating_sub(was)
                    })
                    .collect();
                for (sum, n) in all.iter_mut().zip(&buckets) {
                    *sum += n;
                }
                let requests = cur.requests.saturating_sub(old.requests);
                let ms = |q: f64| quantile(bounds, &buckets, q).map(|s| round(s * 1e3, 3));
                json!({
                    "domain": name,
                    "requests": requests,
                    "per_s": per_s(requests),
                    "p50_ms": ms(0.5),
                    "p99_ms": ms(0.99),
                    "client_errors": cur.client_errors.saturating_sub(old.client_errors),
                    "server_errors": cur.server_errors.saturating_sub(old.server_errors),
                })
            })
            .collect();
        let responses: Vec<u64> = (0..4)
            .map(|c| now.responses[c].saturating_sub(base.responses[c]))
            .collect();
        let total: u64 = responses.iter().sum();
        let ms = |q: f64| quantile(bounds, &all, q).map(|s| round(s * 1e3, 3));
        let window = json!({
            "seconds": round(secs, 1),
            "span_s": round(self.span.as_secs_f64(), 1),
            "requests": total,
            "requests_per_s": per_s(total),
            "client_errors_per_s": per_s(responses[2]),
            "server_errors_per_s": per_s(responses[3]),
            "server_error_ratio": (total > 0).then(|| responses[3] as f64 / total as f64),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "domains": domains,
        });
        let shard_ops_per_s = now
            .shard_ops
            .iter()
            .enumerate()
            .map(|(i, n)| per_s(n.saturating_sub(base.shard_ops.get(i).copied().unwrap_or(0))))
            .collect();
        // CPU time comes in clock ticks (10 ms): over less than a second it says little.
        let cpu_percent = now
            .cpu_seconds
            .zip(base.cpu_seconds)
            .filter(|_| secs >= 1.0)
            .map(|(cur, old)| round(100.0 * (cur - old).max(0.0) / secs, 1));
        Figures {
            window,
            shard_ops_per_s,
            cpu_percent,
            resident_bytes: now.resident_bytes.map(|b| b as u64),
        }
    }
}

/// What [`Window::figures`] measured.
#[derive(Default)]
pub struct Figures {
    pub window: Value,
    /// Operations applied per second, by shard (in shard order).
    pub shard_ops_per_s: Vec<f64>,
    /// The process's CPU time over the window, as a percentage of one core.
    pub cpu_percent: Option<f64>,
    /// Its resident memory now.
    pub resident_bytes: Option<u64>,
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The `q` quantile of a histogram's bucket counts (`counts[i]` below `bounds[i]`, the last
/// above every bound), by linear interpolation within its bucket as Prometheus's
/// `histogram_quantile` does; `None` with no observation. Above the last bound: the last bound.
fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (seen + c) as f64 >= rank {
            let lo = if i == 0 { 0.0 } else { bounds[i - 1] };
            let Some(&hi) = bounds.get(i) else {
                return Some(lo);
            };
            return Some(lo + (hi - lo) * ((rank - seen as f64) / c as f64));
        }
        seen += c;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let bounds = [1.0, 2.0, 4.0];
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // 10 in (0,1], 10 in (1,2]: the median is the top of the first bucket.
        assert_eq!(quantile(&bounds, &[10, 10, 0, 0], 0.5), Some(1.0));
        // 4 in (2,4]: the 25th percentile is a quarter into it.
        assert_eq!(quantile(&bounds, &[0, 0, 4, 0], 0.25), Some(2.5));
        // Above every bound: the last bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 3], 0.99), Some(4.0));
        assert_eq!(quantile(&bounds, &[99, 0, 0, 1], 0.99), Some(1.0));
        assert_eq!(quantile(&bounds, &[98, 0, 0, 2], 0.99), Some(4.0));
    }

    #[test]
    fn routes_fall_in_their_domain() {
        assert_eq!(DOMAINS[domain_of("/v1/kv/{ns}/{key}")].0, "kv");
        assert_eq!(DOMAINS[domain_of("/v1/cache:stats")].0, "cache");
        assert_eq!(
            DOMAINS[domain_of("/v1/streams/{stream}/events")].0,
            "events"
        );
        assert_eq!(DOMAINS[domain_of("/v1/changes")].0, "feed");
        assert_eq!(DOMAINS[domain_of("/metrics")].0, "other");
        assert_eq!(DOMAINS[domain_of("/")].0, "other");
    }
}
