//! Shutdown and failure handling of the real server: long-polls answer at shutdown, a panicking
//! handler answers a JSON 500 and gives back what its connection held.

use crate::common;

use common::{spawn::spawn_shardbox, Client, TestServer};
use serde_json::json;
use std::net::SocketAddr;

fn sigterm(child: &std::process::Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

/// The README's worker example (`wait` 20 s, longer than the 10 s shutdown grace) is answered
/// with its empty result as soon as SIGTERM arrives, and the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_claim_is_answered_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_shardbox(&tmp.path().join("data"), &[]).unwrap();
    let worker = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .try_send(
                "POST",
                "/v1/queues/emails/claim",
                &[],
                json!({"max": 1, "lease": "30s", "wait": "20s"}).to_string(),
            )
            .await
    });
    common::eventually(10, "the claim parks", || async move {
        (common::scrape(addr, "shardbox_queue_claims_waiting").await == 1.0).then_some(())
    })
    .await;
    sigterm(&child);
    let r = worker
        .await
        .unwrap()
        .expect("the parked claim gets a reply");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"jobs": []}));
    assert!(child.wait().unwrap().success());
}

/// Likewise an events long poll (`wait=30s`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_poll_is_answered_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_shardbox(&tmp.path().join("data"), &[]).unwrap();
    let mut c = Client::connect(addr).await;
    let r = c.send("PUT", "/v1/streams/s", &[], "{}".to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let poll = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .try_send("GET", "/v1/streams/s/events?wait=30s", &[], "")
            .await
    });
    common::eventually(10, "the poll parks", || async move {
        (common::scrape(addr, "shardbox_stream_followers_open").await == 1.0).then_some(())
    })
    .await;
    sigterm(&child);
    let r = poll.await.unwrap().expect("the parked poll gets a reply");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["events"], json!([]));
    assert!(child.wait().unwrap().success());
}

/// A handler that panics answers a JSON 500 on the same connection, is counted as a 5xx, and
/// leaves `connections_open` where it was.
#[tokio::test]
async fn a_panicking_handler_answers_500_and_releases_its_connection() {
    if !common::alone() {
        return;
    }
    let s = TestServer::start().await;
    let before_5xx = gauge_5xx(s.addr).await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/p/a", "1").await.status, 201);
    shardbox::testing::failpoint::set("http.handler", shardbox::testing::failpoint::Action::Panic);
    let r = c.try_send("GET", "/v1/kv/p/a", &[], "").await;
    shardbox::testing::failpoint::clear("http.handler");
    let r = r.expect("a reply, not a dropped connection");
    assert_eq!(r.status, 500);
    assert_eq!(r.error_code(), "internal");
    // The same connection still works.
    assert_eq!(c.get("/v1/kv/p/a").await.text(), "1");
    drop(c);
    assert!(gauge_5xx(s.addr).await > before_5xx);
    let addr = s.addr;
    // Only the connection asking for the metrics is open.
    common::eventually(5, "connections_open returns to 1", || async move {
        (common::scrape(addr, "shardbox_connections_open").await == 1.0).then_some(())
    })
    .await;
    s.stop().await;
}

async fn gauge_5xx(addr: SocketAddr) -> f64 {
    common::scrape(addr, "shardbox_http_responses_total{class=\"5xx\"}").await
}

/// Under systemd (`Type=notify`, dist/shardbox.service) the server says READY=1 once it
/// listens, and STOPPING=1 on SIGTERM, on the socket systemd names in NOTIFY_SOCKET.
#[test]
fn readiness_and_stopping_are_told_to_systemd() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let env = vec![("NOTIFY_SOCKET".to_string(), sock_path.display().to_string())];
    let (mut child, addr) = spawn_shardbox(&tmp.path().join("data"), &env).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a READY message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means serving.
    assert!(std::net::TcpStream::connect(addr).is_ok());
    sigterm(&child);
    let n = sock.recv(&mut buf).expect("a STOPPING message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("STOPPING=1"), "{msg}");
    assert!(child.wait().unwrap().success());
}
