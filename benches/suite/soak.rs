//! `soak`: a mixed workload for a long time (`--soak-secs`, default 1800), sampling the server's
//! RSS, its file sizes and the latency of every operation over time, then plotting them
//! (`target/shardbox-soak.svg`, copied into docs/img by hand) and printing the samples. Memory
//! and disk must level off, not climb. Runs only when asked: `--only soak`.
//!
//! The load, from 8 connections at a bounded rate: KV puts with a 2-minute TTL over 200k keys
//! (the sweeper deletes what expires), gets and deletes; queue enqueue, claim and ack (the queue
//! stays drained); event appends to a stream with one-hour buckets and one-hour retention; cache
//! puts and gets within the cache's bounds.

use crate::loadgen::{self, Conn};
use crate::report::{stack_svgs, svg_lines, Series};
use crate::support::{start_shardbox, Opts};
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Operations per second the soak offers (a steady load well under what the box sustains).
const RATE_PER_CONN: u64 = 250;
const CONNS: usize = 8;

fn rss_bytes(pid: u32) -> u64 {
    crate::support::process_bytes(pid, "VmRSS:")
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            // Allocated blocks, not the apparent size: a preallocated segment counts in full.
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}

fn req(method: &str, path: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: soak\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

async fn worker(
    addr: std::net::SocketAddr,
    conn: usize,
    until: Instant,
    hist: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<Mutex<u64>>,
) {
    let Ok(mut c) = Conn::connect(addr).await else {
        return;
    };
    let value = vec![b's'; 512];
    let every = Duration::from_micros(1_000_000 / RATE_PER_CONN);
    let mut next = Instant::now();
    let mut i: u64 = 0;
    while Instant::now() < until {
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        i += 1;
        let key = xxhash_rust::xxh3::xxh3_64(&[conn as u8, (i >> 8) as u8, i as u8]) % 200_000;
        let started = Instant::now();
        let r = match i % 10 {
            0..=2 => {
                c.http_raw(&req(
                    "PUT",
                    &format!("/v1/kv/soak/k{key}?ttl=2m"),
                    "application/octet-stream",
                    &value,
                ))
                .await
            }
            3..=4 => {
                c.http_raw(&req(
                    "GET",
                    &format!("/v1/kv/soak/k{key}"),
                    "text/plain",
                    b"",
                ))
                .await
            }
            5 => {
                c.http_raw(&req(
                    "DELETE",
                    &format!("/v1/kv/soak/k{}", key ^ 1),
                    "text/plain",
                    b"",
                ))
                .await
            }
            6 => {
                c.http_raw(&req(
                    "POST",
                    "/v1/queues/soak/jobs",
                    "application/json",
                    br#"{"payload":{"work":1}}"#,
                ))
                .await
            }
            7 => {
                // Claim and ack what was enqueued: the queue stays drained.
                let claimed = c
                    .http_raw(&req(
                        "POST",
                        "/v1/queues/soak/claim",
                        "application/json",
                        br#"{"max":4,"lease":"30s"}"#,
                    ))
                    .await;
                if let Ok((200, body)) = &claimed {
                    let jobs: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                    for j in jobs["jobs"].as_array().into_iter().flatten() {
                        let (Some(id), Some(token)) = (j["id"].as_str(), j["lease_token"].as_str())
                        else {
                            continue;
                        };
                        let body = format!(r#"{{"lease_token":"{token}"}}"#);
                        let _ = c
                            .http_raw(&req(
                                "POST",
                                &format!("/v1/queues/soak/jobs/{id}/ack"),
                                "application/json",
                                body.as_bytes(),
                            ))
                            .await;
                    }
                }
                claimed
            }
            8 => {
                c.http_raw(&req(
                    "POST",
                    "/v1/streams/soak/events",
                    "application/json",
                    br#"{"type":"tick","data":{"n":1}}"#,
                ))
                .await
            }
            _ => {
                if i % 20 == 9 {
                    c.http_raw(&req(
                        "PUT",
                        &format!("/v1/cache/soak/c{}?ttl=5m", key % 20_000),
                        "application/octet-stream",
                        &value,
                    ))
                    .await
                } else {
                    c.http_raw(&req(
                        "GET",
                        &format!("/v1/cache/soak/c{}", key % 20_000),
                        "text/plain",
                        b"",
                    ))
                    .await
                }
            }
        };
        let us = started.elapsed().as_micros() as u64;
        match r {
            Ok((status, _)) if status < 500 => {
                let _ = hist.lock().map(|mut h| h.record(us.max(1)));
            }
            Ok(_) => *errors.lock().unwrap_or_else(|p| p.into_inner()) += 1,
            Err(_) => {
                *errors.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                match Conn::connect(addr).await {
                    Ok(n) => c = n,
                    Err(_) => return,
                }
            }
        }
    }
}

pub async fn soak(o: &Opts) {
    if o.only.as_deref() != Some("soak") {
        return;
    }
    let secs = o.soak_secs;
    let sample_every = Duration::from_secs((secs / 30).max(5));
    let sb = start_shardbox(o, &[("retention_interval_ms", "10000")]).expect("start shardbox");
    let pid = sb.pid();
    let data = sb.dir().join("data");
    // The stream: hour buckets, one hour of retention.
    if let Ok(mut c) = Conn::connect(sb.addr).await {
        let _ = c
            .http_raw(&req(
                "PUT",
                "/v1/streams/soak",
                "application/json",
                br#"{"bucket":"1h","retention":"1h"}"#,
            ))
            .await;
    }
    eprintln!(
        "soak: {secs} s, {CONNS} connections at {RATE_PER_CONN} ops/s each, sampling every {} s",
        sample_every.as_secs()
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let hist = Arc::new(Mutex::new(loadgen::hist()));
    let errors = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for conn in 0..CONNS {
        tasks.push(tokio::spawn(worker(
            sb.addr,
            conn,
            until,
            hist.clone(),
            errors.clone(),
        )));
    }
    let mut labels = Vec::new();
    let (mut rss, mut shards, mut wal, mut cache, mut p99, mut ops) = (
        Series::new("RSS (MiB)", "#1f77b4"),
        Series::new("shard files (MiB)", "#2ca02c"),
        Series::new("write-ahead log (MiB)", "#ff7f0e"),
        Series::new("cache dir (MiB)", "#9467bd"),
        Series::new("p99 (ms)", "#d62728"),
        Series::new("ops/s", "#17becf"),
    );
    println!("\n| t (s) | RSS MiB | shards MiB | wal MiB | cache MiB | ops/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    while Instant::now() < until {
        tokio::time::sleep(
            sample_every
                .min(until.saturating_duration_since(Instant::now()) + Duration::from_millis(10)),
        )
        .await;
        let h = {
            let mut g = hist.lock().unwrap_or_else(|p| p.into_inner());
            let h = g.clone();
            g.reset();
            h
        };
        let mib = |b: u64| b as f64 / 1048576.0;
        let t = started.elapsed().as_secs();
        let (r, s, w, c) = (
            mib(rss_bytes(pid)),
            mib(dir_bytes(&data.join("shards"))),
            mib(dir_bytes(&data.join("wal"))),
            mib(dir_bytes(&data.join("cache"))),
        );
        let rate = h.len() as f64 / sample_every.as_secs_f64();
        let (p50, p99v) = (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        );
        let errs = *errors.lock().unwrap_or_else(|p| p.into_inner());
        println!("| {t} | {r:.0} | {s:.1} | {w:.1} | {c:.1} | {rate:.0} | {p50:.2} | {p99v:.2} | {errs} |");
        labels.push(if labels.len() % 5 == 0 {
            format!("{}m", t / 60)
        } else {
            String::new()
        });
        rss.push(r);
        shards.push(s);
        wal.push(w);
        cache.push(c);
        p99.push(p99v);
        ops.push(rate);
    }
    for t in tasks {
        let _ = t.await;
    }
    let svg = stack_svgs(&[
        svg_lines(
            "soak: memory and files",
            "time",
            "MiB",
            &labels,
            &[rss, shards, wal, cache],
            0.0,
        ),
        svg_lines(
            "soak: latency (p99 per sample)",
            "time",
            "ms",
            &labels,
            &[p99],
            0.0,
        ),
        svg_lines("soak: throughput", "time", "ops/s", &labels, &[ops], 0.0),
    ]);
    crate::report::write_output("shardbox-soak.svg", &svg, "soak: plot");
}
