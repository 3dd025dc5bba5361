//! Heap allocations per request on the server side, counted exactly.
//!
//! `cargo bench --bench allocs` starts a real shardbox server in this process (real redb files,
//! a real socket on 127.0.0.1:0, the same `http::run` as `shardbox serve`) behind a counting
//! global allocator, then drives it with a raw HTTP/1.1 client that reuses one request buffer
//! and one response buffer, so the count is the server's own. It prints allocations and bytes
//! allocated per request for durable PUTs, GETs, queue enqueue+claim+ack and event appends.
//! Unlike time, these counts do not depend on what else the machine is doing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A keep-alive HTTP/1.1 client that allocates nothing per request.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            s,
            buf: vec![0; 1 << 16],
        }
    }

    /// Sends `req` and reads one response; returns its status.
    fn roundtrip(&mut self, req: &[u8]) -> u16 {
        self.s.write_all(req).expect("write");
        let mut have = 0;
        loop {
            let n = self.s.read(&mut self.buf[have..]).expect("read");
            assert!(n > 0, "server closed");
            have += n;
            let head = &self.buf[..have];
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = std::str::from_utf8(&head[..end]).expect("utf8 head");
            let len: usize = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if have >= end + 4 + len {
                return text[9..12].parse().expect("status");
            }
        }
    }
}

/// Runs `n` requests from `clients` concurrent connections (each cycling through `reqs`) and
/// returns (allocations, bytes) per request.
fn measure(
    addr: std::net::SocketAddr,
    clients: usize,
    n: usize,
    reqs: &[Vec<u8>],
    want: &[u16],
) -> (f64, f64) {
    let mut conns: Vec<Raw> = (0..clients).map(|_| Raw::connect(addr)).collect();
    for c in conns.iter_mut() {
        for r in reqs.iter().take(20) {
            c.roundtrip(r); // warm up: lazily built structures are not per-request costs
        }
    }
    let per = n / clients;
    let (a0, b0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    std::thread::scope(|scope| {
        for (k, c) in conns.iter_mut().enumerate() {
            scope.spawn(move || {
                for i in 0..per {
                    let st = c.roundtrip(&reqs[(i * clients + k) % reqs.len()]);
                    assert!(want.contains(&st), "status {st}");
                }
            });
        }
    });
    let (a1, b1) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    let done = (per * clients) as f64;
    ((a1 - a0) as f64 / done, (b1 - b0) as f64 / done)
}

fn request(method: &str, path: &str, ct: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = shardbox::Config::with_data_dir(dir.path().join("data"));
    config.http.listen = "127.0.0.1:0".into();
    let store = shardbox::Store::open(config).expect("open");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s = store.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(async move {
        let _ = shardbox::http::run(listener, s, async {
            let _ = stopped.await;
        })
        .await;
    });
    let n: usize = std::env::var("ALLOCS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let value = vec![b'x'; 100];
    let puts: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            request(
                "PUT",
                &format!("/v1/kv/bench/k{i}"),
                "application/octet-stream",
                &value,
            )
        })
        .collect();
    let gets: Vec<Vec<u8>> = (0..1000)
        .map(|i| request("GET", &format!("/v1/kv/bench/k{i}"), "text/plain", b""))
        .collect();
    let enqueue = vec![request(
        "POST",
        "/v1/queues/q/jobs",
        "application/json",
        br#"{"payload":{"to":"ada@example.com","n":1}}"#,
    )];
    let append = vec![request(
        "POST",
        "/v1/streams/s/events",
        "application/json",
        br#"{"type":"click","data":{"x":1,"y":2}}"#,
    )];
    let claim = vec![request(
        "POST",
        "/v1/queues/q/claim",
        "application/json",
        br#"{"max":1,"lease":"30s"}"#,
    )];
    let mut rows = Vec::new();
    for clients in [1, 32] {
        let label = |what: &str| format!("{what}, {clients} client(s)");
        let commits = || -> u64 {
            store
                .engine()
                .shards()
                .iter()
                .map(|s| s.state.commits.load(Ordering::Relaxed))
                .sum()
        };
        let c0 = commits();
        rows.push((
            label("kv PUT 100 B (durable)"),
            measure(addr, clients, n, &puts, &[200, 201]),
        ));
        let per_commit = n as f64 / (commits() - c0).max(1) as f64;
        rows.push((format!("  (ops per commit: {per_commit:.1})"), (0.0, 0.0)));
        rows.push((
            label("kv GET 100 B"),
            measure(addr, clients, n, &gets, &[200]),
        ));
        rows.push((
            label("queue enqueue"),
            measure(addr, clients, n, &enqueue, &[201]),
        ));
        rows.push((
            label("queue claim"),
            measure(addr, clients, n, &claim, &[200]),
        ));
        rows.push((
            label("events append 1"),
            measure(addr, clients, n, &append, &[201]),
        ));
    }
    // The same put without HTTP, through the embedding API: what the engine itself costs.
    let kv = store.kv().clone();
    let direct = rt.block_on(async {
        for i in 0..50 {
            let _ = kv
                .put("bench", &format!("d{i}"), value.clone(), Default::default())
                .await;
        }
        let keys: Vec<String> = (0..1000).map(|i| format!("d{i}")).collect();
        let (a0, b0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
        for i in 0..n {
            kv.put(
                "bench",
                &keys[i % keys.len()],
                value.clone(),
                Default::default(),
            )
            .await
            .expect("put");
        }
        let (a1, b1) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
        ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64)
    });
    rows.push((
        "kv put, Store API, 1 caller (no HTTP; 1 value copy by the caller)".to_string(),
        direct,
    ));
    println!("| request | allocations / request | bytes allocated / request |");
    println!("|---|---:|---:|");
    for (name, (a, b)) in rows {
        println!("| {name} | {a:.1} | {b:.0} |");
    }
    let _ = stop.send(());
    rt.block_on(server).expect("server");
    rt.block_on(store.close_cache());
    store.close();
}
