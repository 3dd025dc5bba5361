//! Queue workloads: `queue-cycle` (enqueue → claim → ack with producers and workers in closed
//! loops) and `queue-latency` (enqueue-to-claim time with workers parked in long polls), against
//! shardbox, beanstalkd (binlog fsync on every write) and a Redis list queue
//! (LPUSH + BLMOVE + LREM, appendfsync always).

use crate::loadgen::{collect, hist, resp_command, Conn, Outcome, Proto};
use crate::peers;
use crate::report::{row, set_ratio, unavailable, Row};
use crate::support::{server_stats, wanted, Opts};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum System {
    Shardbox,
    Beanstalkd,
    Redis,
}

/// A line-oriented connection for beanstalkd.
struct Line {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Line {
    async fn connect(addr: SocketAddr) -> std::io::Result<Line> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Line {
            s,
            buf: Vec::with_capacity(4096),
        })
    }
    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return Ok(l);
            }
            let mut tmp = [0u8; 4096];
            let n = self.s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
    async fn bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n + 2 {
            let mut tmp = [0u8; 4096];
            let r = self.s.read(&mut tmp).await?;
            if r == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&tmp[..r]);
        }
        let v = self.buf[..n].to_vec();
        self.buf.drain(..n + 2);
        Ok(v)
    }
}

fn payload(stamp_ns: u64, seq: u64) -> String {
    // 200 bytes: a timestamp for latency, a unique sequence for LREM, padding.
    let head = format!("{stamp_ns:020}-{seq:020}-");
    format!("{head}{}", "p".repeat(200 - head.len()))
}

fn stamp_of(p: &[u8]) -> Option<u64> {
    std::str::from_utf8(p.get(..20)?).ok()?.parse().ok()
}

/// One producer or worker connection for one system.
enum Client {
    Http(Conn),
    Bean(Line),
    Redis(Conn),
}

impl Client {
    async fn connect(sys: System, addr: SocketAddr) -> std::io::Result<Client> {
        Ok(match sys {
            System::Shardbox => Client::Http(Conn::connect(addr).await?),
            System::Beanstalkd => Client::Bean(Line::connect(addr).await?),
            System::Redis => Client::Redis(Conn::connect(addr).await?),
        })
    }

    async fn enqueue(&mut self, p: &str) -> std::io::Result<bool> {
        match self {
            Client::Http(c) => {
                let body = format!("{{\"payload\":\"{p}\"}}");
                Ok(c.http("POST", "/v1/queues/bench/jobs", body.as_bytes())
                    .await?
                    .0
                    == 201)
            }
            Client::Bean(l) => {
                let cmd = format!("put 0 0 60 {}\r\n{p}\r\n", p.len());
                l.s.write_all(cmd.as_bytes()).await?;
                Ok(l.line().await?.starts_with("INSERTED"))
            }
            Client::Redis(c) => {
                let mut out = Vec::new();
                resp_command(&mut out, &[b"LPUSH", b"bench", p.as_bytes()]);
                c.resp_raw(&out).await
            }
        }
    }

    /// Claims one job (waiting up to 1 s) and acks it; returns its payload.
    async fn claim_ack(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Client::Http(c) => {
                let (st, body) = c
                    .http(
                        "POST",
                        "/v1/queues/bench/claim",
                        br#"{"max":1,"wait":"1s","lease":"30s"}"#,
                    )
                    .await?;
                if st != 200 {
                    return Ok(None);
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let Some(job) = v["jobs"].get(0) else {
                    return Ok(None);
                };
                let id = job["id"].as_str().unwrap_or_default().to_string();
                let token = job["lease_token"].as_str().unwrap_or_default().to_string();
                let p = job["payload"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec();
                let ack = format!("{{\"lease_token\":\"{token}\"}}");
                let (st, _) = c
                    .http(
                        "POST",
                        &format!("/v1/queues/bench/jobs/{id}/ack"),
                        ack.as_bytes(),
                    )
                    .await?;
                Ok((st == 204).then_some(p))
            }
            Client::Bean(l) => {
                l.s.write_all(b"reserve-with-timeout 1\r\n").await?;
                let line = l.line().await?;
                let parts: Vec<&str> = line.split(' ').collect();
                if parts.first() != Some(&"RESERVED") || parts.len() < 3 {
                    return Ok(None);
                }
                let id = parts[1].to_string();
                let n: usize = parts[2].parse().unwrap_or(0);
                let p = l.bytes(n).await?;
                l.s.write_all(format!("delete {id}\r\n").as_bytes()).await?;
                Ok(l.line().await?.starts_with("DELETED").then_some(p))
            }
            Client::Redis(c) => {
                let mut out = Vec::new();
                resp_command(
                    &mut out,
                    &[
                        b"BLMOVE",
                        b"bench",
                        b"bench:processing",
                        b"RIGHT",
                        b"LEFT",
                        b"1",
                    ],
                );
                let Some(p) = c.resp_bulk(&out).await? else {
                    return Ok(None);
                };
                let mut out = Vec::new();
                resp_command(&mut out, &[b"LREM", b"bench:processing", b"1", &p]);
                Ok(c.resp_raw(&out).await?.then_some(p))
            }
        }
    }
}

/// `queue-cycle`: `producers` enqueue and `workers` claim+ack in closed loops for `duration`.
/// Throughput counts completed cycles (acks); latency is per request.
pub async fn cycle(
    sys: System,
    addr: SocketAddr,
    producers: usize,
    workers: usize,
    duration: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..producers + workers {
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let (mut done, mut errors) = (0u64, 0u64);
            let Ok(mut c) = Client::connect(sys, addr).await else {
                return (h, 0, 1);
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = if i < producers {
                    let p = payload(
                        t0.elapsed().as_nanos() as u64,
                        seq.fetch_add(1, Ordering::Relaxed),
                    );
                    c.enqueue(&p).await.map(|ok| ok.then_some(()))
                } else {
                    c.claim_ack().await.map(|p| p.map(|_| ()))
                };
                match ok {
                    Ok(Some(())) => {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                        if i >= producers {
                            done += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (h, done, errors)
        }));
    }
    collect(tasks, t0).await
}

/// `queue-latency`: one producer enqueues every `gap`; `workers` wait in long polls. Records the
/// time from the enqueue being sent to the job arriving at a worker.
pub async fn latency(
    sys: System,
    addr: SocketAddr,
    workers: usize,
    duration: Duration,
    gap: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut n = 0;
            let Ok(mut c) = Client::connect(sys, addr).await else {
                return (h, 0);
            };
            while Instant::now() < deadline + Duration::from_millis(500) {
                match c.claim_ack().await {
                    Ok(Some(p)) => {
                        if let Some(stamp) = stamp_of(&p) {
                            let now = t0.elapsed().as_nanos() as u64;
                            let _ = h.record((now.saturating_sub(stamp) / 1000).max(1));
                            n += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            (h, n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Ok(mut p) = Client::connect(sys, addr).await {
        let mut seq = 0;
        while Instant::now() < deadline {
            let _ = p
                .enqueue(&payload(t0.elapsed().as_nanos() as u64, seq))
                .await;
            seq += 1;
            tokio::time::sleep(gap).await;
        }
    }
    let mut total = hist();
    let mut ops = 0;
    for t in tasks {
        if let Ok((h, n)) = t.await {
            let _ = total.add(&h);
            ops += n;
        }
    }
    Outcome {
        ops,
        errors: 0,
        elapsed: duration,
        hist: total,
        cpu_us_per_op: None,
    }
}

pub async fn queue_suite(o: &Opts, rows: &mut Vec<Row>) {
    let systems: [(System, &str); 3] = [
        (System::Shardbox, "shardbox queue"),
        (System::Beanstalkd, "beanstalkd -f 0"),
        (System::Redis, "redis list (LPUSH+BLMOVE+LREM)"),
    ];
    let start = |sys: System| -> Result<peers::Server, String> {
        match sys {
            System::Shardbox => crate::support::start_shardbox(o, &[]),
            System::Beanstalkd => peers::beanstalkd(o.install),
            System::Redis => peers::redis(o.install),
        }
    };
    if wanted(o, "queue-cycle") {
        let first = rows.len();
        for (sys, name) in systems {
            eprintln!("queue-cycle: {name} …");
            match start(sys) {
                Ok(server) => {
                    let _ = cycle(sys, server.addr, 32, 32, Duration::from_secs(1)).await;
                    let proto = if sys == System::Shardbox {
                        Proto::Http
                    } else {
                        Proto::Resp
                    };
                    let before = server_stats(server.addr, proto).await;
                    let out = crate::support::with_server_cpu(
                        server.addr,
                        cycle(sys, server.addr, 32, 32, o.duration),
                    )
                    .await;
                    if let (Some(a), Some(b)) = (before, server_stats(server.addr, proto).await) {
                        eprintln!("  {}", b.since(&a).describe());
                    }
                    rows.push(row(
                        "queue-cycle",
                        name,
                        out,
                        "32 producers + 32 workers, 200 B, durable",
                    ));
                }
                Err(e) => rows.push(unavailable("queue-cycle", name, &e)),
            }
        }
        let (ours, bean, redis) = (first, first + 1, first + 2);
        set_ratio(rows, bean, ours, "");
        set_ratio(rows, redis, ours, "");
        for i in [bean, redis] {
            if let Some((r, _)) = rows[i].ratio {
                rows[i].ratio = Some((1.0 / r, "shardbox ÷ this row".into()));
            }
        }
    }
    if wanted(o, "queue-latency") {
        for (sys, name) in systems {
            eprintln!("queue-latency: {name} …");
            match start(sys) {
                Ok(server) => {
                    let out =
                        latency(sys, server.addr, 8, o.duration, Duration::from_millis(5)).await;
                    rows.push(row(
                        "queue-latency",
                        name,
                        out,
                        "enqueue→claim, 8 long-polling workers, 1 job / 5 ms",
                    ));
                }
                Err(e) => rows.push(unavailable("queue-latency", name, &e)),
            }
        }
    }
}
