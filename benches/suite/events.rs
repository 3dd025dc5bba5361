//! Event workloads: `events-append` (batched appends vs Redis XADD, both fsync'd), and
//! `events-range-1h` (one-hour windows as the stream grows, vs Redis XRANGE), plus the SVG plot.

use crate::loadgen::{collect, hist, resp_command, Conn, Outcome};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

pub const YEAR_MS: u64 = 365 * 86_400_000;
pub const HOUR_MS: u64 = 3_600_000;
const EVENT_DATA: &str = "\"pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp\"";

fn ndjson(n: usize, ts: impl Fn(usize) -> Option<u64>) -> Vec<u8> {
    let mut out = String::with_capacity(n * 240);
    for i in 0..n {
        match ts(i) {
            Some(t) => out.push_str(&format!(
                "{{\"ts\":{t},\"type\":\"bench\",\"data\":{EVENT_DATA}}}\n"
            )),
            None => out.push_str(&format!("{{\"type\":\"bench\",\"data\":{EVENT_DATA}}}\n")),
        }
    }
    out.into_bytes()
}

fn ndjson_request(stream: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /v1/streams/{stream}/events HTTP/1.1\r\nhost: bench\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// `events-append`: `conns` closed loops, each sending `batch` events per request (shardbox:
/// one NDJSON request; Redis: `batch` pipelined XADDs) to one of `streams` streams. Counts
/// events.
pub async fn append(
    shardbox: bool,
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    batch: usize,
    duration: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let (mut n, mut errors) = (0u64, 0u64);
            let Ok(mut c) = Conn::connect(addr).await else {
                return (h, 0, 1);
            };
            let stream = format!("bench{}", i % streams.max(1));
            let body = ndjson(batch, |_| None);
            let mut pipeline = Vec::new();
            for _ in 0..batch {
                resp_command(
                    &mut pipeline,
                    &[
                        b"XADD",
                        stream.as_bytes(),
                        b"*",
                        b"data",
                        EVENT_DATA.as_bytes(),
                    ],
                );
            }
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = if shardbox {
                    c.http_raw(&ndjson_request(&stream, &body))
                        .await
                        .map(|(s, _)| s == 201)
                } else {
                    c.resp_pipeline(&pipeline, batch).await
                };
                match ok {
                    Ok(true) => {
                        n += batch as u64;
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            (h, n, errors)
        }));
    }
    collect(tasks, t0).await
}

/// Loads events `[from, to)` of a sequence spaced `spacing_ms` apart starting at `start_ms`, in
/// time order, with 4 connections (shardbox: NDJSON batches of 10,000; Redis: pipelined XADD
/// with explicit ids).
pub async fn load(
    shardbox: bool,
    addr: SocketAddr,
    stream: &str,
    start_ms: u64,
    spacing_ms: f64,
    from: u64,
    to: u64,
) -> Result<(), String> {
    // Redis stream ids must increase, so Redis loads on one connection, in order.
    let parts = if shardbox { 4 } else { 1 };
    let per = (to - from).div_ceil(parts);
    let mut tasks = Vec::new();
    for part in 0..parts {
        let (a, b) = (from + part * per, (from + (part + 1) * per).min(to));
        let stream = stream.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.map_err(|e| e.to_string())?;
            let mut i = a;
            while i < b {
                let n = (b - i).min(10_000) as usize;
                let ts = |k: usize| start_ms + ((i + k as u64) as f64 * spacing_ms) as u64;
                let ok = if shardbox {
                    let body = ndjson(n, |k| Some(ts(k)));
                    c.http_raw(&ndjson_request(&stream, &body))
                        .await
                        .map(|(s, _)| s == 201)
                } else {
                    let mut p = Vec::with_capacity(n * 260);
                    for k in 0..n {
                        let id = format!("{}-{}", ts(k), i + k as u64);
                        resp_command(
                            &mut p,
                            &[
                                b"XADD",
                                stream.as_bytes(),
                                id.as_bytes(),
                                b"data",
                                EVENT_DATA.as_bytes(),
                            ],
                        );
                    }
                    c.resp_pipeline(&p, n).await
                };
                if !ok.map_err(|e| e.to_string())? {
                    return Err(format!("load of {stream} failed at {i}"));
                }
                i += n as u64;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// `events-range-1h`: random one-hour windows inside `[start, start + span)`, first 100 events
/// of each, 8 connections, `queries` in all.
pub async fn range(
    shardbox: bool,
    addr: SocketAddr,
    stream: &str,
    start_ms: u64,
    span_ms: u64,
    queries: u64,
) -> Outcome {
    let t0 = Instant::now();
    let per = queries / 8;
    let mut tasks = Vec::new();
    for conn in 0..8u64 {
        let stream = stream.to_string();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let (mut n, mut errors) = (0, 0);
            let Ok(mut c) = Conn::connect(addr).await else {
                return (h, 0, 1);
            };
            for q in 0..per {
                let r = xxh3_64(&[conn.to_le_bytes(), q.to_le_bytes()].concat());
                let from = start_ms + r % span_ms.saturating_sub(HOUR_MS).max(1);
                let to = from + HOUR_MS;
                let t = Instant::now();
                let ok = if shardbox {
                    let path = format!("/v1/streams/{stream}/events?from={from}&to={to}&limit=100");
                    c.http("GET", &path, b"").await.map(|(s, _)| s == 200)
                } else {
                    let mut p = Vec::new();
                    let (a, b) = (format!("{from}"), format!("{}", to - 1));
                    resp_command(
                        &mut p,
                        &[
                            b"XRANGE",
                            stream.as_bytes(),
                            a.as_bytes(),
                            b.as_bytes(),
                            b"COUNT",
                            b"100",
                        ],
                    );
                    c.resp_pipeline(&p, 1).await
                };
                match ok {
                    Ok(true) => {
                        n += 1;
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    _ => errors += 1,
                }
            }
            (h, n, errors)
        }));
    }
    collect(tasks, t0).await
}

/// An SVG line plot of p50 and p99 range latency against stream size (page cache warm), with
/// the p99 measured right after each load (cold page cache) dashed.
pub fn svg(
    points: &[(u64, f64, f64)],
    cold: &[(u64, f64)],
    redis: Option<(u64, f64, f64)>,
) -> String {
    let (w, h, pad) = (640.0, 360.0, 60.0);
    let xmax = points.iter().map(|p| p.0).max().unwrap_or(1) as f64;
    let ymax = points
        .iter()
        .map(|p| p.2)
        .chain(cold.iter().map(|c| c.1))
        .chain(redis.map(|r| r.2))
        .fold(0.1f64, f64::max)
        * 1.2;
    let x = |v: u64| pad + (v as f64 / xmax) * (w - 2.0 * pad);
    let y = |v: f64| h - pad - (v / ymax) * (h - 2.0 * pad);
    let line = |sel: fn(&(u64, f64, f64)) -> f64| -> String {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(sel(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">events-range-1h: latency of a one-hour window vs stream size</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">events in the stream (millions)</text>\n\
         <text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">latency (ms)</text>\n",
        w / 2.0, h - pad, w - pad, h - pad, h - pad, w / 2.0, h - 15.0, h / 2.0, h / 2.0
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            pad - 5.0,
            y(v) + 4.0
        ));
    }
    for p in points {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{:.0}</text>\n",
            x(p.0),
            h - pad + 15.0,
            p.0 as f64 / 1e6
        ));
    }
    s.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
        line(|p| p.1)
    ));
    s.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>\n",
        line(|p| p.2)
    ));
    s.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#888888\" stroke-width=\"2\" stroke-dasharray=\"6 4\" points=\"{}\"/>\n",
        cold.iter()
            .map(|c| format!("{:.1},{:.1}", x(c.0), y(c.1)))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    if let Some((n, p50, p99)) = redis {
        for (v, c) in [(p50, "#1f77b4"), (p99, "#d62728")] {
            s.push_str(&format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"none\" stroke=\"{c}\"/>\n", x(n) - 4.0, y(v) - 4.0));
        }
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"45\" fill=\"#1f77b4\">— shardbox p50</text><text x=\"{}\" y=\"60\" fill=\"#d62728\">— shardbox p99</text><text x=\"{}\" y=\"75\" fill=\"#888888\">- - shardbox p99 right after the load (cold page cache)</text><text x=\"{}\" y=\"90\">□ Redis XRANGE (same data)</text>\n</svg>\n",
        pad + 10.0, pad + 10.0, pad + 10.0, pad + 10.0
    ));
    s
}
