//! Test helpers: a real shardbox server on 127.0.0.1:0 and a small HTTP/1.1 client.

pub mod cli;
pub mod dump;
pub mod nats;
pub use nats::installed_tool;
pub mod spawn;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use shardbox::{Config, ManualClock, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts the JSON error shape and returns its code.
    pub fn error_code(&self) -> String {
        let j = self.json();
        assert!(
            j["error"]["message"].is_string(),
            "error without message: {j}"
        );
        j["error"]["code"].as_str().expect("error code").to_string()
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, addr }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body)).expect("request")
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.try_send(method, path, headers, body)
            .await
            .expect("request")
    }

    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, hyper::Error> {
        let req = self.request(method, path, headers, body.into());
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn open(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> hyper::Response<hyper::body::Incoming> {
        let req = self.request(method, path, headers, Bytes::new());
        self.sender.ready().await.expect("ready");
        self.sender.send_request(req).await.expect("response")
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[], Bytes::new()).await
    }
    pub async fn put(&mut self, path: &str, body: &str) -> Resp {
        self.send("PUT", path, &[], body.to_string()).await
    }
    pub async fn post_json(&mut self, path: &str, json: serde_json::Value) -> Resp {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            json.to_string(),
        )
        .await
    }
    pub async fn delete(&mut self, path: &str) -> Resp {
        self.send("DELETE", path, &[], Bytes::new()).await
    }
}

/// A shardbox server running in this process on a real socket.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Start of the manual clock: a fixed, realistic time.
pub const T0_MS: u64 = 1_750_000_000_000;

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(dir, tweak).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing (or new) data dir, which the caller owns.
    pub async fn start_in(dir: PathBuf, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::with_data_dir(&dir);
        config.http.listen = "127.0.0.1:0".into();
        config.engine.shards = 0;
        // No 64 MiB ballast laid per test server (tests/disk_full.rs tests it in the binary).
        config.engine.disk_ballast_bytes = 0;
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(T0_MS));
        let store = Store::open_with_clock(config, clock.clone()).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let s = store.clone();
        let task = tokio::spawn(async move {
            let _ = shardbox::http::run(listener, s, async {
                let _ = stopped.await;
            })
            .await;
        });
        TestServer {
            addr,
            store,
            clock,
            dir,
            _tmp: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful stop: stop the server, close the store. Returns the data dir's temp holder.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.store.close_cache().await;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .expect("close");
        self._tmp.take()
    }
}

/// Polls `check` until it returns `Some`, for up to `secs` seconds; panics naming `what` if it
/// never does. For work the server does by itself (timers, cron, retention): the test waits for
/// the effect instead of calling the function that would cause it.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: did not happen within {secs} s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A seeded random generator for a test's random choices (kill delays, workloads): the seed is
/// `SHARDBOX_TEST_SEED` when set, else fresh, and is printed so a failure can be replayed.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("SHARDBOX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with SHARDBOX_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The value of metric `name` (the whole name, labels included) in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Reads `/metrics` on a fresh connection and returns metric `name`.
pub async fn scrape(addr: std::net::SocketAddr, name: &str) -> f64 {
    metric(
        &Client::connect(addr).await.get("/metrics").await.text(),
        name,
    )
}

/// Copies a data directory (a stopped server's, or a crash image of a live one) without the
/// disposable cache tier, the lock file and the admin socket.
pub fn copy_data_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "cache" || name == "LOCK" || name == "admin.sock" || name == "ballast" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_data_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Every event id of `stream`, oldest first, following `next` cursors (empty if the stream does
/// not exist).
pub async fn stream_ids(c: &mut Client, stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("/v1/streams/{stream}/events?limit=10000"),
            Some(a) => format!("/v1/streams/{stream}/events?limit=10000&after={a}"),
        };
        let r = c.get(&path).await;
        if r.status == 404 {
            return out;
        }
        let j = r.json();
        out.extend(
            j["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_string()),
        );
        match j["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

/// `SHARDBOX_*` settings for a spawned server, from string pairs.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs the calling test by itself, in a child process of this test binary, for a test that
/// changes what the whole process shares (an armed fault point, the umask, a process-wide
/// counter it counts exactly). In the child it returns `true` and the test goes on; in the
/// parent it waits for the child, fails the test if the child did, and returns `false`.
///
/// The test's name is its thread's (libtest names each test's thread after it); run on one
/// thread (`--test-threads=1`, which runs tests one after another on the main thread) there is
/// nothing to be isolated from, and the test runs in place.
pub fn alone() -> bool {
    // Not `SHARDBOX_*`: the binaries the test starts would take it for a setting.
    const CHILD: &str = "IT_RUN_ALONE";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let name = match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => return true,
    };
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, &name)
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, run alone, failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Reads Server-Sent Events from `body` until `n` ids arrived; returns the ids (10 s per frame
/// at most).
pub async fn sse_ids(body: &mut hyper::body::Incoming, n: usize) -> Vec<String> {
    use http_body_util::BodyExt as _;
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("SSE stalled")
            .expect("stream ended")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let msg: String = text.drain(..end + 2).collect();
            if let Some(line) = msg.lines().find(|l| l.starts_with("id: ")) {
                out.push(line[4..].to_string());
            }
        }
    }
    out
}

/// Every change of the feed after `after` to its end, page by page (`query` adds filters);
/// returns them and the position after them.
pub async fn read_changes(
    c: &mut Client,
    after: &str,
    query: &str,
) -> (Vec<serde_json::Value>, String) {
    let mut pos = after.to_string();
    let mut out = Vec::new();
    loop {
        let r = c
            .get(&format!("/v1/changes?after={pos}&limit=97{query}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let next = r
            .header("shardbox-next-position")
            .expect("next position")
            .to_string();
        let page: Vec<serde_json::Value> = r
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("change line"))
            .collect();
        if page.is_empty() && next == pos {
            return (out, pos);
        }
        out.extend(page);
        pos = next;
    }
}

/// `(lsn, index)` of a feed position `<generation>:<lsn>[:<index>]`, to compare order.
pub fn feed_place(p: &str) -> (u64, u32) {
    let mut it = p.split(':').skip(1);
    (
        it.next()
            .and_then(|l| l.parse().ok())
            .expect("a position's lsn"),
        it.next()
            .map_or(u32::MAX, |i| i.parse().expect("a position's index")),
    )
}

/// Creates the change-feed cursor `name` at the feed's end; returns its position.
pub async fn cursor_now(c: &mut Client, name: &str) -> String {
    let r = c
        .send(
            "PUT",
            &format!("/v1/changes/cursors/{name}"),
            &[],
            r#"{"position":"now"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["position"].as_str().expect("position").to_string()
}
