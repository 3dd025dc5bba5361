//! `keeping-data`: how long it takes to get data out of and back into a running box, against
//! Redis doing the same with its own tools, over the same keys (`--keys`, 100-byte values).
//!
//! - `shardbox backup` (online, over the admin socket) vs `redis-cli --rdb` (an online RDB
//!   snapshot streamed to a file, `repl-diskless-sync-delay 0`): both are the "copy of
//!   everything while it serves" tool.
//! - `shardbox export` (online NDJSON) vs the same `redis-cli --rdb` (Redis has no portable
//!   text export; the RDB is its dump format).
//! - `shardbox import` of that export into a new directory vs `redis-cli --pipe` loading the
//!   same keys as SET commands into an empty Redis (`appendfsync always`).

use crate::loadgen::{resp_command, Outcome};
use crate::peers;
use crate::report::{row, unavailable, Row};
use crate::support::{key, preload_redis, preload_shardbox, start_shardbox, value, Opts};
use hdrhistogram::Histogram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One timed run as an outcome: `ops` records in `d` (the p50 column is the whole run).
fn timed(d: Duration, ops: u64) -> Outcome {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram");
    let _ = hist.record(d.as_micros().max(1) as u64);
    Outcome {
        ops,
        errors: 0,
        elapsed: d,
        hist,
        cpu_us_per_op: None,
    }
}

/// Longest any one command may take before it is killed (the suite stops by itself).
const COMMAND_MAX: Duration = Duration::from_secs(600);

/// Runs a command and times it; `None` (logged) when it fails or runs past [`COMMAND_MAX`].
fn run(what: &str, cmd: &mut Command) -> Option<Duration> {
    let t = Instant::now();
    let mut child = match cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("  {what}: {e}");
            return None;
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Some(t.elapsed()),
            Ok(Some(status)) => {
                eprintln!("  {what} failed: {status}");
                return None;
            }
            Ok(None) if t.elapsed() > COMMAND_MAX => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("  {what}: killed after {} s", COMMAND_MAX.as_secs());
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                eprintln!("  {what}: {e}");
                return None;
            }
        }
    }
}

fn size_mb(path: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(path) as f64 / 1e6
}

fn ratio(rows: &mut [Row], ours: usize, theirs: usize, label: &str) {
    if let (Some(a), Some(b)) = (&rows[ours].outcome, &rows[theirs].outcome) {
        let r = b.elapsed.as_secs_f64() / a.elapsed.as_secs_f64().max(1e-9);
        rows[ours].ratio = Some((r, label.to_string()));
    }
}

pub async fn keeping_data(o: &Opts, rows: &mut Vec<Row>) {
    let keys = o.keys;
    let bin = o
        .shardbox_bin
        .clone()
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_shardbox").into());
    let tmp = tempfile::tempdir().expect("tempdir");
    let sb = start_shardbox(o, &[]).expect("start shardbox");
    eprintln!("keeping-data: preloading {keys} keys …");
    preload_shardbox(sb.addr, keys)
        .await
        .expect("preload shardbox");
    let data = sb.dir().join("data");
    let (backup_dir, export_file) = (tmp.path().join("backup"), tmp.path().join("export.ndjson"));
    let first = rows.len();
    eprintln!("keeping-data: shardbox backup, export …");
    let backup = run(
        "shardbox backup",
        Command::new(&bin)
            .args(["backup", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&backup_dir),
    );
    let export = run(
        "shardbox export",
        Command::new(&bin)
            .args(["export", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&export_file),
    );
    drop(sb);
    let import = run(
        "shardbox import",
        Command::new(&bin)
            .args(["import", "--data"])
            .arg(tmp.path().join("imported"))
            .arg("--in")
            .arg(&export_file),
    );
    for (system, d, note) in [
        (
            "shardbox backup (online)",
            backup,
            format!("{:.0} MB of shard files", size_mb(&backup_dir)),
        ),
        (
            "shardbox export (online, NDJSON)",
            export,
            format!("{:.0} MB", size_mb(&export_file)),
        ),
        (
            "shardbox import (new directory)",
            import,
            "through the API's checks".to_string(),
        ),
    ] {
        match d {
            Some(d) => rows.push(row("keeping-data", system, timed(d, keys), &note)),
            None => rows.push(unavailable("keeping-data", system, "failed (see above)")),
        }
    }

    let Some(cli) = peers::find_or_install("redis-cli", "redis-tools", o.install) else {
        rows.push(unavailable(
            "keeping-data",
            "redis-cli",
            "redis-cli not installed",
        ));
        return;
    };
    let r = match peers::redis(o.install) {
        Ok(r) => r,
        Err(e) => {
            rows.push(unavailable("keeping-data", "redis", &e));
            return;
        }
    };
    preload_redis(r.addr, keys, &value())
        .await
        .expect("preload redis");
    let rdb = tmp.path().join("dump.rdb");
    let port = r.addr.port().to_string();
    // Redis waits 5 s by default for more replicas before a diskless transfer: not part of
    // the copy's cost.
    let _ = run(
        "redis-cli CONFIG SET",
        Command::new(&cli).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "CONFIG",
            "SET",
            "repl-diskless-sync-delay",
            "0",
        ]),
    );
    let snapshot = run(
        "redis-cli --rdb",
        Command::new(&cli)
            .args(["-h", "127.0.0.1", "-p", &port, "--rdb"])
            .arg(&rdb),
    );
    drop(r);
    // The same keys as SET commands, for a load into an empty Redis.
    let cmds = tmp.path().join("load.resp");
    {
        use std::io::Write;
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(&cmds).expect("create load.resp"));
        let (v, mut buf) = (value(), Vec::with_capacity(256));
        for n in 0..keys {
            buf.clear();
            resp_command(&mut buf, &[b"SET", key(n).as_bytes(), &v]);
            file.write_all(&buf).expect("write load.resp");
        }
        file.flush().expect("write load.resp");
    }
    let load = match peers::redis(o.install) {
        Ok(r) => {
            let port = r.addr.port().to_string();
            let f = std::fs::File::open(&cmds).expect("open load.resp");
            run(
                "redis-cli --pipe",
                Command::new(&cli)
                    .args(["-h", "127.0.0.1", "-p", &port, "--pipe"])
                    .stdin(f),
            )
        }
        Err(e) => {
            eprintln!("  redis: {e}");
            None
        }
    };
    let i = rows.len();
    match snapshot {
        Some(d) => rows.push(row(
            "keeping-data",
            "redis-cli --rdb (online snapshot)",
            timed(d, keys),
            &format!("{:.0} MB", size_mb(&rdb)),
        )),
        None => rows.push(unavailable("keeping-data", "redis-cli --rdb", "failed")),
    }
    match load {
        Some(d) => rows.push(row(
            "keeping-data",
            "redis-cli --pipe (SET, appendfsync always)",
            timed(d, keys),
            "into an empty Redis",
        )),
        None => rows.push(unavailable("keeping-data", "redis-cli --pipe", "failed")),
    }
    // Ratios as speed (the peer's time ÷ ours): above 1 is faster than the peer.
    ratio(rows, first, i, "speed vs redis-cli --rdb");
    ratio(rows, first + 1, i, "speed vs redis-cli --rdb");
    ratio(rows, first + 2, i + 1, "speed vs redis-cli --pipe");
}
