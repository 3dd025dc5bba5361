//! shardbox's own HTTP/1.1 connection (`src/http/h1/`) over raw sockets: bodies that arrive in
//! pieces, `Expect: 100-continue`, keep-alive after a body, HTTP/1.0, streamed answers, HEAD,
//! a body left unread, pipelining across a split request, and a client that half-closes.

use crate::common;

use common::TestServer;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until `done` holds for what came so far (or 5 s pass, or the server closes).
async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    while !done(&String::from_utf8_lossy(&got)) {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether `text` holds `n` whole responses with bodies framed by `content-length`.
fn responses(text: &str) -> usize {
    let mut n = 0;
    let mut rest = text;
    while let Some(head_end) = rest.find("\r\n\r\n") {
        let head = &rest[..head_end];
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let end = head_end + 4 + len;
        if rest.len() < end {
            break;
        }
        n += 1;
        rest = &rest[end..];
    }
    n
}

#[tokio::test]
async fn bodies_in_pieces_are_read_whole_and_the_connection_goes_on() {
    let s = TestServer::start().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    // Content-Length, the body trickling in after the head.
    c.write_all(b"PUT /v1/kv/h1/a HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n01")
        .await
        .unwrap();
    for piece in [&b"234"[..], b"56", b"789"] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.write_all(piece).await.unwrap();
    }
    let got = read_until(&mut c, |t| responses(t) == 1).await;
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    // Chunked, with extensions and a trailer, a chunk at a time.
    c.write_all(b"PUT /v1/kv/h1/b HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for piece in [
        &b"4;x=y\r\nabcd\r\n"[..],
        b"3\r\nefg\r\n",
        b"0\r\nx-trailer: 1\r\n\r\n",
    ] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.write_all(piece).await.unwrap();
    }
    let got = read_until(&mut c, |t| responses(t) == 1).await;
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    // The same connection reads both back.
    c.write_all(
        b"GET /v1/kv/h1/a HTTP/1.1\r\nhost: t\r\n\r\nGET /v1/kv/h1/b HTTP/1.1\r\nhost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut c, |t| responses(t) == 2).await;
    assert!(got.contains("\r\n\r\n0123456789"), "{got}");
    assert!(got.ends_with("\r\n\r\nabcdefg"), "{got}");
    s.stop().await;
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_wanted() {
    let s = TestServer::start_with(|c| c.kv.value_bytes_max = 1000).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"PUT /v1/kv/h1/c HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // The client waits for the go-ahead before it sends the body.
    let got = read_until(&mut c, |t| t.contains("\r\n\r\n")).await;
    assert!(got.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{got}");
    c.write_all(b"hello").await.unwrap();
    let got = read_until(&mut c, |t| responses(t) == 1).await;
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    // A body refused by its declared length gets no 100: the answer comes at once, and the
    // connection closes (the unsent body cannot frame a next request).
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"PUT /v1/kv/h1/big HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut c, |t| responses(t) == 1).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(!got.contains("100 Continue"), "{got}");
    s.stop().await;
}

#[tokio::test]
async fn http_1_0_keeps_alive_only_when_asked_and_streams_without_chunks() {
    let s = TestServer::start().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, |t| responses(t) == 1).await;
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert!(got.contains("connection: keep-alive"), "{got}");
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed after an HTTP/1.0 answer")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    // A streamed answer to HTTP/1.0 is not chunked: its end is the connection's end.
    let mut c = s.client().await;
    c.post_json(
        "/v1/streams/s10/events",
        serde_json::json!({"data": {"n": 1}}),
    )
    .await;
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"GET /v1/streams/s10/events?follow=true&after=0-0 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut raw, |t| t.contains("\"n\":1")).await;
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert!(!got.contains("transfer-encoding"), "{got}");
    s.stop().await;
}

#[tokio::test]
async fn streamed_answers_are_chunked_on_http_1_1() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.post_json("/v1/streams/s11/events", serde_json::json!({"data": 1}))
        .await;
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"GET /v1/streams/s11/events?follow=true&after=0-0 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut raw, |t| t.contains("data: ")).await;
    assert!(got.contains("transfer-encoding: chunked"), "{got}");
    // The first chunk's size line follows the head.
    let body = got.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let size = body.split("\r\n").next().unwrap_or("");
    assert!(
        !size.is_empty() && size.chars().all(|c| c.is_ascii_hexdigit()),
        "{got}"
    );
    s.stop().await;
}

#[tokio::test]
async fn head_answers_carry_the_length_and_no_body() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/h1/head", "0123456789").await.status, 201);
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(
        b"HEAD /v1/kv/h1/head HTTP/1.1\r\nhost: t\r\n\r\nGET /healthz HTTP/1.1\r\nhost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut raw, |t| {
        t.matches("HTTP/1.1 200").count() == 2 && t.ends_with("}\n")
    })
    .await;
    let (head, rest) = got.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("content-length: 10"), "{got}");
    // What follows the HEAD answer's head is the next answer, not a body.
    assert!(rest.starts_with("HTTP/1.1 200"), "{got}");
    s.stop().await;
}

#[tokio::test]
async fn a_body_left_unread_ends_the_connection_after_its_answer() {
    let s = TestServer::start().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    // A route that does not exist: its 64 KiB body is never read.
    let head = "POST /v1/nope HTTP/1.1\r\nhost: t\r\ncontent-length: 65536\r\n\r\n";
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&vec![b'x'; 1000]).await.unwrap();
    let got = read_until(&mut c, |t| responses(t) == 1).await;
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    // The rest of the body still being sent does not reset the answer away; then it closes.
    let _ = c.write_all(&vec![b'x'; 64_536]).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection closes");
    // A body the handler does not read but that is all here leaves the connection usable.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /v1/nope HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabcGET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, |t| responses(t) == 2).await;
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    assert!(got.contains("HTTP/1.1 200"), "{got}");
    s.stop().await;
}

#[tokio::test]
async fn pipelined_requests_split_anywhere_are_answered_in_order() {
    let s = TestServer::start().await;
    let mut wire = Vec::new();
    for i in 0..10 {
        let v = format!("value-{i}");
        wire.extend_from_slice(
            format!(
                "PUT /v1/kv/pipe/k{i} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{v}",
                v.len()
            )
            .as_bytes(),
        );
        wire.extend_from_slice(
            format!("GET /v1/kv/pipe/k{i} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes(),
        );
    }
    // Sent in uneven pieces: heads and bodies cut at every kind of place.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    for piece in wire.chunks(37) {
        c.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let got = read_until(&mut c, |t| responses(t) == 20).await;
    let statuses: Vec<&str> = got
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &got[i + 9..i + 12])
        .collect();
    assert_eq!(statuses.len(), 20, "{got}");
    for (i, pair) in statuses.chunks(2).enumerate() {
        assert_eq!(pair, ["201", "200"], "request pair {i}: {got}");
    }
    let mut at = 0;
    for i in 0..10 {
        let v = format!("\r\n\r\nvalue-{i}");
        at = got[at..]
            .find(&v)
            .map(|p| p + at + v.len())
            .expect("in order");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let s = TestServer::start().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"PUT /v1/kv/h1/half HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
        .await
        .expect("answered, then closed")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/h1/half").await.text(), "ok");
    s.stop().await;
}

/// A client that sends requests and never reads the answers cannot hold its connection: once
/// the socket's buffers are full and nothing is taken for `idle_timeout_ms`, the server gives up
/// on it (a connection busy writing is never idle, so nothing else would close it).
#[tokio::test]
async fn a_client_that_never_reads_is_let_go() {
    let s = TestServer::start_with(|c| c.http.idle_timeout_ms = 300).await;
    let mut c = s.client().await;
    let big = "x".repeat(1 << 20);
    assert_eq!(c.put("/v1/kv/h1/big", &big).await.status, 201);
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    let mut wire = String::new();
    for _ in 0..40 {
        wire.push_str("GET /v1/kv/h1/big HTTP/1.1\r\nhost: t\r\n\r\n");
    }
    raw.write_all(wire.as_bytes()).await.unwrap();
    // Far longer than the stall bound, reading nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), raw.read_to_end(&mut got)).await;
    assert!(end.is_ok(), "the server closes the connection");
    assert!(
        got.len() < 40 << 20,
        "not every answer was written: {} bytes",
        got.len()
    );
    // Everyone else is served after (on a new connection: the first one idled out).
    assert_eq!(s.client().await.get("/healthz").await.status, 200);
    s.stop().await;
}
