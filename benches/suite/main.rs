//! shardbox's benchmark suite: each workload runs against shardbox and its peer in the same run,
//! with the same load generator, and prints throughput, latency percentiles and the ratio.
//!
//! `cargo bench --bench suite` (options after `--`: `--duration 10 --connections 64
//! --keys 1000000 --only kv-get-hot --no-install`). Results also go to
//! `target/shardbox-bench.md`.

mod cache;
mod events;
mod loadgen;
mod peers;
mod queue;

use base64::Engine as _;
use hdrhistogram::Histogram;
use loadgen::{Op, Outcome, Proto};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

struct Opts {
    duration: Duration,
    connections: usize,
    keys: u64,
    only: Option<String>,
    install: bool,
    /// Extra shardbox settings for every run: --set key=value.
    settings: Vec<(String, String)>,
    /// Events in the large stream of `events-range-1h`.
    events_large: u64,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        duration: Duration::from_secs(10),
        connections: 64,
        keys: 1_000_000,
        only: None,
        install: true,
        settings: Vec::new(),
        events_large: 50_000_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let next = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--duration" => {
                o.duration = Duration::from_secs_f64(next.parse().expect("--duration seconds"));
                i += 1;
            }
            "--connections" => {
                o.connections = next.parse().expect("--connections N");
                i += 1;
            }
            "--keys" => {
                o.keys = next.parse().expect("--keys N");
                i += 1;
            }
            "--only" => {
                o.only = Some(next);
                i += 1;
            }
            "--no-install" => o.install = false,
            "--events-large" => {
                o.events_large = next.parse().expect("--events-large N");
                i += 1;
            }
            "--set" => {
                let (k, v) = next.split_once('=').expect("--set key=value");
                o.settings.push((k.to_string(), v.to_string()));
                i += 1;
            }
            _ => {} // cargo passes --bench; ignore what we do not know
        }
        i += 1;
    }
    o
}

/// One line of the results table.
struct Row {
    workload: String,
    system: String,
    outcome: Option<Outcome>,
    /// Throughput ratio shardbox / peer, on the shardbox row.
    ratio: Option<(f64, String)>,
    note: String,
}

fn key(n: u64) -> String {
    format!("k{n:07}")
}

/// Deterministic pseudo-random key index for (connection, iteration).
fn pick(conn: usize, i: u64, keys: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(conn as u64).to_le_bytes());
    b[8..].copy_from_slice(&i.to_le_bytes());
    xxh3_64(&b) % keys
}

const VALUE_BYTES: usize = 100;

fn value() -> Vec<u8> {
    vec![b'v'; VALUE_BYTES]
}

async fn measure<F>(addr: SocketAddr, proto: Proto, o: &Opts, f: F) -> Outcome
where
    F: Fn(usize, u64) -> Op + Send + Sync + Clone + 'static,
{
    // Warm up (connections, caches, allocator), then measure.
    let _ = loadgen::run(
        addr,
        proto,
        o.connections,
        Duration::from_secs(1),
        f.clone(),
    )
    .await;
    let before = commit_stats(addr, proto).await;
    let out = loadgen::run(addr, proto, o.connections, o.duration, f).await;
    if let (Some(a), Some(b)) = (before, commit_stats(addr, proto).await) {
        let (commits, ops, secs) = (b.0 - a.0, b.1 - a.1, b.2 - a.2);
        if commits > 0.0 {
            eprintln!(
                "  shardbox writers: {commits:.0} commits, {:.1} ops/commit, {:.3} ms per commit (apply + fsync)",
                ops / commits,
                secs * 1000.0 / commits
            );
        }
    }
    out
}

/// Sums the shard writer counters from /metrics: (commits, ops, commit seconds).
async fn commit_stats(addr: SocketAddr, proto: Proto) -> Option<(f64, f64, f64)> {
    if proto != Proto::Http {
        return None;
    }
    let mut c = loadgen::Conn::connect(addr).await.ok()?;
    let (_, body) = c.http("GET", "/metrics", b"").await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum("shardbox_shard_commits_total{"),
        sum("shardbox_shard_ops_total{"),
        sum("shardbox_shard_commit_seconds_total{"),
    ))
}

fn put_op(keys: u64) -> impl Fn(usize, u64) -> Op + Send + Sync + Clone + 'static {
    let v = value();
    move |c, i| Op::Put {
        key: key(pick(c, i, keys)),
        value: v.clone(),
    }
}

fn get_op(keys: u64) -> impl Fn(usize, u64) -> Op + Send + Sync + Clone + 'static {
    move |c, i| Op::Get {
        key: key(pick(c, i, keys)),
    }
}

/// Loads `keys` 100-byte values into shardbox with :batchWrite (1,000 per request).
async fn preload_shardbox(addr: SocketAddr, keys: u64) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(value());
    let chunks: Vec<u64> = (0..keys).step_by(1000).collect();
    let per = chunks.len().div_ceil(8);
    let mut tasks = Vec::new();
    for part in chunks.chunks(per.max(1)) {
        let part = part.to_vec();
        let b64 = b64.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = loadgen::Conn::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            for start in part {
                let ops: Vec<serde_json::Value> = (start..(start + 1000).min(keys))
                    .map(|n| serde_json::json!({"op": "put", "key": key(n), "value_b64": b64}))
                    .collect();
                let body = serde_json::json!({ "ops": ops }).to_string();
                let (status, resp) = c
                    .http("POST", "/v1/kv/bench:batchWrite", body.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                if status != 200 {
                    return Err(format!(
                        "preload: {status} {}",
                        String::from_utf8_lossy(&resp)
                    ));
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Loads the same keys into Redis with MSET (1,000 pairs per command).
async fn preload_redis(addr: SocketAddr, keys: u64, v: &[u8]) -> Result<(), String> {
    let mut c = loadgen::Conn::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    for start in (0..keys).step_by(1000) {
        let names: Vec<String> = (start..(start + 1000).min(keys)).map(key).collect();
        let mut args: Vec<&[u8]> = vec![b"MSET"];
        for n in &names {
            args.push(n.as_bytes());
            args.push(v);
        }
        let mut out = Vec::new();
        loadgen::resp_command(&mut out, &args);
        if !c.resp_raw(&out).await.map_err(|e| e.to_string())? {
            return Err("MSET failed".into());
        }
    }
    Ok(())
}

fn row(workload: &str, system: &str, outcome: Outcome, note: &str) -> Row {
    Row {
        workload: workload.into(),
        system: system.into(),
        outcome: Some(outcome),
        ratio: None,
        note: note.into(),
    }
}

fn unavailable(workload: &str, system: &str, why: &str) -> Row {
    Row {
        workload: workload.into(),
        system: system.into(),
        outcome: None,
        ratio: None,
        note: format!("peer not available: {why}"),
    }
}

fn set_ratio(rows: &mut [Row], ours: usize, theirs: usize, label: &str) {
    let (Some(a), Some(b)) = (&rows[ours].outcome, &rows[theirs].outcome) else {
        return;
    };
    if b.throughput() > 0.0 {
        let r = a.throughput() / b.throughput();
        rows[ours].ratio = Some((r, label.to_string()));
    }
}

/// The suite's --set settings plus a workload's own.
fn settings<'a>(o: &'a Opts, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = o
        .settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    v.extend_from_slice(extra);
    v
}

fn wanted(o: &Opts, name: &str) -> bool {
    o.only
        .as_deref()
        .is_none_or(|only| only.split(',').any(|w| name.starts_with(w)))
}

async fn kv_suite(o: &Opts, rows: &mut Vec<Row>) {
    let want_get = wanted(o, "kv-get-hot");
    let want_put = wanted(o, "kv-put-durable");
    if want_get || want_put {
        let sb = peers::shardbox(&settings(o, &[])).expect("start shardbox");
        let redis = peers::redis(o.install);
        if want_get {
            eprintln!("kv-get-hot: preloading {} keys …", o.keys);
            preload_shardbox(sb.addr, o.keys)
                .await
                .expect("preload shardbox");
            let ours = measure(sb.addr, Proto::Http, o, get_op(o.keys)).await;
            rows.push(row(
                "kv-get-hot",
                "shardbox GET",
                ours,
                &format!("HTTP GET, 100 B, {} keys", o.keys),
            ));
            let i = rows.len() - 1;
            match &redis {
                Ok(r) => {
                    preload_redis(r.addr, o.keys, &value())
                        .await
                        .expect("preload redis");
                    let theirs = measure(r.addr, Proto::Resp, o, get_op(o.keys)).await;
                    rows.push(row("kv-get-hot", "redis GET", theirs, "RESP GET"));
                    set_ratio(rows, i, i + 1, "vs redis GET");
                }
                Err(e) => rows.push(unavailable("kv-get-hot", "redis GET", e)),
            }
            eprintln!("kv-get-hot without the read cache …");
            let off =
                peers::shardbox(&settings(o, &[("kv_cache_bytes", "0")])).expect("start shardbox");
            preload_shardbox(off.addr, o.keys)
                .await
                .expect("preload shardbox");
            let before = measure(off.addr, Proto::Http, o, get_op(o.keys)).await;
            rows.push(row(
                "kv-get-hot",
                "shardbox GET, kv_cache_bytes=0",
                before,
                "before read caching: every GET opens a redb read transaction",
            ));
            let j = rows.len() - 1;
            if let (Some(a), Some(b)) = (&rows[i].outcome, &rows[j].outcome) {
                let r = a.throughput() / b.throughput().max(1e-9);
                rows[j].ratio = Some((r, "read cache on ÷ this row".into()));
            }
        }
        if want_put {
            eprintln!("kv-put-durable …");
            let ours = measure(sb.addr, Proto::Http, o, put_op(o.keys)).await;
            rows.push(row(
                "kv-put-durable",
                "shardbox PUT",
                ours,
                "immediate: reply after fsync",
            ));
            let i = rows.len() - 1;
            match &redis {
                Ok(r) => {
                    let theirs = measure(r.addr, Proto::Resp, o, put_op(o.keys)).await;
                    rows.push(row(
                        "kv-put-durable",
                        "redis SET",
                        theirs,
                        "appendfsync always",
                    ));
                    set_ratio(rows, i, i + 1, "vs redis always-fsync");
                }
                Err(e) => rows.push(unavailable("kv-put-durable", "redis SET", e)),
            }
            drop(sb);
            eprintln!("kv-put-durable with batch_ops_max=1 …");
            let single =
                peers::shardbox(&settings(o, &[("batch_ops_max", "1")])).expect("start shardbox");
            let one = measure(single.addr, Proto::Http, o, put_op(o.keys)).await;
            rows.push(row(
                "kv-put-durable",
                "shardbox PUT, batch_ops_max=1",
                one,
                "one commit per write",
            ));
            let j = rows.len() - 1;
            set_ratio(
                rows,
                j,
                i,
                "group commit buys this (grouped / one-per-write)",
            );
            if let Some((r, _)) = rows[j].ratio {
                rows[j].ratio = Some((1.0 / r, "group commit ÷ this row".into()));
            }
        }
    }
}

async fn queue_suite(o: &Opts, rows: &mut Vec<Row>) {
    use queue::System;
    let systems: [(System, &str); 3] = [
        (System::Shardbox, "shardbox queue"),
        (System::Beanstalkd, "beanstalkd -f 0"),
        (System::Redis, "redis list (LPUSH+BLMOVE+LREM)"),
    ];
    let start = |sys: System| -> Result<peers::Server, String> {
        match sys {
            System::Shardbox => peers::shardbox(&settings(o, &[])),
            System::Beanstalkd => peers::beanstalkd(o.install),
            System::Redis => peers::redis(o.install),
        }
    };
    if wanted(o, "queue-cycle") {
        let first = rows.len();
        for (sys, name) in systems {
            eprintln!("queue-cycle: {name} …");
            match start(sys) {
                Ok(server) => {
                    let _ = queue::cycle(sys, server.addr, 32, 32, Duration::from_secs(1)).await;
                    let proto = if sys == System::Shardbox {
                        Proto::Http
                    } else {
                        Proto::Resp
                    };
                    let before = commit_stats(server.addr, proto).await;
                    let out = queue::cycle(sys, server.addr, 32, 32, o.duration).await;
                    if let (Some(a), Some(b)) = (before, commit_stats(server.addr, proto).await) {
                        let (commits, ops, secs) = (b.0 - a.0, b.1 - a.1, b.2 - a.2);
                        if commits > 0.0 {
                            eprintln!(
                                "  shardbox writers: {commits:.0} commits, {:.1} ops/commit, {:.3} ms per commit",
                                ops / commits,
                                secs * 1000.0 / commits
                            );
                        }
                    }
                    rows.push(row(
                        "queue-cycle",
                        name,
                        out,
                        "32 producers + 32 workers, 200 B, durable",
                    ));
                }
                Err(e) => rows.push(unavailable("queue-cycle", name, &e)),
            }
        }
        let (ours, bean, redis) = (first, first + 1, first + 2);
        set_ratio(rows, bean, ours, "");
        set_ratio(rows, redis, ours, "");
        for i in [bean, redis] {
            if let Some((r, _)) = rows[i].ratio {
                rows[i].ratio = Some((1.0 / r, "shardbox ÷ this row".into()));
            }
        }
    }
    if wanted(o, "queue-latency") {
        for (sys, name) in systems {
            eprintln!("queue-latency: {name} …");
            match start(sys) {
                Ok(server) => {
                    let out =
                        queue::latency(sys, server.addr, 8, o.duration, Duration::from_millis(5))
                            .await;
                    rows.push(row(
                        "queue-latency",
                        name,
                        out,
                        "enqueue→claim, 8 long-polling workers, 1 job / 5 ms",
                    ));
                }
                Err(e) => rows.push(unavailable("queue-latency", name, &e)),
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn events_suite(o: &Opts, rows: &mut Vec<Row>) {
    if wanted(o, "events-append") {
        eprintln!("events-append …");
        let first = rows.len();
        let sb = peers::shardbox(&settings(o, &[])).expect("start shardbox");
        let _ = events::append(true, sb.addr, o.connections, 100, Duration::from_secs(1)).await;
        let out = events::append(true, sb.addr, o.connections, 100, o.duration).await;
        rows.push(row(
            "events-append",
            "shardbox NDJSON, 100 events/request",
            out,
            "events/s; 200 B events, 8 streams, reply after fsync",
        ));
        drop(sb);
        match peers::redis(o.install) {
            Ok(r) => {
                let _ =
                    events::append(false, r.addr, o.connections, 100, Duration::from_secs(1)).await;
                let out = events::append(false, r.addr, o.connections, 100, o.duration).await;
                rows.push(row(
                    "events-append",
                    "redis XADD ×100 pipelined",
                    out,
                    "events/s; appendfsync always",
                ));
                set_ratio(rows, first, first + 1, "vs redis XADD");
            }
            Err(e) => rows.push(unavailable("events-append", "redis XADD", &e)),
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

/// Pushes a range row with its p99 as a multiple of the 1M stream's.
fn push_vs_small(
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

/// Lets the kernel write back what a load left dirty, so range latency is measured on a quiet
/// disk rather than against gigabytes of writeback.
async fn settle() {
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Reads every file under `dir` once, so the OS page cache holds it (when memory allows): the
/// state of a box that has been serving the data for a while.
async fn warm(dir: std::path::PathBuf) {
    let _ = tokio::task::spawn_blocking(move || {
        fn walk(p: &std::path::Path, buf: &mut [u8]) {
            let Ok(entries) = std::fs::read_dir(p) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, buf);
                } else if let Ok(mut f) = std::fs::File::open(&path) {
                    use std::io::Read;
                    while matches!(f.read(buf), Ok(n) if n > 0) {}
                }
            }
        }
        let mut buf = vec![0u8; 1 << 20];
        walk(&dir, &mut buf);
    })
    .await;
}

/// Range latency of one-hour windows as a stream grows, against Redis XRANGE; writes the plot.
async fn events_range(o: &Opts, rows: &mut Vec<Row>) {
    let large = o.events_large.max(1_000_000);
    let start = now_ms() - events::YEAR_MS;
    let queries = 4000;
    let sb = peers::shardbox(&settings(
        o,
        &[("default_retention_ms", "0"), ("default_bucket", "1d")],
    ))
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
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/shardbox-events-range.svg");
    let _ = std::fs::write(&path, svg);
    eprintln!("plot written to {}", path.display());
}

/// `events-range-1h` without HTTP: the storage layer's time for the same one-hour queries
/// (in-process, one query at a time, 20,000 queries, page cache warm), on a stream of 1M events
/// over a year and on one of `events_large` — the bucket layout's own scaling, free of the
/// network and scheduler noise that dominates p99 over HTTP on a 2-core box.
async fn events_range_store(o: &Opts, rows: &mut Vec<Row>) {
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
async fn events_retention(rows: &mut Vec<Row>) {
    eprintln!("events-retention …");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = shardbox::Config::with_data_dir(tmp.path().join("data"));
    config.shards = 1;
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
                Ok(keys.len())
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

const EVENT_BYTES: &[u8] = b"\"pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\"";

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn render(o: &Opts, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "machine: {} | {} connections, {} s per run, {}-byte values, {} keys\n",
        machine(),
        o.connections,
        o.duration.as_secs_f64(),
        VALUE_BYTES,
        o.keys
    );
    let _ = writeln!(
        s,
        "| workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | errors | ratio | notes |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        match &r.outcome {
            Some(out) => {
                let ratio = r
                    .ratio
                    .as_ref()
                    .map(|(x, l)| format!("**{x:.2}×** {l}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                    r.workload,
                    r.system,
                    out.throughput(),
                    out.p(0.5),
                    out.p(0.99),
                    out.p(0.999),
                    out.errors,
                    ratio,
                    r.note
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | – | – | – | – | – | – | {} |",
                    r.workload, r.system, r.note
                );
            }
        }
    }
    s
}

fn main() {
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    rt.block_on(kv_suite(&o, &mut rows));
    rt.block_on(queue_suite(&o, &mut rows));
    rt.block_on(events_suite(&o, &mut rows));
    rt.block_on(cache::cache_suite(&o, &mut rows));
    let mut table = render(&o, &rows);
    if wanted(&o, "cache-hit-ratio") {
        eprintln!("cache-hit-ratio: Zipf(0.99), 1M keys, 4M requests …");
        table.push_str("\n### cache-hit-ratio: Zipf(0.99) over 1M keys, 4M requests (first 1M warm the cache)\n\n");
        table.push_str(&cache::hit_ratio_table());
    }
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/shardbox-bench.md");
    let _ = std::fs::write(&out, &table);
    eprintln!("written to {}", out.display());
}
