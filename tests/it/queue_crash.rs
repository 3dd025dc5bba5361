//! Queue crash safety: producers enqueue while workers claim and ack; the real server is
//! SIGKILLed at random moments many times. At the end every acknowledged enqueue was acked
//! exactly once server-side, nothing is left in flight, and no ack succeeded twice (which would
//! mean a stale lease token was accepted).

use crate::common;

use common::Client;
use rand::Rng;
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CYCLES: usize = 10;

#[derive(Default)]
struct Record {
    enqueued: HashSet<String>,
    /// Every job a claim delivered.
    claimed: HashSet<String>,
    acked: Vec<String>,
}

async fn producer(addr: SocketAddr, rec: Arc<Mutex<Record>>) {
    let mut c = Client::connect(addr).await;
    loop {
        let n: u32 = rand::rng().random();
        match c
            .try_send(
                "POST",
                "/v1/queues/crash/jobs",
                &[],
                json!({"payload": {"n": n}}).to_string(),
            )
            .await
        {
            Ok(r) if r.status == 201 => {
                let id = r.json()["id"].as_str().unwrap().to_string();
                rec.lock().unwrap().enqueued.insert(id);
            }
            Ok(r) => panic!("enqueue: {} {}", r.status, r.text()),
            Err(_) => return,
        }
    }
}

/// Claims and acks until the server dies, or (when `drain`) until the queue is empty.
async fn worker(addr: SocketAddr, rec: Arc<Mutex<Record>>, drain: bool) {
    let mut c = Client::connect(addr).await;
    loop {
        let body = json!({"max": 8, "lease": "1s", "wait": if drain { "300ms" } else { "50ms" }});
        let jobs = match c
            .try_send("POST", "/v1/queues/crash/claim", &[], body.to_string())
            .await
        {
            Ok(r) if r.status == 200 => r.json()["jobs"].as_array().unwrap().clone(),
            Ok(r) => panic!("claim: {} {}", r.status, r.text()),
            Err(_) => return,
        };
        if jobs.is_empty() && drain {
            let st = c.get("/v1/queues/crash").await.json();
            let open = ["ready", "delayed", "in_flight"]
                .iter()
                .map(|k| st[*k].as_u64().unwrap_or(0))
                .sum::<u64>();
            if open == 0 {
                return;
            }
        }
        for j in jobs {
            let id = j["id"].as_str().unwrap().to_string();
            rec.lock().unwrap().claimed.insert(id.clone());
            let path = format!("/v1/queues/crash/jobs/{id}/ack");
            let body = json!({"lease_token": j["lease_token"]}).to_string();
            match c.try_send("POST", &path, &[], body).await {
                Ok(r) if r.status == 204 => rec.lock().unwrap().acked.push(id),
                // Stale (lease expired and re-leased) or already acked by another holder.
                Ok(r) if r.status == 409 || r.status == 404 => {}
                Ok(r) => panic!("ack: {} {}", r.status, r.text()),
                Err(_) => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_or_acked_by_a_stale_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let rec = Arc::new(Mutex::new(Record::default()));
    let mut rng = common::seeded_rng("no_job_is_lost_or_acked_by_a_stale_lease");
    for cycle in 0..CYCLES {
        let (mut child, addr) = common::spawn::spawn_shardbox(&dir, &[]).unwrap();
        if cycle == 0 {
            let mut c = Client::connect(addr).await;
            let r = c
                .send(
                    "PUT",
                    "/v1/queues/crash",
                    &[],
                    json!({"max_attempts": 1000}).to_string(),
                )
                .await;
            assert!(r.status == 201 || r.status == 200);
        }
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.push(tokio::spawn(producer(addr, rec.clone())));
            tasks.push(tokio::spawn(worker(addr, rec.clone(), false)));
        }
        let delay = rng.random_range(100..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Restart and drain: jobs left in flight by the crashes come back when their leases expire.
    let (mut child, addr) = common::spawn::spawn_shardbox(&dir, &[]).unwrap();
    let mut drains = Vec::new();
    for _ in 0..3 {
        drains.push(tokio::spawn(worker(addr, rec.clone(), true)));
    }
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        for d in drains {
            d.await.unwrap();
        }
    })
    .await;
    assert!(drained.is_ok(), "the queue did not drain");

    let mut c = Client::connect(addr).await;
    let st = c.get("/v1/queues/crash").await.json();
    let rec = std::mem::take(&mut *rec.lock().unwrap());
    assert!(!rec.enqueued.is_empty(), "nothing was enqueued");
    for k in ["ready", "delayed", "in_flight", "dead"] {
        assert_eq!(st[k], 0, "{k} left: {st}");
    }
    assert_eq!(
        st["totals"]["acked"], st["totals"]["enqueued"],
        "every stored job was acked once: {st}"
    );
    let mut seen = HashSet::new();
    for id in &rec.acked {
        assert!(
            seen.insert(id),
            "job {id} was acked twice: a stale lease was accepted"
        );
    }
    for id in &rec.enqueued {
        assert!(
            rec.claimed.contains(id),
            "acknowledged job {id} was never delivered: lost"
        );
        let r = c.get(&format!("/v1/queues/crash/jobs/{id}")).await;
        assert_eq!(
            r.status,
            404,
            "acknowledged job {id} is still there: {}",
            r.text()
        );
    }
    assert!(st["totals"]["enqueued"].as_u64().unwrap() >= rec.enqueued.len() as u64);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}
