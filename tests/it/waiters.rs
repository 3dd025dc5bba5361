//! Requests that wait or stream (SSE followers, long-poll claims, ranges and cache waits) leave
//! room for everyone else, and a waiter whose client left takes nothing (issue 19, items 1-2).
//! Raw sockets, so the test controls exactly when a client closes, half-closes or resets.

use crate::common;

use common::{metric, Client, TestServer};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` (a whole request) on a new connection.
async fn send_raw(addr: std::net::SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Reads from `s` until `needle` appears or `secs` pass; returns what was read.
async fn read_until(s: &mut TcpStream, needle: &str, secs: u64) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn follow_req(stream: &str) -> String {
    format!("GET /v1/streams/{stream}/events?follow=true HTTP/1.1\r\nhost: t\r\n\r\n")
}

fn claim_req(q: &str, body: &str) -> String {
    format!(
        "POST /v1/queues/{q}/claim HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn followers_open(addr: std::net::SocketAddr) -> f64 {
    let text = Client::connect(addr).await.get("/metrics").await.text();
    metric(&text, "shardbox_stream_followers_open")
}

/// A server with `connections_max` 16 and a stream `s`.
async fn server_of_16_with_a_stream() -> TestServer {
    let srv = TestServer::start_with(|c| c.http.connections_max = 16).await;
    let mut c = srv.client().await;
    assert_eq!(
        c.put("/v1/streams/s", r#"{"bucket":"1h"}"#).await.status,
        201
    );
    srv
}

#[tokio::test]
async fn followers_leave_room_for_health_checks_and_release_at_once_when_their_client_leaves() {
    let srv = server_of_16_with_a_stream().await;
    // As many followers as there are connections: some must be refused, not all admitted.
    let mut followers = Vec::new();
    let mut refused = 0;
    for _ in 0..16 {
        let mut s = send_raw(srv.addr, &follow_req("s")).await;
        let got = read_until(&mut s, "\r\n\r\n", 5).await;
        if got.starts_with("HTTP/1.1 200") {
            followers.push(s);
        } else {
            assert!(got.starts_with("HTTP/1.1 503"), "{got}");
            refused += 1;
        }
    }
    assert!(refused > 0, "every connection became a follower");
    assert!(
        followers.len() <= 12,
        "{} followers of 16 connections",
        followers.len()
    );
    // The room left: a health check and a write on new connections.
    let mut c = srv.client().await;
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.put("/v1/kv/a/k", "v").await.status, 201);
    drop(c);
    let open = followers_open(srv.addr).await;
    assert_eq!(open as usize, followers.len());
    // Followers that close normally (FIN) give their places back at once, not at the next
    // heartbeat (15 s).
    drop(followers);
    common::eventually(3, "closed followers released", || async {
        (followers_open(srv.addr).await == 0.0).then_some(())
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_follower_that_only_half_closed_keeps_streaming() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    assert_eq!(
        c.put("/v1/streams/s", r#"{"bucket":"1h"}"#).await.status,
        201
    );
    let mut s = send_raw(srv.addr, &follow_req("s")).await;
    assert!(read_until(&mut s, ": connected", 5).await.contains("200"));
    // Closes its sending side, still reads (nc -N, some scripts).
    s.shutdown().await.expect("shutdown");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ts = common::T0_MS;
    let r = c
        .send(
            "POST",
            "/v1/streams/s/events",
            &[],
            format!(r#"{{"ts":{ts},"data":{{"n":7}}}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let got = read_until(&mut s, "\"n\":7", 5).await;
    assert!(
        got.contains("\"n\":7"),
        "the half-closed follower got: {got}"
    );
    srv.stop().await;
}

async fn stats(c: &mut Client, q: &str) -> (u64, u64) {
    let st = c.get(&format!("/v1/queues/{q}")).await.json();
    (
        st["ready"].as_u64().unwrap_or(0),
        st["in_flight"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn a_long_poll_claim_whose_client_left_takes_no_job() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let waiting = |srv: &TestServer| {
        let addr = srv.addr;
        async move {
            let text = Client::connect(addr).await.get("/metrics").await.text();
            metric(&text, "shardbox_queue_claims_waiting")
        }
    };
    // A worker long-polls, then goes away (a full close) before any job exists.
    let s = send_raw(
        srv.addr,
        &claim_req("q", r#"{"max":1,"lease":"60s","wait":"20s"}"#),
    )
    .await;
    common::eventually(5, "the claim parks", || async {
        (waiting(&srv).await == 1.0).then_some(())
    })
    .await;
    drop(s);
    common::eventually(3, "the abandoned claim stops waiting", || async {
        (waiting(&srv).await == 0.0).then_some(())
    })
    .await;
    let r = c
        .post_json("/v1/queues/q/jobs", serde_json::json!({"payload": 1}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        stats(&mut c, "q").await,
        (1, 0),
        "the job was taken for nobody"
    );
    // A live worker gets it.
    let r = c
        .post_json("/v1/queues/q/claim", serde_json::json!({"max": 1}))
        .await;
    assert_eq!(r.json()["jobs"].as_array().map(Vec::len), Some(1));
    srv.stop().await;
}

#[tokio::test]
async fn a_half_closed_claim_gets_a_ready_job_and_is_answered_at_once_when_there_is_none() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r = c
        .post_json("/v1/queues/q/jobs", serde_json::json!({"payload": 1}))
        .await;
    assert_eq!(r.status, 201);
    let body = r#"{"max":1,"lease":"60s","wait":"20s"}"#;
    // A job is there: the half-closed client that still reads gets it.
    let mut s = send_raw(srv.addr, &claim_req("q", body)).await;
    s.shutdown().await.expect("shutdown");
    let got = read_until(&mut s, "lease_token", 5).await;
    assert!(got.contains("lease_token"), "{got}");
    // None is: it is answered before its 20 s wait is over (read for 10 s), and nothing is
    // taken later.
    let mut s = send_raw(srv.addr, &claim_req("q", body)).await;
    s.shutdown().await.expect("shutdown");
    let got = read_until(&mut s, "{\"jobs\":[]}", 10).await;
    assert!(got.contains("{\"jobs\":[]}"), "{got}");
    let r = c
        .post_json("/v1/queues/q/jobs", serde_json::json!({"payload": 2}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(stats(&mut c, "q").await, (1, 1));
    srv.stop().await;
}

#[tokio::test]
async fn long_polls_of_every_kind_leave_room_and_leave_with_their_client() {
    let srv = server_of_16_with_a_stream().await;
    // Twelve waiters of three kinds fill long_polls_max (12 of 16).
    let mut held = Vec::new();
    for i in 0..12 {
        let head = match i % 3 {
            0 => claim_req("q", r#"{"max":1,"wait":"20s"}"#),
            1 => "GET /v1/streams/s/events?wait=20s HTTP/1.1\r\nhost: t\r\n\r\n".to_string(),
            _ => {
                // The first caller of a missing key gets the fill lease at once; the next waits.
                "GET /v1/cache/n/k?wait=20s HTTP/1.1\r\nhost: t\r\n\r\n".to_string()
            }
        };
        held.push(send_raw(srv.addr, &head).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Ordinary requests still get in.
    let mut c = srv.client().await;
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.put("/v1/kv/a/k", "v").await.status, 201);
    drop(c);
    // Every waiter's client leaves: their places come back at once.
    drop(held);
    common::eventually(3, "waiters released", || async {
        let text = Client::connect(srv.addr).await.get("/metrics").await.text();
        (metric(&text, "shardbox_queue_claims_waiting") == 0.0
            && metric(&text, "shardbox_stream_followers_open") == 0.0)
            .then_some(())
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_long_poll_on_the_admin_socket_leaves_with_its_client_too() {
    let srv = TestServer::start().await;
    let waiting = || async {
        let text = Client::connect(srv.addr).await.get("/metrics").await.text();
        metric(&text, "shardbox_queue_claims_waiting")
    };
    let path = srv.dir.join("admin.sock");
    let mut s = common::eventually(5, "the admin socket listens", || async {
        tokio::net::UnixStream::connect(&path).await.ok()
    })
    .await;
    s.write_all(claim_req("q", r#"{"max":1,"wait":"20s"}"#).as_bytes())
        .await
        .expect("write");
    common::eventually(5, "the claim parks", || async {
        (waiting().await == 1.0).then_some(())
    })
    .await;
    drop(s);
    common::eventually(3, "the abandoned claim stops waiting", || async {
        (waiting().await == 0.0).then_some(())
    })
    .await;
    srv.stop().await;
}
