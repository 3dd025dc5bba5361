//! KV workloads: `kv-get-hot` and `kv-put-durable` against Redis, the group-commit baseline,
//! the connection sweep (`kv-put-scaling`, with its plot) and device bytes per write
//! (`kv-put-bytes`).

use crate::loadgen::Proto;
use crate::peers;
use crate::report::{note_ratio, row, set_ratio, svg_lines, unavailable, Row, Series};
use crate::support::{
    get_op, measure, measure_with, preload_redis, preload_shardbox, put_op, server_stats,
    start_shardbox, value, wanted, Opts,
};
use std::time::Duration;

pub async fn kv_suite(o: &Opts, rows: &mut Vec<Row>) {
    if wanted(o, "kv-get-hot") {
        get_hot(o, rows).await;
    }
    if wanted(o, "kv-get-nocache") {
        get_nocache(o, rows).await;
    }
    if wanted(o, "kv-put-durable") {
        put_durable(o, rows).await;
    }
    if wanted(o, "access-overhead") {
        access_overhead(o, rows).await;
    }
    if wanted(o, "runtime-shape") {
        runtime_shape(o, rows).await;
    }
    if wanted(o, "kv-put-scaling") {
        put_scaling(o, rows).await;
    }
    if wanted(o, "kv-put-bytes") {
        put_bytes(o, rows).await;
    }
}

async fn get_hot(o: &Opts, rows: &mut Vec<Row>) {
    let sb = start_shardbox(o, &[]).expect("start shardbox");
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
    drop(sb);
    match peers::redis(o.install) {
        Ok(r) => {
            preload_redis(r.addr, o.keys, &value())
                .await
                .expect("preload redis");
            let theirs = measure(r.addr, Proto::Resp, o, get_op(o.keys)).await;
            rows.push(row("kv-get-hot", "redis GET", theirs, "RESP GET"));
            set_ratio(rows, i, i + 1, "vs redis GET");
        }
        Err(e) => rows.push(unavailable("kv-get-hot", "redis GET", &e)),
    }
    ceiling_row(o, rows, "kv-get-hot", i, get_op(o.keys)).await;
}

/// Measures the HTTP ceiling ([`crate::ceiling`]) with the same load as row `ours`, adds its
/// row and notes `ours ÷ ceiling` (throughput and server CPU per request) on `ours`.
pub async fn ceiling_row<F>(o: &Opts, rows: &mut Vec<Row>, workload: &str, ours: usize, f: F)
where
    F: Fn(usize, u64) -> crate::loadgen::Op + Send + Sync + Clone + 'static,
{
    match peers::ceiling() {
        Ok(c) => {
            let out = measure(c.addr, Proto::Http, o, f).await;
            rows.push(row(
                workload,
                "HTTP ceiling (bare hyper)",
                out,
                "100 fixed bytes, no storage",
            ));
            let j = rows.len() - 1;
            note_ratio(rows, ours, j, "÷ ceiling");
        }
        Err(e) => rows.push(unavailable(workload, "HTTP ceiling (bare hyper)", &e)),
    }
}

/// The runtime shape, measured where only the runtime is left: the HTTP ceiling on tokio's
/// multi-thread runtime (shardbox's) against one current-thread runtime per core with an
/// `SO_REUSEPORT` listener each (the shape of the fastest Rust HTTP servers). A shape that does
/// not make the bare server cheaper on this box will not make shardbox cheaper.
async fn runtime_shape(o: &Opts, rows: &mut Vec<Row>) {
    let first = rows.len();
    for (per_core, system) in [
        (false, "HTTP ceiling, multi-thread runtime"),
        (true, "HTTP ceiling, current-thread runtime per core"),
    ] {
        match peers::ceiling_shaped(per_core) {
            Ok(c) => {
                let out = measure(c.addr, Proto::Http, o, get_op(o.keys)).await;
                rows.push(row(
                    "runtime-shape",
                    system,
                    out,
                    "100 fixed bytes, no storage",
                ));
            }
            Err(e) => rows.push(unavailable("runtime-shape", system, &e)),
        }
    }
    if rows.len() == first + 2 {
        set_ratio(rows, first + 1, first, "÷ multi-thread");
    }
}

/// What a bearer token and the rate limiter cost on the hottest path: kv-get-hot with no
/// tokens, with a token checked on every request, and with a token plus read/write limits set
/// too high to refuse anything (the GCRA check runs, nothing is shed); Redis GET beside it
/// (Redis's AUTH is once per connection, so plain GET is its per-request cost either way).
async fn access_overhead(o: &Opts, rows: &mut Vec<Row>) {
    let token = shardbox::tokens::new_token();
    let tokens = format!(
        "[{{name = \"bench\", sha256 = \"{}\", scopes = [\"read\", \"write\"]}}]",
        shardbox::tokens::hash_token(&token)
    );
    let limit = (1u64 << 30).to_string();
    // (row, settings, bearer token sent)
    type Run<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let runs: [Run; 3] = [
        ("shardbox GET, no tokens", vec![], None),
        (
            "shardbox GET, bearer token",
            vec![("tokens", tokens.as_str())],
            Some(token.as_str()),
        ),
        (
            "shardbox GET, token + rate limits",
            vec![
                ("tokens", tokens.as_str()),
                ("rate_limit_reads_per_s", limit.as_str()),
                ("rate_limit_writes_per_s", limit.as_str()),
            ],
            Some(token.as_str()),
        ),
    ];
    let first = rows.len();
    for (system, settings, bearer) in runs {
        eprintln!("access-overhead: {system} …");
        crate::loadgen::set_bearer(bearer);
        let sb = start_shardbox(o, &settings).expect("start shardbox");
        preload_shardbox(sb.addr, o.keys)
            .await
            .expect("preload shardbox");
        let out = measure(sb.addr, Proto::Http, o, get_op(o.keys)).await;
        rows.push(row("access-overhead", system, out, "HTTP GET, 100 B"));
        if rows.len() > first + 1 {
            let i = rows.len() - 1;
            set_ratio(rows, i, first, "÷ no tokens");
        }
    }
    crate::loadgen::set_bearer(None);
    match peers::redis(o.install) {
        Ok(r) => {
            preload_redis(r.addr, o.keys, &value())
                .await
                .expect("preload redis");
            let theirs = measure(r.addr, Proto::Resp, o, get_op(o.keys)).await;
            rows.push(row("access-overhead", "redis GET", theirs, "RESP GET"));
            let j = rows.len() - 1;
            set_ratio(rows, first, j, "vs redis GET");
            // The token runs carry their ratio against the peer in their note.
            for i in first + 1..j {
                if let (Some(a), Some(b)) = (&rows[i].outcome, &rows[j].outcome) {
                    let r = a.throughput() / b.throughput().max(1e-9);
                    rows[i].note = format!("HTTP GET, 100 B; {r:.2}× redis GET");
                }
            }
        }
        Err(e) => rows.push(unavailable("access-overhead", "redis GET", &e)),
    }
}

async fn get_nocache(o: &Opts, rows: &mut Vec<Row>) {
    eprintln!("kv-get-hot without the read cache …");
    let off = start_shardbox(o, &[("kv_cache_bytes", "0")]).expect("start shardbox");
    preload_shardbox(off.addr, o.keys)
        .await
        .expect("preload shardbox");
    let before = measure(off.addr, Proto::Http, o, get_op(o.keys)).await;
    rows.push(row(
        "kv-get-nocache",
        "shardbox GET, kv_cache_bytes=0",
        before,
        "every GET opens a redb read transaction",
    ));
    let j = rows.len() - 1;
    if let Some(i) = rows
        .iter()
        .position(|r| r.workload == "kv-get-hot" && r.system == "shardbox GET")
    {
        if let (Some(a), Some(b)) = (&rows[i].outcome, &rows[j].outcome) {
            let r = a.throughput() / b.throughput().max(1e-9);
            rows[j].ratio = Some((r, "read cache on ÷ this row".into()));
        }
    }
}

async fn put_durable(o: &Opts, rows: &mut Vec<Row>) {
    eprintln!("kv-put-durable …");
    let sb = start_shardbox(o, &[]).expect("start shardbox");
    let before = server_stats(sb.addr, Proto::Http).await;
    let ours = measure(sb.addr, Proto::Http, o, put_op(o.keys)).await;
    let per_sync = match (before, server_stats(sb.addr, Proto::Http).await) {
        (Some(a), Some(b)) => format!(", {:.1} writes per fsync", b.since(&a).writes_per_sync()),
        _ => String::new(),
    };
    drop(sb);
    rows.push(row(
        "kv-put-durable",
        "shardbox PUT",
        ours,
        &format!("immediate: reply after the log fsync{per_sync}"),
    ));
    let i = rows.len() - 1;
    match peers::redis(o.install) {
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
        Err(e) => rows.push(unavailable("kv-put-durable", "redis SET", &e)),
    }
    ceiling_row(o, rows, "kv-put-durable", i, put_op(o.keys)).await;
    eprintln!("kv-put-durable with batch_ops_max=1 …");
    let single = start_shardbox(o, &[("batch_ops_max", "1")]).expect("start shardbox");
    let one = measure(single.addr, Proto::Http, o, put_op(o.keys)).await;
    rows.push(row(
        "kv-put-durable",
        "shardbox PUT, batch_ops_max=1",
        one,
        "one writer batch per write (the log still groups syncs)",
    ));
    let j = rows.len() - 1;
    set_ratio(rows, j, i, "");
    if let Some((r, _)) = rows[j].ratio {
        rows[j].ratio = Some((1.0 / r, "batching ÷ this row".into()));
    }
}

/// Durable puts against Redis at 1, 4, 16, 64 and 256 connections; writes the plot.
async fn put_scaling(o: &Opts, rows: &mut Vec<Row>) {
    let steps = [1usize, 4, 16, 64, 256];
    let mut ours = Series::new("shardbox PUT", "#1f77b4");
    let mut theirs = Series::new("Redis SET always", "#d62728");
    let mut ours_p99 = Series::new("shardbox PUT", "#1f77b4");
    let mut theirs_p99 = Series::new("Redis SET always", "#d62728");
    for conns in steps {
        eprintln!("kv-put-scaling: {conns} connections …");
        let sb = start_shardbox(o, &[]).expect("start shardbox");
        let out = measure_with(sb.addr, Proto::Http, conns, o.duration, put_op(o.keys)).await;
        drop(sb);
        ours.push(out.throughput());
        ours_p99.push(out.p(0.99));
        rows.push(row(
            "kv-put-scaling",
            &format!("shardbox PUT, {conns} conns"),
            out,
            "",
        ));
        let i = rows.len() - 1;
        match peers::redis(o.install) {
            Ok(r) => {
                let out =
                    measure_with(r.addr, Proto::Resp, conns, o.duration, put_op(o.keys)).await;
                theirs.push(out.throughput());
                theirs_p99.push(out.p(0.99));
                rows.push(row(
                    "kv-put-scaling",
                    &format!("redis SET, {conns} conns"),
                    out,
                    "appendfsync always",
                ));
                set_ratio(rows, i, i + 1, "vs redis");
            }
            Err(e) => rows.push(unavailable("kv-put-scaling", "redis SET", &e)),
        }
    }
    let labels: Vec<String> = steps.iter().map(|c| c.to_string()).collect();
    let top = svg_lines(
        "durable writes: throughput vs connections",
        "connections",
        "writes/s",
        &labels,
        &[ours, theirs],
        0.0,
    );
    let bottom = svg_lines(
        "durable writes: p99 latency vs connections",
        "connections",
        "p99 (ms)",
        &labels,
        &[ours_p99, theirs_p99],
        0.0,
    );
    let svg = crate::report::stack_svgs(&[top, bottom]);
    crate::report::write_output("shardbox-put-scaling.svg", &svg, "plot");
}

/// Bytes written to the block device that holds `path` (`/proc/diskstats`, sectors written ×
/// 512). `/proc/<pid>/io` `write_bytes` is not usable here: on ext4 it counted ~100× what the
/// device received for a process that overwrites a preallocated, fdatasync'd file. The device
/// counter includes every other writer on the machine, so run it on a quiet box.
fn device_written(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[0] == major.to_string() && f[1] == minor.to_string())
            .then(|| f[9].parse::<u64>().ok().map(|s| s * 512))
            .flatten()
    })
}

/// Device bytes per acknowledged 100-byte put over a 60 s run (at least `--duration`),
/// checkpoints included, against Redis's AOF bytes per SET.
async fn put_bytes(o: &Opts, rows: &mut Vec<Row>) {
    let duration = o.duration.max(Duration::from_secs(60));
    let mut per_write = Vec::new();
    for shardbox in [true, false] {
        let server = if shardbox {
            start_shardbox(o, &[])
        } else {
            peers::redis(o.install)
        };
        let name = if shardbox {
            "shardbox PUT"
        } else {
            "redis SET always"
        };
        eprintln!("kv-put-bytes: {name}, {} s …", duration.as_secs());
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                rows.push(unavailable("kv-put-bytes", name, &e));
                continue;
            }
        };
        let proto = if shardbox { Proto::Http } else { Proto::Resp };
        // Warm up, then measure the bytes over the run itself.
        let _ = crate::loadgen::run(
            server.addr,
            proto,
            o.connections,
            Duration::from_secs(1),
            put_op(o.keys),
        )
        .await;
        let before = device_written(server.dir());
        let out =
            crate::loadgen::run(server.addr, proto, o.connections, duration, put_op(o.keys)).await;
        let after = device_written(server.dir());
        let note = match (before, after) {
            (Some(a), Some(b)) => {
                let per = (b - a) as f64 / out.ops.max(1) as f64;
                per_write.push(per);
                format!(
                    "{per:.0} device bytes per acknowledged write ({} MiB in {} s)",
                    (b - a) >> 20,
                    duration.as_secs()
                )
            }
            _ => "cannot read /proc/diskstats for the temp dir's device".into(),
        };
        rows.push(row("kv-put-bytes", name, out, &note));
    }
    if let [ours, theirs] = per_write[..] {
        let n = rows.len();
        rows[n - 2].ratio = Some((ours / theirs.max(1e-9), "bytes per write vs redis".into()));
    }
}
