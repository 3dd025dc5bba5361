//! The KV HTTP contract, driven against a real server on 127.0.0.1:0.

use crate::common;

use common::{Client, TestServer, T0_MS};
use std::collections::BTreeSet;

#[tokio::test]
async fn put_get_head_delete() {
    let s = TestServer::start().await;
    let mut c = s.client().await;

    let r = c
        .send(
            "PUT",
            "/v1/kv/app/user/1",
            &[("content-type", "text/plain")],
            "hello",
        )
        .await;
    assert_eq!(r.status, 201);
    let rev1 = r.json()["revision"].as_u64().unwrap();
    assert_eq!(r.header("etag"), Some(format!("\"{rev1}\"").as_str()));

    let r = c.get("/v1/kv/app/user/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("etag"), Some(format!("\"{rev1}\"").as_str()));
    assert!(r.header("expires").is_none());

    // Replace: 200 and a higher revision; default content type.
    let r = c.put("/v1/kv/app/user/1", "world").await;
    assert_eq!(r.status, 200);
    let rev2 = r.json()["revision"].as_u64().unwrap();
    assert!(rev2 > rev1);
    let r = c.get("/v1/kv/app/user/1").await;
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));

    let r = c.send("HEAD", "/v1/kv/app/user/1", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("5"));

    // Keys may contain '/' and percent-encoded bytes.
    let r = c.put("/v1/kv/app/a%20b%2Fc", "x").await;
    assert_eq!(r.status, 201);
    assert_eq!(c.get("/v1/kv/app/a%20b/c").await.text(), "x");

    let r = c.delete("/v1/kv/app/user/1").await;
    assert_eq!(r.status, 204);
    let r = c.get("/v1/kv/app/user/1").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    let r = c.delete("/v1/kv/app/user/1").await;
    assert_eq!(r.status, 404);

    // Namespaces are separate.
    c.put("/v1/kv/one/k", "1").await;
    assert_eq!(c.get("/v1/kv/two/k").await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn conditional_requests() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .send("PUT", "/v1/kv/app/k", &[("if-none-match", "*")], "v1")
        .await;
    assert_eq!(r.status, 201);
    let rev = r.json()["revision"].as_u64().unwrap();
    let r = c
        .send("PUT", "/v1/kv/app/k", &[("if-none-match", "*")], "v2")
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.error_code(), "precondition_failed");

    let stale = format!("\"{}\"", rev + 1000);
    let good = format!("\"{rev}\"");
    let r = c
        .send("PUT", "/v1/kv/app/k", &[("if-match", &stale)], "v2")
        .await;
    assert_eq!(r.status, 412);
    let r = c
        .send("PUT", "/v1/kv/app/k", &[("if-match", &good)], "v2")
        .await;
    assert_eq!(r.status, 200);
    let rev2 = r.json()["revision"].as_u64().unwrap();
    // The old ETag no longer matches.
    let r = c
        .send("PUT", "/v1/kv/app/k", &[("if-match", &good)], "v3")
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(c.get("/v1/kv/app/k").await.text(), "v2");

    // GET with If-None-Match: 304 on the current revision, 200 on another.
    let cur = format!("\"{rev2}\"");
    let r = c
        .send("GET", "/v1/kv/app/k", &[("if-none-match", &cur)], "")
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = c
        .send("GET", "/v1/kv/app/k", &[("if-none-match", &good)], "")
        .await;
    assert_eq!(r.status, 200);

    // If-Match on a missing key, and on DELETE.
    let r = c
        .send("PUT", "/v1/kv/app/none", &[("if-match", "*")], "x")
        .await;
    assert_eq!(r.status, 412);
    let r = c
        .send("DELETE", "/v1/kv/app/k", &[("if-match", &good)], "")
        .await;
    assert_eq!(r.status, 412);
    let r = c
        .send("DELETE", "/v1/kv/app/k", &[("if-match", &cur)], "")
        .await;
    assert_eq!(r.status, 204);

    // Malformed conditions are 400s that say what to send.
    let r = c
        .send("PUT", "/v1/kv/app/k", &[("if-match", "abc")], "x")
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("If-Match"));
    let r = c
        .send(
            "PUT",
            "/v1/kv/app/k",
            &[("if-match", "*"), ("if-none-match", "*")],
            "x",
        )
        .await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

#[tokio::test]
async fn ttl_expiry_with_injected_clock() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c.put("/v1/kv/app/session?ttl=10s", "tok").await;
    assert_eq!(r.status, 201);
    let r = c.get("/v1/kv/app/session").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-expires-at"),
        Some((T0_MS + 10_000).to_string().as_str())
    );
    assert!(r.header("expires").is_some());
    c.put("/v1/kv/app/keep", "forever").await;
    c.put("/v1/kv/app/ms?ttl=1500ms", "x").await;

    s.clock.advance_ms(9_999);
    assert_eq!(c.get("/v1/kv/app/session").await.status, 200);
    assert_eq!(c.get("/v1/kv/app/ms").await.status, 404);
    s.clock.advance_ms(1);
    // Expired keys are invisible to every read at once.
    assert_eq!(c.get("/v1/kv/app/session").await.status, 404);
    let r = c
        .post_json(
            "/v1/kv/app:batchGet",
            serde_json::json!({"keys": ["session", "keep"]}),
        )
        .await;
    assert!(r.json()["items"]["session"].is_null());
    let r = c.get("/v1/kv/app").await;
    let keys: Vec<_> = r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["keep"]);
    // An expired key counts as absent for writes.
    let r = c
        .send(
            "PUT",
            "/v1/kv/app/session",
            &[("if-none-match", "*")],
            "new",
        )
        .await;
    assert_eq!(r.status, 201);
    let r = c.delete("/v1/kv/app/ms").await;
    assert_eq!(r.status, 404);

    // The sweeper removes expired records from the store through the writer.
    c.put("/v1/kv/app/gone?ttl=1s", "x").await;
    s.clock.advance_ms(5_000);
    let before = stored_records(&s);
    let queued = shardbox::kv::sweep::sweep_once(s.store.engine(), 1000);
    assert!(queued >= 1);
    // A write to every shard queues behind the sweep, so once they return the sweep is done.
    let engine = s.store.engine();
    let mut hit = vec![false; engine.shards().len()];
    let mut written = 0;
    for i in 0.. {
        if hit.iter().all(|h| *h) {
            break;
        }
        let key = format!("{i}");
        hit[engine.shard_for(&shardbox::kv::stored_key("flush", &key))] = true;
        c.put(&format!("/v1/kv/flush/{key}"), "x").await;
        written += 1;
    }
    let after = stored_records(&s);
    // Two records had expired and were still stored: "ms" (1.5 s) and "gone" (1 s).
    assert_eq!(
        before + written - after,
        2,
        "exactly the expired records were swept"
    );
    assert_eq!(c.get("/v1/kv/app/session").await.status, 200);
    assert_eq!(c.get("/v1/kv/app/keep").await.status, 200);

    // Bad TTLs are 400s.
    assert_eq!(c.put("/v1/kv/app/x?ttl=soon", "x").await.status, 400);
    assert_eq!(c.put("/v1/kv/app/x?ttl=0", "x").await.status, 400);
    s.stop().await;
}

/// Counts stored KV records (live or not) across shards, straight from redb.
fn stored_records(s: &TestServer) -> u64 {
    use redb::ReadableTableMetadata;
    s.store
        .engine()
        .shards()
        .iter()
        .map(|sh| {
            sh.read()
                .unwrap()
                .open_table(shardbox::kv::KV)
                .unwrap()
                .len()
                .unwrap()
        })
        .sum()
}

#[tokio::test]
async fn listing_pages_are_ordered_and_complete() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut want = BTreeSet::new();
    let mut ops = Vec::new();
    for i in 0..250 {
        let k = format!("item/{i:04}");
        ops.push(serde_json::json!({"op":"put","key":k,"value_b64":"eA=="}));
        want.insert(k);
    }
    let r = c
        .post_json("/v1/kv/app:batchWrite", serde_json::json!({"ops": ops}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    c.put("/v1/kv/app/other", "x").await;
    c.put("/v1/kv/zzz/item/0001", "x").await;

    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut extra = 0;
    loop {
        let path = match &cursor {
            None => "/v1/kv/app?prefix=item/&limit=60".to_string(),
            Some(cur) => format!("/v1/kv/app?prefix=item/&limit=60&after={cur}"),
        };
        let r = c.get(&path).await;
        assert_eq!(r.status, 200);
        let j = r.json();
        for k in j["keys"].as_array().unwrap() {
            got.push(k["key"].as_str().unwrap().to_string());
            assert_eq!(k["size"], 1);
        }
        // Keys added while paging (after and before the cursor) must not disturb the walk.
        c.put(&format!("/v1/kv/app/item/9999-{extra}"), "x").await;
        c.put(&format!("/v1/kv/app/item/0000-{extra}"), "x").await;
        extra += 1;
        match j["cursor"].as_str() {
            Some(cur) => cursor = Some(cur.to_string()),
            None => break,
        }
    }
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "pages are in byte order");
    let set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "no key repeats");
    assert!(
        want.is_subset(&set),
        "every key that existed throughout was listed"
    );
    assert!(!set.contains("other"));

    // Limits.
    assert_eq!(c.get("/v1/kv/app?limit=0").await.status, 400);
    assert_eq!(c.get("/v1/kv/app?limit=1001").await.status, 400);
    assert_eq!(c.get("/v1/kv/app?limit=ten").await.status, 400);
    assert_eq!(c.get("/v1/kv/app?after=%21%21").await.status, 400);
    let r = c.get("/v1/kv/app").await;
    assert_eq!(r.json()["keys"].as_array().unwrap().len(), 100);
    s.stop().await;
}

#[tokio::test]
async fn delete_by_prefix_in_bounded_batches() {
    let s = TestServer::start_with(|c| c.kv.delete_batch_keys_max = 7).await;
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(&format!("/v1/kv/app/tmp/{i}"), "x").await;
    }
    c.put("/v1/kv/app/tmq", "keep").await;
    c.put("/v1/kv/other/tmp/1", "keep").await;
    let r = c.delete("/v1/kv/app?prefix=tmp/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["deleted"], 50);
    assert_eq!(c.get("/v1/kv/app/tmq").await.status, 200);
    assert_eq!(c.get("/v1/kv/other/tmp/1").await.status, 200);
    assert_eq!(c.get("/v1/kv/app/tmp/3").await.status, 404);

    let r = c.delete("/v1/kv/app").await;
    assert_eq!(r.status, 400);
    let r = c.delete("/v1/kv/app?all=true").await;
    assert_eq!(r.json()["deleted"], 1);
    assert_eq!(c.get("/v1/kv/other/tmp/1").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn counters() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .post_json("/v1/kv/app:incr", serde_json::json!({"key": "hits"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], 1);
    let r = c
        .post_json(
            "/v1/kv/app:incr",
            serde_json::json!({"key": "hits", "by": -5}),
        )
        .await;
    assert_eq!(r.json()["value"], -4);
    assert_eq!(c.get("/v1/kv/app/hits").await.text(), "-4");

    c.put("/v1/kv/app/text", "hello").await;
    let r = c
        .post_json("/v1/kv/app:incr", serde_json::json!({"key": "text"}))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "not_a_counter");

    c.put("/v1/kv/app/big", &i64::MAX.to_string()).await;
    let r = c
        .post_json("/v1/kv/app:incr", serde_json::json!({"key": "big"}))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "overflow");
    assert_eq!(c.get("/v1/kv/app/big").await.text(), i64::MAX.to_string());

    // A TTL applies when the counter is created (fixed-window rate limits).
    let r = c
        .post_json(
            "/v1/kv/app:incr",
            serde_json::json!({"key": "win", "ttl": "60s"}),
        )
        .await;
    assert_eq!(r.json()["value"], 1);
    s.clock.advance_ms(61_000);
    let r = c
        .post_json(
            "/v1/kv/app:incr",
            serde_json::json!({"key": "win", "ttl": "60s"}),
        )
        .await;
    assert_eq!(r.json()["value"], 1, "expired counter starts over");

    for bad in [
        serde_json::json!({"key": "x", "by": 1.5}),
        serde_json::json!({"by": 1}),
        serde_json::json!({"key": "x", "oops": 1}),
        serde_json::json!({"key": "", "by": 1}),
    ] {
        let r = c.post_json("/v1/kv/app:incr", bad).await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let r = c.send("POST", "/v1/kv/app:incr", &[], "{not json").await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

#[tokio::test]
async fn batch_get_and_write() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .post_json(
            "/v1/kv/app:batchWrite",
            serde_json::json!({"ops": [
                {"op": "put", "key": "a", "value_b64": "YQ=="},
                {"op": "put", "key": "b", "value_b64": "Yg==", "ttl": "1h"},
                {"op": "delete", "key": "nope"},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["applied"], true);
    assert_eq!(j["results"][0]["created"], true);
    assert_eq!(j["results"][2]["deleted"], false);
    let rev_a = j["results"][0]["revision"].as_u64().unwrap();

    let r = c
        .post_json(
            "/v1/kv/app:batchGet",
            serde_json::json!({"keys": ["a", "b", "c"]}),
        )
        .await;
    let j = r.json();
    assert_eq!(j["items"]["a"]["value_b64"], "YQ==");
    assert_eq!(j["items"]["a"]["revision"], rev_a);
    assert_eq!(j["items"]["b"]["value_b64"], "Yg==");
    assert!(j["items"]["c"].is_null());

    // A failed precondition applies nothing on its shard: put a key on the same shard as "a"
    // (same key, in fact) in the same batch.
    let r = c
        .post_json(
            "/v1/kv/app:batchWrite",
            serde_json::json!({"ops": [
                {"op": "put", "key": "a", "value_b64": "QQ==", "if_revision": rev_a + 999},
                {"op": "delete", "key": "a"},
            ]}),
        )
        .await;
    let j = r.json();
    assert_eq!(j["applied"], false);
    assert_eq!(j["results"][0]["error"]["code"], "precondition_failed");
    assert_eq!(j["results"][1]["error"]["code"], "aborted");
    assert_eq!(c.get("/v1/kv/app/a").await.text(), "a");

    let r = c
        .post_json(
            "/v1/kv/app:batchWrite",
            serde_json::json!({"ops": [{"op": "put", "key": "a", "value_b64": "QQ==", "if_revision": rev_a}]}),
        )
        .await;
    assert_eq!(r.json()["applied"], true);
    assert_eq!(c.get("/v1/kv/app/a").await.text(), "A");

    // Bounds and bad input.
    let keys: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let r = c
        .post_json("/v1/kv/app:batchGet", serde_json::json!({"keys": keys}))
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .post_json(
            "/v1/kv/app:batchWrite",
            serde_json::json!({"ops": [{"op": "put", "key": "x", "value_b64": "%%%"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .post_json(
            "/v1/kv/app:batchWrite",
            serde_json::json!({"ops": [{"op": "frob", "key": "x"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .post_json("/v1/kv/app:batchFrob", serde_json::json!({}))
        .await;
    assert_eq!(r.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_json_4xx() {
    let s = TestServer::start_with(|c| c.kv.value_bytes_max = 1000).await;
    let mut c = s.client().await;
    let long_key = "k".repeat(1025);
    let cases: Vec<(&str, String, u16)> = vec![
        ("PUT", "/v1/kv/bad%ns/k".into(), 400),
        ("PUT", format!("/v1/kv/{}/k", "n".repeat(65)), 400),
        ("PUT", "/v1/kv/app/".into(), 400),
        ("PUT", format!("/v1/kv/app/{long_key}"), 400),
        ("GET", "/v1/kv/app/%C3%28".into(), 400),
        ("GET", "/v2/kv/app/k".into(), 404),
        ("PATCH", "/v1/kv/app/k".into(), 405),
        ("POST", "/v1/kv/app".into(), 405),
        ("GET", "/v1/kv/app:incr".into(), 405),
    ];
    for (method, path, status) in cases {
        let r = c.send(method, &path, &[], "x").await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        r.error_code();
    }
    let r = c.send("PATCH", "/v1/kv/app/k", &[], "").await;
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, DELETE"));

    // Too large: declared length, and the exact limit passes.
    let r = c.put("/v1/kv/app/big", &"x".repeat(1001)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    assert_eq!(c.put("/v1/kv/app/big", &"x".repeat(1000)).await.status, 201);
    // The server is still healthy after all that.
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/readyz").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn chunked_body_is_bounded_while_streaming() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.kv.value_bytes_max = 1000).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut req = String::from(
        "PUT /v1/kv/app/chunky HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for _ in 0..20 {
        req.push_str("64\r\n");
        req.push_str(&"y".repeat(100));
        req.push_str("\r\n");
    }
    req.push_str("0\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/app/chunky").await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn slow_header_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.http.header_read_timeout_ms = 200).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The server closes the connection; the read returns EOF (or a 408) instead of hanging.
    let mut buf = vec![0u8; 1024];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
    let n = read.expect("server must close a slow client").unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");

    // An idle keep-alive connection is closed too.
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
    assert_eq!(
        read.expect("idle connection must be closed").unwrap_or(0),
        0
    );
    s.stop().await;
}

/// Holds `n` requests mid-body, each on its own connection: connections
/// that are busy, not idle.
async fn busy_connections(s: &TestServer, n: usize) -> Vec<tokio::net::TcpStream> {
    // A request whose body is still arriving keeps its connection busy (a long poll no longer
    // can: waiters leave a quarter of the connections to everyone else).
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"PUT /v1/kv/busy/k HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nx")
            .await
            .unwrap();
        held.push(c);
    }
    // The heads are parsed and their handlers wait for the rest of the bodies.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    held
}

#[tokio::test]
async fn connection_limit_answers_503_when_nothing_is_idle() {
    let s = TestServer::start_with(|c| c.http.connections_max = 2).await;
    let busy = busy_connections(&s, 2).await;
    let mut third = s.client().await;
    let r = third.get("/healthz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.error_code(), "too_many_connections");
    drop(busy);
    s.stop().await;
}

/// Idle keep-alive connections filling `connections_max` no longer lock everyone out: a new
/// client takes the place of the longest-idle one (issue: 5,000 idle connections from one
/// process made every other client wait for 503s).
#[tokio::test]
async fn idle_connections_make_room_for_a_new_client() {
    let s = TestServer::start_with(|c| c.http.connections_max = 8).await;
    let mut flood = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect(s.addr).await;
        assert_eq!(c.get("/healthz").await.status, 200);
        flood.push(c);
    }
    // Idle long enough to be taken for idle (a client between requests is not: 250 ms).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Each fresh client stays connected, so each must take an idle one's place.
    let mut fresh_ones = Vec::new();
    for round in 0..3 {
        let mut fresh = s.client().await;
        assert_eq!(fresh.get("/healthz").await.status, 200, "round {round}");
        fresh_ones.push(fresh);
    }
    let evicted = common::scrape(s.addr, "shardbox_connections_evicted_total").await;
    assert!(
        evicted >= 3.0,
        "each fresh client took an idle one's place: {evicted}"
    );
    // A client that just made a request is busy, not idle: a newcomer is refused instead of
    // evicting it (no reconnect churn under a connection flood).
    let mut flood = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect(s.addr).await;
        if c.try_send("GET", "/healthz", &[], "")
            .await
            .is_ok_and(|r| r.status == 200)
        {
            flood.push(c);
        }
    }
    let refused = raw(s.addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop(flood);
    s.stop().await;
}

/// A connection streaming a response (an SSE follower) is busy until its stream ends: making
/// room closes an idle connection, not the stream (which could not close until its client
/// leaves, so the newcomer would wait and get 503).
#[tokio::test]
async fn a_streaming_follower_is_not_taken_for_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.http.connections_max = 2).await;
    // The stream exists (created in-process, so no connection is used for it).
    s.store
        .events()
        .append(
            "live",
            vec![shardbox::events::apply::NewEvent {
                ts: None,
                kind: None,
                data: b"0".to_vec(),
            }],
        )
        .await
        .unwrap();
    let mut sse = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sse.write_all(b"GET /v1/streams/live/events?follow=true HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sse.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The follower has been streaming longest; the other connection went idle after it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut idle = s.client().await;
    assert_eq!(idle.get("/healthz").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut fresh = s.client().await;
    assert_eq!(
        fresh.get("/healthz").await.status,
        200,
        "the idle one made room"
    );
    // The follower still gets events.
    s.store
        .events()
        .append(
            "live",
            vec![shardbox::events::apply::NewEvent {
                ts: None,
                kind: None,
                data: br#""still here""#.to_vec(),
            }],
        )
        .await
        .unwrap();
    let mut got = String::new();
    while !got.contains("still here") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), sse.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the follower is still served; got {got:?}"))
            .unwrap();
        assert!(n > 0, "the follower's connection was closed");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    s.stop().await;
}

/// A keep-alive connection with no request for `idle_timeout_ms` is closed.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The header timeout is far away, so only the idle timeout can close it.
    let s = TestServer::start_with(|c| {
        c.http.idle_timeout_ms = 300;
        c.http.header_read_timeout_ms = 600_000;
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read(&mut buf))
        .await
        .expect("the idle connection is closed well before the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    s.stop().await;
}

/// One address gets at most `connections_per_ip_max` connections; another address is served.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let s = TestServer::start_with(|c| c.http.connections_per_ip_max = 2).await;
    let busy = busy_connections(&s, 2).await;
    let same = raw(s.addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(same.starts_with("HTTP/1.1 503"), "{same}");
    // Another loopback address (all of 127.0.0.0/8 is local on Linux).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(s.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = other.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(busy);
    s.stop().await;
}

#[tokio::test]
async fn concurrent_incr_is_exact() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = common::Client::connect(addr).await;
            for _ in 0..100 {
                let r = c
                    .post_json("/v1/kv/app:incr", serde_json::json!({"key": "n"}))
                    .await;
                assert_eq!(r.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/app/n").await.text(), "6400");
    s.stop().await;
}

#[tokio::test]
async fn cas_races_lose_no_update() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.put("/v1/kv/app/doc", "0").await;
    let per_client = 10;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = common::Client::connect(addr).await;
            let mut done = 0;
            let mut conflicts = 0u32;
            while done < per_client {
                let r = c.get("/v1/kv/app/doc").await;
                let etag = r.header("etag").unwrap().to_string();
                let n: u64 = r.text().parse().unwrap();
                let w = c
                    .send(
                        "PUT",
                        "/v1/kv/app/doc",
                        &[("if-match", &etag)],
                        (n + 1).to_string(),
                    )
                    .await;
                match w.status {
                    200 => done += 1,
                    412 => conflicts += 1,
                    other => panic!("unexpected {other}"),
                }
                assert!(conflicts < 100_000);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A new connection: the first one sat idle through the race, which can outlast
    // idle_timeout_ms on a loaded machine (the server then closes it, as it should).
    drop(c);
    let mut c = s.client().await;
    assert_eq!(
        c.get("/v1/kv/app/doc").await.text(),
        (32 * per_client).to_string()
    );
    s.stop().await;
}

#[tokio::test]
async fn restart_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    let mut revs = Vec::new();
    for i in 0..300 {
        let r = c
            .put(&format!("/v1/kv/app/k{i}?ttl=1d"), &format!("v{i}"))
            .await;
        revs.push(r.json()["revision"].as_u64().unwrap());
    }
    drop(c);
    s.stop().await;

    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    for (i, rev) in revs.iter().enumerate() {
        let r = c.get(&format!("/v1/kv/app/k{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("v{i}"));
        assert_eq!(r.header("etag"), Some(format!("\"{rev}\"").as_str()));
    }
    // Revisions keep increasing after a restart.
    let r = c.put("/v1/kv/app/k0", "again").await;
    assert!(r.json()["revision"].as_u64().unwrap() > revs[0]);
    drop(c);
    s.stop().await;
}

#[tokio::test]
async fn readyz_and_metrics() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    c.put("/v1/kv/app/k", "v").await;
    let r = c.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("shardbox_shard_commits_total{shard=\"0\"}"));
    assert!(text.contains("shardbox_http_responses_total{class=\"2xx\"}"));
    s.stop().await;

    // A disk floor above the free space makes /readyz fail, naming the disk.
    let s = TestServer::start_with(|c| c.engine.disk_free_bytes_min = u64::MAX).await;
    let mut c = s.client().await;
    let r = c.get("/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("disk_free_bytes_min"));
    s.stop().await;
}

/// A misspelled query parameter is a 400 naming it and what the endpoint takes (it used to be
/// ignored: `?tll=30s` stored a key that never expires), and nothing is written.
#[tokio::test]
async fn unknown_query_parameters_are_refused_by_name() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .send("PUT", "/v1/kv/app/session?tll=30s", &[], "token")
        .await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("`tll`") && msg.contains("ttl"), "{msg}");
    assert_eq!(c.get("/v1/kv/app/session").await.status, 404);
    let r = c.get("/v1/queues/emails/jobs?state=ready&limt=5").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("`limt`"), "{}", r.text());
    let r = c.get("/v1/kv/app?limit=1&limit=1000").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("`limit` given twice"), "{}", r.text());
    let r = c.send("PUT", "/v1/kv/../k", &[], "v").await;
    assert_eq!(
        r.status,
        400,
        "`..` is refused as a namespace: {}",
        r.text()
    );
    let r = c
        .send("POST", "/v1/queues/../jobs", &[], r#"{"payload":1}"#)
        .await;
    assert_eq!(
        r.status,
        400,
        "`..` is refused as a queue name: {}",
        r.text()
    );
    let r = c.get("/healthz?verbose=1").await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("takes no query parameters"),
        "{}",
        r.text()
    );
    // Known ones still work.
    let r = c
        .send("PUT", "/v1/kv/app/session?ttl=30s", &[], "token")
        .await;
    assert_eq!(r.status, 201);
    s.stop().await;
}

/// Sends raw bytes on a fresh connection and returns the whole answer (the server closes or the
/// read times out).
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What the head must say: `Host` (RFC 9112 §3.2), no transfer codings other than
/// chunked (501, never stored as is) and content codings (415).
#[tokio::test]
async fn host_and_codings_are_checked() {
    let s = TestServer::start().await;
    let no_host = raw(s.addr, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("Host"), "{no_host}");
    let two_hosts = raw(
        s.addr,
        "GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let http10 = raw(s.addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert!(http10.starts_with("HTTP/1.0 200"), "{http10}");
    let gzip_te = raw(
        s.addr,
        "PUT /v1/kv/app/te HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(gzip_te.starts_with("HTTP/1.1 501"), "{gzip_te}");
    assert!(gzip_te.contains("not_implemented"), "{gzip_te}");
    let gzip_ce = raw(
        s.addr,
        "PUT /v1/kv/app/ce HTTP/1.1\r\nhost: x\r\ncontent-encoding: gzip\r\ncontent-length: 3\r\n\r\nabc",
    )
    .await;
    assert!(gzip_ce.starts_with("HTTP/1.1 415"), "{gzip_ce}");
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/app/te").await.status, 404);
    assert_eq!(c.get("/v1/kv/app/ce").await.status, 404);
    let ok = raw(
        s.addr,
        "PUT /v1/kv/app/ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 201"), "{ok}");
    s.stop().await;
}

/// Requests refused while their head is parsed (a head over `header_bytes_max`, two
/// `Content-Length`s, a broken header line) get the same JSON error body as every other error.
#[tokio::test]
async fn errors_raised_by_the_http_parser_have_json_bodies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let big = format!(
        "GET /v1/kv/a/b HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(40 << 10)
    );
    let cases: [(&[u8], &str, &str); 3] = [
        (big.as_bytes(), "431", "request_header_fields_too_large"),
        (
            b"PUT /v1/kv/a/b HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxy",
            "400",
            "bad_request",
        ),
        (b"GET /v1/kv/a/b HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n", "400", "bad_request"),
    ];
    for (raw, status, code) in cases {
        let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut out),
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(v["error"]["code"], code, "{body}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    s.stop().await;
}
