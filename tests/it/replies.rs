//! Every JSON reply the server writes ends its line, so a shell prompt after `curl` starts on
//! a line of its own — the API's answers, its errors, and the refusals of unreadable heads.

use crate::common;

use common::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn json_replies_end_with_a_newline() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/app/k", "v").await.status, 201);
    c.post_json("/v1/queues/q/jobs", json!({"payload": {"n": 1}}))
        .await;
    c.post_json("/v1/streams/s/events", json!({"data": {"n": 1}}))
        .await;
    for (method, path, body) in [
        ("GET", "/v1/kv/app?limit=10", None),
        ("GET", "/v1/kv/app/absent", None),
        ("GET", "/v1/queues/q", None),
        ("POST", "/v1/queues/q/claim", Some(json!({"max": 1}))),
        ("GET", "/v1/streams/s/events", None),
        ("GET", "/v1/status", None),
        ("GET", "/no/such/route", None),
        (
            "POST",
            "/v1/kv/app:incr",
            Some(json!({"key": "c", "by": 2})),
        ),
    ] {
        let r = match body {
            Some(b) => c.post_json(path, b).await,
            None => c.send(method, path, &[], bytes::Bytes::new()).await,
        };
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        assert!(
            r.body.ends_with(b"}\n"),
            "{method} {path} -> {}: {:?}",
            r.status,
            r.text()
        );
        let _: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    }
    // A stored value is served as it was stored: nothing is added to it.
    let v = c.get("/v1/kv/app/k").await;
    assert_eq!(&v.body[..], b"v");
    // A head that cannot be parsed (a request line with no HTTP version).
    let mut raw = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    let (_, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(
        text.starts_with("HTTP/1.1 400") && body.ends_with("}\n"),
        "{text}"
    );
    s.stop().await;
}
