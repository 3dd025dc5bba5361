//! `Idempotency-Key` against a real server: replay, mismatch, in progress (409), a client that
//! hangs up, keys per token, across a restart, and expiry swept by the running server.
//!
//! The tests that arm the `wal.sync` fault point or count a process-wide counter exactly run
//! alone (`common::alone`).

use crate::common;

use common::{eventually, Client, Resp, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

const TTL_MS: u64 = 60_000;

async fn post(c: &mut Client, path: &str, key: Option<&str>, body: &Value) -> Resp {
    post_as(c, path, key, None, body).await
}

async fn post_as(
    c: &mut Client,
    path: &str,
    key: Option<&str>,
    token: Option<&str>,
    body: &Value,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("content-type", "application/json")];
    if let Some(k) = key {
        h.push(("idempotency-key", k));
    }
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    c.send("POST", path, &h, body.to_string()).await
}

async fn ready(c: &mut Client, q: &str) -> u64 {
    let r = c.get(&format!("/v1/queues/{q}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["ready"].as_u64().expect("ready")
}

/// Waits until a keyed request's first run is in the server (the gauge says so), not for a
/// guessed time.
async fn running(addr: std::net::SocketAddr) {
    eventually(10, "a keyed request to be running", || async move {
        (common::scrape(addr, "shardbox_idempotency_running").await >= 1.0).then_some(())
    })
    .await;
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

#[tokio::test]
async fn retries_replay_the_first_response_on_every_creating_route_and_after_a_restart() {
    if !common::alone() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let tweak = |c: &mut shardbox::Config| {
        c.idempotency.idempotency_ttl_ms = TTL_MS;
        c.kv.sweep_interval_ms = 20;
    };
    let s = TestServer::start_in(dir.clone(), tweak).await;
    let mut c = s.client().await;

    // Enqueue: the retry gets the same job id, and there is one job.
    let job = json!({"payload": {"to": "a@example.com"}});
    let first = post(&mut c, "/v1/queues/mail/jobs", Some("k-enq"), &job).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert!(!replayed(&first));
    let again = post(&mut c, "/v1/queues/mail/jobs", Some("k-enq"), &job).await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert!(replayed(&again));
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert_eq!(ready(&mut c, "mail").await, 1);
    // The quoted form of the same key (the IETF draft's sf-string) is the same key.
    let quoted = post(&mut c, "/v1/queues/mail/jobs", Some("\"k-enq\""), &job).await;
    assert!(replayed(&quoted) && quoted.body == first.body);
    // Without a key the same request runs again.
    assert_eq!(
        post(&mut c, "/v1/queues/mail/jobs", None, &job)
            .await
            .status,
        201
    );
    assert_eq!(ready(&mut c, "mail").await, 2);

    // Incr: a replayed increment does not add.
    let inc = json!({"key": "hits", "by": 5});
    let r = post(&mut c, "/v1/kv/app:incr", Some("k-incr"), &inc).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r2 = post(&mut c, "/v1/kv/app:incr", Some("k-incr"), &inc).await;
    assert!(replayed(&r2) && r2.body == r.body);
    assert_eq!(c.get("/v1/kv/app/hits").await.text(), "5");

    // Append: one event however often it is retried.
    let ev = json!({"data": {"n": 1}});
    let a = post(&mut c, "/v1/streams/clicks/events", Some("k-app"), &ev).await;
    assert_eq!(a.status, 201, "{}", a.text());
    for _ in 0..3 {
        let b = post(&mut c, "/v1/streams/clicks/events", Some("k-app"), &ev).await;
        assert!(replayed(&b) && b.body == a.body && b.status == 201);
    }
    assert_eq!(c.get("/v1/streams/clicks").await.json()["events"], 1);

    // Batch write: replayed, and a delete written after it is not undone by the retry.
    let ops = json!({"ops": [{"op": "put", "key": "b1", "value_b64": "eA=="}]});
    let w = post(&mut c, "/v1/kv/app:batchWrite", Some("k-bw"), &ops).await;
    assert_eq!(w.status, 200, "{}", w.text());
    assert_eq!(c.delete("/v1/kv/app/b1").await.status, 204);
    let w2 = post(&mut c, "/v1/kv/app:batchWrite", Some("k-bw"), &ops).await;
    assert!(replayed(&w2) && w2.body == w.body);
    assert_eq!(c.get("/v1/kv/app/b1").await.status, 404);

    // The same key with another body, another path or another content type: 422.
    let other = json!({"payload": {"to": "b@example.com"}});
    let m = post(&mut c, "/v1/queues/mail/jobs", Some("k-enq"), &other).await;
    assert_eq!(
        (m.status, m.error_code().as_str()),
        (422, "idempotency_key_reused")
    );
    let m = post(&mut c, "/v1/queues/other/jobs", Some("k-enq"), &job).await;
    assert_eq!(m.status, 422);
    let nd = c
        .send(
            "POST",
            "/v1/queues/mail/jobs",
            &[
                ("content-type", "application/x-ndjson"),
                ("idempotency-key", "k-enq"),
            ],
            job.to_string(),
        )
        .await;
    assert_eq!(nd.status, 422, "{}", nd.text());
    assert_eq!(ready(&mut c, "mail").await, 2);

    // A bad key is a 400 that says what a key is; nothing runs.
    let long = "x".repeat(256);
    for bad in ["", "has space", long.as_str()] {
        let r = post(&mut c, "/v1/queues/mail/jobs", Some(bad), &job).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(r.text().contains("Idempotency-Key"), "{}", r.text());
    }
    // A first request that fails keeps nothing: fixed, the retry with the key runs.
    let bad_job = json!({"payload": 1, "delay": "soon"});
    let f = post(&mut c, "/v1/queues/mail/jobs", Some("k-fail"), &bad_job).await;
    assert_eq!(f.status, 400, "{}", f.text());
    let f2 = post(&mut c, "/v1/queues/mail/jobs", Some("k-fail"), &bad_job).await;
    assert!(f2.status == 400 && !replayed(&f2));
    assert_eq!(ready(&mut c, "mail").await, 2);
    // Routes that do not create take no key: it is ignored, not kept.
    let claim = json!({"max": 1, "lease": "30s"});
    let cl = post(&mut c, "/v1/queues/other/claim", Some("k-claim"), &claim).await;
    assert!(cl.status == 200 && !replayed(&cl), "{}", cl.text());

    // A restart keeps every kept response.
    drop(c);
    let _keep = s.stop().await;
    let s = TestServer::start_in(dir.clone(), tweak).await;
    let mut c = s.client().await;
    // Counters are process-wide: this test runs alone (its own process), so the delta of
    // mismatches is exact.
    let before = common::metric(
        &c.get("/metrics").await.text(),
        "shardbox_idempotency_mismatches_total",
    );
    let after = post(&mut c, "/v1/queues/mail/jobs", Some("k-enq"), &job).await;
    assert!(replayed(&after) && after.body == first.body && after.status == 201);
    assert_eq!(ready(&mut c, "mail").await, 2);
    let m = post(&mut c, "/v1/queues/mail/jobs", Some("k-enq"), &other).await;
    assert_eq!(m.status, 422);
    let metrics = c.get("/metrics").await.text();
    assert_eq!(
        common::metric(&metrics, "shardbox_idempotency_mismatches_total") - before,
        1.0
    );
    assert!(common::metric(&metrics, "shardbox_idempotency_replays_total") >= 1.0);

    // Past the TTL the server's sweeper deletes the records, and the key is fresh again.
    s.clock.advance_ms(TTL_MS + 1);
    let engine = s.store.engine().clone();
    eventually(
        10,
        "the sweeper to delete expired idempotency records",
        || {
            let engine = engine.clone();
            async move {
                let key = shardbox::idempotency::record_key("", "k-enq");
                let txn = engine.shards()[engine.shard_for(&key)].read().ok()?;
                let t = txn.open_table(shardbox::idempotency::IDEM).ok()?;
                let gone = t.get(key.as_slice()).ok()?.is_none();
                gone.then_some(())
            }
        },
    )
    .await;
    drop(engine);
    let fresh = post(&mut c, "/v1/queues/mail/jobs", Some("k-enq"), &job).await;
    assert!(fresh.status == 201 && !replayed(&fresh));
    assert_ne!(fresh.body, first.body);
    assert_eq!(ready(&mut c, "mail").await, 3);

    drop(c);
    let _keep = s.stop().await;
    let report = shardbox::check::run(&dir, false).expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_retry_while_the_first_runs_gets_409_and_a_client_that_hangs_up_still_gets_one_job() {
    if !common::alone() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    let job = json!({"payload": "slow"});
    shardbox::testing::failpoint::set(
        "wal.sync",
        shardbox::testing::failpoint::Action::Delay(Duration::from_millis(1500)),
    );

    // The first request is in the writer (every log sync takes 1.5 s) when the retry arrives.
    let addr = s.addr;
    let job2 = job.clone();
    let first = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        post(&mut c, "/v1/queues/slow/jobs", Some("k1"), &job2).await
    });
    running(addr).await;
    let busy = post(&mut c, "/v1/queues/slow/jobs", Some("k1"), &job).await;
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert_eq!(busy.error_code(), "idempotency_key_in_use");
    assert_eq!(busy.header("retry-after"), Some("1"));
    let first = first.await.unwrap();
    assert_eq!(first.status, 201, "{}", first.text());

    // A client that sends and hangs up before the answer: the request still runs to the end
    // and keeps its response, so the retry finds it instead of enqueueing again.
    let job3 = json!({"payload": "hung up"});
    let j = job3.clone();
    let hung = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        post(&mut c, "/v1/queues/slow/jobs", Some("k2"), &j).await
    });
    running(addr).await;
    hung.abort();
    let _ = hung.await;
    shardbox::testing::failpoint::clear("wal.sync");
    let retry = eventually(10, "the hung-up request to finish", || {
        let j = job3.clone();
        async move {
            let mut c = Client::connect(addr).await;
            let r = post(&mut c, "/v1/queues/slow/jobs", Some("k2"), &j).await;
            (r.status != 409).then_some(r)
        }
    })
    .await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert!(replayed(&retry), "the retry ran again instead of replaying");
    assert_eq!(ready(&mut c, "slow").await, 2);
    let m = c.get("/metrics").await.text();
    assert!(common::metric(&m, "shardbox_idempotency_in_progress_total") >= 1.0);

    // The server stops while a hung-up keyed request is still in the writer: shutdown waits
    // for it to keep its response, so after a restart the retry replays it.
    shardbox::testing::failpoint::set(
        "wal.sync",
        shardbox::testing::failpoint::Action::Delay(Duration::from_millis(1000)),
    );
    let job4 = json!({"payload": "stopping"});
    let j = job4.clone();
    let hung = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        post(&mut c, "/v1/queues/slow/jobs", Some("k3"), &j).await
    });
    running(addr).await;
    hung.abort();
    let _ = hung.await;
    drop(c);
    s.stop().await;
    shardbox::testing::failpoint::clear("wal.sync");
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut c = s.client().await;
    let r = post(&mut c, "/v1/queues/slow/jobs", Some("k3"), &job4).await;
    assert!(r.status == 201 && replayed(&r), "{} {}", r.status, r.text());
    assert_eq!(ready(&mut c, "slow").await, 3);
    drop(c);
    s.stop().await;
}

#[tokio::test]
async fn keys_belong_to_their_token() {
    use shardbox::tokens::{hash_token, new_token, Scope, TokenConfig};
    let (a, b) = (new_token(), new_token());
    let entry = |name: &str, t: &str| TokenConfig {
        name: name.into(),
        sha256: hash_token(t),
        scopes: vec![Scope::Read, Scope::Write],
        namespaces: None,
        streams: None,
        queues: None,
    };
    let tokens = vec![entry("a", &a), entry("b", &b)];
    let s = TestServer::start_with(|c| c.http.tokens = tokens).await;
    let mut c = s.client().await;
    let job = json!({"payload": 1});
    let ra = post_as(&mut c, "/v1/queues/t/jobs", Some("same"), Some(&a), &job).await;
    let rb = post_as(&mut c, "/v1/queues/t/jobs", Some("same"), Some(&b), &job).await;
    assert_eq!((ra.status, rb.status), (201, 201));
    assert!(!replayed(&rb), "token b replayed token a's response");
    assert_ne!(ra.body, rb.body);
    let ra2 = post_as(&mut c, "/v1/queues/t/jobs", Some("same"), Some(&a), &job).await;
    assert!(replayed(&ra2) && ra2.body == ra.body);
    let auth = format!("Bearer {a}");
    let r = c
        .send(
            "GET",
            "/v1/queues/t",
            &[("authorization", auth.as_str())],
            "",
        )
        .await;
    assert_eq!(r.json()["ready"], 2);
    drop(c);
    s.stop().await;
}
