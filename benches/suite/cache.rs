//! Cache workloads: hits against memcached and Redis, reads from the disk tier, and the
//! hit ratio of foyer's eviction policies on a Zipf(0.99) key stream.

use crate::loadgen::{self, Conn, Op, Outcome, Proto};
use crate::peers;
use crate::report::{row, set_ratio, unavailable, Row};
use crate::support::{key, pick, wanted, Opts};
use std::time::Duration;

/// Keys of the hit workload (all resident in every system).
const HIT_KEYS: u64 = 10_000;

fn cache_get(keys: u64) -> impl Fn(usize, u64) -> Op + Send + Sync + Clone + 'static {
    move |c, i| Op::CacheGet {
        key: key(pick(c, i, keys)),
    }
}

/// PUTs `keys` values of `size` bytes into shardbox's cache (8 connections).
async fn preload_shardbox(addr: std::net::SocketAddr, keys: u64, size: usize) {
    let value = vec![b'c'; size];
    let mut tasks = Vec::new();
    for part in 0..8u64 {
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.expect("connect");
            for n in (part..keys).step_by(8) {
                let (status, body) = c
                    .http("PUT", &format!("/v1/cache/bench/{}?ttl=1h", key(n)), &value)
                    .await
                    .expect("put");
                assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for t in tasks {
        t.await.expect("preload task");
    }
}

async fn preload_memcached(addr: std::net::SocketAddr, keys: u64, size: usize) {
    let value = vec![b'c'; size];
    let mut c = Conn::connect(addr).await.expect("connect");
    for n in 0..keys {
        let op = Op::Put {
            key: key(n),
            value: value.clone(),
        };
        assert!(
            c.call(Proto::Memcached, &op).await.expect("set"),
            "set failed"
        );
    }
}

async fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let mut c = Conn::connect(addr).await.expect("connect");
    let (_, body) = c.http("GET", "/v1/cache:stats", b"").await.expect("stats");
    serde_json::from_slice(&body).unwrap_or_default()
}

async fn measure(addr: std::net::SocketAddr, proto: Proto, conns: usize, o: &Opts) -> Outcome {
    let _ = loadgen::run(
        addr,
        proto,
        conns,
        Duration::from_secs(1),
        cache_get(HIT_KEYS),
    )
    .await;
    crate::support::with_server_cpu(
        addr,
        loadgen::run(addr, proto, conns, o.duration, cache_get(HIT_KEYS)),
    )
    .await
}

pub async fn cache_suite(o: &Opts, rows: &mut Vec<Row>) {
    if wanted(o, "cache-get-hit") {
        for size in [100usize, 4096] {
            let label = if size == 100 { "100 B" } else { "4 KiB" };
            let first = rows.len();
            eprintln!("cache-get-hit {label}: shardbox …");
            let sb = crate::support::start_shardbox(o, &[]).expect("start shardbox");
            preload_shardbox(sb.addr, HIT_KEYS, size).await;
            let before = stats(sb.addr).await;
            let out = measure(sb.addr, Proto::Http, o.connections, o).await;
            let after = stats(sb.addr).await;
            let hits = after["counters"]["hits"].as_u64().unwrap_or(0)
                - before["counters"]["hits"].as_u64().unwrap_or(0);
            let misses = after["counters"]["misses"].as_u64().unwrap_or(0)
                - before["counters"]["misses"].as_u64().unwrap_or(0);
            rows.push(row(
                "cache-get-hit",
                &format!("shardbox cache GET {label}"),
                out,
                &format!("HTTP, 10k resident keys; {hits} hits, {misses} misses"),
            ));
            drop(sb);
            eprintln!("cache-get-hit {label}: memcached …");
            match peers::memcached(o.install, 1024) {
                Ok(m) => {
                    preload_memcached(m.addr, HIT_KEYS, size).await;
                    let out = measure(m.addr, Proto::Memcached, o.connections, o).await;
                    rows.push(row(
                        "cache-get-hit",
                        &format!("memcached get {label}"),
                        out,
                        "text protocol, 4 threads",
                    ));
                    set_ratio(rows, first, first + 1, "vs memcached");
                }
                Err(e) => rows.push(unavailable("cache-get-hit", "memcached", &e)),
            }
            eprintln!("cache-get-hit {label}: redis …");
            match peers::redis(o.install) {
                Ok(r) => {
                    crate::support::preload_redis(r.addr, HIT_KEYS, &vec![b'c'; size])
                        .await
                        .expect("preload redis");
                    let out = measure(r.addr, Proto::Resp, o.connections, o).await;
                    rows.push(row(
                        "cache-get-hit",
                        &format!("redis GET {label}"),
                        out,
                        "RESP",
                    ));
                    let j = rows.len() - 1;
                    if let (Some(a), Some(b)) = (&rows[first].outcome, &rows[j].outcome) {
                        let r = a.throughput() / b.throughput().max(1e-9);
                        rows[j].ratio = Some((r, "shardbox ÷ this row".into()));
                    }
                }
                Err(e) => rows.push(unavailable("cache-get-hit", "redis", &e)),
            }
            if size == 100 {
                crate::kv::ceiling_row(o, rows, "cache-get-hit", first, cache_get(HIT_KEYS)).await;
            }
        }
    }
    if wanted(o, "cache-get-disk") {
        // Working set 4× the memory tier: 16,384 × 4 KiB = 64 MiB over a 16 MiB memory tier.
        let keys = 16_384u64;
        for (io, conns) in [("psync", 16usize), ("uring", 16), ("psync", 4)] {
            eprintln!("cache-get-disk ({io}, {conns} connections) …");
            let sb = match crate::support::start_shardbox(
                o,
                &[
                    ("cache_memory_bytes", "16777216"),
                    ("cache_disk_bytes", "268435456"),
                    ("cache_disk_io", io),
                ],
            ) {
                Ok(sb) => sb,
                Err(e) => {
                    rows.push(unavailable("cache-get-disk", io, &e));
                    continue;
                }
            };
            preload_shardbox(sb.addr, keys, 4096).await;
            tokio::time::sleep(Duration::from_secs(2)).await; // let the flusher write the tail
            let get = move |c, i| Op::CacheGet {
                key: key(pick(c, i, keys)),
            };
            let _ = loadgen::run(sb.addr, Proto::Http, conns, Duration::from_secs(1), get).await;
            let before = stats(sb.addr).await;
            let out = loadgen::run(sb.addr, Proto::Http, conns, o.duration, get).await;
            let after = stats(sb.addr).await;
            let d = |f: &str| {
                after["counters"][f].as_u64().unwrap_or(0)
                    - before["counters"][f].as_u64().unwrap_or(0)
            };
            let (mem, disk, miss) = (d("hits_memory"), d("hits_disk"), d("misses"));
            rows.push(row(
                "cache-get-disk",
                &format!("shardbox cache GET 4 KiB, working set 4× memory, {io}"),
                out,
                &format!(
                    "{conns} connections, uniform keys; {disk} disk hits, {mem} memory hits, {miss} misses (dropped by the disk tier: {})",
                    after["disk_dropped"]
                ),
            ));
        }
    }
}

/// Hit ratios of S3-FIFO, w-TinyLFU and LRU (foyer's memory cache, one shard, counted in
/// entries) on a Zipf(0.99) stream over 1M keys, at several cache sizes.
pub fn hit_ratio_table() -> String {
    use rand::{Rng, SeedableRng};
    let n = 1_000_000usize;
    let requests = 4_000_000usize;
    let s = 0.99f64;
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for i in 1..=n {
        acc += 1.0 / (i as f64).powf(s);
        cdf.push(acc);
    }
    let total = acc;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // Ranks are scattered over the key space so key order says nothing about popularity.
    let stream: Vec<u64> = (0..requests)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            let rank = cdf.partition_point(|c| *c < u) as u64;
            xxhash_rust::xxh3::xxh3_64(&rank.to_le_bytes())
        })
        .collect();
    let mut out = String::from(
        "| cache size (share of 1M keys) | S3-FIFO | w-TinyLFU | LRU |\n|---|---:|---:|---:|\n",
    );
    for share in [0.001f64, 0.01, 0.1] {
        let cap = (n as f64 * share) as usize;
        let mut cells = Vec::new();
        for policy in ["s3fifo", "lfu", "lru"] {
            let eviction = shardbox::cache::Eviction::parse(policy)
                .expect("policy")
                .foyer_config();
            let cache: foyer::Cache<u64, ()> = foyer::CacheBuilder::new(cap)
                .with_shards(1)
                .with_eviction_config(eviction)
                .build();
            let warm = requests / 4;
            let mut hits = 0usize;
            for (i, k) in stream.iter().enumerate() {
                if cache.get(k).is_some() {
                    if i >= warm {
                        hits += 1;
                    }
                } else {
                    cache.insert(*k, ());
                }
            }
            cells.push(format!(
                "{:.1}%",
                100.0 * hits as f64 / (requests - warm) as f64
            ));
        }
        out.push_str(&format!(
            "| {} entries ({:.1}%) | {} | {} | {} |\n",
            cap,
            share * 100.0,
            cells[0],
            cells[1],
            cells[2]
        ));
    }
    out
}
