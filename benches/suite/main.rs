//! shardbox's benchmark suite: each workload runs against shardbox and its peer in the same run,
//! with the same load generator, and prints throughput, latency percentiles and the ratio.
//!
//! `cargo bench --bench suite` runs the quick workloads (a few minutes); `-- --full` adds the
//! long ones (connection sweep, device bytes per write, restart times, 50M-event ranges, disk
//! cache, hit ratios). `-- --list` names them; `--only a,b` picks some; `--duration`,
//! `--connections`, `--keys`, `--restart-gib 1,10`, `--soak-secs`, `--set key=value`, `--no-install`, `--shardbox-bin PATH`.
//! Results also go to `shardbox-bench.md` in the target directory (`CARGO_TARGET_DIR` or
//! `target/`).

mod abuse;
mod cache;
mod ceiling;
mod events;
mod events_suite;
mod keeping;
mod kv;
mod loadgen;
mod peers;
mod queue;
mod report;
mod restart;
mod sink;
mod soak;
mod standby;
mod support;

use support::{parse_opts, wanted};

/// Every workload: name, whether the default (quick) run includes it, what it measures.
pub const WORKLOADS: &[(&str, bool, &str)] = &[
    ("kv-get-hot", true, "HTTP GET of 100 B values vs Redis GET"),
    (
        "kv-put-durable",
        true,
        "durable PUT vs Redis SET appendfsync always, and one commit per write",
    ),
    (
        "access-overhead",
        false,
        "kv-get-hot with no tokens, a bearer token, token + rate limits; and Redis GET",
    ),
    (
        "runtime-shape",
        false,
        "the HTTP ceiling on the multi-thread runtime vs a current-thread runtime per core",
    ),
    (
        "keeping-data",
        false,
        "online backup, NDJSON export and import of --keys keys vs redis-cli --rdb and --pipe",
    ),
    (
        "queue-cycle",
        true,
        "enqueue+claim+ack on one queue vs beanstalkd -f 0 and a Redis list",
    ),
    (
        "events-append",
        true,
        "100-event appends over 8 streams vs Redis XADD",
    ),
    (
        "events-append-hot",
        true,
        "100-event appends to one stream vs Redis XADD",
    ),
    ("cache-get-hit", true, "cache hits vs memcached and Redis"),
    (
        "events-retention",
        true,
        "dropping a day bucket vs deleting its rows",
    ),
    (
        "kv-get-nocache",
        false,
        "kv-get-hot with the read cache off",
    ),
    (
        "kv-put-scaling",
        false,
        "durable PUT vs Redis at 1, 4, 16, 64, 256 connections (SVG plot)",
    ),
    (
        "kv-put-bytes",
        false,
        "device bytes written per acknowledged put over 60 s vs Redis AOF",
    ),
    (
        "restart-time",
        false,
        "restart after SIGKILL with a full log to replay, and at --restart-gib GiB (1)",
    ),
    (
        "queue-latency",
        false,
        "enqueue to claim latency with long-polling workers",
    ),
    (
        "events-range-1h",
        false,
        "one-hour range queries as a stream grows (--events-large)",
    ),
    (
        "events-range-store",
        false,
        "the same range queries in-process",
    ),
    (
        "cache-get-disk",
        false,
        "cache reads served from the disk tier",
    ),
    (
        "cache-hit-ratio",
        false,
        "eviction policies' hit ratio on a Zipf workload",
    ),
    (
        "overload",
        false,
        "durable PUT at 64 connections, then 10x the connections: shed, p99, peak RSS",
    ),
    (
        "hostile",
        false,
        "slowloris, huge headers and bodies, deep JSON, bad paths: answer, time, RSS",
    ),
    (
        "sink",
        false,
        "NATS JetStream sink on a real 3-node cluster: PUT with and without, lag at 2,000/s, a --sink-outage-secs (60) outage drained",
    ),
    (
        "standby",
        false,
        "a warm standby of a box shipping its log to a real 3-node cluster: up from the hub (--standby-mib, 64), lag at 2,000/s, promotion",
    ),
    (
        "soak",
        false,
        "mixed load for --soak-secs (1800): RSS, files, latency over time (SVG); only with --only soak",
    ),
];

fn main() {
    // Started by the suite itself as the HTTP ceiling's process.
    ceiling::serve_if_asked();
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    rt.block_on(kv::kv_suite(&o, &mut rows));
    rt.block_on(queue::queue_suite(&o, &mut rows));
    rt.block_on(events_suite::events_suite(&o, &mut rows));
    rt.block_on(cache::cache_suite(&o, &mut rows));
    rt.block_on(restart::restart_suite(&o, &mut rows));
    if wanted(&o, "keeping-data") {
        rt.block_on(keeping::keeping_data(&o, &mut rows));
    }
    rt.block_on(abuse::overload(&o, &mut rows));
    rt.block_on(abuse::hostile(&o, &mut rows));
    rt.block_on(sink::sink_suite(&o, &mut rows));
    rt.block_on(standby::standby_suite(&o, &mut rows));
    rt.block_on(soak::soak(&o));
    let mut table = report::render(&o, &rows);
    if wanted(&o, "cache-hit-ratio") {
        eprintln!("cache-hit-ratio: Zipf(0.99), 1M keys, 4M requests …");
        table.push_str("\n### cache-hit-ratio: Zipf(0.99) over 1M keys, 4M requests (first 1M warm the cache)\n\n");
        table.push_str(&cache::hit_ratio_table());
    }
    println!("\n{table}");
    report::write_output("shardbox-bench.md", &table, "the table");
}
