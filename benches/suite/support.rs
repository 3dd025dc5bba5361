//! What every workload shares: options, key choice, measuring with the server's own counters,
//! preloading, and the settings each shardbox run starts with.

use crate::loadgen::{self, Op, Outcome, Proto};
use base64::Engine as _;
use std::net::SocketAddr;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

pub struct Opts {
    pub duration: Duration,
    pub connections: usize,
    pub keys: u64,
    pub only: Option<String>,
    pub install: bool,
    /// Extra shardbox settings for every run: --set key=value.
    pub settings: Vec<(String, String)>,
    /// Events in the large stream of `events-range-1h`.
    pub events_large: u64,
    /// Run the long workloads too (`--full`).
    pub full: bool,
    /// The shardbox binary to run (`--shardbox-bin`, default: this build's), e.g. an older
    /// release built elsewhere, to measure before and after on the same machine.
    pub shardbox_bin: Option<std::path::PathBuf>,
    /// Data sizes (GiB) of `restart-time`'s repair measurements (`--restart-gib 1,10`).
    pub restart_gib: Vec<u64>,
    /// How long `soak` runs (`--soak-secs`, default 1800).
    pub soak_secs: u64,
    /// The hub outage of `sink` (`--sink-outage-secs`, default 60).
    pub sink_outage_secs: u64,
    /// How much `standby`'s box holds when a standby comes up from the hub (`--standby-mib`).
    pub standby_mib: u64,
}

pub fn parse_opts() -> Opts {
    let mut o = Opts {
        duration: Duration::from_secs(5),
        connections: 64,
        keys: 1_000_000,
        only: None,
        install: true,
        settings: Vec::new(),
        events_large: 50_000_000,
        full: false,
        shardbox_bin: None,
        restart_gib: vec![1],
        soak_secs: 1800,
        sink_outage_secs: 60,
        standby_mib: 64,
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
            "--full" => o.full = true,
            "--list" => {
                for (name, quick, what) in crate::WORKLOADS {
                    println!(
                        "{name:20} {} {what}",
                        if *quick { "quick" } else { "full " }
                    );
                }
                std::process::exit(0);
            }
            "--shardbox-bin" => {
                o.shardbox_bin = Some(next.clone().into());
                i += 1;
            }
            "--soak-secs" => {
                o.soak_secs = next.parse().expect("--soak-secs N");
                i += 1;
            }
            "--sink-outage-secs" => {
                o.sink_outage_secs = next.parse().expect("--sink-outage-secs N");
                i += 1;
            }
            "--standby-mib" => {
                o.standby_mib = next.parse().expect("--standby-mib N");
                i += 1;
            }
            "--restart-gib" => {
                o.restart_gib = next
                    .split(',')
                    .map(|g| g.parse().expect("--restart-gib N[,N…]"))
                    .collect();
                i += 1;
            }
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

pub fn key(n: u64) -> String {
    format!("k{n:07}")
}

/// Deterministic pseudo-random key index for (connection, iteration).
pub fn pick(conn: usize, i: u64, keys: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(conn as u64).to_le_bytes());
    b[8..].copy_from_slice(&i.to_le_bytes());
    xxh3_64(&b) % keys
}

pub const VALUE_BYTES: usize = 100;

pub fn value() -> Vec<u8> {
    vec![b'v'; VALUE_BYTES]
}

pub async fn measure<F>(addr: SocketAddr, proto: Proto, o: &Opts, f: F) -> Outcome
where
    F: Fn(usize, u64) -> Op + Send + Sync + Clone + 'static,
{
    measure_with(addr, proto, o.connections, o.duration, f).await
}

/// As [`measure`] with its own connection count and duration.
pub async fn measure_with<F>(
    addr: SocketAddr,
    proto: Proto,
    connections: usize,
    duration: Duration,
    f: F,
) -> Outcome
where
    F: Fn(usize, u64) -> Op + Send + Sync + Clone + 'static,
{
    // Warm up (connections, caches, allocator), then measure.
    let _ = loadgen::run(addr, proto, connections, Duration::from_secs(1), f.clone()).await;
    let before = server_stats(addr, proto).await;
    let out = with_server_cpu(addr, loadgen::run(addr, proto, connections, duration, f)).await;
    if let (Some(a), Some(b)) = (before, server_stats(addr, proto).await) {
        eprintln!("  {}", b.since(&a).describe());
    }
    out
}

/// Runs `run` (a measurement against the server at `addr`) and sets its server CPU time per
/// operation from the server's /proc/PID/stat before and after.
pub async fn with_server_cpu(
    addr: SocketAddr,
    run: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    let pid = crate::peers::pid_of(addr);
    let before = pid.and_then(crate::peers::cpu_time);
    let mut out = run.await;
    if let (Some(a), Some(b)) = (before, pid.and_then(crate::peers::cpu_time)) {
        if out.ops > 0 {
            out.cpu_us_per_op = Some((b - a).as_secs_f64() * 1e6 / out.ops as f64);
        }
    }
    out
}

/// shardbox's own counters from /metrics (writers, log, checkpoints).
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerStats {
    pub commits: f64,
    pub ops: f64,
    pub commit_secs: f64,
    pub syncs: f64,
    pub log_ops: f64,
    pub log_records: f64,
    pub log_bytes: f64,
    pub checkpoints: f64,
}

impl ServerStats {
    pub fn since(&self, before: &ServerStats) -> ServerStats {
        ServerStats {
            commits: self.commits - before.commits,
            ops: self.ops - before.ops,
            commit_secs: self.commit_secs - before.commit_secs,
            syncs: self.syncs - before.syncs,
            log_ops: self.log_ops - before.log_ops,
            log_records: self.log_records - before.log_records,
            log_bytes: self.log_bytes - before.log_bytes,
            checkpoints: self.checkpoints - before.checkpoints,
        }
    }

    /// Writes (operations) per log fsync: what one group commit carried.
    pub fn writes_per_sync(&self) -> f64 {
        self.log_ops / self.syncs.max(1.0)
    }

    pub fn describe(&self) -> String {
        // A read-only run (after its preload was measured apart) committed nothing: say so
        // rather than print a row of zeros.
        if self.commits == 0.0 && self.syncs == 0.0 {
            return "shardbox: no writes in this run (reads only)".to_string();
        }
        format!(
            "shardbox: {:.0} commits, {:.1} ops/commit, {:.3} ms/commit; log: {:.0} fsyncs, {:.1} writes per fsync, {:.0} log bytes per write; {:.0} checkpoints",
            self.commits,
            self.ops / self.commits.max(1.0),
            self.commit_secs * 1000.0 / self.commits.max(1.0),
            self.syncs,
            self.writes_per_sync(),
            self.log_bytes / self.log_ops.max(1.0),
            self.checkpoints
        )
    }
}

/// Scrapes [`ServerStats`]; `None` for peers (they speak RESP).
pub async fn server_stats(addr: SocketAddr, proto: Proto) -> Option<ServerStats> {
    if proto != Proto::Http {
        return None;
    }
    let mut c = loadgen::Conn::connect(addr).await.ok()?;
    let (_, body) = c.http("GET", "/metrics", b"").await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some(ServerStats {
        commits: sum("shardbox_shard_commits_total"),
        ops: sum("shardbox_shard_ops_total"),
        commit_secs: sum("shardbox_shard_commit_seconds_total"),
        syncs: sum("shardbox_wal_syncs_total"),
        log_ops: sum("shardbox_wal_ops_total"),
        log_records: sum("shardbox_wal_records_total"),
        log_bytes: sum("shardbox_wal_bytes_total"),
        checkpoints: sum("shardbox_shard_checkpoints_total"),
    })
}

pub fn put_op(keys: u64) -> impl Fn(usize, u64) -> Op + Send + Sync + Clone + 'static {
    let v = value();
    move |c, i| Op::Put {
        key: key(pick(c, i, keys)),
        value: v.clone(),
    }
}

pub fn get_op(keys: u64) -> impl Fn(usize, u64) -> Op + Send + Sync + Clone + 'static {
    move |c, i| Op::Get {
        key: key(pick(c, i, keys)),
    }
}

/// Loads `keys` 100-byte values into shardbox with :batchWrite (1,000 per request).
pub async fn preload_shardbox(addr: SocketAddr, keys: u64) -> Result<(), String> {
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
pub async fn preload_redis(addr: SocketAddr, keys: u64, v: &[u8]) -> Result<(), String> {
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

/// The suite's --set settings plus a workload's own.
pub fn settings<'a>(o: &'a Opts, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = o
        .settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    v.extend_from_slice(extra);
    v
}

/// Starts shardbox with the suite's settings plus `extra`.
pub fn start_shardbox(o: &Opts, extra: &[(&str, &str)]) -> Result<crate::peers::Server, String> {
    crate::peers::shardbox(o.shardbox_bin.as_deref(), &settings(o, extra))
}

/// Whether to run workload `name`: named by `--only` (a prefix matches), else every quick
/// workload, and the long ones with `--full`.
pub fn wanted(o: &Opts, name: &str) -> bool {
    match o.only.as_deref() {
        Some(only) => only
            .split(',')
            .any(|w| !w.is_empty() && name.starts_with(w)),
        // The soak runs only when named.
        None => crate::WORKLOADS
            .iter()
            .any(|(n, quick, _)| *n == name && (*quick || (o.full && name != "soak"))),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lets the kernel write back what a load left dirty, so range latency is measured on a quiet
/// disk rather than against gigabytes of writeback.
pub async fn settle() {
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Reads every file under `dir` once, so the OS page cache holds it (when memory allows): the
/// state of a box that has been serving the data for a while.
pub async fn warm(dir: std::path::PathBuf) {
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

pub const EVENT_BYTES: &[u8] = b"\"pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\"";

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) in bytes; 0
/// when it cannot be read.
pub fn process_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
