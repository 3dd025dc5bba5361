//! Crash safety: an acknowledged write survives SIGKILL at any moment.
//!
//! Spawns the real binary, runs concurrent writers that record every acknowledged
//! (key, revision, value), SIGKILLs the server at a random moment, restarts it, and checks that
//! every acknowledged write is there with at least that revision. Repeated for many cycles on the
//! same data directory.

use crate::common;

use common::Client;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CYCLES: usize = 20;
const WRITERS: usize = 8;
const KEYS: usize = 200;

fn spawn_server(dir: &Path) -> (Child, SocketAddr) {
    common::spawn::spawn_shardbox(dir, &[]).expect("start shardbox")
}

#[derive(Clone, Default)]
struct Acked(Arc<Mutex<HashMap<String, (u64, String)>>>);

impl Acked {
    fn record(&self, key: &str, revision: u64, value: &str) {
        let mut m = self.0.lock().unwrap();
        let e = m.entry(key.to_string()).or_insert((0, String::new()));
        if revision > e.0 {
            *e = (revision, value.to_string());
        }
    }
}

async fn writer(addr: SocketAddr, id: usize, cycle: usize, acked: Acked) {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    drop(stream);
    let mut c = Client::connect(addr).await;
    let mut seq = 0u64;
    loop {
        let key = format!("k{}", rand::rng().random_range(0..KEYS));
        let value = format!("c{cycle}-w{id}-{seq}");
        seq += 1;
        match c
            .try_send("PUT", &format!("/v1/kv/crash/{key}"), &[], value.clone())
            .await
        {
            Ok(r) if r.status == 201 || r.status == 200 => {
                let rev = r.json()["revision"].as_u64().unwrap();
                acked.record(&key, rev, &value);
            }
            Ok(r) => panic!("unexpected status {}: {}", r.status, r.text()),
            Err(_) => return, // the server died mid-request: not acknowledged
        }
    }
}

async fn verify(addr: SocketAddr, acked: &Acked) -> usize {
    let mut c = Client::connect(addr).await;
    let snapshot = acked.0.lock().unwrap().clone();
    for (key, (rev, value)) in &snapshot {
        let r = c.get(&format!("/v1/kv/crash/{key}")).await;
        assert_eq!(
            r.status, 200,
            "acknowledged key {key} (revision {rev}) is missing"
        );
        let have: u64 = r.header("etag").unwrap().trim_matches('"').parse().unwrap();
        assert!(
            have >= *rev,
            "key {key}: revision {have} is older than acknowledged {rev}"
        );
        if have == *rev {
            assert_eq!(&r.text(), value, "key {key}: wrong value at revision {rev}");
        }
    }
    snapshot.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let acked = Acked::default();
    let mut total_checked = 0;
    let mut rng = common::seeded_rng("acknowledged_writes_survive_sigkill");
    for cycle in 0..CYCLES {
        let (mut child, addr) = spawn_server(&dir);
        if cycle > 0 {
            total_checked += verify(addr, &acked).await;
        }
        let mut tasks = Vec::new();
        for id in 0..WRITERS {
            tasks.push(tokio::spawn(writer(addr, id, cycle, acked.clone())));
        }
        let delay = rng.random_range(50..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let (mut child, addr) = spawn_server(&dir);
    total_checked += verify(addr, &acked).await;
    assert!(total_checked > 0, "no write was acknowledged at all");
    // A clean stop after all the crashes: SIGTERM exits 0.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");
    // And the directory checks clean.
    let report = shardbox::check::run(&dir, false).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
}
