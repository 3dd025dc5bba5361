//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through its target's function
//! on the stable toolchain, so CI keeps every seed and every past crash input as a regression
//! test without a fuzzer. `write_seeds` (ignored) regenerates the seed files from real requests
//! and the records a real store wrote.

use redb::{ReadableDatabase, ReadableTable, TableHandle};
use shardbox::fuzzing::{self, TARGETS};
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn every_corpus_file_replays_through_its_target() {
    let root = corpus_dir();
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target needs a seed corpus)", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for f in &files {
            let data = std::fs::read(f).expect("read corpus file");
            // A panic names the file: replay it with `cargo fuzz run <target> <file>`.
            eprintln!("{name}: {}", f.display());
            target(&data);
        }
        total += files.len();
    }
    for entry in std::fs::read_dir(&root).expect("fuzz/corpus") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no target in shardbox::fuzzing::TARGETS"
        );
    }
    eprintln!(
        "replayed {total} corpus files over {} targets",
        TARGETS.len()
    );
}

/// Every fuzz target has its cargo-fuzz binary.
#[test]
fn every_target_is_a_cargo_fuzz_binary() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lacks the [[bin]] of target {name}"
        );
    }
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir().join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
}

fn req(method: &str, path: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: fuzz\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Regenerates the seed files: `cargo test --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let json = "application/json";
    let nd = "application/x-ndjson";
    // Whole requests, as clients send them (README walk and some malformed ones).
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("health", b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("kv-put", req("PUT", "/v1/kv/app/user:1?ttl=30s", "text/plain", "hello")),
        ("kv-get", b"GET /v1/kv/app/user:1 HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("kv-head", b"HEAD /v1/kv/app/a%2Fb HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("kv-cas", {
            let mut r = req("PUT", "/v1/kv/app/k", json, "{\"a\":1}");
            r.splice(r.len() - 9..r.len() - 9, b"if-match: \"3\"\r\n".iter().copied());
            r
        }),
        ("kv-list", b"GET /v1/kv/app?prefix=user&limit=2&after=dXNlcjox HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("kv-batch", req("POST", "/v1/kv/app:batchWrite", json, r#"{"ops":[{"op":"put","key":"a","value":"x","ttl":"1m"},{"op":"delete","key":"b"}]}"#)),
        ("kv-incr", req("POST", "/v1/kv/app:incr", json, r#"{"key":"n","by":5}"#)),
        ("kv-delete", b"DELETE /v1/kv/app/k HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("q-enqueue", req("POST", "/v1/queues/emails/jobs", json, r#"{"payload":{"to":"a@b"},"priority":5,"delay":"1s","dedupe_key":"x"}"#)),
        ("q-claim", req("POST", "/v1/queues/emails/claim", json, r#"{"max":2,"lease":"30s","wait":"10ms"}"#)),
        ("q-stats", b"GET /v1/queues/emails HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("q-list", b"GET /v1/queues/emails/jobs?state=dead&limit=5 HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("sched", req("PUT", "/v1/schedules/nightly", json, r#"{"cron":"0 3 * * *","queue":"q","payload":{"k":1}}"#)),
        ("ev-append", req("POST", "/v1/streams/clicks/events", nd, &format!("{{\"type\":\"click\",\"ts\":{now},\"data\":{{\"x\":1}}}}\n{{\"type\":\"view\",\"data\":2}}\n"))),
        ("ev-range", b"GET /v1/streams/clicks/events?from=0&limit=10 HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("ev-agg", b"GET /v1/streams/clicks/aggregate?from=0&to=99999999999999&step=1h HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("cache-put", req("PUT", "/v1/cache/pages/home?ttl=1m&tags=a,b", "text/html", "<p>hi</p>")),
        ("cache-get", b"GET /v1/cache/pages/home HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("metrics", b"GET /metrics HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("pipelined", [&b"GET /readyz HTTP/1.1\r\nhost: a\r\n\r\n"[..], &req("PUT", "/v1/kv/a/b", "text/plain", "v")].concat()),
        ("no-host", b"GET /v1/kv/app/k HTTP/1.1\r\n\r\n".to_vec()),
        ("two-lengths", b"PUT /v1/kv/a/b HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxy".to_vec()),
        ("chunked", b"PUT /v1/kv/a/c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("gzip-te", b"PUT /v1/kv/a/c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("traversal", b"GET /v1/kv/../%2e%2e/k%00 HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
        ("bad-utf8", b"GET /v1/kv/a/%ff%fe HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
    ];
    for (name, data) in &raw {
        fuzzing::http_raw(data);
        write("http_raw", name, data);
    }
    let bodies: Vec<(&str, (&str, &str, &str), String)> = vec![
        ("kv-put", ("PUT", "/v1/kv/fz/k", "application/octet-stream"), "bytes".into()),
        ("kv-incr", ("POST", "/v1/kv/fz:incr", json), r#"{"key":"n","by":-3,"ttl":"1h"}"#.into()),
        ("kv-batchget", ("POST", "/v1/kv/fz:batchGet", json), r#"{"keys":["k","n","missing"]}"#.into()),
        ("kv-batchwrite", ("POST", "/v1/kv/fz:batchWrite", json), r#"{"ops":[{"op":"put","key":"a","value":"v","if_revision":0},{"op":"delete","key":"k","if_exists":true}]}"#.into()),
        ("q-config", ("PUT", "/v1/queues/fz", json), r#"{"max_attempts":3,"max_depth":100,"backoff":{"initial":"1s","max":"1m","multiplier":2.0,"jitter":0.1}}"#.into()),
        ("q-enqueue", ("POST", "/v1/queues/fz/jobs", json), r#"{"payload":{"a":[1,2,{"b":null}]},"priority":9,"max_attempts":2}"#.into()),
        ("q-enqueue-nd", ("POST", "/v1/queues/fz/jobs", nd), "{\"payload\":1}\n{\"payload\":\"two\",\"delay\":\"5s\"}\n".into()),
        ("q-claim", ("POST", "/v1/queues/fz/claim", json), r#"{"max":10,"lease":"1m"}"#.into()),
        ("q-ack", ("POST", "/v1/queues/fz/jobs/1/ack", json), r#"{"lease_token":"00ff"}"#.into()),
        ("q-nack", ("POST", "/v1/queues/fz/jobs/1/nack", json), r#"{"lease_token":"00ff","error":"boom","delay":"1s"}"#.into()),
        ("q-extend", ("POST", "/v1/queues/fz/jobs/1/extend", json), r#"{"lease_token":"00ff","lease":"30s"}"#.into()),
        ("q-requeue", ("POST", "/v1/queues/fz/dead:requeue", json), r#"{"ids":[1,2]}"#.into()),
        ("sched", ("PUT", "/v1/schedules/fz", json), r#"{"cron":"*/5 * * * *","queue":"fz","payload":{"x":1},"priority":3}"#.into()),
        ("stream", ("PUT", "/v1/streams/fz", json), r#"{"bucket":"1h","retention":"7d"}"#.into()),
        ("ev-append", ("POST", "/v1/streams/fz/events", json), format!(r#"{{"type":"t","ts":{now},"data":{{"k":"v"}}}}"#)),
        ("ev-append-nd", ("POST", "/v1/streams/fz/events", nd), "{\"type\":\"a\",\"data\":1}\n{\"type\":\"b\",\"data\":[true]}\n".into()),
        ("cache-put", ("PUT", "/v1/cache/fz/k", json), r#"{"v":1}"#.into()),
        ("cache-purge", ("POST", "/v1/cache/fz:purge", json), r#"{"tags":["a","b"]}"#.into()),
        ("cache-fillerror", ("POST", "/v1/cache/fz:fillError", json), r#"{"key":"k","lease":"00"}"#.into()),
    ];
    for (name, (m, p, c), body) in &bodies {
        let pick =
            fuzzing::body_route(m, p, c).unwrap_or_else(|| panic!("no body route {m} {p} {c}"));
        let mut data = vec![pick];
        data.extend_from_slice(body.as_bytes());
        fuzzing::http_body(&data);
        write("http_body", name, &data);
    }
    let inputs = [
        "30s",
        "250ms",
        "1h30m",
        "7d",
        "3000000d",
        "2026-01-01T00:00:00Z",
        "1700000000000",
        "dXNlcjox",
        "user:1",
        "a/b/c",
        "..",
        "ready",
        "periodic:100",
        "1777-0",
        "/v1/kv/app/key?ttl=30s",
        "/v1/queues/q/jobs?state=ready&limit=5",
        "/v1/streams/s/events?from=0&to=1&type=a&limit=1",
        "/v1/kv/app:batchGet",
    ];
    for (i, t) in inputs.iter().enumerate() {
        fuzzing::inputs(t.as_bytes());
        write("inputs", &i.to_string(), t.as_bytes());
    }
    // Records: what the harness store wrote, straight from its redb tables.
    let mut n = 0;
    for shard in shardbox::fuzzing::harness_store().engine().shards() {
        let txn = shard.db.begin_read().expect("read txn");
        for handle in txn.list_tables().expect("tables") {
            let name = handle.name().to_string();
            let pick: u8 = match name.as_str() {
                "kv" => 0,
                "q_jobs" => 1,
                "q_meta" => 2,
                "q_sched" | "q_timers" | "q_index" => 3,
                "ev_streams" | "ev_buckets" => 4,
                n if n.starts_with("ev") => 5,
                _ => continue,
            };
            let Ok(table) = txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new(&name))
            else {
                continue;
            };
            for row in table.iter().expect("iter").take(3) {
                let (k, v) = row.expect("row");
                let bytes = if matches!(name.as_str(), "q_timers" | "q_index") {
                    k.value()
                } else {
                    v.value()
                };
                let mut data = vec![pick];
                data.extend_from_slice(bytes);
                fuzzing::records(&data);
                write("records", &format!("{name}-{n}"), &data);
                n += 1;
            }
        }
    }
    use foyer::Code;
    let entry = shardbox::cache::entry::Entry {
        value: bytes::Bytes::from_static(b"<p>hi</p>"),
        content_type: Some("text/html".into()),
        stored_at_ms: now,
        expires_at_ms: now + 60_000,
        stale_until_ms: now + 120_000,
        stale_if_error_until_ms: now + 180_000,
        ns_generation: 2,
        tags: vec![("a".into(), 1), ("b".into(), 0)],
        fill_ms: 12,
        refresh_failed: false,
    };
    let mut data = vec![6u8];
    entry.encode(&mut data).expect("encode entry");
    write("records", "cache-entry", &data);
    // The harness's log: its first segment, cut after its first records.
    let wal_dir = shardbox::fuzzing::harness_store()
        .config()
        .data_dir
        .join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let seg = std::fs::read(&segs[0]).expect("segment");
    for (i, cut) in [4096usize, 16384, 65536].into_iter().enumerate() {
        let data = &seg[..cut.min(seg.len())];
        fuzzing::wal_segment(data);
        write("wal_segment", &i.to_string(), data);
    }
    let manifest = std::fs::read(
        shardbox::fuzzing::harness_store()
            .config()
            .data_dir
            .join("MANIFEST"),
    )
    .expect("manifest");
    write("manifest", "real", &manifest);
    for (i, c) in [
        "* * * * *",
        "0 3 * * 1-5",
        "*/15 9-17 * * mon-fri",
        "0 0 29 2 *",
        "5,10 0 1 1,7 *",
    ]
    .iter()
    .enumerate()
    {
        fuzzing::cron(c.as_bytes());
        write("cron", &i.to_string(), c.as_bytes());
    }
    for (i, c) in [
        "shards = 4\ndurability = \"periodic:100\"\n",
        "listen = \"127.0.0.1:7070\"\ncache_eviction = \"s3fifo\"\ndefault_bucket = \"1h\"\n",
        "cache_disk_bytes = 0\ncache_disk_io = \"direct\"\nvalue_bytes_max = 1024\n",
    ]
    .iter()
    .enumerate()
    {
        fuzzing::config(c.as_bytes());
        write("config", &i.to_string(), c.as_bytes());
    }
}
