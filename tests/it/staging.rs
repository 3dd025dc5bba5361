//! A killed import, backup or restore leaves the old state or the new, never a mix that serves
//! (issue 19, items 3-4 and the restore cleanup): backup destinations inside the data directory
//! are refused however they are spelled; `kill -9` of `shardbox import` at random moments; a
//! restore stopped inside its final cleanup.

use crate::common;

use common::cli::{ok, p, shardbox};
use common::TestServer;
use rand::Rng;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_backup_inside_the_data_directory_is_refused_however_it_is_spelled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_in(data.clone(), |_| {}).await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/app/k", "v").await.status, 201);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let data_s = p(&data).to_string();
    let spellings = [
        format!("{data_s}/bk"),
        format!("/proc/self/root{data_s}/restore.tmp"),
        format!("{}/bk", p(&link)),
        format!("{}/x/../data/shards/bk", p(tmp.path())),
        format!("{data_s}/./import.tmp"),
        format!("{data_s}/shards/../bk"),
    ];
    for out in &spellings {
        let r = c.post_json("/v1/admin/backup", json!({ "out": out })).await;
        assert_eq!(r.status, 400, "{out}: {}", r.text());
        assert!(
            r.text().contains("inside the data directory"),
            "{out}: {}",
            r.text()
        );
    }
    // Nothing was made inside the data directory.
    for name in ["bk", "restore.tmp", "import.tmp"] {
        assert!(!data.join(name).exists(), "{name} made");
    }
    assert!(!data.join("shards/bk").exists());
    // A destination beside it is fine.
    let r = c
        .post_json(
            "/v1/admin/backup",
            json!({ "out": p(&tmp.path().join("ok")) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(c);
    s.stop().await;
    // The CLI's offline backup applies the same rule.
    let out = shardbox(&[
        "backup",
        "--data",
        p(&data),
        "--out",
        &format!("/proc/self/root{data_s}/restore.tmp"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the data directory"));
    // And the directory still opens.
    let s = TestServer::start_in(data, |_| {}).await;
    assert_eq!(s.client().await.get("/v1/kv/app/k").await.text(), "v");
    s.stop().await;
}

const KEYS: usize = 30_000;

/// An export with KEYS keys, a stream of events and a queue of jobs.
async fn make_export(dir: &Path, file: &Path) {
    let s = TestServer::start_in(dir.to_path_buf(), |_| {}).await;
    let mut c = s.client().await;
    for b in 0..KEYS / 1000 {
        let ops: Vec<_> = (0..1000)
            .map(|i| json!({"op": "put", "key": format!("k{}", b * 1000 + i), "value_b64": "dmFsdWU="}))
            .collect();
        let r = c
            .post_json("/v1/kv/app:batchWrite", json!({ "ops": ops }))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Keeps everything: the events' 2025 times stay inside its retention at import.
    let r = c
        .put("/v1/streams/s", r#"{"bucket":"1h","retention":"0"}"#)
        .await;
    assert!(r.status < 300, "{}", r.text());
    let events: String = (0..500)
        .map(|i| format!("{{\"ts\":{},\"data\":{i}}}\n", common::T0_MS + i))
        .collect();
    let r = c
        .send(
            "POST",
            "/v1/streams/s/events",
            &[("content-type", "application/x-ndjson")],
            events,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let jobs: String = (0..500).map(|i| format!("{{\"payload\":{i}}}\n")).collect();
    let r = c
        .send(
            "POST",
            "/v1/queues/q/jobs",
            &[("content-type", "application/x-ndjson")],
            jobs,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    drop(c);
    s.stop().await;
    ok(
        &shardbox(&["export", "--data", p(dir), "--out", p(file)]),
        "export",
    );
}

/// (keys, events, jobs) a stopped directory serves.
fn contents(dir: &Path) -> (usize, usize, usize) {
    let f = dir.with_extension("check.ndjson");
    let _ = std::fs::remove_file(&f);
    ok(
        &shardbox(&["export", "--data", p(dir), "--out", p(&f)]),
        "export",
    );
    let text = std::fs::read_to_string(&f).unwrap();
    let count = |t: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("\"type\":\"{t}\"")))
            .count()
    };
    (count("kv"), count("event"), count("job"))
}

#[tokio::test]
async fn a_killed_import_leaves_the_directory_as_it_was_or_wholly_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("export.ndjson");
    make_export(&tmp.path().join("src"), &file).await;
    let bin = env!("CARGO_BIN_EXE_shardbox");
    let import = |dir: &Path| {
        Command::new(bin)
            .args(["import", "--data", p(dir), "--in", p(&file)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // How long a whole import takes here, for the kill times.
    let started = Instant::now();
    let whole = tmp.path().join("whole");
    assert!(import(&whole).wait().unwrap().success());
    let took = started.elapsed();
    assert_eq!(contents(&whole), (KEYS, 500, 500));
    let mut rng = common::seeded_rng("a_killed_import");
    for cycle in 0..6 {
        let dir = tmp.path().join(format!("d{cycle}"));
        let mut child = import(&dir);
        let at = Duration::from_millis(rng.random_range(20..took.as_millis().max(40) as u64));
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        // Either the server refuses the directory, naming the unfinished import, or it serves
        // all of it or none of it.
        let has_manifest = dir.join("MANIFEST").exists();
        let staging = dir.join("import.tmp").exists();
        let mut complete = false;
        if has_manifest || staging {
            match shardbox::Store::open(shardbox::Config::with_data_dir(&dir)) {
                Err(e) => assert!(e.to_string().contains("unfinished import"), "{e}"),
                Ok(store) => {
                    store.close();
                    drop(store);
                    let got = contents(&dir);
                    assert!(
                        got == (0, 0, 0) || got == (KEYS, 500, 500),
                        "cycle {cycle}: killed at {at:?}, the directory serves {got:?}"
                    );
                    complete = got == (KEYS, 500, 500);
                }
            }
        }
        // Killed before anything was made, or refused, or empty: running the import again (as
        // the message says) gives the whole import, once.
        if !complete {
            let rerun = import(&dir).wait_with_output().unwrap();
            assert!(
                rerun.status.success(),
                "cycle {cycle}: {}",
                String::from_utf8_lossy(&rerun.stderr)
            );
        }
        assert_eq!(
            contents(&dir),
            (KEYS, 500, 500),
            "cycle {cycle} (killed at {at:?})"
        );
        eprintln!("cycle {cycle}: killed at {at:?} of {took:?}: ok");
    }
}

#[tokio::test]
async fn a_restore_killed_in_its_final_cleanup_serves_the_restored_data() {
    if !common::alone() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/app/k", "backed-up").await.status, 201);
    let out = tmp.path().join("bk");
    let r = c
        .post_json("/v1/admin/backup", json!({ "out": p(&out) }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.put("/v1/kv/app/k", "newer").await.status, 200);
    drop(c);
    s.stop().await;
    // The restore stops (a crash) after the new data is in place, while the staging copy is
    // being deleted.
    shardbox::testing::failpoint::set(
        "restore.cleanup",
        shardbox::testing::failpoint::Action::Error("crash".into()),
    );
    let r = shardbox::backup::restore(&out, &dir, true, &shardbox::progress::Progress::quiet());
    shardbox::testing::failpoint::clear("restore.cleanup");
    assert!(r.is_err());
    // The server opens it (no "restore stopped while copying") and serves the backup's data.
    let s = TestServer::start_in(dir.clone(), |_| {}).await;
    assert_eq!(
        s.client().await.get("/v1/kv/app/k").await.text(),
        "backed-up"
    );
    s.stop().await;
    assert!(!dir.join("restore.tmp").exists() && !dir.join("restore.done").exists());
}
