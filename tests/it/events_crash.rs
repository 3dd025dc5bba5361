//! Event crash safety: appends acknowledged before a SIGKILL are all there after restart, and
//! ids stay unique and increasing across restarts.

use crate::common;

use common::Client;
use rand::Rng;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CYCLES: usize = 10;

fn parse(id: &str) -> (u64, u32) {
    let (a, b) = id.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

async fn appender(addr: SocketAddr, acked: Arc<Mutex<Vec<String>>>) {
    let mut c = Client::connect(addr).await;
    loop {
        let n = rand::rng().random_range(1..20);
        let body: String = (0..n)
            .map(|i| format!("{{\"type\":\"t\",\"data\":{{\"i\":{i}}}}}\n"))
            .collect();
        match c
            .try_send(
                "POST",
                "/v1/streams/crash/events",
                &[("content-type", "application/x-ndjson")],
                body,
            )
            .await
        {
            Ok(r) if r.status == 201 => {
                let ids: Vec<String> = r.json()["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                // Within one response, server-assigned ids increase.
                for w in ids.windows(2) {
                    assert!(parse(&w[0]) < parse(&w[1]), "ids not increasing: {w:?}");
                }
                acked.lock().unwrap().extend(ids);
            }
            Ok(r) => panic!("append: {} {}", r.status, r.text()),
            Err(_) => return,
        }
    }
}

async fn all_ids(addr: SocketAddr) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    common::stream_ids(&mut c, "crash").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut rng = common::seeded_rng("acknowledged_appends_survive_sigkill");
    for _ in 0..CYCLES {
        let (mut child, addr) = common::spawn::spawn_shardbox(&dir, &[]).unwrap();
        let stored = all_ids(addr).await;
        let set: BTreeSet<&String> = stored.iter().collect();
        assert_eq!(set.len(), stored.len(), "duplicate ids in the stream");
        for id in acked.lock().unwrap().iter() {
            assert!(
                set.contains(id),
                "acknowledged event {id} is missing after a crash"
            );
        }
        let newest_stored = stored.last().map(|i| parse(i));
        let start = acked.lock().unwrap().len();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(appender(addr, acked.clone())));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        // Ids handed out after a restart continue after everything stored before it.
        if let Some(newest) = newest_stored {
            for id in &acked.lock().unwrap()[start..] {
                assert!(
                    parse(id) > newest,
                    "id {id} after restart is not after {newest:?}"
                );
            }
        }
    }
    let (mut child, addr) = common::spawn::spawn_shardbox(&dir, &[]).unwrap();
    let stored = all_ids(addr).await;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let set: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(set.len(), stored.len(), "duplicate ids in the stream");
    for id in &acked {
        assert!(
            set.contains(id),
            "acknowledged event {id} is missing after a crash"
        );
    }
    let parsed: Vec<(u64, u32)> = stored.iter().map(|i| parse(i)).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "stored ids are not strictly increasing"
    );
    let mut c = Client::connect(addr).await;
    let info = c.get("/v1/streams/crash").await.json();
    assert_eq!(
        info["events"].as_u64().unwrap(),
        stored.len() as u64,
        "counters match the events"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}
