//! The cache HTTP contract against a real server on 127.0.0.1:0 (real foyer hybrid cache with a
//! disk tier under the data dir) with an injected clock.

use crate::common;

use bytes::Bytes;
use common::{Client, Resp, TestServer};
use std::time::Duration;

const S: u64 = 1000;

/// A server whose XFetch is off, so fresh hits never hand out leases at random.
async fn server() -> TestServer {
    TestServer::start_with(|c| c.cache.cache_xfetch_beta = 0.0).await
}

async fn put(c: &mut Client, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    c.send("PUT", path, headers, body.to_string()).await
}

fn status(r: &Resp) -> String {
    r.header("cache-status").unwrap_or_default().to_string()
}

fn lease(r: &Resp) -> Option<String> {
    r.header("x-cache-fill").map(str::to_string)
}

#[tokio::test]
async fn ttl_swr_and_sie_windows_follow_the_clock() {
    let s = server().await;
    let mut c = s.client().await;
    let r = put(
        &mut c,
        "/v1/cache/web/home?ttl=10s&swr=5s&sie=60s",
        &[("content-type", "text/html")],
        "<h1>v1</h1>",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // Fresh: a memory hit, no lease.
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>v1</h1>");
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(status(&r), "shardbox; hit; ttl=10; detail=memory");
    assert_eq!(r.header("age"), Some("0"));
    assert_eq!(lease(&r), None);
    s.clock.advance_ms(3 * S);
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.header("age"), Some("3"));

    // Stale-while-revalidate: the stale value, and exactly one caller gets the fill lease.
    s.clock.advance_ms(8 * S); // 11 s
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>v1</h1>");
    assert!(status(&r).contains("hit; fwd=stale"), "{}", status(&r));
    let token = lease(&r).expect("first stale reader gets the lease");
    assert_ne!(token, "pending");
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.status, 200);
    assert_eq!(lease(&r).as_deref(), Some("pending"));

    // Past swr, within sie, no failure reported: a miss (the fill is still pending).
    s.clock.advance_ms(5 * S); // 16 s
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "cache_miss");
    assert_eq!(status(&r), "shardbox; fwd=miss");
    assert_eq!(lease(&r).as_deref(), Some("pending"));

    // The refresh fails: within sie the stale value is served again, and a new lease is
    // offered so somebody retries.
    let r = c
        .post_json(
            "/v1/cache/web:fillError",
            serde_json::json!({"key": "home", "token": token}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["serving_stale"], true);
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>v1</h1>");
    assert!(status(&r).contains("fwd=stale"), "{}", status(&r));
    let retry = lease(&r).expect("a retry lease");
    assert_ne!(retry, "pending");
    // The same token cannot report twice.
    let r = c
        .post_json(
            "/v1/cache/web:fillError",
            serde_json::json!({"key": "home", "token": token}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "fill_lease_invalid");

    // Past sie: gone. The retry lease has expired too, so this caller gets a new one.
    s.clock.advance_ms(60 * S); // 76 s
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.status, 404);
    let t = lease(&r).expect("a new lease once the old one expired");
    assert_ne!(t, "pending");

    // Completing the fill stores a fresh value.
    let r = put(
        &mut c,
        "/v1/cache/web/home?ttl=10s",
        &[("x-cache-fill", &t)],
        "<h1>v2</h1>",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = c.get("/v1/cache/web/home").await;
    assert_eq!(r.text(), "<h1>v2</h1>");
    assert_eq!(status(&r), "shardbox; hit; ttl=10; detail=memory");
    s.stop().await;
}

#[tokio::test]
async fn fill_leases_are_checked_and_cancelled_by_delete() {
    let s = server().await;
    let mut c = s.client().await;
    let r = c.get("/v1/cache/ns/k").await;
    assert_eq!(r.status, 404);
    let token = lease(&r).unwrap();
    assert_eq!(token.len(), 32);
    assert_eq!(
        lease(&c.get("/v1/cache/ns/k").await).as_deref(),
        Some("pending")
    );
    // A wrong token is refused and nothing is stored.
    let r = put(
        &mut c,
        "/v1/cache/ns/k?ttl=1m",
        &[("x-cache-fill", "nope")],
        "x",
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "fill_lease_invalid");
    assert_eq!(c.get("/v1/cache/ns/k").await.status, 404);
    // The right one completes the fill; reusing it is refused.
    let r = put(
        &mut c,
        "/v1/cache/ns/k?ttl=1m",
        &[("x-cache-fill", &token)],
        "v",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(c.get("/v1/cache/ns/k").await.text(), "v");
    let r = put(
        &mut c,
        "/v1/cache/ns/k?ttl=1m",
        &[("x-cache-fill", &token)],
        "w",
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(c.get("/v1/cache/ns/k").await.text(), "v");

    // DELETE removes the value and cancels a pending fill: its late PUT cannot land stale data.
    assert_eq!(c.delete("/v1/cache/ns/k").await.status, 204);
    let r = c.get("/v1/cache/ns/k").await;
    assert_eq!(r.status, 404);
    let t2 = lease(&r).unwrap();
    assert_eq!(c.delete("/v1/cache/ns/k").await.status, 204);
    let r = put(
        &mut c,
        "/v1/cache/ns/k?ttl=1m",
        &[("x-cache-fill", &t2)],
        "old",
    )
    .await;
    assert_eq!(r.status, 409);
    let r = c.get("/v1/cache/ns/k").await;
    assert_eq!(r.status, 404);
    assert_ne!(lease(&r).as_deref(), Some("pending"));

    // A lease expires after cache_fill_lease_ms (default 10 s) and is granted again.
    let t3 = lease(&r).unwrap();
    s.clock.advance_ms(11 * S);
    let r = c.get("/v1/cache/ns/k").await;
    let t4 = lease(&r).unwrap();
    assert!(t4 != "pending" && t4 != t3);
    let r = put(
        &mut c,
        "/v1/cache/ns/k?ttl=1m",
        &[("x-cache-fill", &t3)],
        "late",
    )
    .await;
    assert_eq!(r.status, 409);

    let st = c.get("/v1/cache/ns:stats").await.json();
    assert_eq!(st["counters"]["fills_completed"], 1);
    assert!(st["counters"]["fills_granted"].as_u64().unwrap() >= 4);
    s.stop().await;
}

#[tokio::test]
async fn purges_hide_exactly_what_they_cover() {
    let s = server().await;
    let mut c = s.client().await;
    for (path, tags) in [
        ("/v1/cache/shop/a?ttl=1h", "x"),
        ("/v1/cache/shop/b?ttl=1h", "x, y"),
        ("/v1/cache/shop/c?ttl=1h&tags=y", ""),
        ("/v1/cache/shop/d?ttl=1h", ""),
        ("/v1/cache/blog/e?ttl=1h", "x"),
    ] {
        let h: Vec<(&str, &str)> = if tags.is_empty() {
            vec![]
        } else {
            vec![("cache-tag", tags)]
        };
        assert_eq!(put(&mut c, path, &h, "v").await.status, 204);
    }
    let r = c
        .post_json("/v1/cache/shop:purge", serde_json::json!({"tags": ["x"]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"purged": "tags"}));
    for (key, hit) in [
        ("shop/a", false),
        ("shop/b", false),
        ("shop/c", true),
        ("shop/d", true),
        ("blog/e", true),
    ] {
        let r = c.get(&format!("/v1/cache/{key}")).await;
        assert_eq!(r.status == 200, hit, "{key}: {}", r.status);
    }
    // Written after the purge: current again.
    assert_eq!(
        put(&mut c, "/v1/cache/shop/a?ttl=1h&tags=x", &[], "v2")
            .await
            .status,
        204
    );
    assert_eq!(c.get("/v1/cache/shop/a").await.text(), "v2");

    let r = c
        .post_json("/v1/cache/shop:purge", serde_json::json!({"all": true}))
        .await;
    assert_eq!(r.json(), serde_json::json!({"purged": "namespace"}));
    for (key, hit) in [
        ("shop/a", false),
        ("shop/c", false),
        ("shop/d", false),
        ("blog/e", true),
    ] {
        assert_eq!(
            c.get(&format!("/v1/cache/{key}")).await.status == 200,
            hit,
            "{key}"
        );
    }
    let st = c.get("/v1/cache/shop:stats").await.json();
    assert_eq!(st["generation"], 1);
    assert_eq!(st["purged_tags"], 1);
    assert_eq!(st["counters"]["purges"], 2);

    // Bad purge bodies say what to send.
    for body in [
        serde_json::json!({}),
        serde_json::json!({"tags": []}),
        serde_json::json!({"tags": ["a"], "all": true}),
        serde_json::json!({"tags": ["has,comma"]}),
        serde_json::json!({"what": 1}),
    ] {
        let r = c.post_json("/v1/cache/shop:purge", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error_code(), "bad_request");
    }
    s.stop().await;
}

#[tokio::test]
async fn purged_entries_stay_gone_after_a_clean_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    put(&mut c, "/v1/cache/ns/a?ttl=1h&tags=t", &[], "a").await;
    put(&mut c, "/v1/cache/ns/b?ttl=1h", &[], "b").await;
    c.post_json("/v1/cache/ns:purge", serde_json::json!({"tags": ["t"]}))
        .await;
    c.post_json("/v1/cache/ns:purge", serde_json::json!({"all": true}))
        .await;
    c.post_json("/v1/cache/ns:purge", serde_json::json!({"all": true}))
        .await;
    assert_eq!(c.get("/v1/cache/ns/a").await.status, 404);
    // An entry written after the purges, pushed to the disk tier, is not carried over either:
    // the disk tier starts empty.
    put(&mut c, "/v1/cache/ns/c?ttl=1h", &[], "c").await;
    s.store.cache().await.unwrap().flush_disk().await;
    s.stop().await;

    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    for k in ["a", "b", "c"] {
        assert_eq!(c.get(&format!("/v1/cache/ns/{k}")).await.status, 404, "{k}");
    }
    // The generations came back from the shard.
    let st = c.get("/v1/cache/ns:stats").await.json();
    assert_eq!(st["generation"], 2);
    assert_eq!(st["purged_tags"], 1);
    // New entries work, and a further purge still hides them.
    put(&mut c, "/v1/cache/ns/a?ttl=1h&tags=t", &[], "a2").await;
    assert_eq!(c.get("/v1/cache/ns/a").await.text(), "a2");
    c.post_json("/v1/cache/ns:purge", serde_json::json!({"tags": ["t"]}))
        .await;
    assert_eq!(c.get("/v1/cache/ns/a").await.status, 404);
    s.stop().await;
    drop(tmp);
}

#[tokio::test]
async fn purges_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (mut child, addr) = common::spawn::spawn_shardbox(&dir, &[]).expect("spawn");
    let mut c = Client::connect(addr).await;
    for i in 0..50 {
        let r = put(
            &mut c,
            &format!("/v1/cache/ns/k{i}?ttl=1h&tags=g{}", i % 2),
            &[],
            "v",
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let r = c
        .post_json("/v1/cache/ns:purge", serde_json::json!({"tags": ["g0"]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/v1/cache/ns/k0").await.status, 404);
    assert_eq!(c.get("/v1/cache/ns/k1").await.status, 200);
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, addr) = common::spawn::spawn_shardbox(&dir, &[]).expect("respawn");
    let mut c = Client::connect(addr).await;
    for i in 0..50 {
        let r = c.get(&format!("/v1/cache/ns/k{i}")).await;
        assert_eq!(r.status, 404, "k{i} came back after kill -9");
    }
    let st = c.get("/v1/cache/ns:stats").await.json();
    assert_eq!(st["purged_tags"], 1, "{st}");
    // An entry written now under g0 is current (the loaded generation is the persisted one).
    put(&mut c, "/v1/cache/ns/k0?ttl=1h&tags=g0", &[], "new").await;
    assert_eq!(c.get("/v1/cache/ns/k0").await.text(), "new");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_of_500_gets_grants_one_lease_and_all_waiters_get_the_fill() {
    let s = server().await;
    let mut c = s.client().await;
    put(&mut c, "/v1/cache/hot/key?ttl=1s", &[], "old").await;
    s.clock.advance_ms(2 * S); // expired, no swr: a miss for everyone
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Resp>(512);
    for _ in 0..500 {
        let tx = tx.clone();
        let addr = s.addr;
        tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let r = c.get("/v1/cache/hot/key?wait=10s").await;
            let _ = tx.send(r).await;
        });
    }
    drop(tx);
    let mut tokens = 0;
    let mut filled = 0;
    let mut collapsed = 0;
    let mut n = 0;
    while let Some(r) = rx.recv().await {
        n += 1;
        match r.status {
            404 => {
                let t = lease(&r).expect("a miss carries the lease state");
                assert_ne!(t, "pending", "a waiter gave up before the fill landed");
                tokens += 1;
                // Fill only once every other caller is parked on the lease, so each of them
                // provably waited for this fill (rather than arriving after it).
                let deadline = std::time::Instant::now() + Duration::from_secs(8);
                loop {
                    let st = c.get("/v1/cache:stats").await.json();
                    if st["waiters"] == 499 || std::time::Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let p = put(
                    &mut c,
                    "/v1/cache/hot/key?ttl=1h",
                    &[("x-cache-fill", &t)],
                    "fresh",
                )
                .await;
                assert_eq!(p.status, 204);
            }
            200 => {
                assert_eq!(r.body, Bytes::from_static(b"fresh"));
                filled += 1;
                if status(&r).contains("collapsed") {
                    collapsed += 1;
                }
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(n, 500);
    assert_eq!(tokens, 1, "exactly one fill lease");
    assert_eq!(filled, 499);
    assert_eq!(collapsed, 499, "every other caller waited for the one fill");
    let st = c.get("/v1/cache:stats").await.json();
    assert_eq!(st["counters"]["fills_granted"], 1, "{st}");
    assert_eq!(st["counters"]["waits_served"], collapsed, "{st}");
    s.stop().await;
}

#[tokio::test]
async fn xfetch_refreshes_hot_keys_early_and_beta_zero_turns_it_off() {
    // beta 0: never early, even at 99% of the TTL.
    let s = server().await;
    let mut c = s.client().await;
    put(&mut c, "/v1/cache/x/k?ttl=100s", &[], "v").await;
    s.clock.advance_ms(99 * S);
    for _ in 0..50 {
        let r = c.get("/v1/cache/x/k").await;
        assert_eq!(r.status, 200);
        assert_eq!(lease(&r), None);
    }
    s.stop().await;

    // beta 1, 95% through the TTL (remaining 5 s, delta 10 s): P(early) = 1 - e^-0.5 per read,
    // so 40 reads get it with probability 1 - 0.61^40; after that the lease is taken.
    let s = TestServer::start_with(|c| c.cache.cache_xfetch_beta = 1.0).await;
    let mut c = s.client().await;
    put(&mut c, "/v1/cache/x/k?ttl=100s", &[], "v").await;
    s.clock.advance_ms(95 * S);
    let mut leases = Vec::new();
    for _ in 0..40 {
        let r = c.get("/v1/cache/x/k").await;
        assert_eq!(
            r.status, 200,
            "a fresh hit is served while refreshing early"
        );
        assert!(!status(&r).contains("stale"));
        if let Some(t) = lease(&r) {
            leases.push(t);
        }
    }
    assert_eq!(
        leases.len(),
        1,
        "one early-refresh lease, then none: {leases:?}"
    );
    let r = put(
        &mut c,
        "/v1/cache/x/k?ttl=100s",
        &[("x-cache-fill", &leases[0])],
        "v2",
    )
    .await;
    assert_eq!(r.status, 204);
    s.clock.advance_ms(10 * S); // the old entry would have expired by now
    let r = c.get("/v1/cache/x/k").await;
    assert_eq!(r.text(), "v2");
    let st = c.get("/v1/cache:stats").await.json();
    assert_eq!(st["counters"]["early_refreshes"], 1);
    assert_eq!(st["counters"]["misses"], 0, "no request saw the miss");
    s.stop().await;
}

#[tokio::test]
async fn disk_tier_holds_four_times_the_memory() {
    let s = TestServer::start_with(|c| {
        c.cache.cache_xfetch_beta = 0.0;
        c.cache.cache_memory_bytes = 1 << 20;
        c.cache.cache_disk_bytes = 32 << 20;
        c.cache.cache_disk_block_bytes = 1 << 20;
        c.cache.cache_value_bytes_max = 64 << 10;
    })
    .await;
    let mut c = s.client().await;
    let n = 1024; // 1024 × 4 KiB = 4 MiB = 4× the memory tier
    let value = |i: usize| -> String {
        let seed = format!("{i:08}");
        seed.repeat(512)
    };
    for i in 0..n {
        let r = put(&mut c, &format!("/v1/cache/d/k{i}?ttl=1h"), &[], &value(i)).await;
        assert_eq!(r.status, 204);
    }
    s.store.cache().await.unwrap().flush_disk().await;
    let mut disk = 0;
    for i in 0..n {
        let r = c.get(&format!("/v1/cache/d/k{i}")).await;
        assert_eq!(r.status, 200, "k{i} lost: {}", r.text());
        assert_eq!(r.text(), value(i), "k{i} corrupted");
        if status(&r).ends_with("detail=disk") {
            disk += 1;
        }
    }
    let st = c.get("/v1/cache:stats").await.json();
    assert!(disk >= n / 2, "only {disk} of {n} from disk: {st}");
    assert_eq!(st["counters"]["hits_disk"], disk as u64);
    assert!(st["evictions"].as_u64().unwrap() > 0);
    assert!(
        st["disk"]["written_bytes"].as_u64().unwrap() >= 2 << 20,
        "{st}"
    );
    assert!(st["memory"]["bytes"].as_u64().unwrap() <= 1 << 20);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let s = TestServer::start_with(|c| {
        c.cache.cache_value_bytes_max = 1000;
        c.cache.cache_tags_max = 2;
    })
    .await;
    let mut c = s.client().await;
    let big = "x".repeat(1001);
    let r = put(&mut c, "/v1/cache/ns/k?ttl=1m", &[], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert!(r.text().contains("cache_value_bytes_max"), "{}", r.text());
    assert_eq!(c.get("/v1/cache/ns/k").await.status, 404);
    for (path, headers, why) in [
        ("/v1/cache/ns/k", vec![], "ttl is required"),
        ("/v1/cache/ns/k?ttl=soon", vec![], "ttl"),
        ("/v1/cache/ns/k?ttl=0s", vec![], "ttl must be"),
        ("/v1/cache/ns/k?ttl=1m&swr=x", vec![], "swr"),
        ("/v1/cache/ns/k?ttl=1m&tags=a,b,c", vec![], "cache_tags_max"),
        ("/v1/cache/ns/k?ttl=1m", vec![("cache-tag", "a b")], "tag"),
        ("/v1/cache/bad%20ns/k?ttl=1m", vec![], "namespace"),
    ] {
        let r = put(&mut c, path, &headers, "v").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(why), "{path}: {}", r.text());
    }
    let r = c.send("POST", "/v1/cache/ns/k", &[], Bytes::new()).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    let r = c
        .post_json("/v1/cache/ns:nope", serde_json::json!({}))
        .await;
    assert_eq!(r.status, 404);
    let r = c.send("GET", "/v1/cache/ns:purge", &[], Bytes::new()).await;
    assert_eq!(r.status, 405);
    let r = c.get("/v1/cache/ns").await;
    assert_eq!(r.status, 404);
    let r = c
        .post_json(
            "/v1/cache/ns:fillError",
            serde_json::json!({"key": "k", "token": "zzz"}),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = c
        .post_json("/v1/cache/ns:fillError", serde_json::json!({"key": "k"}))
        .await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

#[test]
fn a_value_larger_than_a_disk_block_is_a_config_error() {
    let mut c = shardbox::Config::with_data_dir("/tmp/unused");
    c.cache.cache_disk_block_bytes = 1 << 20;
    c.cache.cache_value_bytes_max = 1 << 20;
    let e = c.validate().unwrap_err();
    assert!(e.contains("cache_disk_block_bytes"), "{e}");
    c.cache.cache_disk_bytes = 0; // memory only: no block limit
    c.validate().unwrap();
    let flags = [("cache_eviction".to_string(), "fifo".to_string())];
    let e = shardbox::Config::resolve(None, std::iter::empty(), &flags).unwrap_err();
    assert!(e.contains("cache_eviction `fifo`"), "{e}");
}

#[tokio::test]
async fn wait_times_out_when_nobody_fills() {
    let s = server().await;
    let mut c = s.client().await;
    let r = c.get("/v1/cache/w/k").await;
    assert!(lease(&r).is_some());
    let r = c.get("/v1/cache/w/k?wait=300ms").await;
    assert_eq!(r.status, 404);
    assert_eq!(lease(&r).as_deref(), Some("pending"));
    let st = c.get("/v1/cache/w:stats").await.json();
    assert_eq!(st["counters"]["waits_timed_out"], 1);
    s.stop().await;
}

#[tokio::test]
async fn a_full_lease_table_answers_misses_without_a_lease_until_one_expires() {
    let s = TestServer::start_with(|c| {
        c.cache.cache_xfetch_beta = 0.0;
        c.cache.cache_fill_leases_max = 2;
    })
    .await;
    let mut c = s.client().await;
    assert!(lease(&c.get("/v1/cache/l/a").await).is_some());
    s.clock.advance_ms(5 * S);
    assert!(lease(&c.get("/v1/cache/l/b").await).is_some());
    // Full: a miss is still answered (fill with a plain PUT), but without a lease.
    let r = c.get("/v1/cache/l/c").await;
    assert_eq!(r.status, 404);
    assert_eq!(lease(&r), None);
    assert_eq!(lease(&c.get("/v1/cache/l/d").await), None);
    // a's lease (granted at 0 s, 10 s long) has expired at 11 s: its slot is reclaimed.
    s.clock.advance_ms(6 * S);
    let t = lease(&c.get("/v1/cache/l/c").await).expect("a lease once one expired");
    assert_ne!(t, "pending");
    assert_eq!(
        lease(&c.get("/v1/cache/l/d").await),
        None,
        "b's lease is still live"
    );
    let st = c.get("/v1/cache:stats").await.json();
    assert_eq!(st["fill_leases"], 2);
    // Once every lease has expired unfilled, the stats count none (issue 19: 2,005 leases were
    // counted 25 s after all had expired).
    s.clock.advance_ms(11 * S);
    let st = c.get("/v1/cache:stats").await.json();
    assert_eq!(st["fill_leases"], 0);
    s.stop().await;
}

/// `?lease=false`: a reader that will not fill takes no fill lease — on a miss it is told
/// whether a fill is pending, and the next caller that fills still gets the lease.
#[tokio::test]
async fn a_reader_that_will_not_fill_takes_no_lease() {
    let s = server().await;
    let mut c = s.client().await;
    let r = c.get("/v1/cache/pages/p?lease=false").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-cache-fill"), None, "no lease taken");
    // So the next caller gets it …
    let r = c.get("/v1/cache/pages/p").await;
    let token = r.header("x-cache-fill").expect("the lease").to_string();
    assert_ne!(token, "pending");
    // … and a reader without lease is told a fill is pending.
    let r = c.get("/v1/cache/pages/p?lease=false").await;
    assert_eq!(r.header("x-cache-fill"), Some("pending"));
    // A stale hit hands it no lease either.
    let r = put(&mut c, "/v1/cache/pages/q?ttl=1s&swr=60s", &[], "v").await;
    assert!(r.status < 300);
    s.clock.advance_ms(2 * S);
    let r = c.get("/v1/cache/pages/q?lease=false").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("cache-status")
        .is_some_and(|v| v.contains("fwd=stale")));
    assert_eq!(r.header("x-cache-fill"), None);
    let r = c.get("/v1/cache/pages/q").await;
    assert!(
        r.header("x-cache-fill").is_some(),
        "the refresh lease is still there"
    );
    // Booleans are true or false.
    let r = c.get("/v1/cache/pages/p?lease=no").await;
    assert_eq!(r.status, 400, "{}", r.text());
    s.stop().await;
}
