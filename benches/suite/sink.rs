//! `sink`: the NATS JetStream sink against a real 3-node nats-server cluster on loopback
//! (`scripts/install-nats.sh`, `sync_interval: always`, stream replicas 3).
//!
//! - durable PUT throughput and server CPU per PUT without the sink, with it and a hub aside
//!   (a second cluster on tmpfs in `SCHED_IDLE`: a stand-in for a hub on other hardware), and
//!   with it and the hub beside the box as an equal, alternated; the hub's CPU in each;
//! - lag from a change's commit (its batch time) to its arrival at a subscriber on the hub,
//!   p50/p99, at a steady 2,000 changes/s;
//! - a hub outage of `--sink-outage-secs` (60) under that load: how long the backlog takes to
//!   drain once the hub is back, and the changes/s the sink sustains while draining.

#[path = "../../tests/it/common/nats.rs"]
#[allow(dead_code)] // the tests use all of it, this workload part
pub mod nats;

use crate::loadgen::Proto;
use crate::peers;
use crate::report::{row, Row};
use crate::support::{measure, put_op, wanted, Opts};
use std::path::Path;
use std::time::{Duration, Instant};

/// A config for a box named `name` (every new data directory is a new history: it gets a box,
/// and so a stream, of its own).
fn config(dir: &std::path::Path, urls: &[String], name: &str) -> std::path::PathBuf {
    config_with(dir, urls, name, "")
}

/// [`config`] with more `[sink.nats]` lines.
pub fn config_with(
    dir: &std::path::Path,
    urls: &[String],
    name: &str,
    extra: &str,
) -> std::path::PathBuf {
    let servers: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[sink.nats]\nservers = [{}]\nbox = \"{name}\"\nreplicas = 3\n{extra}",
        servers.join(", ")
    );
    std::fs::write(&path, text).expect("write sink config");
    path
}

/// The CPU seconds a hub's nodes have used.
fn hub_cpu(c: &nats::Cluster) -> Option<f64> {
    c.pids()
        .into_iter()
        .map(|p| peers::cpu_time(p).map(|t| t.as_secs_f64()))
        .sum::<Option<f64>>()
}

async fn status(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    status_part(addr, "sink").await
}

/// One part of the server's `/v1/status` (`sink`, `standby`).
pub async fn status_part(addr: std::net::SocketAddr, part: &str) -> Option<serde_json::Value> {
    let mut c = crate::loadgen::Conn::connect(addr).await.ok()?;
    let (code, body) = c
        .http_raw(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok()?;
    (code == 200)
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())?
        .map(|v| v[part].clone())
}

async fn wait_caught_up(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = status(addr).await {
            if s["state"] == "streaming" && s["lag_records"] == 0 {
                return Some(t.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Writes `rate` PUTs a second for `secs` from 8 connections.
pub async fn paced(addr: std::net::SocketAddr, rate: u64, secs: f64) -> u64 {
    let per = rate / 8;
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        tasks.push(tokio::spawn(async move {
            let mut conn = match crate::loadgen::Conn::connect(addr).await {
                Ok(c) => c,
                Err(_) => return 0,
            };
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let due = start + Duration::from_secs_f64(n as f64 / per as f64);
                tokio::time::sleep_until(due.into()).await;
                let req = format!(
                    "PUT /v1/kv/lag/k{c}-{} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{}",
                    n % 1000,
                    "v".repeat(100)
                );
                if conn.http_raw(req.as_bytes()).await.is_err() {
                    match crate::loadgen::Conn::connect(addr).await {
                        Ok(c2) => conn = c2,
                        Err(_) => break,
                    }
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total
}

pub async fn sink_suite(o: &Opts, rows: &mut Vec<Row>) {
    if !wanted(o, "sink") {
        return;
    }
    let Some(mut cluster) = nats::Cluster::start(3).await else {
        eprintln!("sink: no nats-server (scripts/install-nats.sh failed); skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // A second hub standing in for one on other hardware: its threads in SCHED_IDLE (only CPU
    // nothing else wants) and its store on tmpfs (no fsync queued on the box's disk).
    let aside = match Path::new("/dev/shm").is_dir() {
        true => nats::Cluster::start_in(3, Some(Path::new("/dev/shm"))).await,
        false => None,
    }
    .filter(|c| c.run_idle());
    if aside.is_none() {
        eprintln!("sink: no hub aside (tmpfs at /dev/shm and chrt needed); that arm is skipped");
    }

    // Durable PUT without the sink, with it and the hub aside, and with it and a hub that shares
    // the box's cores and disk as an equal — alternated three times.
    #[derive(Clone, Copy, PartialEq)]
    enum Arm {
        Without,
        HubAside,
        HubBeside,
    }
    let mut runs: [Vec<crate::loadgen::Outcome>; 3] = Default::default();
    for round in 0..3 {
        for arm in [Arm::Without, Arm::HubAside, Arm::HubBeside] {
            let hub = match (arm, &aside) {
                (Arm::HubAside, None) => continue,
                (Arm::HubAside, Some(c)) => c,
                _ => &cluster,
            };
            let cfg = config(dir.path(), &hub.urls(), &format!("put{round}{}", arm as u8));
            let cfg = cfg.to_str().expect("utf-8 path").to_string();
            let settings: Vec<(&str, &str)> = if arm == Arm::Without {
                vec![]
            } else {
                vec![("config", cfg.as_str())]
            };
            let Ok(sb) = peers::shardbox(o.shardbox_bin.as_deref(), &settings) else {
                eprintln!("sink: shardbox did not start");
                return;
            };
            let (h0, t0) = (hub_cpu(hub), Instant::now());
            let out = measure(sb.addr, Proto::Http, o, put_op(o.keys)).await;
            let hub_cores = hub_cpu(hub)
                .zip(h0)
                .map(|(h1, h0)| (h1 - h0) / t0.elapsed().as_secs_f64());
            let label = match arm {
                Arm::Without => "without",
                Arm::HubAside => "with the sink, the hub aside (SCHED_IDLE, tmpfs)",
                Arm::HubBeside => "with the sink, the hub beside the box",
            };
            eprintln!(
                "sink: round {round} {label}: {:.0} PUT/s, {:?} µs CPU/PUT, the hub used {:.2?} cores",
                out.throughput(),
                out.cpu_us_per_op,
                hub_cores
            );
            if arm != Arm::Without {
                let s = status(sb.addr).await.unwrap_or_default();
                eprintln!("sink: at the load's end: {s}");
                // Everything the run wrote must reach the hub, or the arm only deferred work.
                let drained = wait_caught_up(sb.addr, Duration::from_secs(60)).await;
                let s = status(sb.addr).await.unwrap_or_default();
                match drained {
                    Some(t) if s["state"] != "resnapshot_required" => eprintln!(
                        "sink: every change shipped {:.1} s after the load ended ({} acknowledged)",
                        t.as_secs_f64(),
                        s["acked_total"]
                    ),
                    _ => {
                        eprintln!(
                            "sink: the sink did not ship everything: this round does not count"
                        );
                        continue;
                    }
                }
            }
            runs[arm as usize].push(out);
        }
    }
    let median = |v: &mut Vec<crate::loadgen::Outcome>| {
        v.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        (!v.is_empty()).then(|| v.remove(v.len() / 2))
    };
    let [plain, aside, beside] = &mut runs;
    let Some(plain) = median(plain) else {
        eprintln!("sink: no round without the sink; no PUT figures");
        return;
    };
    let plain_rate = plain.throughput();
    rows.push(row(
        "sink-put",
        "shardbox",
        plain,
        "durable PUT, no sink (median of 3)",
    ));
    for (runs, who, what) in [
        (
            aside,
            "shardbox + sink, hub aside",
            "the hub in SCHED_IDLE on tmpfs: a stand-in for a hub on other hardware",
        ),
        (
            beside,
            "shardbox + sink, hub beside",
            "the 3-node hub sharing the box's 2 cores as an equal",
        ),
    ] {
        if let Some(with) = median(runs) {
            let ratio = with.throughput() / plain_rate;
            rows.push(row(
                "sink-put",
                who,
                with,
                &format!(
                    "{ratio:.2}x the PUT rate without the sink (median of 3, alternated; {what})"
                ),
            ));
        }
    }

    // The box's CPU per PUT at a steady 2,000/s without the sink (the same rate with the sink
    // follows): what shipping a change costs the box, apart from the rate the shared cores allow.
    let plain_cpu = match peers::shardbox(o.shardbox_bin.as_deref(), &[]) {
        Ok(sb) => {
            let t0 = peers::cpu_time(sb.pid());
            let sent = paced(sb.addr, 2000, 10.0).await;
            let t1 = peers::cpu_time(sb.pid());
            t0.zip(t1)
                .map(|(a, b)| (b - a).as_secs_f64() * 1e6 / sent.max(1) as f64)
        }
        Err(_) => None,
    };

    // Lag at 2,000 changes/s, measured at a subscriber on the hub.
    let cfg = config(dir.path(), &cluster.urls(), "bench");
    let cfg = cfg.to_str().expect("utf-8 path").to_string();
    let Ok(sb) = peers::shardbox(o.shardbox_bin.as_deref(), &[("config", cfg.as_str())]) else {
        return;
    };
    let _ = wait_caught_up(sb.addr, Duration::from_secs(30)).await;
    let plain = lag_at_2000(&cluster, &sb, "bench", plain_cpu).await;
    // The same with the log shipped too: the changes wait for the log stream's ack of their
    // record (the changes stream never gets ahead of the log stream).
    let cfg_log = config_with(
        dir.path(),
        &cluster.urls(),
        "benchlog",
        "ship_log = true\nsnapshot_interval_ms = 0\n",
    );
    let cfg_log = cfg_log.to_str().expect("utf-8 path").to_string();
    if let Ok(sbl) = peers::shardbox(o.shardbox_bin.as_deref(), &[("config", cfg_log.as_str())]) {
        let _ = wait_caught_up(sbl.addr, Duration::from_secs(30)).await;
        let with_log = lag_at_2000(&cluster, &sbl, "benchlog", plain_cpu).await;
        if let (Some((p50, p99)), Some((l50, l99))) = (plain, with_log) {
            eprintln!(
                "sink: changes lag at 2,000/s, p50/p99: {p50:.0}/{p99:.0} ms alone, {l50:.0}/{l99:.0} ms with ship_log (held behind the log stream)"
            );
        }
    }

    // A hub outage under that load, then the drain.
    let outage = o.sink_outage_secs;
    let box_addr = sb.addr;
    let load = tokio::spawn(paced(box_addr, 2000, outage as f64 + 1.0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        cluster.kill_node(i);
    }
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let backlog = status(box_addr)
        .await
        .and_then(|s| s["lag_records"].as_u64())
        .unwrap_or(0);
    for i in 0..3 {
        cluster.start_node(i);
    }
    let back = Instant::now();
    let during = load.await.unwrap_or(0);
    let drained = wait_caught_up(box_addr, Duration::from_secs(300)).await;
    match drained {
        Some(_) => {
            let took = back.elapsed();
            eprintln!(
                "sink: a {outage} s outage at 2,000 writes/s ({during} acknowledged meanwhile, {backlog} records behind): drained {:.1} s after the hub came back, about {:.0} records/s",
                took.as_secs_f64(),
                backlog as f64 / took.as_secs_f64()
            );
        }
        None => eprintln!("sink: the backlog did not drain within 300 s"),
    }
    drop(sb);

    // `ack = "hub"` against the default, both shipping the log (`ship_log`), alternated three
    // times: what a write pays for its reply to mean the hub holds it.
    let mut by_ack: [Vec<crate::loadgen::Outcome>; 2] = Default::default();
    for round in 0..3 {
        for hub in [false, true] {
            let extra = if hub {
                "ship_log = true\nsnapshot_interval_ms = 0\nack = \"hub\"\n"
            } else {
                "ship_log = true\nsnapshot_interval_ms = 0\n"
            };
            let cfg = config_with(
                dir.path(),
                &cluster.urls(),
                &format!("ack{round}{}", hub as u8),
                extra,
            );
            let cfg = cfg.to_str().expect("utf-8 path").to_string();
            let Ok(sb) = peers::shardbox(o.shardbox_bin.as_deref(), &[("config", cfg.as_str())])
            else {
                eprintln!("sink: shardbox did not start");
                return;
            };
            // Both sinks streaming before the load (the log stream made, the first snapshot taken).
            let _ = wait_caught_up(sb.addr, Duration::from_secs(30)).await;
            let out = measure(sb.addr, Proto::Http, o, put_op(o.keys)).await;
            eprintln!(
                "sink: round {round} ack = {}: {:.0} PUT/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                if hub { "hub" } else { "local" },
                out.throughput(),
                out.p(0.5),
                out.p(0.99),
                out.errors
            );
            by_ack[hub as usize].push(out);
        }
    }
    let [local, hub] = &mut by_ack;
    if let (Some(local), Some(hub)) = (median(local), median(hub)) {
        let (rate, p99) = (
            hub.throughput() / local.throughput(),
            (hub.p(0.99), local.p(0.99)),
        );
        rows.push(row(
            "sink-ack",
            "shardbox + sink, ack = local",
            local,
            "ship_log, the default: a reply after the box's own log fsync (median of 3)",
        ));
        rows.push(row(
            "sink-ack",
            "shardbox + sink, ack = hub",
            hub,
            &format!(
                "{rate:.2}x the PUT rate of ack = local, p99 {:.1} against {:.1} ms: a reply after JetStream holds the record (median of 3, alternated)",
                p99.0, p99.1
            ),
        ));
    }
}

/// At a steady 2,000 PUT/s to `sb` (box `name`): the box's and the hub's CPU per change, and
/// the lag from a change's commit to a subscriber on the hub, p50/p99 in ms.
async fn lag_at_2000(
    cluster: &nats::Cluster,
    sb: &peers::Server,
    name: &str,
    plain_cpu: Option<f64>,
) -> Option<(f64, f64)> {
    let client = async_nats::connect(cluster.urls()[0].as_str()).await.ok()?;
    let mut sub = client.subscribe(format!("shardbox.{name}.>")).await.ok()?;
    let lags = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut h = crate::loadgen::hist();
        let until = Instant::now() + Duration::from_secs(12);
        while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), sub.next()).await {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
                continue;
            };
            let Some(at) = v["at_ms"].as_u64() else {
                continue;
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let _ = h.record(now.saturating_sub(at).max(1) * 1000);
        }
        h
    });
    let acked = |s: Option<serde_json::Value>| s.and_then(|s| s["acked_total"].as_u64());
    let (box0, hub0, acked0) = (
        peers::cpu_time(sb.pid()),
        hub_cpu(cluster),
        acked(status(sb.addr).await),
    );
    let sent = paced(sb.addr, 2000, 10.0).await;
    let _ = wait_caught_up(sb.addr, Duration::from_secs(30)).await;
    let (box1, hub1, acked1) = (
        peers::cpu_time(sb.pid()),
        hub_cpu(cluster),
        acked(status(sb.addr).await),
    );
    if let (Some(b0), Some(b1), Some(h0), Some(h1), Some(a0), Some(a1)) =
        (box0, box1, hub0, hub1, acked0, acked1)
    {
        let shipped = a1.saturating_sub(a0).max(1) as f64;
        let with = (b1 - b0).as_secs_f64() * 1e6 / shipped;
        eprintln!(
            "sink ({name}): at 2,000 PUT/s: box CPU {with:.1} µs per PUT with the sink, {} without; hub (3 nodes) {:.1} µs per change",
            plain_cpu.map_or("?".to_string(), |p| format!("{p:.1}")),
            (h1 - h0) * 1e6 / shipped
        );
    }
    let h = lags.await.ok()?;
    let (p50, p99) = (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    );
    eprintln!(
        "sink ({name}): lag commit → hub subscriber at 2,000/s: p50 {p50:.0} ms, p99 {p99:.0} ms ({} changes seen, {sent} sent; ms clock resolution)",
        h.len()
    );

    Some((p50, p99))
}
