//! What the server accepts, it can serve back: input at the edge of every limit is pushed
//! through every read path (get, head, list, batch get, claim, job get/list, schedule list,
//! cron fire, event range, counts). Anything past a limit is refused at the door with a 400.

use crate::common;

use common::{Client, TestServer};
use rand::Rng;
use serde_json::{json, Value};

/// JSON nested `depth` levels: `[[[…1…]]]`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// A random JSON document at most `depth` deep, mixing objects, arrays, strings with escapes
/// and brackets, numbers.
fn random_json(rng: &mut rand::rngs::StdRng, depth: usize) -> Value {
    if depth == 0 {
        return match rng.random_range(0..4) {
            0 => json!(rng.random::<i64>()),
            1 => json!("q\"uo]te{s\\ \n \u{e9}"),
            2 => json!(null),
            _ => json!(rng.random::<f64>()),
        };
    }
    let inner = random_json(rng, depth - 1);
    if rng.random_bool(0.5) {
        json!([inner, "]]]", 2])
    } else {
        json!({"k\"}": inner, "n": 1})
    }
}

#[tokio::test]
async fn poison_payloads_are_refused_and_deep_ones_served_everywhere() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    // Past the limit: refused at the door, for jobs, schedules and events alike (sent as raw
    // text: serde_json itself cannot build a Value that deep).
    for depth in [shardbox::base::util::JSON_DEPTH_MAX + 1, 128, 5_000] {
        let body = format!("{{\"payload\":{}}}", nested(depth));
        let r = c.send("POST", "/v1/queues/q/jobs", &[], body).await;
        assert_eq!(r.status, 400, "depth {depth}: {}", r.text());
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested"));
        let body = format!(
            "{{\"cron\":\"* * * * *\",\"queue\":\"q\",\"payload\":{}}}",
            nested(depth)
        );
        assert_eq!(
            c.send("PUT", "/v1/schedules/deep", &[], body).await.status,
            400
        );
        let body = format!("{{\"data\":{}}}", nested(depth));
        assert_eq!(
            c.send("POST", "/v1/streams/s/events", &[], body)
                .await
                .status,
            400
        );
    }

    // At the limit: accepted, and every read path serves it back unchanged.
    let deep = nested(shardbox::base::util::JSON_DEPTH_MAX);
    let deep_value: Value = serde_json::from_str(&deep).unwrap();
    let good = c
        .post_json("/v1/queues/q/jobs", json!({"payload": {"ok": 1}}))
        .await;
    assert_eq!(good.status, 201);
    let r = c
        .send(
            "POST",
            "/v1/queues/q/jobs",
            &[],
            format!("{{\"payload\":{deep}}}"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let deep_id = r.json()["id"].as_str().unwrap().to_string();
    let good2 = c
        .post_json("/v1/queues/q/jobs", json!({"payload": [2]}))
        .await;
    assert_eq!(good2.status, 201);
    for state in ["ready", "in_flight", "dead", "delayed"] {
        let r = c.get(&format!("/v1/queues/q/jobs?state={state}")).await;
        assert_eq!(r.status, 200, "list {state}: {}", r.text());
    }
    let r = c.get(&format!("/v1/queues/q/jobs/{deep_id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["payload"], deep_value);
    // The claim that holds the deep job delivers its neighbours too.
    let r = c.post_json("/v1/queues/q/claim", json!({"max": 10})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let jobs = r.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().any(|j| j["payload"] == deep_value));
    assert!(jobs.iter().any(|j| j["payload"] == json!({"ok": 1})));
    assert_eq!(c.get("/v1/queues/q/jobs?state=in_flight").await.status, 200);

    // A schedule with the deep payload: listing, reading, and the job it fires.
    let body = format!("{{\"cron\":\"* * * * *\",\"queue\":\"cq\",\"payload\":{deep}}}");
    let r = c.send("PUT", "/v1/schedules/deep", &[], body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["payload"], deep_value);
    let all = c.get("/v1/schedules").await;
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(all.json()["schedules"][0]["payload"], deep_value);
    s.clock.advance_ms(60_000);
    let addr = s.addr;
    let fired = common::eventually(10, "the schedule fires", || async move {
        let r = Client::connect(addr)
            .await
            .post_json("/v1/queues/cq/claim", json!({}))
            .await;
        let jobs = r.json()["jobs"].as_array().cloned().unwrap_or_default();
        jobs.into_iter().next()
    })
    .await;
    assert_eq!(fired["payload"], deep_value);

    // Event data at the limit: range both ways.
    let body = format!("{{\"data\":{deep}}}");
    assert_eq!(
        c.send("POST", "/v1/streams/s/events", &[], body)
            .await
            .status,
        201
    );
    for order in ["asc", "desc"] {
        let r = c.get(&format!("/v1/streams/s/events?order={order}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["events"][0]["data"], deep_value);
    }
    drop(c);
    s.stop().await;
}

#[tokio::test]
async fn ttls_are_bounded_at_the_door_and_long_ones_stay_readable() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    // Past 100 years: a 400 naming the bound, on every way a TTL comes in.
    let r = c.put("/v1/kv/t/a?ttl=3000000d", "x").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("100 years"), "{}", r.text());
    let r = c
        .post_json(
            "/v1/kv/t:incr",
            json!({"key": "n", "by": 1, "ttl": "3000000d"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c
        .post_json(
            "/v1/kv/t:batchWrite",
            json!({"ops": [{"op": "put", "key": "b", "value_b64": "eA==", "ttl": "3000000d"}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(c.get("/v1/kv/t/a").await.status, 404);

    // The longest accepted TTL, by each way in: readable by GET, HEAD, list and batchGet.
    assert_eq!(c.put("/v1/kv/t/a?ttl=36500d", "x").await.status, 201);
    let r = c
        .post_json(
            "/v1/kv/t:incr",
            json!({"key": "n", "by": 1, "ttl": "36500d"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .post_json(
            "/v1/kv/t:batchWrite",
            json!({"ops": [{"op": "put", "key": "b", "value_b64": "eA==", "ttl": "36500d"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for key in ["a", "n", "b"] {
        let r = c.get(&format!("/v1/kv/t/{key}")).await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert!(r.header("expires").is_some());
        let r = c.send("HEAD", &format!("/v1/kv/t/{key}"), &[], "").await;
        assert_eq!(r.status, 200);
    }
    let r = c.get("/v1/kv/t").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["keys"].as_array().unwrap().len(), 3);
    let r = c
        .post_json("/v1/kv/t:batchGet", json!({"keys": ["a", "n", "b"]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(c);
    s.stop().await;
}

/// Random accepted-but-extreme records through every read path, seeded (the seed is printed).
#[tokio::test]
async fn random_extreme_records_are_served_back_by_every_read_path() {
    let mut rng = common::seeded_rng("random_extreme_records_are_served_back_by_every_read_path");
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let ns = "n".repeat(64);
    let mut lasting = 0;
    for i in 0..40 {
        // Keys up to 1024 bytes of multi-byte UTF-8, values up to 64 KiB, long content types.
        let key_len = rng.random_range(1..=340);
        let key: String = format!("{i}/{}", "\u{e9}\u{4e2d}/".repeat(key_len / 3 + 1));
        let key: String = key.chars().take(key_len).collect();
        let value: Vec<u8> = (0..rng.random_range(0..65_536))
            .map(|_| rng.random())
            .collect();
        let enc = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
        let ttl = ["", "?ttl=36500d", "?ttl=1ms", "?ttl=1h"][rng.random_range(0..4)];
        lasting += usize::from(ttl != "?ttl=1ms");
        let ct = format!("application/x-{}", "a".repeat(rng.random_range(0..200)));
        let r = c
            .send(
                "PUT",
                &format!("/v1/kv/{ns}/{enc}{ttl}"),
                &[("content-type", &ct)],
                value.clone(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let r = c.get(&format!("/v1/kv/{ns}/{enc}")).await;
        if ttl != "?ttl=1ms" {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.body.as_ref(), value.as_slice());
            assert_eq!(r.header("content-type"), Some(ct.as_str()));
        } else {
            assert!(r.status == 200 || r.status == 404);
        }
        let r = c.send("HEAD", &format!("/v1/kv/{ns}/{enc}"), &[], "").await;
        assert!(r.status == 200 || r.status == 404);
        // Jobs and events with random documents at or below the depth limit.
        let depth = rng.random_range(0..=shardbox::base::util::JSON_DEPTH_MAX - 2);
        let doc = random_json(&mut rng, depth);
        let r = c
            .post_json(
                "/v1/queues/x/jobs",
                json!({"payload": doc, "priority": rng.random_range(0..10)}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let r = c
            .post_json("/v1/streams/x/events", json!({"type": "t", "data": doc}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    s.clock.advance_ms(10);
    let mut after: Option<String> = None;
    let mut listed = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/kv/{ns}?limit=7&after={a}"),
            None => format!("/v1/kv/{ns}?limit=7"),
        };
        let r = c.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        listed += page["keys"].as_array().unwrap().len();
        match page["cursor"].as_str() {
            Some(cur) => after = Some(cur.to_string()),
            None => break,
        }
    }
    assert_eq!(listed, lasting, "every unexpired key is listed once");
    for path in [
        "/v1/queues/x/jobs?state=ready&limit=1000",
        "/v1/streams/x/events?limit=1000",
        "/v1/streams/x/events?order=desc&limit=1000",
        "/v1/streams/x/counts?from=1749990000000&step=1h",
        "/v1/queues/x",
        "/v1/streams/x",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = c
        .post_json("/v1/queues/x/claim", json!({"max": 1000}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["jobs"].as_array().unwrap().len(), 40);
    drop(c);
    s.stop().await;
}

/// A JSON array where an object is expected is refused at every level: serde would read
/// `[null, true]` as `{"tags": null, "all": true}` and purge a whole cache namespace.
#[tokio::test]
async fn arrays_are_not_read_as_objects() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    assert!(
        c.send("PUT", "/v1/cache/pages/home?ttl=60s", &[], "html")
            .await
            .status
            < 300
    );
    let json = [("content-type", "application/json")];
    let ndjson = [("content-type", "application/x-ndjson")];
    for (method, path, headers, body) in [
        ("POST", "/v1/cache/pages:purge", &json[..], "[null, true]"),
        ("POST", "/v1/kv/app:incr", &json[..], r#"["k", 5, null]"#),
        (
            "POST",
            "/v1/kv/app:batchWrite",
            &json[..],
            r#"{"ops": [["delete", "k"]]}"#,
        ),
        ("POST", "/v1/queues/q/jobs", &json[..], r#"[{"a": 1}]"#),
        (
            "POST",
            "/v1/queues/q/jobs",
            &ndjson[..],
            "{\"payload\": 1}\n[2]\n",
        ),
        (
            "POST",
            "/v1/queues/q/jobs",
            &json[..],
            r#"{"payload": 1, "backoff": ["1s", "2s", 2]}"#,
        ),
        ("PUT", "/v1/queues/q", &json[..], "[null, null, null]"),
        ("PUT", "/v1/streams/s", &json[..], "[null, null]"),
        ("POST", "/v1/streams/s/events", &json[..], r#"[{"n": 1}]"#),
        ("PUT", "/v1/changes/cursors/c", &json[..], r#"["now"]"#),
    ] {
        let r = c.send(method, path, headers, body).await;
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        assert!(
            r.text().contains("sequence"),
            "{method} {path}: {}",
            r.text()
        );
    }
    // The purge took nothing; the same requests as objects work.
    assert_eq!(c.get("/v1/cache/pages/home").await.status, 200);
    let r = c
        .send("POST", "/v1/kv/app:incr", &json, r#"{"key": "k", "by": 5}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.stop().await;
}
