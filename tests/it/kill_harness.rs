//! One kill -9 harness over every domain at once. A mixed workload (KV puts, deletes and
//! increments; queue enqueue, claim and ack; event appends; cache puts and deletes) runs against
//! the real binary, which is SIGKILLed at a seeded random moment, restarted on the same data
//! directory, and checked against every promise of DESIGN.md that a crash can break:
//!
//! - every acknowledged KV write is there (or a later write to the same key that was in flight);
//!   a key whose delete was acknowledged stays deleted; counters never go back;
//! - every acknowledged enqueue is a job the store still holds, unless its ack was acknowledged;
//!   an acknowledged ack never comes back (no job is lost, none is acked twice);
//! - every acknowledged event is in its stream, ids increasing;
//! - a cache entry whose delete was acknowledged is not served by the running server right
//!   after; after a restart none is (the disk tier is not recovered, so every restart starts
//!   the cache empty; the check guards that choice).
//!
//! `cargo test` runs a few cycles. The long run (and the replay of a failure):
//! `KILL_HARNESS_CYCLES=100 KILL_HARNESS_SEED=<seed> cargo test --release --test kill_harness -- --nocapture`

use crate::common;

use common::spawn::{spawn_shardbox, KillOnDrop};
use common::Client;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEYS_PER_TASK: u32 = 40;

/// What one KV key may hold after a crash: the result of its last acknowledged operation, or of
/// any operation sent after it whose answer never came.
#[derive(Default, Clone)]
struct KeyLog {
    acked: Option<Option<String>>,
    pending: Vec<Option<String>>,
}

#[derive(Default)]
struct Ledger {
    keys: HashMap<String, KeyLog>,
    counters: HashMap<String, i64>,
    jobs_enqueued: HashSet<String>,
    jobs_acked: HashSet<String>,
    /// Acks sent whose answer never came: either outcome is allowed.
    jobs_ack_pending: HashSet<String>,
    events: Vec<String>,
    cache_deleted: HashSet<String>,
    acknowledged: u64,
}

fn settings() -> Vec<(String, String)> {
    common::env(&[
        ("SHARDBOX_SHARDS", "4"),
        ("SHARDBOX_CHECKPOINT_LOG_BYTES", "1048576"),
        ("SHARDBOX_CHECKPOINT_INTERVAL_MS", "300"),
        ("SHARDBOX_WAL_SEGMENT_BYTES", "1048576"),
        ("SHARDBOX_CACHE_DISK_BYTES", "16777216"),
        ("SHARDBOX_CACHE_MEMORY_BYTES", "4194304"),
    ])
}

async fn kv_task(addr: SocketAddr, t: usize, cycle: usize, seed: u64, ledger: Arc<Mutex<Ledger>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (t as u64) << 32);
    let mut c = Client::connect(addr).await;
    for i in 0.. {
        let key = format!("t{t}-{}", rng.random_range(0..KEYS_PER_TASK));
        let path = format!("/v1/kv/h/{key}");
        if rng.random_ratio(1, 5) {
            ledger
                .lock()
                .unwrap()
                .keys
                .entry(key.clone())
                .or_default()
                .pending
                .push(None);
            match c.try_send("DELETE", &path, &[], "").await {
                Ok(r) if r.status == 204 || r.status == 200 || r.status == 404 => {
                    let mut l = ledger.lock().unwrap();
                    let k = l.keys.entry(key).or_default();
                    k.acked = Some(None);
                    k.pending.clear();
                    l.acknowledged += 1;
                }
                Ok(r) => panic!("delete: {} {}", r.status, r.text()),
                Err(_) => return,
            }
        } else if rng.random_ratio(1, 6) {
            let counter = format!("c{t}");
            match c
                .try_send(
                    "POST",
                    "/v1/kv/h:incr",
                    &[("content-type", "application/json")],
                    json!({"key": counter, "by": 1}).to_string(),
                )
                .await
            {
                Ok(r) if r.status == 200 || r.status == 201 => {
                    let v = r.json()["value"].as_i64().expect("counter value");
                    let mut l = ledger.lock().unwrap();
                    let e = l.counters.entry(counter).or_default();
                    *e = (*e).max(v);
                    l.acknowledged += 1;
                }
                Ok(r) => panic!("incr: {} {}", r.status, r.text()),
                Err(_) => return,
            }
        } else {
            let value = format!("v{cycle}-{i}-{}", "x".repeat(rng.random_range(0..2000)));
            ledger
                .lock()
                .unwrap()
                .keys
                .entry(key.clone())
                .or_default()
                .pending
                .push(Some(value.clone()));
            match c.try_send("PUT", &path, &[], value.clone()).await {
                Ok(r) if r.status == 201 || r.status == 200 => {
                    let mut l = ledger.lock().unwrap();
                    let k = l.keys.entry(key).or_default();
                    k.acked = Some(Some(value));
                    k.pending.clear();
                    l.acknowledged += 1;
                }
                Ok(r) => panic!("put: {} {}", r.status, r.text()),
                Err(_) => return,
            }
        }
    }
}

async fn queue_task(addr: SocketAddr, worker: bool, ledger: Arc<Mutex<Ledger>>) {
    let mut c = Client::connect(addr).await;
    loop {
        if !worker {
            match c
                .try_send(
                    "POST",
                    "/v1/queues/h/jobs",
                    &[("content-type", "application/json")],
                    json!({"payload": {"k": 1}}).to_string(),
                )
                .await
            {
                Ok(r) if r.status == 201 => {
                    let id = r.json()["id"].as_str().expect("job id").to_string();
                    let mut l = ledger.lock().unwrap();
                    l.jobs_enqueued.insert(id);
                    l.acknowledged += 1;
                }
                Ok(r) => panic!("enqueue: {} {}", r.status, r.text()),
                Err(_) => return,
            }
            continue;
        }
        let body = json!({"max": 4, "lease": "30s", "wait": "20ms"}).to_string();
        let jobs = match c
            .try_send(
                "POST",
                "/v1/queues/h/claim",
                &[("content-type", "application/json")],
                body,
            )
            .await
        {
            Ok(r) if r.status == 200 => r.json()["jobs"].as_array().cloned().unwrap_or_default(),
            Ok(r) => panic!("claim: {} {}", r.status, r.text()),
            Err(_) => return,
        };
        for j in jobs {
            let id = j["id"].as_str().expect("id").to_string();
            let token = j["lease_token"].as_str().expect("token").to_string();
            ledger.lock().unwrap().jobs_ack_pending.insert(id.clone());
            match c
                .try_send(
                    "POST",
                    &format!("/v1/queues/h/jobs/{id}/ack"),
                    &[("content-type", "application/json")],
                    json!({"lease_token": token}).to_string(),
                )
                .await
            {
                Ok(r) if r.status == 204 || r.status == 200 => {
                    let mut l = ledger.lock().unwrap();
                    l.jobs_ack_pending.remove(&id);
                    assert!(l.jobs_acked.insert(id.clone()), "job {id} acked twice");
                    l.acknowledged += 1;
                }
                Ok(r) => panic!("ack {id}: {} {}", r.status, r.text()),
                Err(_) => return,
            }
        }
    }
}

async fn events_task(addr: SocketAddr, ledger: Arc<Mutex<Ledger>>) {
    let mut c = Client::connect(addr).await;
    loop {
        let body: String = (0..5)
            .map(|i| format!("{{\"type\":\"t\",\"data\":{i}}}\n"))
            .collect();
        match c
            .try_send(
                "POST",
                "/v1/streams/h/events",
                &[("content-type", "application/x-ndjson")],
                body,
            )
            .await
        {
            Ok(r) if r.status == 201 => {
                let ids = r.json()["ids"].as_array().cloned().expect("ids");
                let mut l = ledger.lock().unwrap();
                l.events
                    .extend(ids.iter().map(|i| i.as_str().expect("id").to_string()));
                l.acknowledged += 1;
            }
            Ok(r) => panic!("append: {} {}", r.status, r.text()),
            Err(_) => return,
        }
    }
}

async fn cache_task(addr: SocketAddr, cycle: usize, ledger: Arc<Mutex<Ledger>>) {
    let mut c = Client::connect(addr).await;
    for i in 0.. {
        let path = format!("/v1/cache/h/c{cycle}-{i}");
        match c
            .try_send("PUT", &format!("{path}?ttl=1h"), &[], "cached")
            .await
        {
            Ok(r) if r.status == 201 || r.status == 200 || r.status == 204 => {}
            Ok(r) => panic!("cache put: {} {}", r.status, r.text()),
            Err(_) => return,
        }
        if i % 2 == 0 {
            match c.try_send("DELETE", &path, &[], "").await {
                Ok(r) if r.status < 300 || r.status == 404 => {
                    let mut l = ledger.lock().unwrap();
                    l.cache_deleted.insert(path.clone());
                    l.acknowledged += 1;
                }
                Ok(r) => panic!("cache delete: {} {}", r.status, r.text()),
                Err(_) => return,
            }
            // In the running server, under the load of the other tasks: gone at once.
            match c.try_send("GET", &path, &[], "").await {
                Ok(r) => assert_ne!(r.status, 200, "deleted cache entry {path} served"),
                Err(_) => return,
            }
        }
    }
}

/// Checks every promise against the restarted server; returns how many facts it checked.
async fn verify(addr: SocketAddr, ledger: &mut Ledger, seed: u64, cycle: usize) -> usize {
    let mut c = Client::connect(addr).await;
    let mut checked = 0;
    let ctx = format!("seed {seed}, cycle {cycle}");
    for (key, log) in ledger.keys.iter_mut() {
        let r = c.get(&format!("/v1/kv/h/{key}")).await;
        let got = match r.status {
            200 => Some(r.text()),
            404 => None,
            s => panic!("{ctx}: GET {key}: {s} {}", r.text()),
        };
        let mut allowed: Vec<Option<String>> = log.pending.clone();
        allowed.push(log.acked.clone().unwrap_or(None));
        assert!(
            allowed.contains(&got),
            "{ctx}: key {key} holds {:?}; acknowledged {:?}, in flight {}",
            got.as_deref().map(|g| &g[..g.len().min(24)]),
            log.acked
                .as_ref()
                .map(|a| a.as_deref().map(|v| &v[..v.len().min(24)])),
            log.pending.len()
        );
        // What it holds now is the known state from here on.
        log.acked = Some(got);
        log.pending.clear();
        checked += 1;
    }
    for (counter, min) in &ledger.counters {
        let r = c.get(&format!("/v1/kv/h/{counter}")).await;
        let v: i64 = r
            .text()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ctx}: counter {counter}: {}", r.text()));
        assert!(
            v >= *min,
            "{ctx}: counter {counter} went back from {min} to {v}"
        );
        checked += 1;
    }
    for id in &ledger.jobs_enqueued {
        let r = c.get(&format!("/v1/queues/h/jobs/{id}")).await;
        if ledger.jobs_ack_pending.contains(id) {
            assert!(
                r.status == 200 || r.status == 404,
                "{ctx}: job {id}: {}",
                r.status
            );
        } else if ledger.jobs_acked.contains(id) {
            assert_eq!(
                r.status,
                404,
                "{ctx}: job {id} was acked and came back: {}",
                r.text()
            );
        } else {
            assert_eq!(
                r.status, 200,
                "{ctx}: job {id} was enqueued (acknowledged) and is lost"
            );
        }
        checked += 1;
    }
    // An ack whose answer never came: what the store holds now decides.
    for id in std::mem::take(&mut ledger.jobs_ack_pending) {
        let r = c.get(&format!("/v1/queues/h/jobs/{id}")).await;
        if r.status == 404 {
            ledger.jobs_acked.insert(id);
        }
    }
    let ids = common::stream_ids(&mut c, "h").await;
    let have: HashSet<&String> = ids.iter().collect();
    for id in &ledger.events {
        assert!(have.contains(id), "{ctx}: event {id} acknowledged and lost");
        checked += 1;
    }
    let parse = |id: &str| {
        let (a, b) = id.split_once('-').expect("event id");
        (
            a.parse::<u64>().expect("ms"),
            b.parse::<u32>().expect("seq"),
        )
    };
    assert!(
        ids.windows(2).all(|w| parse(&w[0]) < parse(&w[1])),
        "{ctx}: event ids not increasing"
    );
    for path in &ledger.cache_deleted {
        let r = c.get(path).await;
        assert_ne!(
            r.status, 200,
            "{ctx}: deleted cache entry {path} served again"
        );
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_under_a_mixed_workload_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("KILL_HARNESS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("KILL_HARNESS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("kill harness: seed {seed}, {cycles} cycles (replay: KILL_HARNESS_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut ledger = Ledger::default();
    let mut facts = 0;
    for cycle in 0..cycles {
        let (child, addr) = spawn_shardbox(&dir, &settings()).expect("start shardbox");
        let mut child = KillOnDrop(child);
        if cycle > 0 {
            facts += verify(addr, &mut ledger, seed, cycle).await;
        }
        let shared = Arc::new(Mutex::new(std::mem::take(&mut ledger)));
        let mut tasks = Vec::new();
        for t in 0..3 {
            tasks.push(tokio::spawn(kv_task(
                addr,
                t,
                cycle,
                rng.random(),
                shared.clone(),
            )));
        }
        tasks.push(tokio::spawn(queue_task(addr, false, shared.clone())));
        tasks.push(tokio::spawn(queue_task(addr, true, shared.clone())));
        tasks.push(tokio::spawn(events_task(addr, shared.clone())));
        tasks.push(tokio::spawn(cache_task(addr, cycle, shared.clone())));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        child.kill().expect("kill -9");
        let _ = child.wait();
        for t in tasks {
            t.await.expect("a workload task panicked");
        }
        ledger = Arc::try_unwrap(shared)
            .ok()
            .expect("tasks done")
            .into_inner()
            .unwrap();
    }
    let (child, addr) = spawn_shardbox(&dir, &settings()).expect("final start");
    let mut child = KillOnDrop(child);
    facts += verify(addr, &mut ledger, seed, cycles).await;
    child.kill().expect("kill");
    let _ = child.wait();
    eprintln!(
        "kill harness: seed {seed}: {cycles} cycles, {} operations acknowledged, {facts} facts checked after restarts, lost: 0",
        ledger.acknowledged
    );
    assert!(
        ledger.acknowledged > cycles as u64 * 10,
        "too little work got through"
    );
}
