//! Backups taken while writers run, restored with the real CLI, checked with `shardbox check`,
//! and served again; the refusals of restore; compaction.

use crate::common;

use common::cli::{ok, p, shardbox};
use common::{Client, TestServer};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_writes_restores_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start().await;
    let mut c = s.client().await;
    // Some of every domain before the backup.
    for i in 0..20 {
        c.post_json("/v1/queues/mail/jobs", json!({"payload": {"n": i}}))
            .await;
    }
    let r = c
        .post_json("/v1/streams/clicks/events", json!({"data": {"x": 1}}))
        .await;
    assert!(r.status < 300, "{}", r.text());

    // Writers that keep writing through the backup; each records what was acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), s.addr);
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("w{w}/{i}"), format!("value {w} {i}"));
                let r = c.put(&format!("/v1/kv/app/{k}"), &v).await;
                if r.status < 300 {
                    acked.lock().unwrap().push((k, v));
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before: Vec<(String, String)> = acked.lock().unwrap().clone();
    assert!(!before.is_empty());
    let out = tmp.path().join("backup");
    let r = c
        .post_json("/v1/admin/backup", json!({"out": p(&out)}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert!(report["rows"].as_u64().unwrap() > before.len() as u64);
    // A second backup into the same place is refused; a relative path too.
    let r = c
        .post_json("/v1/admin/backup", json!({"out": p(&out)}))
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
    let r = c
        .post_json("/v1/admin/backup", json!({"out": "relative/dir"}))
        .await;
    assert_eq!(r.status, 400);
    // A place the server cannot make a directory (under a file) is the request's fault: 400
    // naming it, not a 500.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let r = c
        .post_json("/v1/admin/backup", json!({"out": p(&file.join("sub"))}))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "bad_request"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("Not a directory"), "{}", r.text());
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    s.stop().await;

    // The backup's files verify by hand too.
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  MANIFEST") && sums.contains("  shards/000.redb"));

    let data = tmp.path().join("restored");
    ok(
        &shardbox(&["restore", "--from", p(&out), "--data", p(&data)]),
        "restore",
    );
    let check = ok(&shardbox(&["check", "--data", p(&data)]), "check");
    assert!(check.contains("OK"), "{check}");

    let s = TestServer::start_in(data.clone(), |_| {}).await;
    let mut c = s.client().await;
    for (k, v) in &before {
        let r = c.get(&format!("/v1/kv/app/{k}")).await;
        assert_eq!(
            (r.status, r.text()),
            (200, v.clone()),
            "{k}: acknowledged before the backup, missing after restore"
        );
    }
    let q = c.get("/v1/queues/mail").await.json();
    assert_eq!(q["ready"], 20, "{q}");
    let ev = c.get("/v1/streams/clicks/events?from=0").await.json();
    assert_eq!(ev["events"].as_array().map(Vec::len), Some(1), "{ev}");
    // The restored store takes new writes.
    assert!(c.put("/v1/kv/app/new", "x").await.status < 300);
    s.stop().await;
}

#[tokio::test]
async fn the_cli_backs_up_a_running_server_and_restore_refuses_what_it_should() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for i in 0..50 {
        c.put(&format!("/v1/kv/app/k{i}"), "v").await;
    }
    let out = tmp.path().join("b1");
    let dir = s.dir.clone();
    let run = tokio::task::spawn_blocking(move || {
        shardbox(&["backup", "--data", p(&dir), "--out", p(&out)])
    })
    .await
    .unwrap();
    let stdout = ok(&run, "backup through the admin socket");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("online"), "{stderr}");
    assert!(stdout.contains("\"rows\""), "{stdout}");
    // Written after the backup: a restore --force must take it away.
    assert!(c.put("/v1/kv/app/after-backup", "x").await.status < 300);
    let dir = s.dir.clone();
    // Keeps the stopped server's directory.
    let _keep = s.stop().await;
    let out = tmp.path().join("b1");

    // Into a non-empty directory: refused without --force.
    let r = shardbox(&["restore", "--from", p(&out), "--data", p(&dir)]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--force"));
    ok(
        &shardbox(&["restore", "--from", p(&out), "--data", p(&dir), "--force"]),
        "restore --force",
    );
    assert!(ok(&shardbox(&["check", "--data", p(&dir)]), "check").contains("OK"));
    {
        let s = TestServer::start_in(dir.clone(), |_| {}).await;
        let mut c = s.client().await;
        assert_eq!(c.get("/v1/kv/app/k49").await.status, 200);
        assert_eq!(
            c.get("/v1/kv/app/after-backup").await.status,
            404,
            "restore --force kept data newer than the backup"
        );
        s.stop().await;
    }
    // A non-empty directory that is not a data directory is never replaced.
    let stranger = tmp.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    std::fs::write(stranger.join("notes.txt"), "mine").unwrap();
    let r = shardbox(&[
        "restore",
        "--from",
        p(&out),
        "--data",
        p(&stranger),
        "--force",
    ]);
    assert!(!r.status.success());
    assert!(stranger.join("notes.txt").exists());

    // A damaged backup is refused before anything is touched.
    let shard = out.join("shards/000.redb");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let target = tmp.path().join("never");
    let r = shardbox(&["restore", "--from", p(&out), "--data", p(&target)]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!target.join("MANIFEST").exists());
    // Nor is a damaged backup allowed to replace data: the old data stays.
    let r = shardbox(&["restore", "--from", p(&out), "--data", p(&dir), "--force"]);
    assert!(!r.status.success());
    assert!(ok(&shardbox(&["check", "--data", p(&dir)]), "check").contains("OK"));
    assert!(!dir.join("restore.tmp").exists());

    // Offline: no server runs, the CLI opens the directory itself.
    let out2 = tmp.path().join("b2");
    ok(
        &shardbox(&["backup", "--data", p(&dir), "--out", p(&out2)]),
        "offline backup",
    );
    let data2 = tmp.path().join("r2");
    ok(
        &shardbox(&["restore", "--from", p(&out2), "--data", p(&data2)]),
        "restore",
    );
    let s = TestServer::start_in(data2, |_| {}).await;
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/app/k49").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn compact_gives_space_back_and_keeps_the_data() {
    let s = TestServer::start_with(|c| c.engine.checkpoint_interval_ms = 50).await;
    let mut c = s.client().await;
    let big = "x".repeat(64 << 10);
    for i in 0..200 {
        c.put(&format!("/v1/kv/app/k{i}"), &big).await;
    }
    for i in 0..190 {
        c.delete(&format!("/v1/kv/app/k{i}")).await;
    }
    let dir = s.dir.clone();
    let _keep = s.stop().await;
    let out = ok(&shardbox(&["compact", "--data", p(&dir)]), "compact");
    let tail = out.rsplit(": ").next().unwrap();
    let nums: Vec<u64> = tail
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums.len() >= 2, "{out}");
    assert!(nums[1] < nums[0], "compaction freed nothing: {out}");
    assert!(ok(&shardbox(&["check", "--data", p(&dir)]), "check").contains("OK"));
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/app/k195").await.text(), big);
    assert_eq!(c.get("/v1/kv/app/k5").await.status, 404);
    s.stop().await;
}

#[tokio::test]
async fn a_restore_stopped_while_replacing_is_refused_by_the_server_and_finished_by_the_next() {
    if !common::alone() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    assert!(c.put("/v1/kv/app/k1", "old").await.status < 300);
    drop(c);
    s.stop().await;
    let out = tmp.path().join("b");
    ok(
        &shardbox(&["backup", "--data", p(&dir), "--out", p(&out)]),
        "backup",
    );
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    assert!(c.put("/v1/kv/app/k1", "newer").await.status < 300);
    assert!(c.put("/v1/kv/app/k2", "newer").await.status < 300);
    drop(c);
    s.stop().await;

    // The restore stops (a crash) after the old MANIFEST is gone, before the new shards are in.
    shardbox::testing::failpoint::set(
        "restore.swap.removing",
        shardbox::testing::failpoint::Action::Error("crash".into()),
    );
    let r = shardbox::backup::restore(&out, &dir, true, &shardbox::progress::Progress::quiet());
    shardbox::testing::failpoint::clear("restore.swap.removing");
    assert!(r.is_err());
    assert!(!dir.join("MANIFEST").exists());
    // The server does not build a store over what is left.
    let e = shardbox::Store::open(shardbox::Config::with_data_dir(&dir))
        .err()
        .expect("opening a half-restored directory must fail")
        .to_string();
    assert!(e.contains("run `shardbox restore` again"), "{e}");
    // The next restore finishes the interrupted one, and says so.
    let r = shardbox(&["restore", "--from", p(&out), "--data", p(&dir), "--force"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("was finished"), "{err}");
    assert!(ok(&shardbox(&["check", "--data", p(&dir)]), "check").contains("OK"));
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut c = s.client().await;
    assert_eq!(c.get("/v1/kv/app/k1").await.text(), "old");
    assert_eq!(c.get("/v1/kv/app/k2").await.status, 404);
    drop(c);
    s.stop().await;
}
