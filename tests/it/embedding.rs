//! The embedding API as an appliance uses it: `examples/embedded.rs` runs as a program of its
//! own (built by `cargo test` like every example), writes into its store from its own code and
//! serves that store over HTTP; Ctrl-C stops it cleanly and what it wrote is there on reopen.

use crate::common;

use common::spawn::KillOnDrop;
use common::{eventually, Client};
use std::process::{Command, Stdio};

/// `target/<profile>/examples/embedded`, beside the test binary (`…/deps/it-…`).
fn example_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    profile_dir.join("examples").join("embedded")
}

/// `GET path` once the example listens; `None` until it answers 200.
async fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let r = Client::connect(addr).await.get(path).await;
    (r.status == 200).then(|| r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_example_writes_serves_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bin = example_bin();
    assert!(
        bin.exists(),
        "{} is not built: a whole `cargo test` builds the examples (or `cargo build --example embedded` first)",
        bin.display()
    );
    // Killed if the test ends before it does.
    let mut child = KillOnDrop(
        Command::new(&bin)
            .arg(&data)
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the example"),
    );

    // Its own writes reach HTTP readers: the latest reading, and the stream of them.
    let latest = eventually(30, "the example's first reading over HTTP", || {
        get_json(addr, "/v1/kv/sensor/latest")
    })
    .await;
    assert!(latest["celsius"].is_number(), "{latest}");
    assert_eq!(
        common::Client::connect(addr)
            .await
            .get("/v1/kv/sensor/latest")
            .await
            .header("content-type"),
        Some("application/json")
    );
    let n = eventually(30, "two readings in the stream", || async {
        let page = get_json(addr, "/v1/streams/readings/events?limit=100").await?;
        let n = page["events"].as_array().map_or(0, Vec::len);
        (n >= 2).then_some(n)
    })
    .await;

    // Ctrl-C: the server drains, the store closes, the process exits 0.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait for the example");
    assert!(status.success(), "the example exited with {status}");

    // Reopened as a library: everything it acknowledged is there.
    let store = shardbox::Store::open(shardbox::Config::with_data_dir(&data)).unwrap();
    let v = store
        .kv()
        .get("sensor", "latest")
        .unwrap()
        .expect("latest reading");
    assert!(serde_json::from_slice::<serde_json::Value>(&v.payload).is_ok());
    let all = shardbox::events::RangeQuery {
        from: None,
        to: None,
        kind: Some("reading".into()),
        desc: false,
        limit: 10_000,
        after: None,
    };
    let (events, _) = store.events().range("readings", &all).unwrap();
    assert!(
        events.len() >= n,
        "{} events on reopen, {n} seen before",
        events.len()
    );
    store.close();
}
