//! Smaller audit findings (issue 19, item 7) driven over a real socket: framing a proxy could
//! read differently is refused, an unknown `Expect` gets 417, and a request that arrived
//! during a stall longer than the idle timeout is answered, not dropped.

use crate::common;

use common::spawn::{spawn_shardbox, KillOnDrop};
use common::TestServer;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn exchange(addr: std::net::SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Past any 100 Continue, to the final answer's head.
    while {
        let t = String::from_utf8_lossy(&got);
        t.is_empty() || (t.starts_with("HTTP/1.1 100") && t.matches("HTTP/1.1 ").count() < 2)
    } {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_and_unknown_expectations_are_refused() {
    let srv = TestServer::start().await;
    for (raw, status) in [
        (
            "PUT /v1/kv/a/k HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nhi",
            "400",
        ),
        (
            "PUT /v1/kv/a/k HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "400",
        ),
        (
            "PUT /v1/kv/a/k HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "400",
        ),
        (
            "PUT /v1/kv/a/k HTTP/1.1\r\nhost: t\r\nexpect: 200-ok\r\ncontent-length: 2\r\n\r\nhi",
            "417",
        ),
        // Bare LF line ends, anywhere in the head (a proxy may read other boundaries).
        (
            "PUT /v1/kv/a/k HTTP/1.1\nhost: t\ncontent-length: 2\n\nhi",
            "400",
        ),
        (
            "PUT /v1/kv/a/k HTTP/1.1\r\nhost: t\r\ncontent-length: 2\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "400",
        ),
    ] {
        let got = exchange(srv.addr, raw).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")),
            "{raw:?} got {got}"
        );
        assert!(got.contains("\"error\""), "{got}");
    }
    // Nothing of them was stored; the plain request still works.
    let mut c = srv.client().await;
    assert_eq!(c.get("/v1/kv/a/k").await.status, 404);
    let got = exchange(
        srv.addr,
        "PUT /v1/kv/a/k HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert!(got.contains("HTTP/1.1 201"), "{got}");
    // The same Content-Length twice is one length (RFC 9110 §8.6; the head parser folds it), as api.md
    // says: no reading of it differs.
    let got = exchange(
        srv.addr,
        "PUT /v1/kv/a/k2 HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert!(got.contains("HTTP/1.1 201"), "{got}");
    assert_eq!(c.get("/v1/kv/a/k2").await.text(), "hi");
    srv.stop().await;
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig}");
}

#[tokio::test]
async fn a_request_sent_during_a_stall_longer_than_the_idle_timeout_is_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_shardbox(
        &tmp.path().join("data"),
        &common::env(&[("SHARDBOX_IDLE_TIMEOUT_MS", "1000")]),
    )
    .expect("start");
    let child = KillOnDrop(child);
    let pid = child.id();
    let mut s = TcpStream::connect(addr).await.unwrap();
    for i in 0..3 {
        let req = format!("PUT /v1/kv/a/k{i} HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\nv");
        // The server stops (SIGSTOP) for longer than its idle timeout; the request is sent
        // while it is stopped, 0.2 s after the previous answer.
        signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(req.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        signal(pid, "-CONT");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap_or(0);
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("HTTP/1.1 201"), "request {i}: got {got:?}");
    }
    drop(child);
}

/// Pipelined HTTP/1.1 requests (all written before any answer is read) get their answers
/// complete and in order, writes and reads mixed.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let srv = TestServer::start().await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut batch = String::new();
    for i in 0..20 {
        batch.push_str(&format!(
            "PUT /v1/kv/p/k{i} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\nv{i}",
            format!("v{i}").len()
        ));
        batch.push_str(&format!("GET /v1/kv/p/k{i} HTTP/1.1\r\nhost: t\r\n\r\n"));
    }
    batch.push_str("GET /v1/kv/p/missing HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    s.write_all(batch.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("every answer")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    let mut want = Vec::new();
    for _ in 0..20 {
        want.extend(["201", "200"]);
    }
    want.push("404");
    assert_eq!(statuses, want);
    // Each GET's body is its own key's value, in order.
    let mut at = 0;
    for i in 0..20 {
        let v = format!("\r\n\r\nv{i}");
        let found = text[at..].find(&v).map(|p| p + at).expect("value in order");
        at = found + v.len();
    }
    srv.stop().await;
}
