//! The process-wide part of `GET /metrics`: request and connection counters, the engine's
//! per-shard gauges and counters, the log. Each domain appends its own (`Domain::render_metrics`).

use crate::base::metrics::*;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Renders every metric; `engine` adds the per-shard gauges and counters.
pub fn render(engine: &crate::engine::Engine, open_connections: usize) -> String {
    let mut out = String::with_capacity(4096);
    let mut line = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    line(
        "shardbox_access_log_dropped_total",
        "Access log lines dropped because its writer was behind.",
        "counter",
        super::access_log::DROPPED.load(Ordering::Relaxed),
    );
    line(
        "shardbox_corrupt_records_total",
        "Records that failed verification on read.",
        "counter",
        CORRUPT_RECORDS.get(),
    );
    line(
        "shardbox_rate_limited_total",
        "Requests refused 429 by the rate limiter.",
        "counter",
        RATE_LIMITED.get(),
    );
    line(
        "shardbox_unauthorized_total",
        "Requests refused 401 for a missing or unknown token.",
        "counter",
        UNAUTHORIZED.get(),
    );
    line(
        "shardbox_forbidden_total",
        "Requests refused 403: the token's scope or name prefixes do not cover them.",
        "counter",
        FORBIDDEN.get(),
    );
    line(
        "shardbox_idempotency_replays_total",
        "Kept responses replayed to a retry with the same Idempotency-Key and request.",
        "counter",
        IDEMPOTENT_REPLAYS.get(),
    );
    line(
        "shardbox_idempotency_in_progress_total",
        "Requests refused 409: their Idempotency-Key's first request was still running.",
        "counter",
        IDEMPOTENT_IN_PROGRESS.get(),
    );
    line(
        "shardbox_idempotency_mismatches_total",
        "Requests refused 422: their Idempotency-Key was first used with a different request.",
        "counter",
        IDEMPOTENT_MISMATCHES.get(),
    );
    line(
        "shardbox_connections_open",
        "Open client connections.",
        "gauge",
        open_connections as u64,
    );
    line(
        "shardbox_connections_refused_total",
        "Connections refused at connections_max.",
        "counter",
        CONNECTIONS_REFUSED.get(),
    );
    line(
        "shardbox_connections_evicted_total",
        "Idle keep-alive connections closed to make room for a new connection.",
        "counter",
        CONNECTIONS_EVICTED.get(),
    );
    line(
        "shardbox_body_budget_refused_total",
        "Requests refused for lack of body buffer budget.",
        "counter",
        BODY_BUDGET_REFUSED.get(),
    );
    let _ = writeln!(out, "# HELP shardbox_http_responses_total HTTP responses by status class.\n# TYPE shardbox_http_responses_total counter");
    for (class, c) in [
        ("2xx", &HTTP_2XX),
        ("3xx", &HTTP_3XX),
        ("4xx", &HTTP_4XX),
        ("5xx", &HTTP_5XX),
    ] {
        let _ = writeln!(
            out,
            "shardbox_http_responses_total{{class=\"{class}\"}} {}",
            c.get()
        );
    }
    let w = engine.wal().stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, kind, v) in [
        (
            "shardbox_wal_syncs_total",
            "Log group syncs (fdatasync).",
            "counter",
            load(&w.syncs).to_string(),
        ),
        (
            "shardbox_wal_sync_seconds_total",
            "Time spent in log syncs.",
            "counter",
            format!("{:.6}", load(&w.sync_micros) as f64 / 1e6),
        ),
        (
            "shardbox_wal_writes_total",
            "Log write calls.",
            "counter",
            load(&w.writes).to_string(),
        ),
        (
            "shardbox_wal_records_total",
            "Log records (one per writer batch).",
            "counter",
            load(&w.records).to_string(),
        ),
        (
            "shardbox_wal_ops_total",
            "Operations carried by log records.",
            "counter",
            load(&w.ops).to_string(),
        ),
        (
            "shardbox_wal_bytes_total",
            "Bytes written to the log.",
            "counter",
            load(&w.bytes).to_string(),
        ),
        (
            "shardbox_wal_largest_group_records",
            "Most records written by one sync.",
            "gauge",
            load(&w.largest_group_records).to_string(),
        ),
        (
            "shardbox_wal_segment_files",
            "Log segment files on disk (live and spare).",
            "gauge",
            load(&w.segment_files).to_string(),
        ),
        (
            "shardbox_wal_segments_created_total",
            "Log segments preallocated.",
            "counter",
            load(&w.segments_created).to_string(),
        ),
        (
            "shardbox_wal_segments_recycled_total",
            "Log segments reused.",
            "counter",
            load(&w.segments_recycled).to_string(),
        ),
        (
            "shardbox_wal_segments_deleted_total",
            "Log segments deleted (beyond wal_spare_segments_max spares).",
            "counter",
            load(&w.segments_deleted).to_string(),
        ),
        (
            "shardbox_wal_durable_lsn",
            "Highest log sequence number on disk.",
            "gauge",
            engine.wal().durable_lsn().to_string(),
        ),
        (
            "shardbox_wal_written_lsn",
            "Highest log sequence number written to the OS (ahead of the durable one only in periodic mode).",
            "gauge",
            engine.wal().written_lsn().to_string(),
        ),
        (
            "shardbox_feed_cursors",
            "Named change-feed cursors.",
            "gauge",
            engine.feed().cursors.list().len().to_string(),
        ),
        (
            "shardbox_feed_cursors_resnapshot_required",
            "Change-feed cursors dropped past feed_retain_bytes_max: their consumers must start again from an export.",
            "gauge",
            engine
                .feed()
                .cursors
                .list()
                .iter()
                .filter(|c| c.state != "active")
                .count()
                .to_string(),
        ),
        (
            "shardbox_feed_holds",
            "Log holds of change-feed readers and cursors (segments they need are kept).",
            "gauge",
            engine.feed().holds.live().to_string(),
        ),
        (
            "shardbox_feed_holds_dropped_total",
            "Change-feed holds dropped because the log they kept passed feed_retain_bytes_max.",
            "counter",
            load(&engine.feed().holds.dropped_total).to_string(),
        ),
        (
            "shardbox_disk_free_bytes",
            "Free bytes on the data directory's filesystem, as last sampled.",
            "gauge",
            engine.space().free().to_string(),
        ),
        (
            "shardbox_disk_low",
            "1 while free disk space is under disk_reserve_bytes and writes that add data get 507.",
            "gauge",
            u8::from(engine.space().is_low()).to_string(),
        ),
        (
            "shardbox_disk_writes_refused_total",
            "Writes refused with 507 insufficient_storage.",
            "counter",
            load(&engine.space().refused).to_string(),
        ),
        (
            "shardbox_disk_ballast_released_total",
            "Times the disk ballast was released to make room for deletes.",
            "counter",
            load(&engine.space().ballast_released).to_string(),
        ),
        (
            "shardbox_wal_replayed_records",
            "Log records replayed into the shards when the store opened.",
            "gauge",
            engine
                .replay_report()
                .applied
                .iter()
                .sum::<u64>()
                .to_string(),
        ),
        (
            "shardbox_wal_replay_seconds",
            "Time the last open spent reading and replaying the log.",
            "gauge",
            format!("{:.3}", engine.replay_report().millis as f64 / 1e3),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    let shard_metrics: [(&str, &str, &str); 7] = [
        ("shardbox_shard_commits_total", "Group commits.", "counter"),
        ("shardbox_shard_ops_total", "Operations applied.", "counter"),
        (
            "shardbox_shard_commit_seconds_total",
            "Time spent applying and committing.",
            "counter",
        ),
        (
            "shardbox_shard_checkpoints_total",
            "Checkpoints (durable redb commits).",
            "counter",
        ),
        (
            "shardbox_shard_checkpoint_seconds_total",
            "Time spent checkpointing.",
            "counter",
        ),
        (
            "shardbox_shard_queue_depth",
            "Operations waiting for the writer.",
            "gauge",
        ),
        (
            "shardbox_shard_healthy",
            "1 when the shard accepts writes.",
            "gauge",
        ),
    ];
    for (name, help, kind) in shard_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in engine.shards() {
            let st = &s.state;
            let v = match name {
                "shardbox_shard_commits_total" => st.commits.load(Ordering::Relaxed).to_string(),
                "shardbox_shard_ops_total" => st.ops.load(Ordering::Relaxed).to_string(),
                "shardbox_shard_commit_seconds_total" => format!(
                    "{:.6}",
                    st.commit_micros_total.load(Ordering::Relaxed) as f64 / 1e6
                ),
                "shardbox_shard_checkpoints_total" => {
                    st.checkpoints.load(Ordering::Relaxed).to_string()
                }
                "shardbox_shard_checkpoint_seconds_total" => format!(
                    "{:.6}",
                    st.checkpoint_micros_total.load(Ordering::Relaxed) as f64 / 1e6
                ),
                "shardbox_shard_queue_depth" => s.queue_len().to_string(),
                _ => u8::from(st.failure().is_none()).to_string(),
            };
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {v}", s.id);
        }
    }
    render_process(&mut out);
    out
}

/// What `/proc/self/stat` says of this process; a field that cannot be read is `None`.
pub(super) struct ProcStat {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub resident_bytes: Option<f64>,
    /// Since the Unix epoch, in seconds.
    pub start_time: Option<f64>,
}

/// Reads `/proc/self/stat` (Linux); `None` where there is none.
pub(super) fn proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let page = rustix::param::page_size() as f64;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    // After the command name (in parentheses, which may hold spaces): field 3 onwards.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    // The boot time does not change: read once.
    static BOOT: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    let boot = *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
    });
    Some(ProcStat {
        cpu_seconds: field(14)
            .zip(field(15))
            .map(|(utime, stime)| (utime + stime) / ticks),
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|pages| pages * page),
        start_time: boot
            .zip(field(22))
            .map(|(boot, start)| boot + start / ticks),
    })
}

/// Open file descriptors of this process (Linux).
pub(super) fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// The standard `process_*` series (as Prometheus's client libraries name them) from
/// `/proc/self`, and `shardbox_build_info`. A file that cannot be read leaves its series out.
fn render_process(out: &mut String) {
    let mut gauge = |name: &str, help: &str, kind: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    };
    if let Some(p) = proc_stat() {
        gauge(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
            "counter",
            p.cpu_seconds,
        );
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            p.virtual_bytes,
        );
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            p.resident_bytes,
        );
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            "gauge",
            p.start_time,
        );
    }
    gauge(
        "process_open_fds",
        "Open file descriptors.",
        "gauge",
        open_fds().map(|n| n as f64),
    );
    gauge(
        "process_max_fds",
        "The most file descriptors the process may open.",
        "gauge",
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map(|max| max as f64),
    );
    let _ = writeln!(
        out,
        "# HELP shardbox_build_info The running build: its version and profile.\n# TYPE shardbox_build_info gauge\nshardbox_build_info{{version=\"{}\",profile=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
}
