//! The queue HTTP contract against a real server on 127.0.0.1:0, with an injected clock: time
//! moves only when a test says so, and timers run when the test calls `promote_once`.

use crate::common;

use common::{Client, Resp, TestServer};
use serde_json::{json, Value};

async fn enqueue(c: &mut Client, q: &str, body: Value) -> String {
    let r = c.post_json(&format!("/v1/queues/{q}/jobs"), body).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

async fn claim(c: &mut Client, q: &str, body: Value) -> Vec<Value> {
    let r = c.post_json(&format!("/v1/queues/{q}/claim"), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["jobs"].as_array().unwrap().clone()
}

async fn act(c: &mut Client, q: &str, job: &Value, action: &str, extra: Value) -> Resp {
    let mut body = json!({"lease_token": job["lease_token"]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let id = job["id"].as_str().unwrap();
    c.post_json(&format!("/v1/queues/{q}/jobs/{id}/{action}"), body)
        .await
}

async fn promote(s: &TestServer) {
    s.store.queues().promote_once().await.unwrap();
}

async fn stats(c: &mut Client, q: &str) -> Value {
    let r = c.get(&format!("/v1/queues/{q}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn a_job_walks_through_retry_dead_requeue_and_ack() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .send(
            "PUT",
            "/v1/queues/mail",
            &[],
            json!({"max_attempts": 2, "backoff": {"base": "10s", "factor": 2, "max": "1m"}})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = enqueue(&mut c, "mail", json!({"payload": {"to": "ada"}})).await;

    let jobs = claim(&mut c, "mail", json!({"lease": "30s"})).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id);
    assert_eq!(jobs[0]["payload"], json!({"to": "ada"}));
    assert_eq!(jobs[0]["attempt"], 1);
    let r = act(
        &mut c,
        "mail",
        &jobs[0],
        "nack",
        json!({"error": "smtp down"}),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // Backoff: delayed between base/2 and base, invisible to claims until then.
    let job = c.get(&format!("/v1/queues/mail/jobs/{id}")).await.json();
    assert_eq!(job["state"], "delayed");
    assert_eq!(job["last_error"], "smtp down");
    let delay = job["run_at"].as_u64().unwrap() - common::T0_MS;
    assert!((5_000..=10_000).contains(&delay), "{delay}");
    assert!(claim(&mut c, "mail", json!({})).await.is_empty());
    s.clock.advance_ms(10_000);
    promote(&s).await;

    // Second attempt fails too: max_attempts = 2, so it goes dead.
    let jobs = claim(&mut c, "mail", json!({})).await;
    assert_eq!(jobs[0]["attempt"], 2);
    act(
        &mut c,
        "mail",
        &jobs[0],
        "nack",
        json!({"error": "still down"}),
    )
    .await;
    let job = c.get(&format!("/v1/queues/mail/jobs/{id}")).await.json();
    assert_eq!(job["state"], "dead");
    let dead = c.get("/v1/queues/mail/jobs?state=dead").await.json();
    assert_eq!(dead["jobs"][0]["id"], id);
    let st = stats(&mut c, "mail").await;
    assert_eq!(
        (st["dead"].as_u64(), st["totals"]["dead_lettered"].as_u64()),
        (Some(1), Some(1))
    );

    // Requeue: ready again with attempts reset; then ack deletes it.
    let r = c
        .post_json("/v1/queues/mail/dead:requeue", json!({"ids": [id]}))
        .await;
    assert_eq!(r.json()["requeued"], 1);
    let jobs = claim(&mut c, "mail", json!({})).await;
    assert_eq!(jobs[0]["attempt"], 1);
    let r = act(&mut c, "mail", &jobs[0], "ack", json!({})).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        c.get(&format!("/v1/queues/mail/jobs/{id}")).await.status,
        404
    );
    let st = stats(&mut c, "mail").await;
    assert_eq!(st["totals"]["acked"], 1);
    assert_eq!(
        st["ready"].as_u64().unwrap()
            + st["in_flight"].as_u64().unwrap()
            + st["dead"].as_u64().unwrap(),
        0
    );

    // nack with dead:true skips the retries.
    enqueue(&mut c, "mail", json!({"payload": 2})).await;
    let jobs = claim(&mut c, "mail", json!({})).await;
    act(&mut c, "mail", &jobs[0], "nack", json!({"dead": true})).await;
    assert_eq!(stats(&mut c, "mail").await["dead"], 1);
    s.stop().await;
}

#[tokio::test]
async fn lease_expiry_redelivers_and_stale_tokens_change_nothing() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    enqueue(&mut c, "work", json!({"payload": "x"})).await;
    let first = claim(&mut c, "work", json!({"lease": "10s"}))
        .await
        .remove(0);

    // Extend keeps a long job: past the first lease it is still held.
    s.clock.advance_ms(8_000);
    let r = act(&mut c, "work", &first, "extend", json!({"lease": "10s"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["lease_expires_at"], common::T0_MS + 18_000);
    s.clock.advance_ms(5_000);
    promote(&s).await;
    assert!(claim(&mut c, "work", json!({})).await.is_empty());

    // Without a heartbeat the lease expires and the job is delivered again, attempt + 1.
    s.clock.advance_ms(6_000);
    promote(&s).await;
    let second = claim(&mut c, "work", json!({"lease": "10s"}))
        .await
        .remove(0);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["attempt"], 2);
    assert_ne!(second["lease_token"], first["lease_token"]);
    assert_eq!(stats(&mut c, "work").await["totals"]["lease_expired"], 1);

    // The first worker's ack, nack and extend are refused and change nothing.
    for action in ["ack", "nack", "extend"] {
        let r = act(&mut c, "work", &first, action, json!({})).await;
        assert_eq!(r.status, 409, "{action}: {}", r.text());
        assert_eq!(r.error_code(), "stale_lease");
    }
    let job = c
        .get(&format!(
            "/v1/queues/work/jobs/{}",
            first["id"].as_str().unwrap()
        ))
        .await
        .json();
    assert_eq!(job["state"], "in_flight");
    assert_eq!(
        act(&mut c, "work", &second, "ack", json!({})).await.status,
        204
    );
    // Unknown jobs are 404; malformed ids 400.
    let r = c
        .post_json(
            "/v1/queues/work/jobs/999999/ack",
            json!({"lease_token": "x"}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = c
        .post_json("/v1/queues/work/jobs/abc/ack", json!({"lease_token": "x"}))
        .await;
    assert_eq!(r.status, 400);

    // A lease that expires on the last attempt dead-letters the job.
    c.send(
        "PUT",
        "/v1/queues/once",
        &[],
        json!({"max_attempts": 1}).to_string(),
    )
    .await;
    enqueue(&mut c, "once", json!({"payload": 1})).await;
    claim(&mut c, "once", json!({"lease": "1s"})).await;
    s.clock.advance_ms(1_000);
    promote(&s).await;
    assert_eq!(stats(&mut c, "once").await["dead"], 1);
    s.stop().await;
}

#[tokio::test]
async fn priority_delay_and_order() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let low = enqueue(&mut c, "p", json!({"payload": "low", "priority": 9})).await;
    let a = enqueue(&mut c, "p", json!({"payload": "a"})).await;
    let later = enqueue(&mut c, "p", json!({"payload": "later", "delay": "1m"})).await;
    let at = enqueue(
        &mut c,
        "p",
        json!({"payload": "at", "run_at": common::T0_MS + 30_000}),
    )
    .await;
    let b = enqueue(&mut c, "p", json!({"payload": "b"})).await;
    let jobs = claim(&mut c, "p", json!({"max": 10, "lease": "1h"})).await;
    let ids: Vec<_> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec![a.clone(), b.clone(), low.clone()],
        "priority first, then time, then id"
    );
    s.clock.advance_ms(30_000);
    promote(&s).await;
    let jobs = claim(&mut c, "p", json!({"max": 10, "lease": "1h"})).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], at);
    s.clock.advance_ms(30_000);
    promote(&s).await;
    let jobs = claim(&mut c, "p", json!({"max": 10})).await;
    assert_eq!(jobs[0]["id"], later);
    let r = c
        .post_json(
            "/v1/queues/p/jobs",
            json!({"payload": 1, "run_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .post_json(
            "/v1/queues/p/jobs",
            json!({"payload": 1, "delay": "1s", "run_at": 5}),
        )
        .await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

#[tokio::test]
async fn dedupe_within_and_after_the_window() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let body = json!({"payload": 1, "dedupe_key": "order-7", "dedupe_window": "10s"});
    let r = c.post_json("/v1/queues/d/jobs", body.clone()).await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].clone();
    let r = c.post_json("/v1/queues/d/jobs", body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id);
    assert_eq!(r.json()["duplicate"], true);
    assert_eq!(stats(&mut c, "d").await["ready"], 1);
    // Also within one NDJSON batch.
    let lines = format!(
        "{}\n{}\n",
        json!({"payload": 2, "dedupe_key": "k2"}),
        json!({"payload": 3, "dedupe_key": "k2"})
    );
    let r = c
        .send(
            "POST",
            "/v1/queues/d/jobs",
            &[("content-type", "application/x-ndjson")],
            lines,
        )
        .await;
    let j = r.json();
    assert_eq!(j["jobs"][1]["duplicate"], true);
    assert_eq!(j["jobs"][1]["id"], j["jobs"][0]["id"]);
    // After the window the key is free again.
    s.clock.advance_ms(10_001);
    promote(&s).await;
    let r = c.post_json("/v1/queues/d/jobs", body).await;
    assert_eq!(r.status, 201);
    assert_ne!(r.json()["id"], id);
    s.stop().await;
}

#[tokio::test]
async fn pause_depth_purge_cancel_and_listing() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.send(
        "PUT",
        "/v1/queues/b",
        &[],
        json!({"max_depth": 3}).to_string(),
    )
    .await;
    for i in 0..3 {
        enqueue(&mut c, "b", json!({"payload": i})).await;
    }
    let r = c
        .post_json("/v1/queues/b/jobs", json!({"payload": 4}))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.error_code(), "queue_full");
    // An NDJSON batch over the bound is refused whole.
    c.send(
        "PUT",
        "/v1/queues/b",
        &[],
        json!({"max_depth": 4}).to_string(),
    )
    .await;
    let lines = "{\"payload\":1}\n{\"payload\":2}\n";
    let r = c
        .send(
            "POST",
            "/v1/queues/b/jobs",
            &[("content-type", "application/x-ndjson")],
            lines,
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(stats(&mut c, "b").await["ready"], 3);

    assert_eq!(
        c.send("POST", "/v1/queues/b:pause", &[], "").await.status,
        204
    );
    assert!(claim(&mut c, "b", json!({"max": 5})).await.is_empty());
    assert_eq!(stats(&mut c, "b").await["paused"], true);
    assert_eq!(
        c.send("POST", "/v1/queues/b:resume", &[], "").await.status,
        204
    );
    let held = claim(&mut c, "b", json!({"max": 1})).await.remove(0);

    // Listing pages through a state.
    let page = c.get("/v1/queues/b/jobs?state=ready&limit=1").await.json();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let page2 = c
        .get(&format!(
            "/v1/queues/b/jobs?state=ready&limit=1&after={cursor}"
        ))
        .await
        .json();
    assert_ne!(page2["jobs"][0]["id"], page["jobs"][0]["id"]);
    assert!(page2["cursor"].is_null());
    assert_eq!(c.get("/v1/queues/b/jobs?state=bogus").await.status, 400);

    // Cancel: not while in flight.
    let held_id = held["id"].as_str().unwrap();
    let r = c.delete(&format!("/v1/queues/b/jobs/{held_id}")).await;
    assert_eq!(r.status, 409);
    let other = page["jobs"][0]["id"].as_str().unwrap();
    assert_eq!(
        c.delete(&format!("/v1/queues/b/jobs/{other}")).await.status,
        204
    );
    // Purge by state.
    let r = c.delete("/v1/queues/b/jobs?state=ready").await;
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(
        c.delete("/v1/queues/b/jobs?state=in_flight").await.status,
        400
    );
    let st = stats(&mut c, "b").await;
    assert_eq!(
        (st["ready"].as_u64(), st["in_flight"].as_u64()),
        (Some(0), Some(1))
    );
    let all = c.get("/v1/queues").await.json();
    assert!(all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "b"));
    s.stop().await;
}

#[tokio::test]
async fn long_poll_claim_wakes_on_enqueue() {
    let s = TestServer::start().await;
    let addr = s.addr;
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        claim(&mut c, "lp", json!({"wait": "30s"})).await
    });
    // Once the claim is parked (the gauge says so), enqueue.
    let queues = s.store.queues().clone();
    common::eventually(10, "the claim parks", || {
        let n = queues.claims_waiting();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let mut c = s.client().await;
    enqueue(&mut c, "lp", json!({"payload": "wake"})).await;
    // Woken by the enqueue: a claim that slept its whole wait would come back empty.
    let jobs = waiter.await.unwrap();
    assert_eq!(jobs.len(), 1, "the waiting claim got the job");
    // An empty queue answers empty once the wait is over.
    let jobs = claim(&mut c, "lp", json!({"wait": "100ms"})).await;
    assert!(jobs.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_rejected_whole() {
    let s = TestServer::start_with(|c| c.queue.job_bytes_max = 100).await;
    let mut c = s.client().await;
    let lines = "{\"payload\":1}\n{\"payload\":2,\"priority\":\"high\"}\n{\"payload\":3}\n";
    let r = c
        .send(
            "POST",
            "/v1/queues/x/jobs",
            &[("content-type", "application/x-ndjson")],
            lines,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{}",
        r.text()
    );
    assert_eq!(
        c.get("/v1/queues/x").await.status,
        404,
        "nothing of it was written"
    );
    let cases = [
        json!({}),
        json!({"payload": 1, "priority": 10}),
        json!({"payload": 1, "delay": "soon"}),
        json!({"payload": 1, "max_attempts": 0}),
        json!({"payload": 1, "surprise": true}),
    ];
    for body in cases {
        let r = c.post_json("/v1/queues/x/jobs", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    let r = c
        .post_json("/v1/queues/x/jobs", json!({"payload": "y".repeat(200)}))
        .await;
    assert_eq!(r.status, 413);
    let r = c
        .post_json("/v1/queues/bad!name/jobs", json!({"payload": 1}))
        .await;
    assert_eq!(r.status, 400);
    let r = c.post_json("/v1/queues/x/claim", json!({"max": 0})).await;
    assert_eq!(r.status, 400);
    let r = c
        .post_json("/v1/queues/x/claim", json!({"lease": "0s"}))
        .await;
    assert_eq!(r.status, 400);
    let r = c.post_json("/v1/queues/x/dead:requeue", json!({})).await;
    assert_eq!(r.status, 400);
    let r = c.send("PATCH", "/v1/queues/x/jobs", &[], "").await;
    assert_eq!(r.status, 405);
    s.stop().await;
}

#[tokio::test]
async fn jobs_and_stats_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    for i in 0..20 {
        enqueue(&mut c, "keep", json!({"payload": i, "priority": (i % 3)})).await;
    }
    let held = claim(&mut c, "keep", json!({"max": 5, "lease": "1h"})).await;
    drop(c);
    s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut c = s.client().await;
    let st = stats(&mut c, "keep").await;
    assert_eq!(
        (st["ready"].as_u64(), st["in_flight"].as_u64()),
        (Some(15), Some(5))
    );
    // Leases and tokens survive too.
    assert_eq!(
        act(&mut c, "keep", &held[0], "ack", json!({})).await.status,
        204
    );
    // New ids keep increasing past the old ones.
    let id: u64 = enqueue(&mut c, "keep", json!({"payload": "new"}))
        .await
        .parse()
        .unwrap();
    let max_old = held
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(id > max_old);
    drop(c);
    s.stop().await;
}

/// Waits until the queue's ready + in-flight count reaches `n`: the server's own cron task
/// enqueues; the test only moves the clock.
async fn wait_depth(addr: std::net::SocketAddr, q: &str, n: u64) {
    common::eventually(10, &format!("queue {q} reaches {n} jobs"), || async move {
        let r = Client::connect(addr)
            .await
            .get(&format!("/v1/queues/{q}"))
            .await;
        let st = r.json();
        let have = st["ready"].as_u64().unwrap_or(0) + st["in_flight"].as_u64().unwrap_or(0);
        (r.status == 200 && have >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cron_fires_on_its_own_once_per_tick_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // T0 is 2025-06-15T15:06:40Z; "*/5" ticks at 15:10, 15:15, …
    let tick1 = 1_750_000_200_000u64;
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    let body = json!({"cron": "*/5 * * * *", "queue": "cronq", "payload": {"report": "daily"}, "priority": 2});
    let r = c
        .send("PUT", "/v1/schedules/every5", &[], body.to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["next_fire"], tick1);
    let queues = s.store.queues().clone();
    assert_eq!(queues.fire_due_schedules().await.unwrap(), 0, "not due yet");
    // The server's schedule task notices the tick by itself.
    s.clock.set_ms(tick1);
    wait_depth(s.addr, "cronq", 1).await;
    assert_eq!(
        queues.fire_due_schedules().await.unwrap(),
        0,
        "a tick fires once"
    );
    s.clock.set_ms(tick1 + 5 * 60_000 + 1);
    wait_depth(s.addr, "cronq", 2).await;
    assert_eq!(stats(&mut c, "cronq").await["ready"], 2);
    let jobs = claim(&mut c, "cronq", json!({})).await;
    assert_eq!(jobs[0]["payload"], json!({"report": "daily"}));
    assert_eq!(jobs[0]["priority"], 2);
    drop(c);
    drop(queues);
    s.stop().await;

    // Down for an hour: the missed ticks enqueue once on start, then the schedule moves on.
    let s = TestServer::start_in(dir, |_| {}).await;
    s.clock.set_ms(tick1 + 65 * 60_000 + 30_000);
    // Two from before (one claimed), one for the missed ticks.
    wait_depth(s.addr, "cronq", 3).await;
    let queues = s.store.queues().clone();
    assert_eq!(queues.fire_due_schedules().await.unwrap(), 0);
    let mut c = s.client().await;
    let st = stats(&mut c, "cronq").await;
    assert_eq!(
        st["ready"].as_u64().unwrap() + st["in_flight"].as_u64().unwrap(),
        3
    );
    let sched = c.get("/v1/schedules/every5").await.json();
    assert_eq!(sched["fired"], 3);
    assert_eq!(sched["next_fire"], tick1 + 70 * 60_000);
    let all = c.get("/v1/schedules").await.json();
    assert_eq!(all["schedules"].as_array().unwrap().len(), 1);

    // Bad input, delete.
    let bad = json!({"cron": "61 * * * *", "queue": "cronq", "payload": 1});
    assert_eq!(
        c.send("PUT", "/v1/schedules/bad", &[], bad.to_string())
            .await
            .status,
        400
    );
    let bad = json!({"cron": "* * * * *", "queue": "no good", "payload": 1});
    assert_eq!(
        c.send("PUT", "/v1/schedules/bad", &[], bad.to_string())
            .await
            .status,
        400
    );
    assert_eq!(c.delete("/v1/schedules/every5").await.status, 204);
    assert_eq!(c.get("/v1/schedules/every5").await.status, 404);
    assert_eq!(c.delete("/v1/schedules/every5").await.status, 404);
    drop(c);
    drop(queues);
    s.stop().await;
}

#[tokio::test]
async fn configs_and_jobs_a_queue_cannot_run_are_refused() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for body in [
        json!({"default_lease": "0s"}),
        json!({"max_attempts": 0}),
        json!({"backoff": {"factor": 0.5}}),
    ] {
        let r = c.send("PUT", "/v1/queues/q", &[], body.to_string()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    for job in [
        json!({"payload": 1, "max_attempts": 0}),
        json!({"payload": 1, "backoff": {"factor": 1000}}),
    ] {
        let r = c.post_json("/v1/queues/q/jobs", job.clone()).await;
        assert_eq!(r.status, 400, "{job}: {}", r.text());
        assert!(r.text().contains("job 0"), "{}", r.text());
    }
    // Nothing was created or changed by the refusals.
    assert_eq!(c.get("/v1/queues/q").await.status, 404);
    drop(c);
    s.stop().await;
}

/// `GET /v1/queues` and `GET /v1/streams` are paged by name (issue 19: 10,000 names came back
/// as one 3 MB body): every name once, in order, across pages; a bad limit is a 400.
#[tokio::test]
async fn queue_and_stream_listings_are_paged_by_name() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for i in 0..25 {
        let r = c
            .post_json(&format!("/v1/queues/q{i:02}/jobs"), json!({"payload": i}))
            .await;
        assert_eq!(r.status, 201);
        let r = c
            .put(&format!("/v1/streams/s{i:02}"), r#"{"bucket":"1h"}"#)
            .await;
        assert_eq!(r.status, 201);
    }
    for (path, key, prefix) in [
        ("/v1/queues", "queues", "q"),
        ("/v1/streams", "streams", "s"),
    ] {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let url = match &after {
                None => format!("{path}?limit=10"),
                Some(a) => format!("{path}?limit=10&after={a}"),
            };
            let j = c.get(&url).await.json();
            let page = j[key].as_array().unwrap();
            assert!(page.len() <= 10);
            names.extend(page.iter().map(|q| q["name"].as_str().unwrap().to_string()));
            pages += 1;
            match j["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        let want: Vec<_> = (0..25).map(|i| format!("{prefix}{i:02}")).collect();
        assert_eq!(names, want, "{path}");
        assert_eq!(pages, 3, "{path}");
        // Without a limit: all of them (up to 1000) on one page.
        let j = c.get(path).await.json();
        assert_eq!(j[key].as_array().unwrap().len(), 25);
        assert!(j["next"].is_null());
        for bad in ["0", "1001", "x"] {
            let r = c.get(&format!("{path}?limit={bad}")).await;
            assert_eq!(r.status, 400, "{path} limit={bad}");
        }
    }
    s.stop().await;
}
