//! After a scripted workload, `/metrics` counts exactly what was done (that test runs alone:
//! the counters are process-wide), and the page carries the process's own series.

use crate::common;

use common::TestServer;
use serde_json::json;

/// The value of the series `name{labels}` (labels exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Sum over every series of `name` (any labels).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_counters_match_a_scripted_workload() {
    // Process-wide counters, counted exactly: alone in a process of its own.
    if !common::alone() {
        return;
    }
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for i in 0..7 {
        assert_eq!(c.put(&format!("/v1/kv/app/k{i}"), "v").await.status, 201);
    }
    for i in 0..3 {
        c.get(&format!("/v1/kv/app/k{i}")).await;
    }
    assert_eq!(c.get("/v1/kv/app/nope").await.status, 404);
    for i in 0..4 {
        c.post_json("/v1/queues/mail/jobs", json!({"payload": i}))
            .await;
    }
    let claimed = c
        .post_json("/v1/queues/mail/claim", json!({"max": 1}))
        .await;
    assert_eq!(claimed.status, 200);
    for i in 0..5 {
        c.post_json("/v1/streams/clicks/events", json!({"data": {"i": i}}))
            .await;
    }
    let m = c.get("/metrics").await.text();

    let req = |method: &str, route: &str, status: u16| {
        value(
            &m,
            &format!(
                "shardbox_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(req("PUT", "/v1/kv/{ns}/{key}", 201), Some(7.0), "{m}");
    assert_eq!(req("GET", "/v1/kv/{ns}/{key}", 200), Some(3.0));
    assert_eq!(req("GET", "/v1/kv/{ns}/{key}", 404), Some(1.0));
    assert_eq!(req("POST", "/v1/queues/{q}/jobs", 201), Some(4.0));
    assert_eq!(
        value(
            &m,
            "shardbox_http_request_duration_seconds_count{route=\"/v1/kv/{ns}/{key}\",method=\"PUT\"}"
        ),
        Some(7.0)
    );
    assert!(m.contains("# TYPE shardbox_http_requests_total counter"));
    assert!(m.contains("# TYPE shardbox_http_request_duration_seconds histogram"));

    let jobs = |state: &str| {
        value(
            &m,
            &format!("shardbox_queue_jobs{{queue=\"mail\",state=\"{state}\"}}"),
        )
    };
    assert_eq!(jobs("ready"), Some(3.0));
    assert_eq!(jobs("in_flight"), Some(1.0));
    assert_eq!(jobs("dead"), Some(0.0));
    assert_eq!(
        value(&m, "shardbox_stream_events{stream=\"clicks\"}"),
        Some(5.0)
    );
    // Every applied operation is in exactly one batch of the histogram.
    let ops = sum(&m, "shardbox_shard_ops_total");
    assert!(ops >= 7.0 + 4.0 + 1.0 + 5.0, "{ops}");
    assert_eq!(sum(&m, "shardbox_shard_batch_ops_sum"), ops);
    assert_eq!(
        sum(&m, "shardbox_shard_batch_ops_count"),
        sum(&m, "shardbox_shard_commits_total")
    );
    let shards = s.store.engine().shards().len();
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("shardbox_shard_file_bytes{"))
            .count(),
        shards
    );
    s.stop().await;
}

/// The standard process series and the build's, and every family's help text well formed.
#[tokio::test]
async fn the_process_and_the_build_are_described() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let text = c.get("/metrics").await.text();
    let rss = value(&text, "process_resident_memory_bytes").expect("rss");
    assert!(rss > 1e6, "resident memory {rss}");
    assert!(value(&text, "process_virtual_memory_bytes").expect("vsize") >= rss);
    let fds = value(&text, "process_open_fds").expect("open fds");
    assert!(fds >= 3.0 && fds <= value(&text, "process_max_fds").expect("max fds"));
    let cpu = value(&text, "process_cpu_seconds_total").expect("cpu");
    assert!(cpu > 0.0, "cpu {cpu}");
    let start = value(&text, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now + 1.0 && start > now - 3600.0,
        "started {start}, now {now}"
    );
    let build = format!(
        "shardbox_build_info{{version=\"{}\",profile=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(value(&text, &build), Some(1.0), "{build}");
    for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(!line.ends_with(".."), "{line}");
        assert!(
            line.splitn(4, ' ').nth(3).is_some_and(|h| !h.is_empty()),
            "{line}"
        );
    }
    s.stop().await;
}

/// The status page's window moves on by itself: with a 1.2 s `status_window_ms` (sampled every
/// 100 ms by the server's own task), writes made before an idle window are no longer in it, and
/// a new request is. Alone: the counters it reads are process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_window_moves_on_by_itself() {
    if !common::alone() {
        return;
    }
    let s = TestServer::start_with(|c| c.http.status_window_ms = 1200).await;
    let mut c = s.client().await;
    for i in 0..20 {
        assert_eq!(c.put(&format!("/v1/kv/app/k{i}"), "v").await.status, 201);
    }
    let kv = |w: &serde_json::Value| w["domains"][0].clone();
    let w = c.get("/v1/status").await.json()["window"].clone();
    assert_eq!(w["span_s"], 1.2);
    assert_eq!(kv(&w)["domain"], "kv");
    assert_eq!(kv(&w)["requests"], 20, "{w}");
    // Wait for the samples to move past the writes (a window with no KV request).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let w = loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let w = c.get("/v1/status").await.json()["window"].clone();
        if kv(&w)["requests"] == 0 {
            break w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the window never moved past the writes: {w}"
        );
    };
    assert!(kv(&w)["p99_ms"].is_null(), "{w}");
    // Its base is a sample at least a window old, not the start.
    assert!(w["seconds"].as_f64().unwrap() >= 1.2, "{w}");
    assert_eq!(c.get("/v1/kv/app/k0").await.status, 200);
    let w = c.get("/v1/status").await.json()["window"].clone();
    assert_eq!(kv(&w)["requests"], 1, "{w}");
    // A long poll counts in the rates but its wait is not a latency.
    let r = c
        .post_json("/v1/queues/idle/claim", json!({"wait": "500ms"}))
        .await;
    assert_eq!(r.status, 200);
    let w = c.get("/v1/status").await.json()["window"].clone();
    let queues = w["domains"][3].clone();
    assert_eq!(queues["domain"], "queues");
    assert_eq!(queues["requests"], 1, "{w}");
    assert!(
        queues["p99_ms"].is_null(),
        "the wait counted as latency: {w}"
    );
    s.stop().await;
}
