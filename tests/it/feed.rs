//! The change feed (`GET /v1/changes`, named cursors) against a real server: an export names
//! the position it is consistent with, and that export plus the feed from its position is the
//! store (taken while writes go on); every kind of change a user makes shows up as that kind;
//! filters, pages, resuming by position and by SSE `Last-Event-ID`; a position of another
//! history gets 409 (a restore makes a new one); a cursor keeps the log it needs, and one that
//! falls behind past `feed_retain_bytes_max` is dropped to 410 while writes go on.

use crate::common;

use base64::Engine as _;
use common::{Client, TestServer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What a user can see of a store, built from export lines or from changes.
#[derive(Debug, Default, PartialEq)]
struct Model {
    /// (ns, key) → (value bytes, content type, expires_at_ms)
    kv: BTreeMap<(String, String), (Vec<u8>, Value, Value)>,
    /// stream → (bucket_ms, retention_ms)
    streams: BTreeMap<String, (Value, Value)>,
    /// (stream, id) → (ts, type, data)
    events: BTreeMap<(String, String), (u64, Value, Value)>,
    /// (queue, id) → state
    jobs: BTreeMap<(String, String), String>,
    /// name → (cron, queue)
    schedules: BTreeMap<String, (Value, Value)>,
}

fn st(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(st(v))
        .expect("base64")
}

impl Model {
    fn from_export(lines: &[Value]) -> Model {
        let mut m = Model::default();
        for l in lines {
            match l["type"].as_str().unwrap() {
                "kv" => {
                    let value = match l.get("value") {
                        Some(v) if !v.is_null() => st(v).into_bytes(),
                        _ => b64(&l["value_b64"]),
                    };
                    m.kv.insert(
                        (st(&l["ns"]), st(&l["key"])),
                        (value, l["content_type"].clone(), norm(&l["expires_at_ms"])),
                    );
                }
                "stream" => {
                    m.streams.insert(
                        st(&l["name"]),
                        (l["bucket_ms"].clone(), l["retention_ms"].clone()),
                    );
                }
                "event" => {
                    m.events.insert(
                        (st(&l["stream"]), st(&l["id"])),
                        (
                            l["ts"].as_u64().unwrap(),
                            norm(&l["kind"]),
                            l["data"].clone(),
                        ),
                    );
                }
                "job" => {
                    m.jobs
                        .insert((st(&l["queue"]), st(&l["id"])), st(&l["state"]));
                }
                "schedule" => {
                    m.schedules
                        .insert(st(&l["name"]), (l["cron"].clone(), l["queue"].clone()));
                }
                _ => {}
            }
        }
        m
    }

    fn apply(&mut self, c: &Value) {
        let name = st(&c["name"]);
        match (c["domain"].as_str().unwrap(), c["op"].as_str().unwrap()) {
            ("kv", "put") => {
                let value = match c["value_encoding"].as_str() {
                    Some("utf8") => st(&c["value"]).into_bytes(),
                    Some("base64") => b64(&c["value"]),
                    other => panic!("value_encoding {other:?} in {c}"),
                };
                self.kv.insert(
                    (name, st(&c["key"])),
                    (value, c["content_type"].clone(), norm(&c["expires_at_ms"])),
                );
            }
            ("kv", "delete") => {
                self.kv.remove(&(name, st(&c["key"])));
            }
            ("events", "created" | "changed") => {
                self.streams
                    .insert(name, (c["bucket_ms"].clone(), c["retention_ms"].clone()));
            }
            ("events", "deleted") => {
                self.streams.remove(&name);
                self.events.retain(|(st, _), _| st != &name);
            }
            ("events", "dropped") => {
                let before = c["before_ms"].as_u64().unwrap();
                self.events
                    .retain(|(st, _), (ts, _, _)| st != &name || *ts >= before);
            }
            ("events", "appended") => {
                self.events.insert(
                    (name, st(&c["id"])),
                    (
                        c["ts"].as_u64().unwrap(),
                        norm(&c["type"]),
                        c["data"].clone(),
                    ),
                );
            }
            ("queue", "acked" | "deleted" | "purged") => {
                self.jobs.remove(&(name, st(&c["id"])));
            }
            ("queue", "configured" | "paused" | "resumed") => {}
            ("queue", _) => {
                self.jobs.insert((name, st(&c["id"])), st(&c["state"]));
            }
            ("schedules", "put") => {
                self.schedules
                    .insert(name, (c["cron"].clone(), c["queue"].clone()));
            }
            ("schedules", "deleted") => {
                self.schedules.remove(&name);
            }
            (d, op) => panic!("a change the model does not know: {d} {op}: {c}"),
        }
    }

    /// Drops keys expired at `now_ms` (an export leaves them out; their delete comes when the
    /// sweeper runs).
    fn expire(&mut self, now_ms: u64) {
        self.kv
            .retain(|_, (_, _, exp)| exp.as_u64().is_none_or(|e| e > now_ms));
    }
}

/// `null` for an absent field, the value otherwise.
fn norm(v: &Value) -> Value {
    v.clone()
}

async fn export(c: &mut Client) -> Vec<Value> {
    let r = c.get("/v1/admin/export").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("export line"))
        .collect();
    assert_eq!(lines.last().unwrap()["type"], "end", "a whole export");
    lines
}

use common::{feed_place as place, read_changes as read_all};

async fn put(c: &mut Client, path: &str, ct: &str, body: Vec<u8>) {
    let r = c.send("PUT", path, &[("content-type", ct)], body).await;
    assert!(r.status == 200 || r.status == 201, "{path}: {}", r.text());
}

async fn post(c: &mut Client, path: &str, body: Value) -> Value {
    let r = c.post_json(path, body).await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.text());
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

/// A seeded mix of every domain's writes.
async fn workload(c: &mut Client, rng: &mut rand::rngs::StdRng, rounds: usize, tag: &str) {
    use rand::Rng;
    for i in 0..rounds {
        let k = rng.random_range(0..40);
        match rng.random_range(0..12) {
            0..=2 => {
                let body = if rng.random_bool(0.3) {
                    vec![0u8, 255, k as u8, 7]
                } else {
                    format!("v{tag}{i}").into_bytes()
                };
                let ttl = if rng.random_bool(0.2) { "?ttl=1h" } else { "" };
                put(c, &format!("/v1/kv/app/k{k}{ttl}"), "text/plain", body).await;
            }
            3 => {
                post(
                    c,
                    "/v1/kv/app:incr",
                    json!({"key": format!("n{}", k % 5), "by": 3}),
                )
                .await;
            }
            4 => {
                let _ = c.delete(&format!("/v1/kv/app/k{k}")).await;
            }
            5 => {
                post(
                    c,
                    "/v1/kv/other:batchWrite",
                    json!({"ops": [
                        {"op": "put", "key": format!("b{k}"), "value_b64": "aGk="},
                        {"op": "delete", "key": format!("b{}", k + 1)},
                    ]}),
                )
                .await;
            }
            6 | 7 => {
                post(
                    c,
                    &format!("/v1/streams/s{}/events", k % 3),
                    json!({"type": "t", "data": {"i": i, "tag": tag}}),
                )
                .await;
            }
            8 | 9 => {
                post(
                    c,
                    &format!("/v1/queues/q{}/jobs", k % 2),
                    json!({"payload": {"i": i}}),
                )
                .await;
            }
            _ => {
                let claimed = post(
                    c,
                    &format!("/v1/queues/q{}/claim", k % 2),
                    json!({"max": 2}),
                )
                .await;
                for (n, j) in claimed["jobs"].as_array().unwrap().iter().enumerate() {
                    let id = st(&j["id"]);
                    let token = st(&j["lease_token"]);
                    let (verb, body) = if n == 0 {
                        ("ack", json!({"lease_token": token}))
                    } else {
                        ("nack", json!({"lease_token": token, "error": "boom"}))
                    };
                    let r = c
                        .post_json(&format!("/v1/queues/q{}/jobs/{id}/{verb}", k % 2), body)
                        .await;
                    assert_eq!(r.status, 204, "{}", r.text());
                }
            }
        }
    }
}

#[tokio::test]
async fn an_export_and_the_feed_from_its_position_are_the_store() {
    let s = TestServer::start_with(|c| c.kv.sweep_interval_ms = 20).await;
    let mut c = s.client().await;
    let mut rng = common::seeded_rng("feed_export");
    workload(&mut c, &mut rng, 300, "a").await;
    put(
        &mut c,
        "/v1/schedules/nightly",
        "application/json",
        br#"{"cron":"0 3 * * *","queue":"q0","payload":{"cron":true}}"#.to_vec(),
    )
    .await;

    // The export is taken while another client writes: it holds everything up to its
    // position, and perhaps some of what comes after.
    let addr = s.addr;
    let writer = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        let mut rng = common::seeded_rng("feed_export_during");
        workload(&mut c, &mut rng, 200, "b").await;
    });
    let snap = export(&mut c).await;
    writer.await.unwrap();
    let at = st(&snap[0]["position"]);
    assert!(place(&at).0 > 0, "the export names a position: {at}");

    // Then every kind of later write: a prefix delete, expiry by TTL (the sweeper runs by
    // itself), a trim, a stream deleted, a purge, a schedule firing and one deleted.
    workload(&mut c, &mut rng, 200, "c").await;
    put(
        &mut c,
        "/v1/schedules/weekly",
        "application/json",
        br#"{"cron":"0 4 * * MON","queue":"q1","payload":null}"#.to_vec(),
    )
    .await;
    put(
        &mut c,
        "/v1/kv/app/k1x",
        "text/plain",
        b"gone soon".to_vec(),
    )
    .await;
    put(
        &mut c,
        "/v1/kv/app/ttl?ttl=1h",
        "text/plain",
        b"expires".to_vec(),
    )
    .await;
    assert_eq!(c.delete("/v1/kv/app?prefix=k1").await.status, 200);
    let trim_at = common::T0_MS + 1;
    assert_eq!(
        c.delete(&format!("/v1/streams/s0/events?before={trim_at}"))
            .await
            .status,
        200
    );
    assert_eq!(c.delete("/v1/streams/s1").await.status, 204);
    post(&mut c, "/v1/queues/q0/jobs", json!({"payload": "to purge"})).await;
    assert_eq!(c.delete("/v1/queues/q0/jobs?state=ready").await.status, 200);
    // 13 hours on: the TTLs end and the sweeper deletes the keys, the 03:00 schedule fires.
    s.clock.advance_ms(13 * 3_600_000);
    common::eventually(10, "the TTL sweep and the schedule ran", || {
        let addr = s.addr;
        let at = at.clone();
        async move {
            let mut c = Client::connect(addr).await;
            let (changes, _) = read_all(&mut c, &at, "").await;
            let swept = changes
                .iter()
                .any(|c| c["cause"] == "expired" && c["key"] == "ttl");
            let fired = changes.iter().any(|c| c["schedule"] == "nightly");
            (swept && fired).then_some(())
        }
    })
    .await;
    assert_eq!(c.delete("/v1/schedules/nightly").await.status, 204);

    // Once the background work is done (delays ending, sweeps), the final export is exact.
    let mut end = String::new();
    let mut same = 0;
    while same < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = c.get("/v1/changes/cursors").await.json()["end"]
            .as_str()
            .unwrap()
            .to_string();
        same = if now == end { same + 1 } else { 0 };
        end = now;
    }
    let last = export(&mut c).await;
    let (changes, end) = read_all(&mut c, &at, "").await;
    assert_eq!(
        place(&end),
        place(&st(&last[0]["position"])),
        "the feed ends where the last export is"
    );
    let mut places: Vec<(u64, u32)> = changes.iter().map(|c| place(&st(&c["position"]))).collect();
    let sorted = {
        let mut p = places.clone();
        p.sort();
        p.dedup();
        p
    };
    assert_eq!(places, sorted, "in log order, each once");
    places.clear();

    let mut model = Model::from_export(&snap);
    for ch in &changes {
        model.apply(ch);
    }
    let now = last[0]["exported_at_ms"].as_u64().unwrap();
    model.expire(now);
    let want = Model::from_export(&last);
    assert_eq!(model.kv, want.kv, "kv");
    assert_eq!(model.streams, want.streams, "streams");
    assert_eq!(model.events, want.events, "events");
    assert_eq!(model.jobs, want.jobs, "jobs");
    assert_eq!(model.schedules, want.schedules, "schedules");
    assert!(!want.kv.is_empty() && !want.events.is_empty() && !want.jobs.is_empty());

    // Every kind of change the workload made is there, as that kind.
    let kinds: BTreeSet<String> = changes
        .iter()
        .map(|c| {
            let cause = c.get("cause").and_then(Value::as_str).unwrap_or("");
            format!("{}.{}.{}", st(&c["domain"]), st(&c["op"]), cause)
        })
        .collect();
    for k in [
        "kv.put.put",
        "kv.put.incr",
        "kv.put.batch",
        "kv.delete.delete",
        "kv.delete.batch",
        "kv.delete.prefix",
        "kv.delete.expired",
        "events.appended.",
        "events.dropped.trim",
        "events.deleted.",
        "queue.enqueued.",
        "queue.claimed.",
        "queue.acked.",
        "queue.nacked.",
        "queue.purged.",
        "schedules.put.",
        "schedules.deleted.",
    ] {
        assert!(kinds.contains(k), "no {k} change in {kinds:?}");
    }
    // The schedule's enqueue names it.
    assert!(
        changes
            .iter()
            .any(|c| c["op"] == "enqueued" && c["schedule"] == "nightly"),
        "the schedule's enqueue is in the feed with its source"
    );
    // A binary value travels as base64, a text one as text.
    assert!(changes
        .iter()
        .any(|c| c["op"] == "put" && c["value_encoding"] == "base64"));
    s.stop().await;
}

#[tokio::test]
async fn filters_pages_and_resuming_by_position_and_by_sse() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let start = c.get("/v1/changes/cursors").await.json()["end"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..5 {
        put(
            &mut c,
            &format!("/v1/kv/users/u{i}"),
            "text/plain",
            b"x".to_vec(),
        )
        .await;
        put(
            &mut c,
            &format!("/v1/kv/logs/l{i}"),
            "text/plain",
            b"y".to_vec(),
        )
        .await;
        post(&mut c, "/v1/streams/clicks/events", json!({"data": i})).await;
    }
    post(&mut c, "/v1/queues/mail/jobs", json!({"payload": 1})).await;

    let (all, _) = read_all(&mut c, &start, "").await;
    assert_eq!(
        all.len(),
        5 + 5 + 1 + 5 + 1,
        "10 puts, stream created, 5 appends, 1 job"
    );
    let (kv, _) = read_all(&mut c, &start, "&domains=kv&kv_prefix=us").await;
    assert_eq!(kv.len(), 5);
    assert!(kv.iter().all(|c| c["name"] == "users"));
    let (two, _) = read_all(&mut c, &start, "&domains=events,queue").await;
    assert_eq!(two.len(), 7);
    let bad = c
        .get(&format!("/v1/changes?after={start}&domains=cache"))
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("domains"), "{}", bad.text());
    let bad = c.get("/v1/changes?after=nonsense").await;
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "bad_request")
    );
    assert_eq!(c.get("/v1/changes").await.status, 400);

    // Resuming from a change's own position gives what follows it, nothing twice.
    let mid = st(&all[7]["position"]);
    let (rest, _) = read_all(&mut c, &mid, "").await;
    assert_eq!(rest, all[8..].to_vec());

    // A position of another history: 409 naming this one.
    let gen = start.split(':').next().unwrap();
    let other = if gen.starts_with('0') { "1" } else { "0" };
    let r = c
        .get(&format!("/v1/changes?after={other}{}", &start[1..]))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "generation_mismatch");
    assert_eq!(r.json()["error"]["position"].as_str().unwrap(), gen);

    // SSE: from a position, each change once with its position as id; a reconnect with
    // Last-Event-ID resumes after the last one received.
    let mut follower = s.client().await;
    let resp = follower
        .open(
            "GET",
            &format!("/v1/changes?after={start}&domains=kv"),
            &[("accept", "text/event-stream")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = common::sse_ids(&mut body, 10).await;
    let want: Vec<String> = all
        .iter()
        .filter(|c| c["domain"] == "kv")
        .map(|c| st(&c["position"]))
        .collect();
    assert_eq!(first, want);
    put(&mut c, "/v1/kv/users/live", "text/plain", b"z".to_vec()).await;
    let live = common::sse_ids(&mut body, 1).await;
    drop(body);
    drop(follower);
    put(&mut c, "/v1/kv/users/missed", "text/plain", b"z".to_vec()).await;
    let mut follower = s.client().await;
    let resp = follower
        .open(
            "GET",
            "/v1/changes?domains=kv",
            &[("accept", "text/event-stream"), ("last-event-id", &live[0])],
        )
        .await;
    let mut body = resp.into_body();
    let again = common::sse_ids(&mut body, 1).await;
    let (tail, _) = read_all(&mut c, &live[0], "&domains=kv").await;
    assert_eq!(again, vec![st(&tail[0]["position"])]);
    assert_eq!(tail[0]["key"], "missed");

    // A long poll wakes on the next write.
    let end = c.get("/v1/changes/cursors").await.json()["end"]
        .as_str()
        .unwrap()
        .to_string();
    let addr = s.addr;
    let poll = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.get(&format!("/v1/changes?after={end}&wait=20s")).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    put(&mut c, "/v1/kv/users/woke", "text/plain", b"w".to_vec()).await;
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the long poll woke")
        .unwrap();
    assert!(r.text().contains("\"woke\""), "{}", r.text());
    s.stop().await;
}

#[tokio::test]
async fn a_cursor_holds_the_log_until_it_passes_the_bound_then_410() {
    let s = TestServer::start_with(|c| {
        c.engine.wal_segment_bytes = 64 << 10;
        c.engine.wal_spare_segments_max = 0;
        c.engine.checkpoint_log_bytes = 64 << 10;
        c.engine.checkpoint_interval_ms = 10;
        c.engine.feed_retain_bytes_max = 512 << 10;
    })
    .await;
    let mut c = s.client().await;
    let r = c
        .send(
            "PUT",
            "/v1/changes/cursors/hub",
            &[],
            r#"{"position":"now"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let held = st(&r.json()["position"]);
    // About 256 KiB of writes: four segments the shards no longer need, kept for the cursor.
    let value = vec![b'v'; 4000];
    for i in 0..64 {
        put(
            &mut c,
            &format!("/v1/kv/big/k{i}"),
            "text/plain",
            value.clone(),
        )
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = c.get("/v1/changes?cursor=hub&limit=1000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text().lines().count(),
        64,
        "every change the cursor has not read is there"
    );
    // The consumer confirms what it read; moving back is refused.
    let next = r.header("shardbox-next-position").unwrap().to_string();
    let r = c
        .send(
            "PUT",
            "/v1/changes/cursors/hub",
            &[],
            format!(r#"{{"position":"{next}"}}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .send(
            "PUT",
            "/v1/changes/cursors/hub",
            &[],
            format!(r#"{{"position":"{held}"}}"#),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Now the consumer stops reading: 2 MiB later it is dropped, and writes never waited.
    for i in 0..512 {
        put(
            &mut c,
            &format!("/v1/kv/big/m{i}"),
            "text/plain",
            value.clone(),
        )
        .await;
    }
    let cursor = common::eventually(10, "the cursor is dropped", || {
        let addr = s.addr;
        async move {
            let mut c = Client::connect(addr).await;
            let r = c.get("/v1/changes/cursors/hub").await.json();
            (r["state"] == "resnapshot_required").then_some(r)
        }
    })
    .await;
    assert_eq!(cursor["name"], "hub");
    let r = c.get("/v1/changes?cursor=hub").await;
    assert_eq!(r.status, 410, "{}", r.text());
    assert_eq!(r.error_code(), "resnapshot_required");
    let oldest = st(&r.json()["error"]["position"]);
    assert!(
        place(&oldest).0 > place(&next).0,
        "the oldest position still held: {oldest}"
    );
    let status = c.get("/v1/status").await.json();
    assert_eq!(status["feed"]["cursors"][0]["state"], "resnapshot_required");
    let metrics = c.get("/metrics").await.text();
    assert_eq!(
        common::metric(&metrics, "shardbox_feed_cursors_resnapshot_required"),
        1.0
    );
    // The log stayed within its bound: segments on disk ≈ the retained bytes + what the shards
    // need, not the 2 MiB written.
    let segments = common::metric(&metrics, "shardbox_wal_segment_files");
    assert!(segments <= 16.0, "{segments} segments of 64 KiB on disk");
    // Starting over: the cursor is deleted and made again at an export's position.
    assert_eq!(c.delete("/v1/changes/cursors/hub").await.status, 204);
    assert_eq!(c.delete("/v1/changes/cursors/hub").await.status, 404);
    let snap = export(&mut c).await;
    let at = st(&snap[0]["position"]);
    let r = c
        .send(
            "PUT",
            "/v1/changes/cursors/hub",
            &[],
            format!(r#"{{"position":"{at}"}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(c.get("/v1/changes?cursor=hub").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn cursors_survive_a_restart_and_a_restore_makes_a_new_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    put(&mut c, "/v1/kv/a/one", "text/plain", b"1".to_vec()).await;
    let r = c
        .send(
            "PUT",
            "/v1/changes/cursors/keep",
            &[],
            r#"{"position":"now"}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    let at = st(&r.json()["position"]);
    put(&mut c, "/v1/kv/a/two", "text/plain", b"2".to_vec()).await;
    let backup = tmp.path().join("backup");
    shardbox::store::backup::backup(&s.store, &backup, &shardbox::Progress::quiet()).unwrap();
    put(&mut c, "/v1/kv/a/three", "text/plain", b"3".to_vec()).await;
    drop(c);
    s.stop().await;

    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    let r = c.get("/v1/changes/cursors/keep").await.json();
    assert_eq!(r["position"], at, "the cursor is where it was");
    let r = c.get("/v1/changes?cursor=keep").await;
    let keys: Vec<String> = r
        .text()
        .lines()
        .map(|l| st(&serde_json::from_str::<Value>(l).unwrap()["key"]))
        .collect();
    assert_eq!(keys, ["two", "three"]);
    drop(c);
    s.stop().await;

    shardbox::store::backup::restore(&backup, &dir, true, &shardbox::Progress::quiet()).unwrap();
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    let r = c.get(&format!("/v1/changes?after={at}")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "generation_mismatch");
    let now = c.get("/v1/changes/cursors").await.json();
    assert_ne!(
        now["end"].as_str().unwrap().split(':').next(),
        at.split(':').next(),
        "a new generation"
    );
    drop(c);
    s.stop().await;
}

#[tokio::test]
async fn an_ndjson_follower_gets_changes_live_and_lets_go_when_it_leaves() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let mut follower = s.client().await;
    let resp = follower
        .open("GET", "/v1/changes?after=now&follow=true", &[])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    put(&mut c, "/v1/kv/live/a", "text/plain", b"1".to_vec()).await;
    let mut text = String::new();
    while !text.contains('\n') {
        use http_body_util::BodyExt as _;
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("a line within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(d) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
    }
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["op"].as_str(), line["key"].as_str()),
        (Some("put"), Some("a"))
    );
    assert_eq!(common::scrape(s.addr, "shardbox_feed_holds").await, 1.0);
    // The follower leaves: its hold on the log and its place among the followers go.
    drop(body);
    drop(follower);
    common::eventually(20, "the follower's hold is released", || async {
        let holds = common::scrape(s.addr, "shardbox_feed_holds").await;
        let open = common::scrape(s.addr, "shardbox_stream_followers_open").await;
        (holds == 0.0 && open == 0.0).then_some(())
    })
    .await;
    s.stop().await;
}
