//! The fuzz targets' bodies, one function per target, so that the cargo-fuzz binaries in
//! `fuzz/` and the corpus replay test (`tests/it/fuzz_corpus.rs`, on every `cargo test`) run the
//! same code. Each function takes arbitrary bytes and panics only on a real defect: a decoder that
//! panics, a decoded record that does not re-encode to its bytes, or a request the server
//! answers with a 500.
//!
//! Targets that talk HTTP run the real router over an in-memory pipe against one real store in a
//! temporary directory (redb files, the WAL, a foyer cache with a disk tier), opened once per
//! process.

use crate::base::clock::Clock;
use crate::base::config::Config;
use crate::engine::{codec, manifest::Manifest, wal};
use crate::http::ServerState;
use crate::store::Store;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fuzz target: arbitrary bytes in, a panic only on a defect.
pub type Target = fn(&[u8]);

/// Every target by name: its corpus is `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_raw", http_raw),
    ("http_body", http_body),
    ("inputs", inputs),
    ("records", records),
    ("wal_segment", wal_segment),
    ("manifest", manifest),
    ("cron", cron),
    ("config", config),
];

struct Harness {
    rt: tokio::runtime::Runtime,
    state: Arc<ServerState>,
}

/// Removes the temporary directories (`<prefix>-<pid>-<ms>`) of fuzz processes that are gone:
/// a harness lives as long as its process and is never dropped, so its directory is left
/// behind; the next run clears it.
fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// One store and server state per process, in a fresh temporary directory.
fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        sweep_stale("shardbox-fuzz");
        let dir = std::env::temp_dir().join(format!(
            "shardbox-fuzz-{}-{}",
            std::process::id(),
            crate::base::clock::SystemClock.now_ms()
        ));
        let mut cfg = Config::with_data_dir(&dir);
        cfg.engine.shards = 2;
        cfg.engine.shard_cache_bytes = 8 << 20;
        cfg.cache.cache_memory_bytes = 8 << 20;
        cfg.cache.cache_disk_bytes = 16 << 20;
        cfg.kv.kv_cache_bytes = 1 << 20;
        cfg.engine.wal_segment_bytes = 1 << 20;
        cfg.engine.checkpoint_log_bytes = 4 << 20;
        cfg.http.header_read_timeout_ms = 200;
        cfg.http.body_read_timeout_ms = 200;
        cfg.queue.claim_wait_max_ms = 20;
        cfg.cache.cache_wait_max_ms = 20;
        // No 64 MiB ballast per fuzz process.
        cfg.engine.disk_ballast_bytes = 0;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fuzz harness: a tokio runtime");
        let store = rt
            .block_on(async { Store::open(cfg) })
            .expect("fuzz harness: open a store in a temporary directory");
        let state = ServerState::new(store);
        Harness { rt, state }
    })
}

/// The store the HTTP targets write to (for writing seeds from its records).
pub fn harness_store() -> &'static Store {
    &harness().state.store
}

/// Sends `request` over a fresh in-memory connection, returns what the server wrote (cut off
/// after one second: a long-poll or a half-sent body is not a finding).
fn exchange(request: &[u8]) -> Vec<u8> {
    let h = harness();
    h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let state = h.state.clone();
        let conn = tokio::spawn(async move { crate::http::serve_stream(&state, server).await });
        let mut out = Vec::new();
        let talk = async {
            client.write_all(request).await?;
            client.shutdown().await?;
            client.read_to_end(&mut out).await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), talk).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        out
    })
}

/// Panics if any response in `out` is a 500: a handler's panic, a storage error or a corrupt
/// record (503 shedding, 501 and 507 are answers by design).
fn assert_no_server_error(request: &[u8], out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    if std::env::var_os("SHARDBOX_FUZZ_SHOW").is_some() {
        eprintln!("> {}\n< {text}", String::from_utf8_lossy(request));
    }
    for line in text.split("\r\n").filter(|l| l.starts_with("HTTP/1.1 5")) {
        assert!(
            !line.starts_with("HTTP/1.1 500"),
            "the server answered {line:?} to {:?}:\n{text}",
            String::from_utf8_lossy(request)
        );
    }
}

/// Raw bytes as an HTTP/1.1 request stream: parsing, routing, every handler.
pub fn http_raw(data: &[u8]) {
    let out = exchange(data);
    assert_no_server_error(data, &out);
}

/// Routes that take a body, with real path values: (method, path, content type).
const BODY_ROUTES: &[(&str, &str, &str)] = &[
    ("PUT", "/v1/kv/fz/k", "application/octet-stream"),
    ("POST", "/v1/kv/fz:incr", "application/json"),
    ("POST", "/v1/kv/fz:batchGet", "application/json"),
    ("POST", "/v1/kv/fz:batchWrite", "application/json"),
    ("PUT", "/v1/queues/fz", "application/json"),
    ("POST", "/v1/queues/fz/jobs", "application/json"),
    ("POST", "/v1/queues/fz/jobs", "application/x-ndjson"),
    ("POST", "/v1/queues/fz/claim", "application/json"),
    ("POST", "/v1/queues/fz/jobs/1/ack", "application/json"),
    ("POST", "/v1/queues/fz/jobs/1/nack", "application/json"),
    ("POST", "/v1/queues/fz/jobs/1/extend", "application/json"),
    ("POST", "/v1/queues/fz/dead:requeue", "application/json"),
    ("PUT", "/v1/schedules/fz", "application/json"),
    ("PUT", "/v1/streams/fz", "application/json"),
    ("POST", "/v1/streams/fz/events", "application/json"),
    ("POST", "/v1/streams/fz/events", "application/x-ndjson"),
    ("PUT", "/v1/cache/fz/k", "application/json"),
    ("POST", "/v1/cache/fz:purge", "application/json"),
    ("POST", "/v1/cache/fz:fillError", "application/json"),
];

/// The request `http_body` sends for `data`: its first byte picks a route, the rest is the body.
pub fn body_request(data: &[u8]) -> Vec<u8> {
    let (pick, body) = data.split_first().unwrap_or((&0, &[]));
    let (method, path, ctype) = BODY_ROUTES[*pick as usize % BODY_ROUTES.len()];
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: fuzz\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// The index of `(method, path, content type)` in the body routes, for writing seeds.
pub fn body_route(method: &str, path: &str, ctype: &str) -> Option<u8> {
    BODY_ROUTES
        .iter()
        .position(|r| *r == (method, path, ctype))
        .map(|i| i as u8)
}

/// JSON and NDJSON bodies of every domain, through the real handlers.
pub fn http_body(data: &[u8]) {
    let req = body_request(data);
    let out = exchange(&req);
    assert_no_server_error(&req, &out);
}

/// Small textual inputs from URLs: durations, times, bucket widths, cursors, names, keys, event
/// ids, and route matching with its query check.
pub fn inputs(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::base::util::parse_duration_ms(text);
    let _ = crate::base::util::parse_time_ms(text);
    let _ = crate::base::util::parse_bucket_ms(text);
    let _ = crate::events::parse_bucket(text);
    let _ = crate::events::model::parse_id(text);
    let _ = crate::queue::model::State::parse(text);
    let _ = crate::base::config::DurabilityMode::parse(text);
    if let Ok(key) = crate::kv::list_cursor(text) {
        // A cursor names the key it continues after: encoding it again gives the same cursor.
        assert_eq!(
            crate::kv::list_cursor(&crate::kv::encode_cursor(&key)).ok(),
            Some(key)
        );
    }
    if crate::base::names::validate_name("name", text).is_ok() {
        assert!(!text.is_empty() && text != "." && text != "..");
    }
    if crate::base::names::validate_key(text).is_ok() {
        let sk = crate::base::names::stored_key("ns", text);
        assert_eq!(&sk[..3], b"ns\0");
        assert_eq!(&sk[3..], text.as_bytes());
        let shown = crate::base::names::display_key(&sk);
        assert!(
            shown.starts_with("ns/") && !shown.chars().any(char::is_control),
            "{shown:?}"
        );
    }
    let (path, query) = text
        .split_once('?')
        .map_or((text, None), |(p, q)| (p, Some(q)));
    for method in ["GET", "PUT", "POST", "DELETE", "HEAD"] {
        if let Ok(Some(found)) = crate::http::find_route(method, path) {
            let _ = crate::http::check_query(found, query);
        }
    }
}

/// Every on-disk record decoder: the first byte picks the decoder. What decodes must encode back
/// to the same bytes where the format is canonical.
pub fn records(data: &[u8]) {
    let Some((pick, bytes)) = data.split_first() else {
        return;
    };
    match pick % 8 {
        0 => {
            if let Ok((h, payload)) = codec::decode(bytes) {
                let again = codec::encode(
                    h.revision,
                    h.expires_at_ms,
                    h.content_type.as_deref(),
                    payload,
                );
                assert_eq!(again, bytes, "a decoded envelope re-encodes to its bytes");
            }
            let _ = codec::decode_header(bytes);
        }
        1 => {
            let _ = crate::queue::apply::decode_job(bytes);
        }
        2 => {
            let _ = crate::queue::apply::decode_meta(bytes);
        }
        3 => {
            let _ = crate::queue::model::decode::<crate::queue::model::Schedule>(bytes);
            let _ = crate::queue::model::parse_timer(bytes);
            let _ = crate::queue::model::id_of_index_key(bytes);
            let _ = crate::queue::model::decode::<crate::queue::model::Dedupe>(bytes);
        }
        4 => {
            let _ = crate::events::model::decode_meta(bytes);
            let _ = crate::events::model::parse_event_key(bytes);
            let _ = crate::events::model::decode::<crate::events::model::BucketStats>(bytes);
        }
        5 => {
            let _ = crate::events::model::decode::<crate::events::model::Event>(bytes);
        }
        6 => {
            use foyer::Code;
            if let Ok(entry) = crate::cache::entry::Entry::decode(&mut &bytes[..]) {
                let mut again = Vec::new();
                let _ = entry.encode(&mut again);
                assert_eq!(
                    again,
                    bytes[..again.len()],
                    "a cache entry re-encodes to its bytes"
                );
            }
        }
        _ => {
            let _ = crate::engine::redo::validate(bytes);
            let _ = wal::frame::parse_header(bytes);
            let _ = wal::frame::parse_segment_header(bytes);
        }
    }
}

/// Bytes as a WAL segment file, read by recovery exactly as at startup (each record's redo
/// payload validated).
pub fn wal_segment(data: &[u8]) {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        sweep_stale("shardbox-fuzz-wal");
        let d = std::env::temp_dir().join(format!(
            "shardbox-fuzz-wal-{}-{}",
            std::process::id(),
            crate::base::clock::SystemClock.now_ms()
        ));
        let _ = std::fs::create_dir_all(&d);
        d
    });
    if std::fs::write(dir.join(wal::frame::segment_name(1)), data).is_err() {
        return;
    }
    let _ = wal::recovery::scan(dir, |_, payload, _, _| {
        crate::engine::redo::validate(payload).map(|_| ())
    });
}

/// A MANIFEST file's bytes.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data) {
        assert!(m.shards >= 1 && m.shards <= 1024);
    }
}

/// A cron expression: parsing, and the next tick after a few instants.
pub fn cron(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::queue::cron::Cron::parse(text) {
        for after in [0, 1_700_000_000_000, 4_102_444_800_000, u64::MAX / 2] {
            if let Some(next) = c.next_after(after) {
                assert!(
                    next > after,
                    "{text:?}: next tick {next} is not after {after}"
                );
            }
        }
    }
}

/// A config file's text (TOML), resolved and validated as `--config` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::resolve(Some(text), std::iter::empty(), &[]) {
        assert!(cfg.validate().is_ok());
    }
}
