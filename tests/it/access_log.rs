//! The access log as an operator turns it on: one line per answered request, JSON or the
//! Common Log Format, written by the real server to a real file; off by default.

use crate::common;

use common::{eventually, TestServer};

async fn lines(path: &std::path::Path, at_least: usize) -> Vec<String> {
    eventually(10, "access log lines", || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= at_least).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn every_request_gets_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let to = log.to_string_lossy().into_owned();
    let s = TestServer::start_with(move |c| c.http.access_log = to).await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/app/greeting", "hello").await.status, 201);
    let got = c
        .send(
            "GET",
            "/v1/kv/app/greeting",
            &[("x-request-id", "trace-1")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(c.get("/v1/kv/app/absent").await.status, 404);
    assert_eq!(c.get("/no/such/route").await.status, 404);
    let lines = lines(&log, 4).await;
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        v.iter()
            .map(|l| l["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [201, 200, 404, 404]
    );
    let get = &v[1];
    assert_eq!(get["id"], "trace-1");
    assert_eq!(get["method"], "GET");
    assert_eq!(get["route"], "/v1/kv/{ns}/{key}");
    assert_eq!(get["path"], "/v1/kv/app/greeting");
    assert_eq!(get["bytes"], 5);
    assert_eq!(get["ip"], "127.0.0.1");
    assert!(get["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(get["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 24));
    assert_eq!(v[3]["route"], "-");
    // Owner-only, like everything shardbox writes.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o077,
        0
    );
    // A request just before the server stops is in the file once it has stopped.
    assert_eq!(c.get("/healthz").await.status, 200);
    drop(c);
    s.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("\"/healthz\"")),
        "{text}"
    );
}

#[tokio::test]
async fn the_common_log_format_names_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let to = log.to_string_lossy().into_owned();
    let token = shardbox::tokens::new_token();
    let entry = shardbox::tokens::TokenConfig {
        name: "ops".into(),
        sha256: shardbox::tokens::hash_token(&token),
        scopes: vec![
            shardbox::tokens::Scope::Read,
            shardbox::tokens::Scope::Write,
        ],
        namespaces: None,
        streams: None,
        queues: None,
    };
    let s = TestServer::start_with(move |c| {
        c.http.access_log = to;
        c.http.access_log_format = shardbox::config::AccessLogFormat::Common;
        c.http.tokens = vec![entry];
    })
    .await;
    let mut c = s.client().await;
    let auth = format!("Bearer {token}");
    let r = c
        .send(
            "PUT",
            "/v1/kv/app/k",
            &[("authorization", &auth)],
            bytes::Bytes::from("v"),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(c.get("/v1/kv/app/k").await.status, 401);
    let lines = lines(&log, 2).await;
    let put = regex_free_clf(&lines[0]);
    assert_eq!(
        put,
        ("127.0.0.1", "ops", "PUT /v1/kv/app/k HTTP/1.1", "201")
    );
    let refused = regex_free_clf(&lines[1]);
    assert_eq!(
        refused,
        ("127.0.0.1", "-", "GET /v1/kv/app/k HTTP/1.1", "401")
    );
    assert!(
        lines[1].contains(" id=") && lines[1].ends_with("ms"),
        "{}",
        lines[1]
    );
    s.stop().await;
}

/// (host, user, request, status) of a Common Log Format line.
fn regex_free_clf(line: &str) -> (&str, &str, &str, &str) {
    let mut words = line.splitn(3, ' ');
    let host = words.next().unwrap_or_default();
    let _ident = words.next();
    let rest = words.next().unwrap_or_default();
    let (user, rest) = rest.split_once(' ').unwrap_or_default();
    let request = rest.split('"').nth(1).unwrap_or_default();
    let status = rest
        .split('"')
        .nth(2)
        .unwrap_or_default()
        .split_whitespace()
        .next();
    (host, user, request, status.unwrap_or_default())
}

#[tokio::test]
async fn no_access_log_by_default() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    assert_eq!(c.get("/healthz").await.status, 200);
    let dir = s.store.config().data_dir.clone();
    let logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("access"))
        .collect();
    assert!(logs.is_empty(), "{logs:?}");
    assert_eq!(shardbox::Config::default().http.access_log, "");
    s.stop().await;
}
