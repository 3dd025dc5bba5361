//! `standby`: a warm standby (`shardbox follow`) of a box shipping its log to a real 3-node
//! nats-server cluster on loopback (`sync_interval: always`, replicas 3), all on this machine.
//!
//! - the time a standby takes to come up from the hub (snapshot download, the log after it,
//!   open) for a box holding `--standby-mib` (64) MiB of 4 KiB values;
//! - its lag at a steady 2,000 PUT/s: a probe writes on the primary, takes the answer's
//!   `Shardbox-Position`, and reads it back on the standby with `min_position` (the read waits
//!   until the standby holds it): write answered → readable on the standby, p50/p99; and the
//!   standby's CPU per record it applies;
//! - the promotion after a SIGKILL of the primary: the standby's own time and the time until a
//!   write on it is answered.

use crate::peers;
use crate::report::Row;
use crate::sink::{config_with, nats, paced};
use crate::support::Opts;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn note(rows: &mut Vec<Row>, what: &str, note: String) {
    eprintln!("standby: {what}: {note}");
    rows.push(Row {
        workload: "standby".into(),
        system: what.into(),
        outcome: None,
        ratio: None,
        note,
    });
}

async fn standby_state(addr: SocketAddr) -> Option<serde_json::Value> {
    crate::sink::status_part(addr, "standby").await
}

fn position(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("shardbox-position: "))
        .map(|p| p.trim().to_string())
}

/// Fills the box with `mib` MiB of 4 KiB values from 16 connections.
async fn fill(addr: SocketAddr, mib: u64) {
    let per = mib * 256 / 16;
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = crate::loadgen::Conn::connect(addr).await else {
                return;
            };
            let body = "x".repeat(4096);
            for i in 0..per {
                let req = format!(
                    "PUT /v1/kv/fill/k{c}-{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n\r\n{body}"
                );
                if conn.http_raw(req.as_bytes()).await.is_err() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

pub async fn standby_suite(o: &Opts, rows: &mut Vec<Row>) {
    if !crate::support::wanted(o, "standby") {
        return;
    }
    let Some(cluster) = nats::Cluster::start(3).await else {
        eprintln!("standby: no nats-server (scripts/install-nats.sh failed); skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(
        dir.path(),
        &cluster.urls(),
        "standby",
        "ship_log = true\nsnapshot_interval_ms = 0\n",
    );
    let cfg = cfg.to_str().expect("utf-8 path").to_string();
    let settings = [("config", cfg.as_str()), ("disk_ballast_bytes", "0")];
    let Ok(mut primary) = peers::shardbox_cmd("serve", &dir.path().join("primary"), &settings)
    else {
        eprintln!("standby: shardbox did not start");
        return;
    };
    let t = Instant::now();
    fill(primary.addr, o.standby_mib).await;
    eprintln!(
        "standby: {} MiB written in {:.1} s",
        o.standby_mib,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let snap = match crate::loadgen::Conn::connect(primary.addr).await {
        Ok(mut c) => c
            .http_raw(b"POST /v1/admin/snapshot HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .ok(),
        Err(_) => None,
    };
    match snap {
        Some((200, body)) => eprintln!(
            "standby: snapshot shipped in {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&body)
        ),
        other => {
            eprintln!("standby: the snapshot failed: {other:?}");
            return;
        }
    }
    // Some writes after it: the standby replays them from the log stream.
    let _ = paced(primary.addr, 2000, 2.0).await;

    let t = Instant::now();
    let Ok(standby) = peers::shardbox_cmd("follow", &dir.path().join("standby"), &settings) else {
        eprintln!("standby: the standby did not start");
        return;
    };
    let listening = t.elapsed();
    let mut following = None;
    while t.elapsed() < Duration::from_secs(300) {
        if let Some(s) = standby_state(standby.addr).await {
            if s["state"] == "following" && s["lag_records"] == 0 {
                following = Some(t.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(following) = following else {
        eprintln!("standby: the standby never caught up");
        return;
    };
    note(
        rows,
        "standby up from the hub",
        format!(
            "{} MiB box: listening {:.1} s after `shardbox follow` started (snapshot downloaded and checked, the log after it written, opened and replayed), caught up at {:.1} s",
            o.standby_mib,
            listening.as_secs_f64(),
            following.as_secs_f64()
        ),
    );

    // Lag at 2,000 PUT/s, probed.
    let (p, s) = (primary.addr, standby.addr);
    let load = tokio::spawn(paced(p, 2000, 10.0));
    let cpu0 = peers::cpu_time(standby.pid());
    let applied0 = standby_state(s)
        .await
        .and_then(|v| v["applied_total"].as_u64());
    let mut h = crate::loadgen::hist();
    let (Ok(mut pc), Ok(mut sc)) = (
        crate::loadgen::Conn::connect(p).await,
        crate::loadgen::Conn::connect(s).await,
    ) else {
        return;
    };
    let until = Instant::now() + Duration::from_secs(10);
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let req = format!(
            "PUT /v1/kv/probe/p{} HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nprobe",
            i % 100
        );
        let Ok((_, head, _)) = pc.http_raw_head(req.as_bytes()).await else {
            break;
        };
        let written = Instant::now();
        let Some(pos) = position(&head) else {
            break;
        };
        let get = format!(
            "GET /v1/kv/probe/p{}?min_position={pos} HTTP/1.1\r\nhost: x\r\n\r\n",
            i % 100
        );
        match sc.http_raw(get.as_bytes()).await {
            Ok((200, _)) => {
                let _ = h.record(written.elapsed().as_micros().max(1) as u64);
            }
            other => eprintln!("standby: a probe read answered {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = load.await.unwrap_or(0);
    let cpu1 = peers::cpu_time(standby.pid());
    let applied1 = standby_state(s)
        .await
        .and_then(|v| v["applied_total"].as_u64());
    let per_record = match (cpu0, cpu1, applied0, applied1) {
        (Some(c0), Some(c1), Some(a0), Some(a1)) if a1 > a0 => {
            format!("{:.1} µs", (c1 - c0).as_secs_f64() * 1e6 / (a1 - a0) as f64)
        }
        _ => "?".into(),
    };
    note(
        rows,
        "standby lag at 2,000 PUT/s",
        format!(
            "a write answered on the primary → readable on the standby (min_position): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes ({sent} PUTs of load); the standby's CPU {per_record} per log record applied",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        ),
    );

    // The primary killed; the standby promoted.
    primary.kill();
    let t = Instant::now();
    let promoted = match crate::loadgen::Conn::connect(s).await {
        Ok(mut c) => c
            .http_raw(b"POST /v1/admin/promote HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .ok(),
        Err(_) => None,
    };
    let Some((200, body)) = promoted else {
        eprintln!("standby: the promotion failed: {promoted:?}");
        return;
    };
    let Ok(mut c) = crate::loadgen::Conn::connect(s).await else {
        return;
    };
    let wrote = c
        .http_raw(b"PUT /v1/kv/probe/after HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok")
        .await
        .map(|(code, _)| code);
    let took: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    note(
        rows,
        "promote after the primary's SIGKILL",
        format!(
            "the standby's own {} ms; a write answered {:?} on it {:.0} ms after the promote request",
            took["took_ms"],
            wrote.ok(),
            t.elapsed().as_secs_f64() * 1000.0
        ),
    );
}
