//! `restart-time`: how long a restart after SIGKILL takes — with a full log to replay
//! (`checkpoint_log_bytes` of it), and with 1 GiB of data (redb quick repair on, the default,
//! and off: then redb walks the whole file to rebuild its allocator state).

use crate::loadgen::{self, Op, Outcome, Proto};
use crate::report::{row, Row};
use crate::support::{server_stats, settings, start_shardbox, wanted, Opts};
use base64::Engine as _;
use std::time::Duration;

/// An outcome holding one timed event (for a table row).
fn single(d: Duration) -> Outcome {
    let mut h = loadgen::hist();
    let _ = h.record(d.as_micros().max(1) as u64);
    Outcome {
        ops: 1,
        errors: 0,
        elapsed: d,
        hist: h,
        cpu_us_per_op: None,
    }
}

fn kib_put(c: usize, i: u64) -> Op {
    Op::Put {
        key: format!("r{c}-{i}"),
        value: vec![b'r'; 1024],
    }
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let Ok(mut c) = loadgen::Conn::connect(addr).await else {
        return 0.0;
    };
    let Ok((_, body)) = c.http("GET", "/metrics", b"").await else {
        return 0.0;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn restart_suite(o: &Opts, rows: &mut Vec<Row>) {
    if !wanted(o, "restart-time") {
        return;
    }
    let log_bytes: u64 = settings(o, &[])
        .iter()
        .find(|(k, _)| *k == "checkpoint_log_bytes")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(64 << 20);
    // 1. A log of (almost) checkpoint_log_bytes to replay: interval checkpoints off, so only
    //    the size rule would checkpoint, and the load stops just short of it.
    let keep = [("checkpoint_interval_ms", "86400000")];
    let mut sb = start_shardbox(o, &keep).expect("start shardbox");
    eprintln!("restart-time: writing ~{} MiB of log …", log_bytes >> 20);
    loop {
        let _ = loadgen::run(
            sb.addr,
            Proto::Http,
            32,
            Duration::from_millis(500),
            kib_put,
        )
        .await;
        let s = server_stats(sb.addr, Proto::Http).await.unwrap_or_default();
        if s.log_bytes >= log_bytes as f64 * 0.9 {
            break;
        }
    }
    let logged = server_stats(sb.addr, Proto::Http).await.unwrap_or_default();
    let took = sb
        .restart_shardbox(o.shardbox_bin.as_deref(), &settings(o, &keep))
        .expect("restart");
    let replayed = metric(sb.addr, "shardbox_wal_replayed_records").await;
    let replay_s = metric(sb.addr, "shardbox_wal_replay_seconds").await;
    rows.push(row(
        "restart-time",
        &format!(
            "after SIGKILL, {:.0} MiB of log to replay",
            logged.log_bytes / 1048576.0
        ),
        single(took),
        &format!("p50 = spawn to listening; {replayed:.0} records replayed in {replay_s:.2} s"),
    ));
    drop(sb);
    // 2. N GiB of data (`--restart-gib`), quick repair on (default) and off.
    for (gib, quick) in o
        .restart_gib
        .iter()
        .flat_map(|g| [(*g, "true"), (*g, "false")])
    {
        let extra = [("quick_repair", quick)];
        let mut sb = start_shardbox(o, &extra).expect("start shardbox");
        eprintln!("restart-time: loading {gib} GiB (quick_repair={quick}) …");
        load_gib(sb.addr, gib).await;
        // Some writes after the last checkpoint, so the kill leaves both repair and replay.
        let _ = loadgen::run(sb.addr, Proto::Http, 32, Duration::from_secs(2), kib_put).await;
        let size: u64 = std::fs::read_dir(sb.dir().join("data/shards"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let took = sb
            .restart_shardbox(o.shardbox_bin.as_deref(), &settings(o, &extra))
            .expect("restart");
        rows.push(row(
            "restart-time",
            &format!(
                "after SIGKILL, {:.2} GiB of shards, quick_repair={quick}",
                size as f64 / (1u64 << 30) as f64
            ),
            single(took),
            &format!(
                "spawn to listening (repair + replay): {:.2} s",
                took.as_secs_f64()
            ),
        ));
    }
}

/// `gib` GiB as 16 KiB values through :batchWrite (64 per request, 4 connections).
async fn load_gib(addr: std::net::SocketAddr, gib: u64) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(vec![b'g'; 16 << 10]);
    let requests = gib * 1024; // 64 × 16 KiB = 1 MiB each
    let mut tasks = Vec::new();
    for part in 0..4u64 {
        let b64 = b64.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = loadgen::Conn::connect(addr).await.expect("connect");
            for chunk in (part * requests / 4..(part + 1) * requests / 4).map(|c| c * 64) {
                let ops: Vec<serde_json::Value> = (chunk..chunk + 64)
                    .map(|n| serde_json::json!({"op": "put", "key": format!("g{n:09}"), "value_b64": b64}))
                    .collect();
                let body = serde_json::json!({ "ops": ops }).to_string();
                let (status, _) = c
                    .http("POST", "/v1/kv/bench:batchWrite", body.as_bytes())
                    .await
                    .expect("batchWrite");
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task");
    }
}
