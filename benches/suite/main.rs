//! shardbox's benchmark suite: each workload runs against shardbox and its peer in the same run,
//! with the same load generator, and prints throughput, latency percentiles and the ratio.
//!
//! `cargo bench --bench suite` (options after `--`: `--duration 10 --connections 64
//! --keys 1000000 --only kv-get-hot --no-install`). Results also go to
//! `target/shardbox-bench.md`.

mod loadgen;
mod peers;
mod queue;

use base64::Engine as _;
use loadgen::{Op, Outcome, Proto};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

struct Opts {
    duration: Duration,
    connections: usize,
    keys: u64,
    only: Option<String>,
    install: bool,
    /// Extra shardbox settings for every run: --set key=value.
    settings: Vec<(String, String)>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        duration: Duration::from_secs(10),
        connections: 64,
        keys: 1_000_000,
        only: None,
        install: true,
        settings: Vec::new(),
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
async fn preload_redis(addr: SocketAddr, keys: u64) -> Result<(), String> {
    let v = value();
    let mut c = loadgen::Conn::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    for start in (0..keys).step_by(1000) {
        let names: Vec<String> = (start..(start + 1000).min(keys)).map(key).collect();
        let mut args: Vec<&[u8]> = vec![b"MSET"];
        for n in &names {
            args.push(n.as_bytes());
            args.push(&v);
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
                "HTTP GET, 100 B, 1M keys",
            ));
            let i = rows.len() - 1;
            match &redis {
                Ok(r) => {
                    preload_redis(r.addr, o.keys).await.expect("preload redis");
                    let theirs = measure(r.addr, Proto::Resp, o, get_op(o.keys)).await;
                    rows.push(row("kv-get-hot", "redis GET", theirs, "RESP GET"));
                    set_ratio(rows, i, i + 1, "vs redis GET");
                }
                Err(e) => rows.push(unavailable("kv-get-hot", "redis GET", e)),
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
    let table = render(&o, &rows);
    println!("\n{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/shardbox-bench.md");
    let _ = std::fs::write(&out, &table);
    eprintln!("written to {}", out.display());
}
