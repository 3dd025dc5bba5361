//! The events HTTP contract against a real server on 127.0.0.1:0 with an injected clock.

use crate::common;

use common::{Client, TestServer, T0_MS};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

const H: u64 = 3_600_000;

async fn append_ndjson(c: &mut Client, stream: &str, lines: &[Value]) -> Vec<String> {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let r = c
        .send(
            "POST",
            &format!("/v1/streams/{stream}/events"),
            &[("content-type", "application/x-ndjson")],
            body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

async fn page(c: &mut Client, path: &str) -> (Vec<Value>, Option<String>) {
    let r = c.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let j = r.json();
    (
        j["events"].as_array().unwrap().clone(),
        j["next"].as_str().map(str::to_string),
    )
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn backfilled_events_land_in_their_buckets_and_read_in_order() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .send(
            "PUT",
            "/v1/streams/s",
            &[],
            json!({"bucket": "1h", "retention": "0"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let got = append_ndjson(
        &mut c,
        "s",
        &[
            json!({"data": {"n": "now"}}),
            json!({"ts": T0_MS - 3 * H, "data": {"n": "-3h"}}),
            json!({"ts": T0_MS - H, "type": "x", "data": {"n": "-1h"}}),
            json!({"ts": T0_MS - 2 * H, "data": {"n": "-2h"}}),
            json!({"ts": T0_MS - H, "data": {"n": "-1h again"}}),
        ],
    )
    .await;
    assert_eq!(got[0], format!("{T0_MS}-0"));
    assert_eq!(
        got[4],
        format!("{}-1", T0_MS - H),
        "same ms gets the next sequence"
    );
    let (events, next) = page(&mut c, "/v1/streams/s/events").await;
    let names: Vec<_> = events
        .iter()
        .map(|e| e["data"]["n"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["-3h", "-2h", "-1h", "-1h again", "now"]);
    assert!(next.is_none());
    let info = c.get("/v1/streams/s").await.json();
    assert_eq!(
        (info["events"].as_u64(), info["buckets"].as_u64()),
        (Some(5), Some(4))
    );
    assert_eq!(info["oldest"], T0_MS - 3 * H);
    // Server-assigned ids keep increasing past everything before.
    let later = append_ndjson(&mut c, "s", &[json!({"data": 1})]).await;
    assert_eq!(later[0], format!("{T0_MS}-1"));
    // Type filter and desc.
    let (events, _) = page(&mut c, "/v1/streams/s/events?type=x").await;
    assert_eq!(events.len(), 1);
    let (events, _) = page(&mut c, "/v1/streams/s/events?order=desc&limit=2").await;
    assert_eq!(ids(&events), [format!("{T0_MS}-1"), format!("{T0_MS}-0")]);
    // Counts from bucket counters (aligned) and by scanning (not aligned).
    let from = T0_MS - T0_MS % H - 3 * H;
    let r = c
        .get(&format!(
            "/v1/streams/s/counts?from={from}&to={}&step=1h",
            from + 4 * H
        ))
        .await
        .json();
    let counts: Vec<u64> = r["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 1, 2, 2]);
    let r = c
        .get(&format!(
            "/v1/streams/s/counts?from={}&to={}&step=90m",
            from,
            from + 6 * H
        ))
        .await
        .json();
    let total: u64 = r["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 6);
    s.stop().await;
}

#[tokio::test]
async fn paging_both_ways_sees_every_event_once_while_appends_continue() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.send(
        "PUT",
        "/v1/streams/p",
        &[],
        json!({"bucket": "1h", "retention": "0"}).to_string(),
    )
    .await;
    let lines: Vec<Value> = (0..250u64)
        .map(|i| json!({"ts": T0_MS - 5 * H + i * 60_000, "data": i}))
        .collect();
    let mut want: BTreeSet<String> = append_ndjson(&mut c, "p", &lines)
        .await
        .into_iter()
        .collect();
    want.extend(
        append_ndjson(
            &mut c,
            "p",
            &[json!({"ts": T0_MS - 5 * H, "data": "dup ms"})],
        )
        .await,
    );
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut n = 0;
        loop {
            let path = match &cursor {
                None => format!("/v1/streams/p/events?order={order}&limit=40"),
                Some(cur) => format!("/v1/streams/p/events?order={order}&limit=40&after={cur}"),
            };
            let (events, next) = page(&mut c, &path).await;
            seen.extend(ids(&events));
            // Appends keep arriving: at the head (server time) and backfilled into the range.
            append_ndjson(
                &mut c,
                "p",
                &[
                    json!({"data": n}),
                    json!({"ts": T0_MS - 4 * H, "data": "late"}),
                ],
            )
            .await;
            n += 1;
            match next {
                Some(cur) => cursor = Some(cur),
                None => break,
            }
        }
        let set: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(
            set.len(),
            seen.len(),
            "{order}: an event was returned twice"
        );
        assert!(
            want.is_subset(&set),
            "{order}: an event that existed throughout was skipped"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_range_opens_only_its_buckets() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.send(
        "PUT",
        "/v1/streams/b",
        &[],
        json!({"bucket": "1h", "retention": "0"}).to_string(),
    )
    .await;
    let base = T0_MS - T0_MS % H - 10 * H;
    let lines: Vec<Value> = (0..100u64)
        .map(|i| json!({"ts": base + i * 6 * 60_000, "data": i}))
        .collect();
    append_ndjson(&mut c, "b", &lines).await;
    let opened = &s.store.events().buckets_opened;
    let before = opened.load(Ordering::Relaxed);
    let (events, _) = page(
        &mut c,
        &format!(
            "/v1/streams/b/events?from={}&to={}&limit=1000",
            base + 2 * H,
            base + 3 * H
        ),
    )
    .await;
    assert_eq!(events.len(), 10);
    assert_eq!(
        opened.load(Ordering::Relaxed) - before,
        1,
        "a one-hour range opens one bucket"
    );
    let before = opened.load(Ordering::Relaxed);
    page(
        &mut c,
        &format!(
            "/v1/streams/b/events?from={}&to={}&limit=1000",
            base + 2 * H + 1,
            base + 5 * H
        ),
    )
    .await;
    assert_eq!(opened.load(Ordering::Relaxed) - before, 3);
    s.stop().await;
}

#[tokio::test]
async fn retention_drops_whole_buckets_and_the_future_is_guarded() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.send(
        "PUT",
        "/v1/streams/r",
        &[],
        json!({"bucket": "1h", "retention": "5h"}).to_string(),
    )
    .await;
    let base = T0_MS - T0_MS % H;
    let lines: Vec<Value> = (0..4u64)
        .map(|i| json!({"ts": base - i * H + 1, "data": i}))
        .collect();
    append_ndjson(&mut c, "r", &lines).await;
    // Older than the retention, or too far ahead of the clock: 400, nothing written.
    for ts in [T0_MS - 6 * H, T0_MS + 2 * H] {
        let r = c
            .post_json("/v1/streams/r/events", json!({"ts": ts, "data": 0}))
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    // Retention can change; then only buckets entirely older than now - retention go.
    c.send(
        "PUT",
        "/v1/streams/r",
        &[],
        json!({"retention": "2h"}).to_string(),
    )
    .await;
    s.clock.advance_ms(H);
    let dropped = s.store.events().apply_retention().await.unwrap();
    // now - 2h = base - 53m20s: the buckets [base-3h, base-2h) and [base-2h, base-1h) end before it.
    assert_eq!(dropped, 2, "the buckets ending before now - 2h");
    let (events, _) = page(&mut c, "/v1/streams/r/events").await;
    let left: Vec<u64> = events.iter().map(|e| e["data"].as_u64().unwrap()).collect();
    assert_eq!(
        left,
        [1, 0],
        "the bucket that straddles the cutoff stays whole"
    );
    assert_eq!(s.store.events().apply_retention().await.unwrap(), 0);
    // A manual trim also trims inside the partial bucket.
    let r = c
        .delete(&format!("/v1/streams/r/events?before={}", base + 2))
        .await;
    assert_eq!(r.json(), json!({"dropped_buckets": 1, "deleted_events": 2}));
    let info = c.get("/v1/streams/r").await.json();
    assert_eq!(info["events"], 0);
    assert_eq!(c.delete("/v1/streams/r").await.status, 204);
    assert_eq!(c.get("/v1/streams/r").await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn sse_follow_delivers_each_event_once_and_resumes() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    append_ndjson(&mut c, "live", &[json!({"data": "before"})]).await;
    let mut follower = s.client().await;
    let resp = follower
        .open(
            "GET",
            "/v1/streams/live/events?follow=true",
            &[("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut sent = Vec::new();
    for i in 0..5 {
        s.clock.advance_ms(1);
        sent.extend(append_ndjson(&mut c, "live", &[json!({"type": "tick", "data": i})]).await);
    }
    let got = common::sse_ids(&mut body, 5).await;
    assert_eq!(got, sent, "every event once, in order, nothing from before");
    drop(body);
    drop(follower);
    // Disconnected: three more arrive; a reconnect with Last-Event-ID gets exactly those.
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.extend(append_ndjson(&mut c, "live", &[json!({"data": i})]).await);
    }
    let mut follower = s.client().await;
    let resp = follower
        .open(
            "GET",
            "/v1/streams/live/events",
            &[("accept", "text/event-stream"), ("last-event-id", &got[4])],
        )
        .await;
    let mut body = resp.into_body();
    assert_eq!(common::sse_ids(&mut body, 3).await, missed);
    // The dropped follower is released once the server's write to it fails (at the latest at
    // its 15 s heartbeat); until then the gauge counts it too.
    common::eventually(20, "the dropped follower is released", || {
        let addr = s.addr;
        async move {
            let open = common::scrape(addr, "shardbox_stream_followers_open").await;
            (open == 1.0).then_some(())
        }
    })
    .await;
    // That wait can outlast idle_timeout_ms: the writer's keep-alive connection is opened anew.
    let mut c = s.client().await;
    // Long poll for plain HTTP clients wakes on append.
    let addr = s.addr;
    let after = missed[2].clone();
    let waiter = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.get(&format!("/v1/streams/live/events?after={after}&wait=20s"))
            .await
    });
    // Once the long poll is parked beside the SSE follower (the gauge says 2), append.
    common::eventually(10, "the long poll parks", || {
        let addr = s.addr;
        async move {
            let open = common::scrape(addr, "shardbox_stream_followers_open").await;
            (open == 2.0).then_some(())
        }
    })
    .await;
    let new = append_ndjson(&mut c, "live", &[json!({"data": "wake"})]).await;
    let r = waiter.await.unwrap();
    assert_eq!(ids(r.json()["events"].as_array().unwrap()), new);
    drop(body);
    drop(follower);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_and_config_rules() {
    let s = TestServer::start_with(|c| c.events.event_bytes_max = 50).await;
    let mut c = s.client().await;
    let body = "{\"data\":1}\n{\"data\":2,\"ts\":\"yesterday\"}\n";
    let r = c
        .send(
            "POST",
            "/v1/streams/x/events",
            &[("content-type", "application/x-ndjson")],
            body,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("line 2"), "{}", r.text());
    assert_eq!(
        c.get("/v1/streams/x").await.status,
        404,
        "nothing was written"
    );
    let r = c
        .post_json("/v1/streams/x/events", json!({"data": "y".repeat(100)}))
        .await;
    assert_eq!(r.status, 413);
    for body in [
        json!({}),
        json!({"data": 1, "type": ""}),
        json!({"data": 1, "extra": 1}),
    ] {
        assert_eq!(c.post_json("/v1/streams/x/events", body).await.status, 400);
    }
    c.send(
        "PUT",
        "/v1/streams/x",
        &[],
        json!({"bucket": "1d"}).to_string(),
    )
    .await;
    let r = c
        .send(
            "PUT",
            "/v1/streams/x",
            &[],
            json!({"bucket": "1h"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = c
        .send(
            "PUT",
            "/v1/streams/x",
            &[],
            json!({"retention": "90d"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["retention_ms"], 90 * 86_400_000u64);
    assert_eq!(
        c.send(
            "PUT",
            "/v1/streams/x",
            &[],
            json!({"bucket": "2h"}).to_string()
        )
        .await
        .status,
        400
    );
    assert_eq!(c.get("/v1/streams/x/events?limit=0").await.status, 400);
    assert_eq!(c.get("/v1/streams/x/events?order=up").await.status, 400);
    assert_eq!(c.get("/v1/streams/x/events?after=nope").await.status, 400);
    assert_eq!(c.get("/v1/streams/nope/events").await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn streams_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    c.send(
        "PUT",
        "/v1/streams/keep",
        &[],
        json!({"bucket": "7d", "retention": "365d"}).to_string(),
    )
    .await;
    let first = append_ndjson(&mut c, "keep", &[json!({"data": 1}), json!({"data": 2})]).await;
    drop(c);
    s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut c = s.client().await;
    let info = c.get("/v1/streams/keep").await.json();
    assert_eq!(
        (info["events"].as_u64(), info["bucket_ms"].as_u64()),
        (Some(2), Some(7 * 86_400_000))
    );
    let next = append_ndjson(&mut c, "keep", &[json!({"data": 3})]).await;
    let parse = |id: &str| -> (u64, u32) {
        let (a, b) = id.split_once('-').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert!(
        parse(&next[0]) > parse(&first[1]),
        "ids keep increasing after a restart"
    );
    let all = c.get("/v1/streams").await.json();
    assert_eq!(all["streams"][0]["name"], "keep");
    drop(c);
    s.stop().await;
}

/// Inputs a later read could not serve faithfully are refused at the door: a type with a
/// newline would forge SSE fields (`id:`) for followers, and `ts: 0` collides with the id that
/// marks an empty stream (two such events overwrote each other while both were counted).
#[tokio::test]
async fn unservable_event_inputs_are_refused() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let r = c
        .post_json(
            "/v1/streams/sse/events",
            json!({"type": "x\nid: 9-0", "data": 1}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("control characters"), "{}", r.text());
    // A stream that keeps everything, so 1970 is inside its retention.
    let r = c
        .send("PUT", "/v1/streams/zero", &[], r#"{"retention":"0"}"#)
        .await;
    assert!(r.status < 300, "{}", r.text());
    let r = c
        .post_json("/v1/streams/zero/events", json!({"ts": 0, "data": 1}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    for data in [1, 2] {
        let r = c
            .post_json("/v1/streams/zero/events", json!({"ts": 1, "data": data}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let got = c
        .get("/v1/streams/zero/events?from=0&limit=10")
        .await
        .json();
    assert_eq!(got["events"].as_array().unwrap().len(), 2, "{got}");
    s.stop().await;
}
