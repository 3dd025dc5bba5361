//! Event workloads as runs of the suite: append throughput vs XADD, range latency as a stream
//! grows (and in-process), retention by dropping buckets vs deleting rows.

use crate::events;
use crate::loadgen::{self, Outcome};
use crate::peers;
use crate::report::{row, set_ratio, unavailable, Row};
use crate::support::{now_ms, settle, wanted, warm, Opts, EVENT_BYTES};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

pub async fn events_suite(o: &Opts, rows: &mut Vec<Row>) {
    for (name, streams) in [("events-append", 8usize), ("events-append-hot", 1)] {
        if wanted(o, name) {
            append_vs_xadd(o, rows, name, streams).await;
        }
    }
    if wanted(o, "events-range-1h") {
        events_range(o, rows).await;
    }
    if wanted(o, "events-retention") {
        events_retention(rows).await;
    }
    if wanted(o, "events-range-store") {
        events_range_store(o, rows).await;
    }
}

/// 100-event appends from every connection to `streams` streams, shardbox vs Redis XADD.
async fn append_vs_xadd(o: &Opts, rows: &mut Vec<Row>, name: &str, streams: usize) {
    eprintln!("{name} …");
    let first = rows.len();
    let sb = crate::support::start_shardbox(o, &[]).expect("start shardbox");
    let c = o.connections;
    let _ = events::append(true, sb.addr, c, streams, 100, Duration::from_secs(1)).await;
    let before = crate::support::server_stats(sb.addr, crate::loadgen::Proto::Http).await;
    let out = crate::support::with_server_cpu(
        sb.addr,
        events::append(true, sb.addr, c, streams, 100, o.duration),
    )
    .await;
    if let (Some(a), Some(b)) = (
        before,
        crate::support::server_stats(sb.addr, crate::loadgen::Proto::Http).await,
    ) {
        eprintln!("  {}", b.since(&a).describe());
    }
    rows.push(row(
        name,
        "shardbox NDJSON, 100 events/request",
        out,
        &format!("events/s; 200 B events, {streams} stream(s), reply after fsync"),
    ));
    drop(sb);
    match peers::redis(o.install) {
        Ok(r) => {
            let _ = events::append(false, r.addr, c, streams, 100, Duration::from_secs(1)).await;
            let out = crate::support::with_server_cpu(
                r.addr,
                events::append(false, r.addr, c, streams, 100, o.duration),
            )
            .await;
            rows.push(row(
                name,
                "redis XADD ×100 pipelined",
                out,
                "events/s; appendfsync always",
            ));
            set_ratio(rows, first, first + 1, "vs redis XADD");
        }
        Err(e) => rows.push(unavailable(name, "redis XADD", &e)),
    }
}

/// Pushes a range row with its p99 as a multiple of the 1M stream's.
pub fn push_vs_small(
    rows: &mut Vec<Row>,
    workload: &str,
    system: &str,
    out: Outcome,
    note: &str,
    small_p99: f64,
) {
    let p99 = out.p(0.99);
    rows.push(row(workload, system, out, note));
    if small_p99 > 0.0 {
        if let Some(r) = rows.last_mut() {
            r.ratio = Some((p99 / small_p99, "p99 vs the 1M stream".into()));
        }
    }
}

/// Range latency of one-hour windows as a stream grows, against Redis XRANGE; writes the plot.
pub async fn events_range(o: &Opts, rows: &mut Vec<Row>) {
    let large = o.events_large.max(1_000_000);
    let start = now_ms() - events::YEAR_MS;
    let queries = 4000;
    let sb = crate::support::start_shardbox(
        o,
        &[("default_retention_ms", "0"), ("default_bucket", "1d")],
    )
    .expect("start shardbox");
    eprintln!("events-range-1h: loading 1M events over a year …");
    events::load(
        true,
        sb.addr,
        "ev1m",
        start,
        events::YEAR_MS as f64 / 1e6,
        0,
        1_000_000,
    )
    .await
    .expect("load");
    settle().await;
    warm(sb.dir().to_path_buf()).await;
    let small = events::range(true, sb.addr, "ev1m", start, events::YEAR_MS, queries).await;
    let small_p99 = small.p(0.99);
    rows.push(row(
        "events-range-1h",
        "shardbox, 1M events / year",
        small,
        "first 100 events of a random 1 h window; page cache warm",
    ));
    // The large stream keeps the density of `large` events per year; measure as it grows.
    let spacing = events::YEAR_MS as f64 / large as f64;
    let mut points = Vec::new();
    let mut cold_points = Vec::new();
    let mut loaded = 0;
    let mut checkpoints: Vec<u64> = [
        1_000_000u64,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
    ]
    .into_iter()
    .filter(|c| *c < large)
    .collect();
    checkpoints.push(large);
    let mut last = None;
    let mut last_cold = None;
    for cp in checkpoints {
        eprintln!("events-range-1h: loading to {cp} events …");
        let t = Instant::now();
        events::load(true, sb.addr, "evbig", start, spacing, loaded, cp)
            .await
            .expect("load");
        eprintln!(
            "  loaded {} events in {:.1} s",
            cp - loaded,
            t.elapsed().as_secs_f64()
        );
        loaded = cp;
        settle().await;
        let span = (cp as f64 * spacing) as u64;
        let cold = events::range(true, sb.addr, "evbig", start, span, queries).await;
        cold_points.push((cp, cold.p(0.99)));
        let t = Instant::now();
        warm(sb.dir().to_path_buf()).await;
        eprintln!("  page cache warmed in {:.1} s", t.elapsed().as_secs_f64());
        let out = events::range(true, sb.addr, "evbig", start, span, queries).await;
        eprintln!(
            "  {cp}: cold p50 {:.2} p99 {:.2} ms; warm p50 {:.2} p99 {:.2} ms",
            cold.p(0.5),
            cold.p(0.99),
            out.p(0.5),
            out.p(0.99)
        );
        points.push((cp, out.p(0.5), out.p(0.99)));
        last = Some(out);
        last_cold = Some(cold);
    }
    drop(sb);
    if let Some(cold) = last_cold {
        push_vs_small(
            rows,
            "events-range-1h",
            &format!(
                "shardbox, {}M events / year, right after the load",
                large / 1_000_000
            ),
            cold,
            "cold: part of the file not yet in the page cache",
            small_p99,
        );
    }
    if let Some(out) = last {
        push_vs_small(
            rows,
            "events-range-1h",
            &format!("shardbox, {}M events / year", large / 1_000_000),
            out,
            "first 100 events of a random 1 h window; page cache warm",
            small_p99,
        );
    }
    let mut redis_point = None;
    match peers::redis(o.install) {
        Ok(r) => {
            eprintln!("events-range-1h: loading Redis …");
            events::load(
                false,
                r.addr,
                "ev1m",
                start,
                events::YEAR_MS as f64 / 1e6,
                0,
                1_000_000,
            )
            .await
            .expect("load redis");
            settle().await;
            let out = events::range(false, r.addr, "ev1m", start, events::YEAR_MS, queries).await;
            rows.push(row(
                "events-range-1h",
                "redis XRANGE, 1M / year",
                out,
                "XRANGE COUNT 100",
            ));
            events::load(false, r.addr, "evbig", start, spacing, 0, large)
                .await
                .expect("load redis");
            settle().await;
            let out = events::range(false, r.addr, "evbig", start, events::YEAR_MS, queries).await;
            redis_point = Some((large, out.p(0.5), out.p(0.99)));
            rows.push(row(
                "events-range-1h",
                &format!("redis XRANGE, {}M / year", large / 1_000_000),
                out,
                "XRANGE COUNT 100",
            ));
        }
        Err(e) => rows.push(unavailable("events-range-1h", "redis XRANGE", &e)),
    }
    let svg = events::svg(&points, &cold_points, redis_point);
    crate::report::write_output("shardbox-events-range.svg", &svg, "plot");
}

/// `events-range-1h` without HTTP: the storage layer's time for the same one-hour queries
/// (in-process, one query at a time, 20,000 queries, page cache warm), on a stream of 1M events
/// over a year and on one of `events_large` — the bucket layout's own scaling, free of the
/// network and scheduler noise that dominates p99 over HTTP on a 2-core box.
pub async fn events_range_store(o: &Opts, rows: &mut Vec<Row>) {
    let large = o.events_large.max(1_000_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut overrides = vec![
        (
            "data_dir".to_string(),
            tmp.path().join("data").display().to_string(),
        ),
        // Loading speed; reads are the same.
        ("durability".to_string(), "periodic:1000".to_string()),
        ("default_retention_ms".to_string(), "0".to_string()),
    ];
    overrides.extend(o.settings.iter().cloned());
    let config = shardbox::Config::resolve(None, std::iter::empty(), &overrides).expect("config");
    let store = shardbox::Store::open(config).expect("open");
    let ev = store.events().clone();
    let start = now_ms() - events::YEAR_MS;
    let data = EVENT_BYTES.to_vec();
    let load = |stream: &'static str, spacing: f64, from: u64, to: u64| {
        let (ev, data) = (ev.clone(), data.clone());
        async move {
            let mut i = from;
            while i < to {
                let n = 10_000.min(to - i);
                let batch: Vec<_> = (i..i + n)
                    .map(|k| shardbox::events::apply::NewEvent {
                        ts: Some(start + (k as f64 * spacing) as u64),
                        kind: None,
                        data: data.clone(),
                    })
                    .collect();
                ev.append(stream, batch).await.expect("append");
                i += n;
            }
        }
    };
    let measure = |stream: &'static str, span: u64| {
        let ev = ev.clone();
        tokio::task::spawn_blocking(move || {
            let mut h = loadgen::hist();
            let t0 = Instant::now();
            let n = 20_000u64;
            for q in 0..n {
                let r = xxh3_64(&q.to_le_bytes());
                let from = start + r % span.saturating_sub(3_600_000).max(1);
                let query = shardbox::events::RangeQuery {
                    from: Some(from),
                    to: Some(from + 3_600_000),
                    kind: None,
                    desc: false,
                    limit: 100,
                    after: None,
                };
                let t = Instant::now();
                let (got, _) = ev.range(stream, &query).expect("range");
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                assert!(!got.is_empty());
            }
            Outcome {
                ops: n,
                errors: 0,
                elapsed: t0.elapsed(),
                hist: h,
                cpu_us_per_op: None,
            }
        })
    };
    eprintln!("events-range-store: loading 1M events over a year (in-process) …");
    load("ev1m", events::YEAR_MS as f64 / 1e6, 0, 1_000_000).await;
    settle().await;
    warm(tmp.path().to_path_buf()).await;
    let small = measure("ev1m", events::YEAR_MS).await.expect("measure");
    let small_p99 = small.p(0.99);
    eprintln!(
        "  1M stream: p50 {:.3} p99 {:.3} ms",
        small.p(0.5),
        small_p99
    );
    rows.push(row(
        "events-range-store",
        "in-process range(), 1M events / year",
        small,
        "first 100 events of a random 1 h window; one query at a time",
    ));
    let spacing = events::YEAR_MS as f64 / large as f64;
    let mut loaded = 0;
    let mut last = None;
    let mut checkpoints: Vec<u64> = [1_000_000u64, 10_000_000, 25_000_000]
        .into_iter()
        .filter(|c| *c < large)
        .collect();
    checkpoints.push(large);
    for cp in checkpoints {
        load("evbig", spacing, loaded, cp).await;
        loaded = cp;
        settle().await;
        warm(tmp.path().to_path_buf()).await;
        let out = measure("evbig", (cp as f64 * spacing) as u64)
            .await
            .expect("measure");
        eprintln!("  {cp}: p50 {:.3} p99 {:.3} ms", out.p(0.5), out.p(0.99));
        last = Some(out);
    }
    store.close();
    if let Some(out) = last {
        push_vs_small(
            rows,
            "events-range-store",
            &format!("in-process range(), {}M events / year", large / 1_000_000),
            out,
            "same queries; page cache warm",
            small_p99,
        );
    }
}

/// Time to drop a full day bucket vs deleting the same events row by row (in-process).
pub async fn events_retention(rows: &mut Vec<Row>) {
    eprintln!("events-retention …");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = shardbox::Config::with_data_dir(tmp.path().join("data"));
    config.engine.shards = 1;
    let store = shardbox::Store::open(config).expect("open");
    let ev = store.events().clone();
    let day = 86_400_000u64;
    let now = now_ms();
    let day_start = shardbox::events::model::bucket_start(now - 2 * day, day);
    let n = 200_000u64;
    for stream in ["drop", "rows"] {
        ev.configure(stream, Some(day), Some(0))
            .await
            .expect("configure");
        for chunk in (0..n).step_by(10_000) {
            let batch: Vec<_> = (chunk..chunk + 10_000)
                .map(|i| shardbox::events::apply::NewEvent {
                    ts: Some(day_start + i * (day / n)),
                    kind: None,
                    data: EVENT_BYTES.to_vec(),
                })
                .collect();
            ev.append(stream, batch).await.expect("append");
        }
    }
    let t = Instant::now();
    let (dropped, deleted) = ev.trim("drop", day_start + day, false).await.expect("trim");
    let drop_time = t.elapsed();
    assert_eq!((dropped, deleted), (1, n));
    // Row by row: 1,000 deletes per commit through the same writer.
    let table = shardbox::events::model::bucket_table("rows", day_start);
    let t = Instant::now();
    loop {
        let name = table.clone();
        let removed = store
            .engine()
            .write(0, 0, move |ctx| {
                let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(&name);
                let mut tbl = ctx.table(def)?;
                let keys: Vec<Vec<u8>> = {
                    use redb::ReadableTable;
                    let mut keys = Vec::with_capacity(1000);
                    for item in tbl.iter()?.take(1000) {
                        keys.push(item?.0.value().to_vec());
                    }
                    keys
                };
                for k in &keys {
                    tbl.remove(k.as_slice())?;
                }
                Ok::<_, shardbox::engine::OpError<shardbox::EngineError>>(keys.len())
            })
            .await
            .expect("delete rows");
        if removed == 0 {
            break;
        }
    }
    let rows_time = t.elapsed();
    store.close();
    let mk = |d: Duration, ops: u64| Outcome {
        ops,
        errors: 0,
        elapsed: d,
        hist: {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
            let _ = h.record(d.as_micros().max(1) as u64);
            h
        },
        cpu_us_per_op: None,
    };
    let i = rows.len();
    rows.push(row(
        "events-retention",
        "drop one day bucket (200k events)",
        mk(drop_time, n),
        "p50 = the whole drop",
    ));
    rows.push(row(
        "events-retention",
        "delete the same events row by row",
        mk(rows_time, n),
        "1,000 deletes per commit",
    ));
    rows[i].ratio = Some((
        rows_time.as_secs_f64() / drop_time.as_secs_f64().max(1e-9),
        "faster than row by row".into(),
    ));
}
