//! An I/O error in one shard, in the real binary: the failpoint `writer.commit@1` fails shard
//! 1's commits from its 31st on (as a disk returning EIO would). That shard stops taking writes
//! and `/readyz` names it; the other shards keep serving reads and writes; every acknowledged
//! write is readable, and after a restart (fault gone) nothing acknowledged is missing, nothing
//! refused was applied, and shard 1 takes writes again.

use crate::common;

use common::spawn::{spawn_shardbox, KillOnDrop};
use common::Client;

fn settings(fault: bool) -> Vec<(String, String)> {
    let mut s = vec![("SHARDBOX_SHARDS".to_string(), "4".to_string())];
    if fault {
        s.push((
            "SHARDBOX_FAILPOINTS".into(),
            "writer.commit@1=error_after(30,injected EIO)".into(),
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_stops_one_shard_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (child, addr) = spawn_shardbox(&dir, &settings(true)).expect("start");
    let mut child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    let mut served_after_fault = 0;
    for i in 0..400 {
        let r = c.put(&format!("/v1/kv/io/k{i}"), &format!("v{i}")).await;
        match r.status {
            201 => {
                if !refused.is_empty() {
                    served_after_fault += 1;
                }
                acked.push(i);
            }
            500 | 503 => {
                let code = r.error_code();
                assert!(
                    code == "storage_error" || code == "shard_unavailable",
                    "{code}: {}",
                    r.text()
                );
                refused.push(i);
            }
            s => panic!("k{i}: {s} {}", r.text()),
        }
    }
    assert!(!refused.is_empty(), "the fault never struck");
    assert!(
        served_after_fault > 50,
        "other shards stopped too ({served_after_fault} served)"
    );
    let ready = c.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let problems = ready.json()["problems"].clone();
    assert_eq!(
        problems,
        serde_json::json!([{"shard": 1, "reason": problems[0]["reason"]}]),
        "only shard 1 is named"
    );
    assert!(problems[0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("injected EIO"));
    for i in &acked {
        assert_eq!(
            c.get(&format!("/v1/kv/io/k{i}")).await.text(),
            format!("v{i}")
        );
    }
    drop(c);
    child.kill().expect("kill");
    let _ = child.wait();

    let (child, addr) = spawn_shardbox(&dir, &settings(false)).expect("restart");
    let mut child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    for i in &acked {
        let r = c.get(&format!("/v1/kv/io/k{i}")).await;
        assert_eq!(r.status, 200, "k{i} acknowledged, then lost");
    }
    for i in &refused {
        let r = c.get(&format!("/v1/kv/io/k{i}")).await;
        assert_eq!(r.status, 404, "k{i} was refused, yet applied");
        let r = c.put(&format!("/v1/kv/io/k{i}"), "again").await;
        assert_eq!(
            r.status,
            201,
            "shard 1 takes writes after restart: {}",
            r.text()
        );
    }
    assert_eq!(c.get("/readyz").await.status, 200);
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
}
