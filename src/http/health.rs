//! `/healthz`, `/readyz` and `/metrics`.

use super::response::{self, Resp};
use super::route_table::{route, RouteDef};
use super::ServerState;
use hyper::header::{HeaderValue, CONTENT_TYPE};

/// The health and metrics routes.
pub(super) const ROUTES: &[RouteDef] = &[
    route!(now "GET", "/healthz", [], |s, p, r| Ok(healthz())),
    route!(now "HEAD", "/healthz", [], |s, p, r| Ok(healthz())),
    route!(now "GET", "/readyz", [], |s, p, r| Ok(readyz(s))),
    route!(now "HEAD", "/readyz", [], |s, p, r| Ok(readyz(s))),
    route!("GET", "/metrics", [], |s, p, r| metrics(&s).await),
];

pub fn healthz() -> Resp {
    response::json(200, &serde_json::json!({"status": "ok"}))
}

/// 200 when every shard accepts writes and the disk has room; else 503 naming what is wrong.
pub fn readyz(state: &ServerState) -> Resp {
    let engine = state.store.engine();
    let mut problems = Vec::new();
    for (shard, reason) in engine.failed_shards() {
        problems.push(serde_json::json!({"shard": shard, "reason": reason}));
    }
    let floor = state.store.config().engine.disk_free_bytes_min;
    let free = crate::engine::space::free_bytes(engine.data_dir());
    match free {
        Some(free) if free < floor => problems.push(serde_json::json!({
            "disk": format!("{} bytes free under the data directory, below disk_free_bytes_min ({floor})", free)
        })),
        None => problems.push(serde_json::json!({"disk": "cannot read free space of the data directory"})),
        _ => {}
    }
    if engine.space().is_low() {
        problems.push(serde_json::json!({
            "disk": format!("{} bytes free, under disk_reserve_bytes: writes that add data get 507", engine.space().free())
        }));
    }
    if engine.is_closing() {
        problems.push(serde_json::json!({"shutdown": "shutting down"}));
    }
    if let Some(standby) = state.store.standby() {
        if let Err(why) = standby.ready(engine.now_ms()) {
            problems.push(serde_json::json!({ "standby": why }));
        }
    }
    match engine.read_only() {
        Some((crate::store::sink::FENCED, why)) => {
            problems.push(serde_json::json!({ "fenced": why }))
        }
        Some((crate::store::lease::NO_LEASE, why)) => {
            problems.push(serde_json::json!({ "lease": why }))
        }
        _ => {}
    }
    if problems.is_empty() {
        response::json(
            200,
            &serde_json::json!({"status": "ready", "shards": engine.shards().len(), "disk_free_bytes": free}),
        )
    } else {
        let mut r = response::json(
            503,
            &serde_json::json!({"status": "unavailable", "problems": problems,
                "error": {"code": "not_ready", "message": "see problems"}}),
        );
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }
}

pub async fn metrics(state: &ServerState) -> Result<Resp, crate::http::error::ApiError> {
    scrape_gauges(state).await;
    let mut text = super::metrics::render(state.store.engine(), state.conns.len());
    crate::base::metrics::families::render(&mut text);
    state.store.render_domain_metrics(&mut text);
    if let Some(sink) = state.store.sink() {
        render_sink(&mut text, sink, state.store.engine());
    }
    if let Some(standby) = state.store.standby() {
        render_standby(&mut text, standby, state.store.engine());
    }
    if let Some(lease) = state.store.lease() {
        render_lease(&mut text, lease);
    }
    let followers =
        state.followers_max - state.followers.available_permits().min(state.followers_max);
    crate::base::metrics::gauge(
        &mut text,
        "shardbox_stream_followers_open",
        "Event stream followers (SSE) and long polls open.",
        followers as u64,
    );
    crate::base::metrics::gauge(
        &mut text,
        "shardbox_rate_limit_clients",
        "Clients (tokens or addresses) with rate-limiter state; idle ones are forgotten every 10 s.",
        state.access.clients() as u64,
    );
    let mut r = response::empty(200);
    *r.body_mut() = response::full(text);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

/// Sets the gauges read at each scrape: shard files, queues, streams, cache tiers.
async fn scrape_gauges(state: &ServerState) {
    use crate::base::metrics::families::{get, NAMES_MAX};
    let f = get();
    let engine = state.store.engine();
    for s in engine.shards() {
        let len = engine.shard_file_bytes(s.id);
        f.shard_file_bytes
            .get_or_create(&vec![("shard", s.id.to_string())])
            .set(len as i64);
    }
    if let Ok(queues) = state.store.queues().all_stats() {
        f.queue_jobs.clear();
        f.queue_oldest_ready_seconds.clear();
        for q in queues.iter().take(NAMES_MAX) {
            for (st, n) in [
                ("ready", q.ready),
                ("delayed", q.delayed),
                ("in_flight", q.in_flight),
                ("dead", q.dead),
            ] {
                f.queue_jobs
                    .get_or_create(&vec![("queue", q.name.clone()), ("state", st.to_string())])
                    .set(n as i64);
            }
            f.queue_oldest_ready_seconds
                .get_or_create(&vec![("queue", q.name.clone())])
                .set(q.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        f.names_left_out
            .get_or_create(&vec![("kind", "queue".to_string())])
            .set(queues.len().saturating_sub(NAMES_MAX) as i64);
    }
    if let Ok(streams) = state.store.events().list() {
        f.stream_events.clear();
        f.stream_buckets.clear();
        for s in streams.iter().take(NAMES_MAX) {
            let l = vec![("stream", s.name.clone())];
            f.stream_events.get_or_create(&l).set(s.events as i64);
            f.stream_buckets.get_or_create(&l).set(s.buckets as i64);
        }
        f.names_left_out
            .get_or_create(&vec![("kind", "stream".to_string())])
            .set(streams.len().saturating_sub(NAMES_MAX) as i64);
    }
    if let Some(cache) = state.store.cache_if_open() {
        let s = cache.summary();
        for (tier, result, v) in [
            ("memory", "hit", s.hits_memory),
            ("disk", "hit", s.hits_disk),
            ("any", "stale_hit", s.stale_hits),
            ("any", "miss", s.misses),
        ] {
            f.cache_requests
                .get_or_create(&vec![
                    ("tier", tier.to_string()),
                    ("result", result.to_string()),
                ])
                .set(v as i64);
        }
        for (tier, bytes) in [("memory", s.memory_bytes), ("disk", s.disk_bytes)] {
            f.cache_bytes
                .get_or_create(&vec![("tier", tier.to_string())])
                .set(bytes as i64);
        }
    }
}

/// Prometheus series, each `(name, help, type, value)`.
fn series(out: &mut String, items: &[(&str, &str, &str, f64)]) {
    use std::fmt::Write as _;
    for (name, help, kind, v) in items {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

/// The lease's series (`failover = "auto"`).
fn render_lease(out: &mut String, lease: &crate::store::lease::Lease) {
    use std::sync::atomic::Ordering::Relaxed;
    series(
        out,
        &[
            (
                "shardbox_lease_held",
                "1 while this box holds the primary's lease (it takes writes only then).",
                "gauge",
                f64::from(u8::from(lease.holds())),
            ),
            (
                "shardbox_lease_renewals_total",
                "Writes of the lease that the hub took (renewals, and takings).",
                "counter",
                lease.renewals_total.load(Relaxed) as f64,
            ),
            (
                "shardbox_lease_lost_total",
                "Times this box held the lease and then did not (expired, or taken).",
                "counter",
                lease.lost_total.load(Relaxed) as f64,
            ),
            (
                "shardbox_lease_promotions_total",
                "Times this standby promoted itself after its primary's lease expired.",
                "counter",
                lease.promotions_total.load(Relaxed) as f64,
            ),
            (
                "shardbox_lease_errors_total",
                "Lease reads or writes that failed (the hub unreachable or slow).",
                "counter",
                lease.errors_total.load(Relaxed) as f64,
            ),
        ],
    );
}

/// A standby's series: its state (one line per state), lag, records applied and errors.
fn render_standby(
    out: &mut String,
    standby: &crate::store::follow::Standby,
    engine: &crate::engine::Engine,
) {
    use crate::store::follow::State;
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP shardbox_standby_state 1 for the standby's current state.\n# TYPE shardbox_standby_state gauge"
    );
    let now = standby.state();
    for s in State::ALL {
        let _ = writeln!(
            out,
            "shardbox_standby_state{{state=\"{}\"}} {}",
            s.name(),
            u8::from(s == now)
        );
    }
    let (records, ms) = standby.lag(engine.now_ms());
    series(
        out,
        &[
        (
            "shardbox_standby_lag_records",
            "Messages of the primary's log stream the standby has not applied yet.",
            "gauge",
            records as f64,
        ),
        (
            "shardbox_standby_lag_seconds",
            "How long the standby has not held everything its primary's log stream holds (0 when it does).",
            "gauge",
            ms as f64 / 1e3,
        ),
        (
            "shardbox_standby_applied_lsn",
            "The last log record the standby applied in order.",
            "gauge",
            engine.position().lsn as f64,
        ),
        (
            "shardbox_standby_applied_total",
            "Log stream messages the standby applied.",
            "counter",
            standby.applied_total.load(Relaxed) as f64,
        ),
        (
            "shardbox_standby_errors_total",
            "Times the standby's copying stopped on an error.",
            "counter",
            standby.errors_total.load(Relaxed) as f64,
        ),
        ],
    );
}

/// The NATS sink's series: its state (one line per state, 1 for the current one), lag,
/// publishes, acks and errors.
fn render_sink(out: &mut String, sink: &crate::store::sink::Sink, engine: &crate::engine::Engine) {
    use crate::store::sink::State;
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP shardbox_sink_state 1 for the NATS sink's current state.\n# TYPE shardbox_sink_state gauge"
    );
    let now = sink.state();
    for s in State::ALL {
        let _ = writeln!(
            out,
            "shardbox_sink_state{{state=\"{}\"}} {}",
            s.name(),
            u8::from(s == now)
        );
    }
    let (records, ms) = sink.lag(engine);
    series(
        out,
        &[
            (
                "shardbox_sink_lag_records",
                "Log records committed on the box and not yet acknowledged by JetStream.",
                "gauge",
                records as f64,
            ),
            (
                "shardbox_sink_lag_seconds",
                "Age of the oldest change not yet acknowledged by JetStream (0 when caught up).",
                "gauge",
                ms as f64 / 1e3,
            ),
            (
                "shardbox_sink_published_total",
                "Changes published to JetStream (a change sent again after an error counts again).",
                "counter",
                sink.published_total.load(Relaxed) as f64,
            ),
            (
                "shardbox_sink_acked_total",
                "Changes JetStream acknowledged.",
                "counter",
                sink.acked_total.load(Relaxed) as f64,
            ),
            (
                "shardbox_sink_errors_total",
                "Sink sessions ended by an error (hub down, a publish refused, …).",
                "counter",
                sink.errors_total.load(Relaxed) as f64,
            ),
        ],
    );
}
