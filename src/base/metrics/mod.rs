//! The process-wide metric registry: counters and histogram families any layer records into,
//! rendered in the Prometheus text format at `GET /metrics` (`http/metrics.rs`).

pub mod families;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Records whose checksum or header failed to verify on read.
pub static CORRUPT_RECORDS: Counter = Counter::new();
/// HTTP responses by status class.
pub static HTTP_2XX: Counter = Counter::new();
pub static HTTP_3XX: Counter = Counter::new();
pub static HTTP_4XX: Counter = Counter::new();
pub static HTTP_5XX: Counter = Counter::new();
/// Connections refused because `connections_max` were open.
pub static CONNECTIONS_REFUSED: Counter = Counter::new();
/// Idle keep-alive connections closed to make room for a new one.
pub static CONNECTIONS_EVICTED: Counter = Counter::new();
/// Requests refused because the in-flight body budget was exhausted.
pub static BODY_BUDGET_REFUSED: Counter = Counter::new();

/// Requests refused 429 by the rate limiter.
pub static RATE_LIMITED: Counter = Counter::new();
/// Requests refused 401 (no or unknown token).
pub static UNAUTHORIZED: Counter = Counter::new();
/// Requests refused 403 (scope or name prefix).
pub static FORBIDDEN: Counter = Counter::new();

/// Responses replayed for a retry carrying a kept `Idempotency-Key`.
pub static IDEMPOTENT_REPLAYS: Counter = Counter::new();
/// Retries refused 409 while the key's first request was running.
pub static IDEMPOTENT_IN_PROGRESS: Counter = Counter::new();
/// Requests refused 422: their key was first used with a different request.
pub static IDEMPOTENT_MISMATCHES: Counter = Counter::new();

pub fn record_status(status: u16) {
    match status {
        200..=299 => HTTP_2XX.inc(),
        300..=399 => HTTP_3XX.inc(),
        400..=499 => HTTP_4XX.inc(),
        _ => HTTP_5XX.inc(),
    }
}

/// Appends one gauge with its help and type lines.
pub fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}
