//! After a scripted workload, `/metrics` counts exactly what was done. One test in this binary:
//! the metrics are process-wide.

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
