//! `overload` and `hostile`: what the box does when pushed past what it sustains, and when
//! clients misbehave on purpose.
//!
//! - `overload`: durable PUT at the saturating load (64 connections), then 10× the
//!   connections, with the default writer queue and with a small one (`writer_queue_ops_max=64`,
//!   `writer_queue_wait_ms=20`) so that the excess is shed: admitted throughput and p99, how many
//!   were shed (503 with `Retry-After`), and the server's peak RSS.
//! - `hostile`: each attack 20 times — slow headers, slow body, huge headers, huge declared
//!   body, deep JSON, invalid UTF-8 in the path, percent-encoded traversal — the status the server
//!   answers, the time it took, and the server's RSS before and after.

use crate::loadgen::{self, Conn, Proto};
use crate::report::Row;
use crate::support::{process_bytes as status_of, put_op, start_shardbox, wanted, Opts};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn row(workload: &str, system: &str, note: String) -> Row {
    Row {
        workload: workload.into(),
        system: system.into(),
        outcome: None,
        ratio: None,
        note,
    }
}

pub async fn overload(o: &Opts, rows: &mut Vec<Row>) {
    if !wanted(o, "overload") {
        return;
    }
    for (label, extra) in [
        ("default writer queue (4096, 1 s wait)", vec![]),
        (
            "small writer queue (64, 20 ms wait)",
            vec![
                ("writer_queue_ops_max", "64"),
                ("writer_queue_wait_ms", "20"),
            ],
        ),
    ] {
        let sb = start_shardbox(o, &extra).expect("start shardbox");
        let pid = sb.pid();
        let base = loadgen::run(sb.addr, Proto::Http, 64, o.duration, put_op(o.keys)).await;
        let over = loadgen::run(sb.addr, Proto::Http, 640, o.duration * 2, put_op(o.keys)).await;
        let hwm = status_of(pid, "VmHWM:");
        let ready = match Conn::connect(sb.addr).await {
            Ok(mut c) => c
                .http("GET", "/healthz", b"")
                .await
                .map(|r| r.0)
                .unwrap_or(0),
            Err(_) => 0,
        };
        eprintln!(
            "overload ({label}): 64 conns {:.0}/s p99 {:.1} ms; 640 conns {:.0}/s p99 {:.1} ms, {} shed; peak RSS {:.0} MiB; healthz {ready}",
            base.throughput(),
            base.p(0.99),
            over.throughput(),
            over.p(0.99),
            over.errors,
            mib(hwm)
        );
        rows.push(row(
            "overload",
            "shardbox",
            format!(
                "{label}: 64 conns {:.0} PUT/s p99 {:.1} ms → 640 conns {:.0} admitted/s p99 {:.1} ms, {} shed ({:.1}%), peak RSS {:.0} MiB, /healthz {ready} after",
                base.throughput(),
                base.p(0.99),
                over.throughput(),
                over.p(0.99),
                over.errors,
                100.0 * over.errors as f64 / (over.errors + over.ops).max(1) as f64,
                mib(hwm)
            ),
        ));
    }
}

/// Sends `head` (and then `trickle`, a byte every 500 ms), returns (status, seconds) of the
/// first response line, or status 0 when the server closed without one.
async fn attack(addr: std::net::SocketAddr, head: Vec<u8>, trickle: Vec<u8>) -> (u16, f64) {
    let started = Instant::now();
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, 0.0);
    };
    let _ = s.write_all(&head).await;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for b in trickle {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if w.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = Duration::from_secs(60);
    while let Ok(Ok(n)) = tokio::time::timeout(deadline, r.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    writer.abort();
    let status = std::str::from_utf8(&got)
        .ok()
        .and_then(|t| t.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed().as_secs_f64())
}

pub async fn hostile(o: &Opts, rows: &mut Vec<Row>) {
    if !wanted(o, "hostile") {
        return;
    }
    let sb = start_shardbox(
        o,
        &[
            ("header_read_timeout_ms", "2000"),
            ("body_read_timeout_ms", "2000"),
        ],
    )
    .expect("start shardbox");
    let pid = sb.pid();
    let huge_header = format!(
        "GET /v1/kv/a/b HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "h".repeat(64 << 10)
    );
    let deep = "[".repeat(100_000);
    let deep_req = format!(
        "POST /v1/queues/q/jobs HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{deep}",
        deep.len()
    );
    let attacks: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "slow headers (a byte per 500 ms)",
            b"GET /v1/kv/a/b HTTP/1.1\r\nhost: a\r\n".to_vec(),
            b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .to_vec(),
        ),
        (
            "slow body (a byte per 500 ms)",
            b"PUT /v1/kv/a/b HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\nabc".to_vec(),
            vec![b'z'; 100],
        ),
        ("64 KiB header", huge_header.into_bytes(), vec![]),
        (
            "1 TiB declared body",
            b"PUT /v1/kv/a/b HTTP/1.1\r\nhost: a\r\ncontent-length: 1099511627776\r\n\r\nabc"
                .to_vec(),
            vec![],
        ),
        ("JSON nested 100,000 deep", deep_req.into_bytes(), vec![]),
        (
            "invalid UTF-8 in the path",
            b"GET /v1/kv/a/%ff%fe HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(),
            vec![],
        ),
        (
            "percent-encoded traversal",
            b"GET /v1/kv/%2e%2e/%2e%2e%2fetc%2fpasswd HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(),
            vec![],
        ),
        (
            "no Host header",
            b"GET /v1/kv/a/b HTTP/1.1\r\n\r\n".to_vec(),
            vec![],
        ),
    ];
    for (name, head, trickle) in attacks {
        let before = status_of(pid, "VmRSS:");
        let mut statuses = std::collections::BTreeMap::new();
        let mut worst: f64 = 0.0;
        // 20 at once: the attacks overlap as a hostile client's would.
        let runs: Vec<_> = (0..20)
            .map(|_| tokio::spawn(attack(sb.addr, head.clone(), trickle.clone())))
            .collect();
        for r in runs {
            if let Ok((s, t)) = r.await {
                *statuses.entry(s).or_insert(0) += 1;
                worst = worst.max(t);
            }
        }
        let after = status_of(pid, "VmRSS:");
        let answers: Vec<String> = statuses
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("closed ×{n}")
                } else {
                    format!("{s} ×{n}")
                }
            })
            .collect();
        eprintln!(
            "hostile: {name}: {} in ≤ {worst:.2} s; RSS {:.0} → {:.0} MiB",
            answers.join(", "),
            mib(before),
            mib(after)
        );
        rows.push(row(
            "hostile",
            "shardbox",
            format!(
                "{name} ×20 at once: {} within {worst:.2} s; RSS {:.0} → {:.0} MiB",
                answers.join(", "),
                mib(before),
                mib(after)
            ),
        ));
    }
}
