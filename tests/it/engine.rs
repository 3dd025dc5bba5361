//! Engine behaviour through the real server: overload, storage failure, corruption, data
//! directory rules, durability modes, and the on-disk format fixture.

use crate::common;

use common::TestServer;
use shardbox::engine::OpError;
use shardbox::EngineError;
use shardbox::{Config, Store};
use std::time::Duration;

/// A key of namespace `ns` that routes to `shard`.
fn key_on_shard(store: &Store, ns: &str, shard: usize) -> String {
    assert!(shard < store.engine().shards().len(), "no shard {shard}");
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| store.engine().shard_for(&shardbox::kv::stored_key(ns, k)) == shard)
        .unwrap()
}

#[tokio::test]
async fn full_writer_queue_answers_503_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.engine.writer_queue_ops_max = 1;
        c.engine.writer_queue_wait_ms = 50;
    })
    .await;
    let engine = s.store.engine().clone();
    // Hold shard 0's writer inside an operation until we let go.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let e = engine.clone();
    let blocker = tokio::spawn(async move {
        e.write(0, 0, move |_| {
            let _ = entered_tx.send(());
            let _ = release_rx.recv_timeout(Duration::from_secs(30));
            Ok::<_, OpError<EngineError>>(())
        })
        .await
    });
    entered_rx.await.unwrap();
    // Fill the one queue slot.
    let e = engine.clone();
    let filler =
        tokio::spawn(async move { e.write(0, 0, |_| Ok::<_, OpError<EngineError>>(())).await });
    while engine.shards()[0].queue_len() == 0 {
        tokio::task::yield_now().await;
    }
    let key = key_on_shard(&s.store, "app", 0);
    let mut c = s.client().await;
    let r = c.put(&format!("/v1/kv/app/{key}"), "v").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.error_code(), "overloaded");
    // Other shards are unaffected.
    let other = key_on_shard(&s.store, "app", 1);
    assert_eq!(c.put(&format!("/v1/kv/app/{other}"), "v").await.status, 201);
    release_tx.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    filler.await.unwrap().unwrap();
    assert_eq!(c.put(&format!("/v1/kv/app/{key}"), "v").await.status, 201);
    s.stop().await;
}

#[tokio::test]
async fn storage_error_fails_the_batch_and_stops_the_shard() {
    let s = TestServer::start_with(|c| c.engine.shards = 4).await;
    let engine = s.store.engine().clone();
    let key = key_on_shard(&s.store, "app", 2);
    let mut c = s.client().await;
    assert_eq!(
        c.put(&format!("/v1/kv/app/{key}"), "before").await.status,
        201
    );
    // An operation that hits a storage error.
    let r: Result<(), EngineError> = engine
        .write(2, 0, |_| {
            Err(OpError::Storage(redb::Error::Corrupted(
                "injected I/O failure".into(),
            )))
        })
        .await;
    assert!(r.is_err());
    let r = c.put(&format!("/v1/kv/app/{key}"), "after").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "shard_unavailable");
    assert!(r.header("retry-after").is_some());
    // Reads still work and show the last committed value.
    assert_eq!(c.get(&format!("/v1/kv/app/{key}")).await.text(), "before");
    let r = c.get("/readyz").await;
    assert_eq!(r.status, 503);
    let j = r.json();
    assert_eq!(j["problems"][0]["shard"], 2);
    assert!(j["problems"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("injected"));
    s.stop().await;
}

#[tokio::test]
async fn a_panicking_operation_rolls_back_its_batch_only() {
    let s = TestServer::start().await;
    let engine = s.store.engine().clone();
    let r: Result<(), EngineError> = engine
        .write(1, 0, |_| -> Result<(), OpError<EngineError>> {
            panic!("bug in an operation")
        })
        .await;
    assert!(r.is_err());
    let key = key_on_shard(&s.store, "app", 1);
    let mut c = s.client().await;
    assert_eq!(c.put(&format!("/v1/kv/app/{key}"), "v").await.status, 201);
    assert_eq!(c.get("/readyz").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn corrupt_record_is_an_error_naming_shard_and_key() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.put("/v1/kv/app/good", "fine").await;
    c.put("/v1/kv/app/victim", "payload").await;
    let sk = shardbox::kv::stored_key("app", "victim");
    let shard = s.store.engine().shard_for(&sk);
    // Flip a payload byte on disk, keeping the stored crc.
    s.store
        .engine()
        .write(shard, 0, move |ctx| {
            use redb::ReadableTable;
            let mut t = ctx.table(shardbox::kv::KV)?;
            let mut bytes = t.get(sk.as_slice())?.unwrap().value().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x20;
            t.insert(sk.as_slice(), bytes.as_slice())?;
            Ok::<_, OpError<EngineError>>(())
        })
        .await
        .unwrap();
    let r = c.get("/v1/kv/app/victim").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.error_code(), "corrupt_record");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!("shard {shard}")) && msg.contains("victim"),
        "{msg}"
    );
    let r = c.get("/metrics").await;
    assert!(
        r.text().contains("shardbox_corrupt_records_total 1")
            || r.text().contains("shardbox_corrupt_records_total 2")
    );
    assert_eq!(c.get("/v1/kv/app/good").await.text(), "fine");
    drop(c);
    let dir = s.dir.clone();
    let _tmp = s.stop().await;

    // `shardbox check` names it and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardbox"))
        .args(["check", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("DAMAGED") && stdout.contains("victim"),
        "{stdout}"
    );
}

#[tokio::test]
async fn shard_count_mismatch_and_double_open_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("d"));
    config.engine.shards = 4;
    let store = Store::open(config.clone()).unwrap();

    let err = Store::open(config.clone()).err().unwrap().to_string();
    assert!(err.contains("already in use"), "{err}");
    store.close();
    drop(store);

    let mut other = config.clone();
    other.engine.shards = 8;
    let err = Store::open(other).err().unwrap().to_string();
    assert!(
        err.contains("holds 4 shards") && err.contains("--shards 4"),
        "{err}"
    );

    // Leaving the count unset uses the manifest's.
    let mut unset = config.clone();
    unset.engine.shards = 0;
    let store = Store::open(unset).unwrap();
    assert_eq!(store.engine().shards().len(), 4);
    store.close();
}

#[tokio::test]
async fn periodic_durability_serves_and_persists_on_clean_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = TestServer::start_in(dir.clone(), |c| {
        c.engine.durability = shardbox::config::DurabilityMode::parse("periodic:50").unwrap()
    })
    .await;
    let mut c = s.client().await;
    for i in 0..100 {
        assert_eq!(c.put(&format!("/v1/kv/app/{i}"), "v").await.status, 201);
    }
    drop(c);
    s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut c = s.client().await;
    for i in 0..100 {
        assert_eq!(c.get(&format!("/v1/kv/app/{i}")).await.status, 200);
    }
    drop(c);
    s.stop().await;
}

/// The committed fixture under tests/fixtures/v1 was written by this format version. If this
/// test fails, a change broke the on-disk format: keep old data readable instead.
#[tokio::test]
async fn reads_the_v1_format_fixture() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    common::copy_data_dir(&src, &dir);
    let report = shardbox::check::run(&dir, false).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    assert_eq!(report.records, 4);

    let config = Config::with_data_dir(&dir);
    let clock = std::sync::Arc::new(shardbox::ManualClock::new(common::T0_MS));
    let store = Store::open_with_clock(config, clock).unwrap();
    assert_eq!(store.engine().shards().len(), 2);
    assert_eq!(store.engine().manifest().hash_seed, FIXTURE_SEED);
    let kv = store.kv();
    let v = kv.get("fixture", "plain").unwrap().unwrap();
    assert_eq!(v.payload, &b"hello, v1"[..]);
    assert_eq!(v.content_type.as_deref(), Some("text/plain"));
    let v = kv.get("fixture", "dir/with space/ключ").unwrap().unwrap();
    assert_eq!(v.payload, vec![0u8, 1, 2, 255]);
    assert_eq!(v.content_type, None);
    let v = kv.get("fixture", "counter").unwrap().unwrap();
    assert_eq!(v.payload, &b"42"[..]);
    let v = kv.get("fixture", "expiring").unwrap().unwrap();
    assert_eq!(v.expires_at_ms, Some(FIXTURE_EXPIRY_MS));
    store.close();
}

const FIXTURE_SEED: u64 = 0x5eed_0001;
const FIXTURE_EXPIRY_MS: u64 = 4_102_444_800_000; // 2100-01-01

/// Regenerates tests/fixtures/v1. Run only when the format version changes:
/// `cargo test --test engine write_v1_fixture -- --ignored`, then add a new fixture directory
/// instead of replacing the old one.
#[tokio::test]
#[ignore]
async fn write_v1_fixture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let m = shardbox::engine::manifest::Manifest {
        format_version: 1,
        shards: 2,
        hash_seed: FIXTURE_SEED,
        created_at_ms: common::T0_MS,
        created_by: "shardbox fixture".into(),
    };
    m.write_new(&dir).unwrap();
    let mut config = Config::with_data_dir(&dir);
    config.engine.shard_cache_bytes = 1 << 20;
    let clock = std::sync::Arc::new(shardbox::ManualClock::new(common::T0_MS));
    let store = Store::open_with_clock(config, clock).unwrap();
    let kv = store.kv();
    let opts = shardbox::kv::PutOptions {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    kv.put("fixture", "plain", b"hello, v1".to_vec(), opts)
        .await
        .unwrap();
    kv.put(
        "fixture",
        "dir/with space/ключ",
        vec![0, 1, 2, 255],
        Default::default(),
    )
    .await
    .unwrap();
    kv.incr("fixture", "counter", 42, None).await.unwrap();
    let opts = shardbox::kv::PutOptions {
        ttl_ms: Some(FIXTURE_EXPIRY_MS - common::T0_MS),
        ..Default::default()
    };
    kv.put("fixture", "expiring", b"later".to_vec(), opts)
        .await
        .unwrap();
    store.close();
    drop(store);
    let _ = std::fs::remove_file(dir.join("LOCK"));
}

/// `shardbox check` walks every domain (defect: it counted KV records only, so a store of jobs,
/// events and schedules reported "0 records: OK"), and finds a job without its index entry and a
/// bucket whose counter disagrees with its events.
#[tokio::test]
async fn check_verifies_every_domain() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for body in [r#"{"payload":1}"#, r#"{"payload":2}"#] {
        let r = c
            .send("POST", "/v1/queues/emails/jobs", &[], body.to_string())
            .await;
        assert_eq!(r.status, 201);
    }
    let r = c
        .send(
            "PUT",
            "/v1/schedules/nightly",
            &[],
            r#"{"cron":"0 6 * * *","queue":"emails","payload":1}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        c.send("PUT", "/v1/streams/clicks", &[], r#"{"bucket":"1h"}"#)
            .await
            .status,
        201
    );
    let r = c
        .send(
            "POST",
            "/v1/streams/clicks/events",
            &[("content-type", "application/x-ndjson")],
            "{\"data\":1}\n{\"data\":2}\n",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    drop(c);
    let dir = s.dir.clone();
    let _tmp = s.stop().await;

    let report = shardbox::check::run(&dir, false).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    // 2 jobs + 1 queue record + 1 schedule + 1 stream + 1 bucket + 2 events.
    assert_eq!(report.records, 8, "{}", report.summary());

    // Break one job's index entry and one bucket's contents, through the store itself.
    let store = Store::open(Config::with_data_dir(&dir)).unwrap();
    let e = store.engine();
    e.write(e.shard_for(b"queue\0emails"), 0, |ctx| {
        use redb::ReadableTable;
        let mut t = ctx.table(shardbox::queue::model::Q_INDEX)?;
        let first = t.iter()?.next().unwrap()?.0.value().to_vec();
        t.remove(first.as_slice())?;
        Ok::<_, OpError<EngineError>>(())
    })
    .await
    .unwrap();
    e.write(e.shard_for(b"stream\0clicks"), 0, |ctx| {
        use redb::ReadableTable;
        let start = {
            let buckets = ctx.table(shardbox::events::model::EV_BUCKETS)?;
            let (k, _) = buckets.iter()?.next().unwrap()?;
            let k = k.value().to_vec();
            u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())
        };
        let name = shardbox::events::model::bucket_table("clicks", start);
        let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(&name);
        let mut t = ctx.table(def)?;
        let first = t.iter()?.next().unwrap()?.0.value().to_vec();
        t.remove(first.as_slice())?;
        Ok::<_, OpError<EngineError>>(())
    })
    .await
    .unwrap();
    store.close();
    drop(store);
    let report = shardbox::check::run(&dir, false).unwrap();
    let text = report.summary();
    assert!(!report.is_clean(), "{text}");
    assert!(
        text.contains("queue \"emails\" job") && text.contains("no index entry"),
        "{text}"
    );
    assert!(
        text.contains("ev/clicks/") && text.contains("counts 2 events but holds 1"),
        "{text}"
    );
}

/// A stream delete is several commits (at most `trim_buckets_max` buckets each); one that stops
/// between them (crash, shutdown, client gone) leaves the stream's totals equal to what its
/// buckets still hold, so reads and `shardbox check` agree (invariant 15).
#[tokio::test]
async fn a_stream_delete_cut_short_leaves_consistent_totals() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let t0 = common::T0_MS;
    let r = c
        .send("PUT", "/v1/streams/cut", &[], r#"{"bucket":"1h"}"#)
        .await;
    assert_eq!(r.status, 201);
    let body: String = (1..=3)
        .map(|h| format!("{{\"ts\":{},\"data\":{h}}}\n", t0 - h * 3_600_000))
        .collect();
    let r = c
        .send(
            "POST",
            "/v1/streams/cut/events",
            &[("content-type", "application/x-ndjson")],
            body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // One commit of the delete: one bucket of three.
    let e = s.store.engine().clone();
    let (dropped, more) = e
        .write(e.shard_for(b"stream\0cut"), 0, |ctx| {
            shardbox::events::apply::drop_stream(ctx, "cut", 1)
        })
        .await
        .unwrap();
    assert_eq!((dropped, more), (1, true));
    drop(e);
    let info = c.get("/v1/streams/cut").await.json();
    assert_eq!(info["events"], 2, "{info}");
    drop(c);
    let dir = s.dir.clone();
    let _tmp = s.stop().await;
    let report = shardbox::check::run(&dir, false).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
}
