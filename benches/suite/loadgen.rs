//! A closed-loop load generator: N connections, each sends one request, waits for the whole
//! response, records the latency (HDR histogram), and sends the next, until the deadline.
//! It speaks just enough HTTP/1.1 and RESP to drive shardbox and its peers with the same
//! workload definition, keeping the client's own cost small and alike for both.

use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request, protocol-neutral.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Get {
        key: String,
    },
    /// A cache read: shardbox `GET /v1/cache/bench/{key}`, Redis `GET`, memcached `get`.
    CacheGet {
        key: String,
    },
}

/// Which wire protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// shardbox's HTTP API; requests go to `/v1/kv/bench/{key}`.
    Http,
    /// Redis RESP: SET / GET.
    Resp,
    /// memcached text protocol: set / get.
    Memcached,
}

/// Results of one run.
pub struct Outcome {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// The server process's CPU time (user + system, all threads, from /proc/PID/stat) per
    /// operation over the measured run, in µs; `None` when the server's process is not known.
    pub cpu_us_per_op: Option<f64>,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    /// Latency percentile in milliseconds.
    pub fn p(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `connections` closed loops for `duration`; `next_op(conn, i)` makes each request.
pub async fn run<F>(
    addr: SocketAddr,
    proto: Proto,
    connections: usize,
    duration: Duration,
    next_op: F,
) -> Outcome
where
    F: Fn(usize, u64) -> Op + Send + Sync + Clone + 'static,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for conn in 0..connections {
        let next_op = next_op.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = hist();
            let (mut ops, mut errors) = (0u64, 0u64);
            let Ok(mut c) = Conn::connect(addr).await else {
                return (hist, 0, 1);
            };
            let mut i = 0u64;
            while Instant::now() < deadline {
                let op = next_op(conn, i);
                i += 1;
                let t = Instant::now();
                match c.call(proto, &op).await {
                    Ok(true) => {
                        ops += 1;
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Ok(false) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        match Conn::connect(addr).await {
                            Ok(n) => c = n,
                            Err(_) => break,
                        }
                    }
                }
            }
            (hist, ops, errors)
        }));
    }
    collect(tasks, started).await
}

/// A latency histogram in microseconds (1 µs – 60 s).
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// Merges the (histogram, ops, errors) of each connection task into one outcome.
pub async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, u64, u64)>>,
    started: Instant,
) -> Outcome {
    let mut total = hist();
    let (mut ops, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((h, o, e)) = t.await {
            let _ = total.add(&h);
            ops += o;
            errors += e;
        }
    }
    Outcome {
        ops,
        errors,
        elapsed: started.elapsed(),
        hist: total,
        cpu_us_per_op: None,
    }
}

/// A connection with its own read buffer.
/// The `authorization` header line every new HTTP connection sends (empty: none); set by
/// [`set_bearer`] for the workloads that measure token checking.
static AUTH: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Makes connections opened from now on send `Authorization: Bearer <token>` (or nothing).
pub fn set_bearer(token: Option<&str>) {
    let line = token.map_or(Vec::new(), |t| {
        format!("authorization: Bearer {t}\r\n").into_bytes()
    });
    *AUTH.lock().unwrap_or_else(|e| e.into_inner()) = line;
}

pub struct Conn {
    stream: TcpStream,
    /// The header line of [`set_bearer`] when this connection opened.
    auth: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data not yet consumed.
    filled: usize,
    out: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            auth: AUTH.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            buf: vec![0; 64 * 1024],
            filled: 0,
            out: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole response. Ok(true) = success status.
    pub async fn call(&mut self, proto: Proto, op: &Op) -> std::io::Result<bool> {
        self.out.clear();
        match proto {
            Proto::Http => encode_http(&mut self.out, op, &self.auth),
            Proto::Resp => encode_resp(&mut self.out, op),
            Proto::Memcached => encode_memcached(&mut self.out, op),
        }
        self.stream.write_all(&self.out).await?;
        match proto {
            Proto::Http => self.read_http().await,
            Proto::Resp => self.read_resp().await,
            Proto::Memcached => self.read_memcached().await,
        }
    }

    /// Reads one memcached reply: `VALUE … END` (hit), `END` (miss), `STORED`; true on success.
    async fn read_memcached(&mut self) -> std::io::Result<bool> {
        loop {
            let b = &self.buf[..self.filled];
            if let Some(line_end) = find(b, b"\r\n") {
                let line = &b[..line_end];
                if line.starts_with(b"VALUE ") {
                    let len: usize = std::str::from_utf8(line)
                        .ok()
                        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                        .ok_or_else(|| bad("bad VALUE line"))?;
                    let end = line_end + 2 + len + 2 + 5; // data, CRLF, "END\r\n"
                    if self.filled >= end {
                        self.consume(end);
                        return Ok(true);
                    }
                } else {
                    let ok = line == b"STORED";
                    self.consume(line_end + 2);
                    return Ok(ok);
                }
            }
            self.fill().await?;
        }
    }

    /// Sends a raw HTTP request (method, path, body) and returns (status, body).
    pub async fn http(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nhost: bench\r\n{}content-length: {}\r\n\r\n",
                String::from_utf8_lossy(&self.auth),
                body.len()
            )
            .as_bytes(),
        );
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await?;
        let (status, start, len) = self.read_http_head().await?;
        let body = self.buf[start..start + len].to_vec();
        self.consume(start + len);
        Ok((status, body))
    }

    /// Sends a whole pre-encoded HTTP request; returns (status, body).
    pub async fn http_raw(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request).await?;
        let (status, start, len) = self.read_http_head().await?;
        let body = self.buf[start..start + len].to_vec();
        self.consume(start + len);
        Ok((status, body))
    }

    /// Sends a whole pre-encoded HTTP request; returns (status, the response head, body).
    pub async fn http_raw_head(
        &mut self,
        request: &[u8],
    ) -> std::io::Result<(u16, String, Vec<u8>)> {
        self.stream.write_all(request).await?;
        let (status, start, len) = self.read_http_head().await?;
        let head = String::from_utf8_lossy(&self.buf[..start]).into_owned();
        let body = self.buf[start..start + len].to_vec();
        self.consume(start + len);
        Ok((status, head, body))
    }

    /// Sends `n` pipelined RESP commands and reads `n` replies; false if any was an error.
    pub async fn resp_pipeline(&mut self, bytes: &[u8], n: usize) -> std::io::Result<bool> {
        self.stream.write_all(bytes).await?;
        let mut ok = true;
        for _ in 0..n {
            ok &= self.read_resp().await?;
        }
        Ok(ok)
    }

    /// Sends raw RESP bytes (already encoded) and reads one reply; Ok(false) on an error reply.
    pub async fn resp_raw(&mut self, bytes: &[u8]) -> std::io::Result<bool> {
        self.stream.write_all(bytes).await?;
        self.read_resp().await
    }

    /// Sends RESP bytes and reads one reply that is a bulk string (or nil / an array holding one).
    pub async fn resp_bulk(&mut self, bytes: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        self.stream.write_all(bytes).await?;
        loop {
            if let Some((used, _)) = parse_resp(&self.buf[..self.filled])? {
                let reply = &self.buf[..used];
                let out = if reply.first() == Some(&b'$') {
                    let line_end = find(reply, b"\r\n").unwrap_or(0);
                    let n: i64 = std::str::from_utf8(&reply[1..line_end])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(-1);
                    (n >= 0).then(|| reply[line_end + 2..line_end + 2 + n as usize].to_vec())
                } else {
                    None
                };
                self.consume(used);
                return Ok(out);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        self.filled += n;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Reads a response head and makes sure the whole body is buffered.
    /// Returns (status, body start, body length).
    async fn read_http_head(&mut self) -> std::io::Result<(u16, usize, usize)> {
        loop {
            if let Some(end) = find(&self.buf[..self.filled], b"\r\n\r\n") {
                let head =
                    std::str::from_utf8(&self.buf[..end]).map_err(|_| bad("non-UTF-8 head"))?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("bad status line"))?;
                let mut len = 0usize;
                for line in head.split("\r\n").skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().map_err(|_| bad("bad content-length"))?;
                        }
                    }
                }
                let start = end + 4;
                while self.filled < start + len {
                    self.fill().await?;
                }
                return Ok((status, start, len));
            }
            self.fill().await?;
        }
    }

    async fn read_http(&mut self) -> std::io::Result<bool> {
        let (status, start, len) = self.read_http_head().await?;
        self.consume(start + len);
        Ok((200..300).contains(&status) || status == 404)
    }

    /// Reads one RESP reply (simple, error, integer, bulk, or array of bulks).
    async fn read_resp(&mut self) -> std::io::Result<bool> {
        loop {
            if let Some((used, ok)) = parse_resp(&self.buf[..self.filled])? {
                self.consume(used);
                return Ok(ok);
            }
            self.fill().await?;
        }
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete RESP value; None when more bytes are needed.
fn parse_resp(b: &[u8]) -> std::io::Result<Option<(usize, bool)>> {
    let Some(line_end) = find(b, b"\r\n") else {
        return Ok(None);
    };
    let line = &b[1..line_end];
    let after = line_end + 2;
    match b.first() {
        Some(b'+') | Some(b':') => Ok(Some((after, true))),
        Some(b'-') => Ok(Some((after, false))),
        Some(b'$') => {
            let n: i64 = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad bulk"))?;
            if n < 0 {
                return Ok(Some((after, true)));
            }
            let end = after + n as usize + 2;
            Ok((b.len() >= end).then_some((end, true)))
        }
        Some(b'*') => {
            let n: i64 = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad array"))?;
            let mut pos = after;
            for _ in 0..n.max(0) {
                match parse_resp(&b[pos..])? {
                    Some((used, _)) => pos += used,
                    None => return Ok(None),
                }
            }
            Ok(Some((pos, true)))
        }
        _ => Err(bad("unknown RESP type")),
    }
}

fn encode_http(out: &mut Vec<u8>, op: &Op, auth: &[u8]) {
    match op {
        Op::Put { key, value } => {
            out.extend_from_slice(b"PUT /v1/kv/bench/");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\nhost: bench\r\n");
            out.extend_from_slice(auth);
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(value.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(value);
        }
        Op::Get { key } => {
            out.extend_from_slice(b"GET /v1/kv/bench/");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\nhost: bench\r\n");
            out.extend_from_slice(auth);
            out.extend_from_slice(b"\r\n");
        }
        Op::CacheGet { key } => {
            out.extend_from_slice(b"GET /v1/cache/bench/");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\nhost: bench\r\n");
            out.extend_from_slice(auth);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn encode_memcached(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Put { key, value } => {
            out.extend_from_slice(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        Op::Get { key } | Op::CacheGet { key } => {
            out.extend_from_slice(format!("get {key}\r\n").as_bytes());
        }
    }
}

/// Appends one RESP command.
pub fn resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn encode_resp(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Put { key, value } => resp_command(out, &[b"SET", key.as_bytes(), value]),
        Op::Get { key } | Op::CacheGet { key } => resp_command(out, &[b"GET", key.as_bytes()]),
    }
}
