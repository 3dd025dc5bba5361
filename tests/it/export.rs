//! `shardbox export` / `import` with the real binary: an export taken from the running server
//! (admin socket) equals one taken from the stopped directory; importing it into a new
//! directory and exporting again gives the same records (what the format says does not travel
//! aside); a truncated file imports nothing; a record the API would refuse is refused.

use crate::common;

use common::cli::{ok, p, shardbox};
use common::spawn::{spawn_shardbox, KillOnDrop};
use common::Client;
use serde_json::{json, Value};
use std::path::Path;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn of_type<'a>(ls: &'a [Value], t: &str) -> Vec<&'a Value> {
    ls.iter().filter(|l| l["type"] == t).collect()
}

/// A job as it must survive an import: no id, attempts or times; in flight becomes ready.
fn portable_job(j: &Value) -> Value {
    let state = match j["state"].as_str().unwrap() {
        "in_flight" => "ready",
        s => s,
    };
    json!({
        "queue": j["queue"], "state": state, "payload": j["payload"],
        "priority": j["priority"], "max_attempts": j["max_attempts"], "backoff": j["backoff"],
        "run_at_ms": if state == "delayed" { j["run_at_ms"].clone() } else { Value::Null },
    })
}

async fn fill(c: &mut Client) {
    let put = |path: &str, ct: &str, body: Vec<u8>| {
        let (path, ct) = (path.to_string(), ct.to_string());
        (path, ct, body)
    };
    for (path, ct, body) in [
        put("/v1/kv/app/text", "text/plain", b"hello".to_vec()),
        put("/v1/kv/app/bin", "image/png", vec![0, 159, 146, 150, 255]),
        put("/v1/kv/app/soon?ttl=1h", "text/plain", b"expires".to_vec()),
        put(
            "/v1/kv/other/dir/x",
            "application/json",
            b"{\"a\":[1,2]}".to_vec(),
        ),
    ] {
        let r = c.send("PUT", &path, &[("content-type", &ct)], body).await;
        assert!(r.status < 300, "{path}: {}", r.text());
    }
    let r = c
        .send(
            "PUT",
            "/v1/streams/clicks",
            &[],
            json!({"bucket": "1h"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let events: String = [
        json!({"ts": now - 7_200_000, "type": "view", "data": {"page": "/"}}),
        json!({"ts": now - 60_000, "type": "click", "data": {"b": 1}}),
        json!({"ts": now - 60_000, "type": "click", "data": {"b": 2}}),
        json!({"ts": now - 1000, "data": [1, "two", null]}),
    ]
    .iter()
    .map(|e| format!("{e}\n"))
    .collect();
    let r = c
        .send(
            "POST",
            "/v1/streams/clicks/events",
            &[("content-type", "application/x-ndjson")],
            events,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    let r = c
        .send(
            "PUT",
            "/v1/queues/mail",
            &[],
            json!({"max_attempts": 3, "default_lease": "2m"}).to_string(),
        )
        .await;
    assert!(r.status < 300, "{}", r.text());
    for (i, pri) in [(0, 5), (1, 0), (2, 9)] {
        let r = c
            .post_json(
                "/v1/queues/mail/jobs",
                json!({"payload": {"n": i}, "priority": pri}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Stored as sent, line breaks and all: the export must still be one line per record.
    let pretty =
        "{\n  \"payload\": {\n    \"to\": [\n      \"x\"\n    ]\n  },\n  \"delay\": \"1h\"\n}";
    let r = c
        .send(
            "POST",
            "/v1/queues/mail/jobs",
            &[("content-type", "application/json")],
            pretty,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .post_json("/v1/queues/mail/claim", json!({"max": 1, "lease": "10m"}))
        .await;
    assert_eq!(r.json()["jobs"].as_array().unwrap().len(), 1);
    // A depth bound lowered below what the queue holds (3 ready and delayed): the import must
    // still bring every job in, then set the bound.
    let r = c
        .send(
            "PUT",
            "/v1/queues/mail",
            &[],
            json!({"max_depth": 2}).to_string(),
        )
        .await;
    assert!(r.status < 300, "{}", r.text());
    // One dead job in another queue, which is paused.
    c.post_json(
        "/v1/queues/dl/jobs",
        json!({"payload": "doomed", "max_attempts": 1}),
    )
    .await;
    let r = c.post_json("/v1/queues/dl/claim", json!({"max": 1})).await;
    let job = r.json()["jobs"][0].clone();
    let r = c
        .post_json(
            &format!("/v1/queues/dl/jobs/{}/nack", job["id"].as_str().unwrap()),
            json!({"lease_token": job["lease_token"], "error": "boom"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text());
    assert!(c.post_json("/v1/queues/dl:pause", json!({})).await.status < 300);
    let r = c
        .send(
            "PUT",
            "/v1/schedules/nightly",
            &[],
            json!({"cron": "0 6 * * *", "queue": "mail", "payload": {"kind": "digest"}})
                .to_string(),
        )
        .await;
    assert!(r.status < 300, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_online_equals_offline_and_round_trips_through_import() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (child, addr) = spawn_shardbox(&a, &[]).unwrap();
    let mut child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    fill(&mut c).await;

    let online = tmp.path().join("online.ndjson");
    let out = shardbox(&["export", "--data", p(&a), "--out", p(&online)]);
    ok(&out, "online export");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("online"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An export never writes over a file.
    let again = shardbox(&["export", "--data", p(&a), "--out", p(&online)]);
    assert!(!again.status.success());

    drop(c);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.0.wait().unwrap().success());
    let offline = tmp.path().join("offline.ndjson");
    ok(
        &shardbox(&["export", "--data", p(&a), "--out", p(&offline)]),
        "offline export",
    );
    let (on, off) = (lines(&online), lines(&offline));
    assert_eq!(on[1..], off[1..], "online and offline exports differ");
    assert_eq!(off[0]["format"], "shardbox-export");
    assert_eq!(off.last().unwrap()["lines"], off.len());
    assert_eq!(of_type(&off, "kv").len(), 4);
    assert_eq!(of_type(&off, "event").len(), 4);
    assert_eq!(of_type(&off, "job").len(), 5);
    let delayed = of_type(&off, "job")
        .into_iter()
        .find(|j| j["state"] == "delayed")
        .unwrap();
    assert_eq!(delayed["payload"], json!({"to": ["x"]}));
    let bin = of_type(&off, "kv")
        .into_iter()
        .find(|l| l["key"] == "bin")
        .unwrap();
    assert_eq!(bin["value_b64"], "AJ+Slv8=");
    assert_eq!(bin["content_type"], "image/png");

    // Import into a new directory, check it, export it again.
    let report = ok(
        &shardbox(&["import", "--data", p(&b), "--in", p(&offline)]),
        "import",
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report,
        json!({"kv": 4, "streams": 1, "events": 4, "queues": 2, "jobs": 4, "schedules": 1,
               "dead_jobs_skipped": 1, "expired_skipped": 0})
    );
    // The same file again into the now non-empty directory: refused without --merge.
    let again = shardbox(&["import", "--data", p(&b), "--in", p(&offline)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--merge"));
    ok(
        &shardbox(&["check", "--data", p(&b)]),
        "check of the import",
    );
    let round = tmp.path().join("round.ndjson");
    ok(
        &shardbox(&["export", "--data", p(&b), "--out", p(&round)]),
        "export of the import",
    );
    let back = lines(&round);
    for t in ["stream", "event", "queue", "schedule"] {
        assert_eq!(of_type(&back, t), of_type(&off, t), "{t} lines differ");
    }
    // KV: the same values; a TTL is kept to within the time the import took.
    // (In shard order: the new directory's hash seed orders them differently.)
    let kv = |ls: &[Value]| -> Vec<Value> {
        let mut v: Vec<Value> = of_type(ls, "kv")
            .into_iter()
            .map(|l| {
                let mut l = l.clone();
                l.as_object_mut().unwrap().remove("expires_at_ms");
                l
            })
            .collect();
        v.sort_by_key(|l| (l["ns"].to_string(), l["key"].to_string()));
        v
    };
    assert_eq!(kv(&back), kv(&off));
    let exp = |ls: &[Value]| {
        of_type(ls, "kv")
            .into_iter()
            .find(|l| l["key"] == "soon")
            .unwrap()["expires_at_ms"]
            .as_u64()
            .unwrap()
    };
    assert!(exp(&back).abs_diff(exp(&off)) < 60_000);
    let jobs = |ls: &[Value]| -> Vec<Value> {
        let mut v: Vec<Value> = of_type(ls, "job")
            .into_iter()
            .filter(|j| j["state"] != "dead")
            .map(portable_job)
            .collect();
        v.sort_by_key(|j| j.to_string());
        v
    };
    assert_eq!(jobs(&back), jobs(&off));
}

#[test]
fn a_truncated_or_refused_file_is_reported_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, ls: &[String]| {
        let path = tmp.path().join(name);
        std::fs::write(
            &path,
            ls.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        path
    };
    let header =
        json!({"type": "header", "format": "shardbox-export", "version": 1, "exported_at_ms": 1})
            .to_string();
    let kv = |key: &str| json!({"type": "kv", "ns": "app", "key": key, "value": "v"}).to_string();
    let end = |n: usize| json!({"type": "end", "lines": n}).to_string();

    // No end line: truncated, nothing written (the directory is not even created).
    let trunc = file("trunc.ndjson", &[header.clone(), kv("a")]);
    let dir = tmp.path().join("t");
    let out = shardbox(&["import", "--data", p(&dir), "--in", p(&trunc)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    assert!(!dir.exists());
    // A count that does not match, an unknown type, a second header: refused before writing.
    for (name, ls) in [
        ("count", vec![header.clone(), kv("a"), end(2)]),
        (
            "type",
            vec![header.clone(), json!({"type": "blob"}).to_string(), end(3)],
        ),
        ("header", vec![header.clone(), header.clone(), end(3)]),
        ("first", vec![kv("a"), end(2)]),
    ] {
        let f = file(&format!("{name}.ndjson"), &ls);
        let out = shardbox(&["import", "--data", p(&dir), "--in", p(&f)]);
        assert!(!out.status.success(), "{name} imported");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("line"),
            "{name}"
        );
        assert!(!dir.exists(), "{name} wrote");
    }
    // Records that cannot be converted are found before anything is written.
    for (name, bad) in [
        (
            "b64",
            json!({"type": "kv", "ns": "a", "key": "k", "value_b64": "!!"}).to_string(),
        ),
        (
            "both",
            json!({"type": "kv", "ns": "a", "key": "k", "value": "x", "value_b64": "eA=="})
                .to_string(),
        ),
        (
            "state",
            json!({"type": "job", "queue": "q", "id": "1", "state": "zombie", "payload": 1,
            "priority": 0, "run_at_ms": 0, "attempts": 0, "max_attempts": 1,
            "backoff": {"base_ms": 1, "factor": 1.0, "max_ms": 1}, "enqueued_ms": 0})
            .to_string(),
        ),
    ] {
        let f = file(
            &format!("{name}.ndjson"),
            &[header.clone(), kv("a"), bad, end(4)],
        );
        let out = shardbox(&["import", "--data", p(&dir), "--in", p(&f)]);
        assert!(!out.status.success(), "{name} imported");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("line 3"),
            "{name}"
        );
        assert!(!dir.exists(), "{name} wrote");
    }
    // Import reads its file twice: a pipe is refused with a message, not imported as nothing.
    let out = shardbox(&["import", "--data", p(&dir), "--in", "/dev/stdin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give a file"));
    // A well-formed file with a record the API refuses (a key past 1024 bytes, a payload nested
    // too deep): the import stops there and names the line.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    // A queue whose lease is 0 or a stream with a 1 ms bucket is refused like over the API.
    let queue = |lease: u64| {
        json!({"type": "queue", "name": "q", "paused": false, "max_depth": 0,
               "default_lease_ms": lease, "max_attempts": 3,
               "backoff": {"base_ms": 1000, "factor": 2.0, "max_ms": 60000}})
        .to_string()
    };
    let stream = json!({"type": "stream", "name": "s", "bucket_ms": 1, "retention_ms": 0});
    // Refused over the API too (issue 19): a retention past 100 years, a content type no
    // header can carry.
    let forever = json!({"type": "stream", "name": "s", "bucket_ms": 3_600_000u64,
                         "retention_ms": u64::MAX});
    let crlf = json!({"type": "kv", "ns": "app", "key": "ct", "value": "v",
                      "content_type": "text/plain\r\nx-evil: 1"});
    for (name, bad) in [
        ("retention", forever.to_string()),
        ("content_type", crlf.to_string()),
        ("lease", queue(0)),
        ("bucket", stream.to_string()),
        ("key", kv(&"k".repeat(2000))),
        (
            "deep",
            format!(
                r#"{{"type":"job","queue":"q","id":"1","state":"ready","payload":{deep},"priority":0,"run_at_ms":0,"attempts":0,"max_attempts":3,"backoff":{{"base_ms":1000,"factor":2.0,"max_ms":60000}},"enqueued_ms":0}}"#
            ),
        ),
    ] {
        let f = file(
            &format!("{name}.ndjson"),
            &[header.clone(), kv("ok"), bad, end(4)],
        );
        let dir = tmp.path().join(name);
        let out = shardbox(&["import", "--data", p(&dir), "--in", p(&f)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} imported");
        assert!(err.contains("line 3"), "{name}: {err}");
    }
}
