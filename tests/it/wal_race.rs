//! No read returns data whose log record is not yet on disk. The log's sync is held at a
//! failpoint (process-wide: the test runs alone, in a process of its own), a write is left pending
//! behind it, and every read path must still show the state before that write; once the sync
//! is released, the write is acknowledged and visible.

use crate::common;

use common::{Client, TestServer};
use serde_json::json;
use shardbox::testing::failpoint::{self, Action};
use std::time::Duration;

async fn get(addr: std::net::SocketAddr, path: &str) -> common::Resp {
    Client::connect(addr).await.get(path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_see_a_write_whose_sync_is_pending() {
    if !common::alone() {
        return;
    }
    let s = TestServer::start().await;
    let addr = s.addr;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/race/k", "old").await.status, 201);
    let r = c
        .post_json("/v1/queues/rq/jobs", json!({"payload": 1}))
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .post_json("/v1/streams/rs/events", json!({"data": 1}))
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .send(
            "PUT",
            "/v1/cache/rc/x?ttl=1h",
            &[("cache-tag", "t")],
            "cached",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // Hold the next sync: the writes below reach the log (or wait behind the held batch in their
    // shard's queue) but not the disk. The guard releases it even if an assertion fails.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            failpoint::clear("wal.sync");
        }
    }
    let release = Release;
    failpoint::set("wal.sync", Action::Pause);
    let mut pending = Vec::new();
    for (method, path, body) in [
        ("PUT", "/v1/kv/race/k", "new".to_string()),
        (
            "POST",
            "/v1/queues/rq/jobs",
            json!({"payload": 2}).to_string(),
        ),
        (
            "POST",
            "/v1/streams/rs/events",
            json!({"data": 2}).to_string(),
        ),
        (
            "POST",
            "/v1/cache/rc:purge",
            json!({"tags": ["t"]}).to_string(),
        ),
    ] {
        pending.push(tokio::spawn(async move {
            Client::connect(addr)
                .await
                .send(method, path, &[], body)
                .await
        }));
    }
    // Wait until a write is written to the log and stuck in the held sync; give the others
    // time to reach their writers.
    let engine = s.store.engine().clone();
    common::eventually(10, "a write reaches the log", || {
        let e = engine.clone();
        async move { (e.wal().written_lsn() > e.wal().durable_lsn()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for p in &pending {
        assert!(!p.is_finished(), "a write was acknowledged before its sync");
    }
    // Every read path still shows the state before the pending writes.
    for _ in 0..20 {
        assert_eq!(get(addr, "/v1/kv/race/k").await.text(), "old");
        let batch = Client::connect(addr)
            .await
            .post_json("/v1/kv/race:batchGet", json!({"keys": ["k"]}))
            .await
            .json();
        assert_eq!(batch["items"]["k"]["value_b64"], "b2xk", "{batch}"); // "old"
        assert_eq!(
            get(addr, "/v1/kv/race?prefix=k").await.json()["keys"][0]["revision"],
            1
        );
        assert_eq!(get(addr, "/v1/queues/rq").await.json()["ready"], 1);
        assert_eq!(
            get(addr, "/v1/queues/rq/jobs?state=ready").await.json()["jobs"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            get(addr, "/v1/streams/rs/events").await.json()["events"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(get(addr, "/v1/streams/rs").await.json()["events"], 1);
        assert_eq!(
            get(addr, "/v1/cache/rc/x").await.status,
            200,
            "the purge is not visible yet"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Release the sync: the writes are acknowledged and visible.
    drop(release);
    for p in pending {
        let r = p.await.unwrap();
        assert!(r.status < 300, "{} {}", r.status, r.text());
    }
    assert_eq!(c.get("/v1/kv/race/k").await.text(), "new");
    assert_eq!(c.get("/v1/queues/rq").await.json()["ready"], 2);
    assert_eq!(c.get("/v1/streams/rs").await.json()["events"], 2);
    assert_eq!(c.get("/v1/cache/rc/x").await.status, 404);
    drop(c);
    s.stop().await;
}
