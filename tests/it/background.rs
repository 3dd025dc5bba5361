//! Work that runs by itself runs in the real server, from the moment it starts: the tests start
//! the server as a user does and wait for the effect, never calling the task's function.

use crate::common;

use common::{spawn::spawn_shardbox, Client};
use serde_json::json;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The reproduction: an event 3 h old, retention set to 1 h, the real binary with
/// `retention_interval_ms=1000`: the bucket goes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_buckets_in_the_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [(
        "SHARDBOX_RETENTION_INTERVAL_MS".to_string(),
        "1000".to_string(),
    )];
    let (mut child, addr) = spawn_shardbox(&tmp.path().join("data"), &env).unwrap();
    let mut c = Client::connect(addr).await;
    let r = c
        .send(
            "PUT",
            "/v1/streams/clicks",
            &[],
            json!({"bucket": "1h"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let old = now_ms() - 3 * 3_600_000;
    let r = c
        .post_json(
            "/v1/streams/clicks/events",
            json!({"ts": old, "data": {"x": 1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .post_json("/v1/streams/clicks/events", json!({"data": {"x": 2}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(c.get("/v1/streams/clicks").await.json()["events"], 2);
    let r = c
        .send(
            "PUT",
            "/v1/streams/clicks",
            &[],
            json!({"retention": "1h"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    common::eventually(20, "retention drops the 3-hour-old bucket", || async move {
        let info = Client::connect(addr)
            .await
            .get("/v1/streams/clicks")
            .await
            .json();
        (info["events"] == 1).then_some(())
    })
    .await;
    let page = c.get("/v1/streams/clicks/events").await.json();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["data"], json!({"x": 2}));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The cron reproduction in-process: `* * * * *` on a served store enqueues by itself
/// once the (injected) clock reaches the next minute.
#[tokio::test]
async fn cron_enqueues_by_itself_in_a_served_store() {
    let s = common::TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .send(
            "PUT",
            "/v1/schedules/n",
            &[],
            json!({"cron": "* * * * *", "queue": "q", "payload": 1}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["fired"], 0);
    s.clock.advance_ms(60_000);
    let addr = s.addr;
    common::eventually(10, "the schedule enqueues a job", || async move {
        let r = Client::connect(addr).await.get("/v1/queues/q").await;
        (r.status == 200 && r.json()["ready"] == 1).then_some(())
    })
    .await;
    assert_eq!(c.get("/v1/schedules/n").await.json()["fired"], 1);
    drop(c);
    s.stop().await;
}

/// The TTL sweeper reclaims expired keys by itself (reads hide them before that).
#[tokio::test]
async fn ttl_sweeper_reclaims_expired_keys_by_itself() {
    let s = common::TestServer::start_with(|c| c.kv.sweep_interval_ms = 50).await;
    let mut c = s.client().await;
    for i in 0..20 {
        let r = c.put(&format!("/v1/kv/t/k{i}?ttl=1s"), "v").await;
        assert_eq!(r.status, 201);
    }
    s.clock.advance_ms(2_000);
    let engine = s.store.engine().clone();
    common::eventually(10, "the sweeper removes every expired record", || {
        let engine = engine.clone();
        async move { (stored_records(&engine) == 0).then_some(()) }
    })
    .await;
    drop(c);
    s.stop().await;
}

/// KV records physically present in every shard (expired or not).
fn stored_records(engine: &shardbox::engine::Engine) -> usize {
    use redb::ReadableTableMetadata;
    engine
        .shards()
        .iter()
        .map(|sh| {
            let txn = sh.read().unwrap();
            let t = txn.open_table(shardbox::kv::KV).unwrap();
            t.len().unwrap() as usize
        })
        .sum()
}

/// The queue's timers run in the real binary: a delayed job becomes ready when its delay is up,
/// and a job whose worker never acks is delivered again when its lease runs out — with nobody
/// calling anything in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timers_run_by_themselves_in_the_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_shardbox(&tmp.path().join("data"), &[]).unwrap();
    let mut c = Client::connect(addr).await;
    let r = c
        .post_json("/v1/queues/t/jobs", json!({"payload": 1, "delay": "1s"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let stats = c.get("/v1/queues/t").await.json();
    assert_eq!(stats["ready"], 0, "{stats}");
    common::eventually(20, "the delayed job becomes ready", || async move {
        let stats = Client::connect(addr).await.get("/v1/queues/t").await.json();
        (stats["ready"] == 1).then_some(())
    })
    .await;
    let claimed = c
        .post_json("/v1/queues/t/claim", json!({"max": 1, "lease": "1s"}))
        .await
        .json();
    assert_eq!(claimed["jobs"].as_array().unwrap().len(), 1, "{claimed}");
    common::eventually(20, "the expired lease returns the job", || async move {
        let stats = Client::connect(addr).await.get("/v1/queues/t").await.json();
        (stats["ready"] == 1 && stats["in_flight"] == 0).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}
