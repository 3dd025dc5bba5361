//! The write-ahead log against the real binary: SIGKILL with a long log to replay, SIGKILL in
//! the middle of a checkpoint, a log cut at every offset of its last record, a flipped byte in
//! its tail (clean recovery) and in a middle record (refused, naming segment and offset, and
//! reported by `check`).

use crate::common;

use common::{spawn::spawn_shardbox, Client};
use rand::{Rng, SeedableRng};
use shardbox::engine::wal::recovery::{self, ScanError, ScanFailure, Tail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::env;

/// Checkpoints off (in practice): everything after the start stays in the log only.
fn no_checkpoints() -> Vec<(String, String)> {
    env(&[
        ("SHARDBOX_CHECKPOINT_INTERVAL_MS", "86400000"),
        ("SHARDBOX_CHECKPOINT_LOG_BYTES", "1099511627776"),
        ("SHARDBOX_WAL_SEGMENT_BYTES", "1048576"),
    ])
}

type Acked = Arc<Mutex<HashMap<String, String>>>;

/// Concurrent writers that record every acknowledged value, until the server goes away. Each
/// key has one writer, and values sort in the order they were written (`cycle`, then sequence).
async fn write_until_killed(addr: SocketAddr, writers: usize, acked: Acked, cycle: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for i in 0u64.. {
                let key = format!("w{w}-{}", i % 300);
                let value = format!("{cycle:03}-{i:09}");
                match c
                    .try_send("PUT", &format!("/v1/kv/wal/{key}"), &[], value.clone())
                    .await
                {
                    Ok(r) if r.status == 201 || r.status == 200 => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Ok(r) => panic!("unexpected {}: {}", r.status, r.text()),
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn verify(addr: SocketAddr, acked: &Acked) -> usize {
    let snapshot = acked.lock().unwrap().clone();
    let mut c = Client::connect(addr).await;
    for (k, v) in &snapshot {
        let r = c.get(&format!("/v1/kv/wal/{k}")).await;
        assert_eq!(r.status, 200, "acknowledged {k} is missing");
        // A write whose reply was cut off by the kill may have landed too: never older.
        assert!(
            r.text().as_str() >= v.as_str(),
            "{k}: has {}, older than the acknowledged {v}",
            r.text()
        );
    }
    snapshot.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_long_log_replays_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let acked = Acked::default();
    // Small segments: the log to replay crosses many rollovers.
    let mut settings = no_checkpoints();
    settings.retain(|(k, _)| k != "SHARDBOX_WAL_SEGMENT_BYTES");
    settings.push(("SHARDBOX_WAL_SEGMENT_BYTES".into(), "65536".into()));
    for cycle in 0..3 {
        let (mut child, addr) = spawn_shardbox(&dir, &settings).unwrap();
        if cycle > 0 {
            assert!(verify(addr, &acked).await > 0);
            assert!(
                common::scrape(addr, "shardbox_wal_replayed_records").await > 0.0,
                "the restart replayed the log"
            );
        }
        let writers = tokio::spawn(write_until_killed(addr, 8, acked.clone(), cycle));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        writers.await.unwrap();
    }
    let segments = recovery::list_segments(&dir.join("wal")).unwrap();
    assert!(
        segments.len() > 2,
        "the log to replay spans {} segments",
        segments.len()
    );
    let (mut child, addr) = spawn_shardbox(&dir, &settings).unwrap();
    let n = verify(addr, &acked).await;
    assert!(n > 500, "only {n} writes acknowledged");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGKILL while a checkpoint is held before its durable commit, and again after the commit
/// but before the log learns of it: either way every acknowledged write is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_checkpoint_loses_nothing() {
    for point in ["checkpoint.commit", "checkpoint.after_commit"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let acked = Acked::default();
        let mut held = env(&[
            ("SHARDBOX_CHECKPOINT_INTERVAL_MS", "100"),
            ("SHARDBOX_FAILPOINTS", &format!("{point}=pause")),
        ]);
        held.push(("SHARDBOX_WAL_SEGMENT_BYTES".into(), "1048576".into()));
        let (mut child, addr) = spawn_shardbox(&dir, &held).unwrap();
        let writers = tokio::spawn(write_until_killed(addr, 4, acked.clone(), 0));
        // Checkpoints are due after 100 ms; each shard's writer parks in its checkpoint, so a
        // new write is stuck behind it: proof the kill lands mid-checkpoint.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut c = Client::connect(addr).await;
        let stuck = tokio::time::timeout(
            Duration::from_millis(500),
            c.try_send("PUT", "/v1/kv/wal/probe", &[], "p"),
        )
        .await;
        assert!(
            stuck.is_err(),
            "{point}: a write got through; no checkpoint was held"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        writers.await.unwrap();
        let (mut child, addr) = spawn_shardbox(&dir, &[]).unwrap();
        assert!(
            verify(addr, &acked).await > 0,
            "{point}: nothing acknowledged"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Writes `n` keys one at a time (one log record each), SIGKILLs, returns the data dir and
/// the values in order.
async fn crashed_store(n: usize) -> (tempfile::TempDir, PathBuf, Vec<(String, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (mut child, addr) = spawn_shardbox(&dir, &no_checkpoints()).unwrap();
    let mut c = Client::connect(addr).await;
    let mut written = Vec::new();
    for i in 0..n {
        let (k, v) = (format!("k{i:03}"), format!("value-{i}"));
        let r = c.put(&format!("/v1/kv/wal/{k}"), &v).await;
        assert_eq!(r.status, 201);
        written.push((k, v));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    (tmp, dir, written)
}

/// (segment, offset, frame length) of every record, in LSN order.
fn frames(dir: &Path) -> Vec<(PathBuf, u64, usize)> {
    let mut out = Vec::new();
    recovery::scan(&dir.join("wal"), |h, _, seg, off| {
        out.push((seg.to_path_buf(), off, h.frame_len()));
        Ok::<(), ()>(())
    })
    .unwrap();
    out
}

fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

/// Opens a copy in-process (replaying the log) and returns the values it holds.
async fn open_and_read(dir: &Path, keys: &[(String, String)]) -> Result<Vec<bool>, String> {
    let store =
        shardbox::Store::open(shardbox::Config::with_data_dir(dir)).map_err(|e| e.to_string())?;
    let mut present = Vec::new();
    for (k, v) in keys {
        let got = store.kv().get("wal", k).map_err(|e| e.to_string())?;
        if let Some(g) = &got {
            assert_eq!(&g.payload, v.as_bytes(), "{k} has a wrong value");
        }
        present.push(got.is_some());
    }
    tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap();
    Ok(present)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_at_any_offset_ends_the_log_cleanly() {
    let (_tmp, dir, written) = crashed_store(30).await;
    let all = frames(&dir);
    let (seg, start, len) = all.last().cloned().unwrap();
    let n = all.len();
    // Every cut of the last record: zeros from the cut to the record's end (a preallocated
    // segment holds zeros past what was written). The scan ends the log cleanly before it.
    for cut in start..start + len as u64 {
        let copy = tempfile::tempdir().unwrap();
        let wal = copy.path().join("wal");
        common::copy_data_dir(&dir.join("wal"), &wal);
        let seg_copy = wal.join(seg.file_name().unwrap());
        let mut changed = false;
        patch(&seg_copy, |b| {
            let cut_off = &mut b[cut as usize..start as usize + len];
            changed = cut_off.iter().any(|x| *x != 0);
            cut_off.fill(0)
        });
        let mut seen = 0;
        let scan = recovery::scan(&wal, |_, _, _, _| {
            seen += 1;
            Ok::<(), ()>(())
        })
        .unwrap_or_else(|e| panic!("cut at {cut}: refused: {e:?}"));
        // Cutting off bytes that were zeros anyway (the record's padding, a little-endian
        // number's high bytes) leaves the record whole.
        let want = if changed { n - 1 } else { n };
        assert_eq!(seen, want, "cut at {cut} (record at {start}, {len} bytes)");
        assert_eq!(scan.next_lsn as usize, want + 1, "cut at {cut}");
        if cut > start && changed {
            assert!(
                matches!(scan.tail, Tail::Torn { .. }),
                "cut at {cut}: {:?}",
                scan.tail
            );
        }
    }
    // One flipped byte anywhere in the last record: the same clean end.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..64 {
        let at = start as usize + rng.random_range(0..len);
        let copy = tempfile::tempdir().unwrap();
        let wal = copy.path().join("wal");
        common::copy_data_dir(&dir.join("wal"), &wal);
        patch(&wal.join(seg.file_name().unwrap()), |b| {
            b[at] ^= 1 << rng.random_range(0..8)
        });
        let mut seen = 0;
        recovery::scan(&wal, |_, _, _, _| {
            seen += 1;
            Ok::<(), ()>(())
        })
        .unwrap_or_else(|e| panic!("flip at {at}: refused: {e:?}"));
        // A flip in the padding after the payload changes nothing that is checked.
        assert!(seen == n - 1 || seen == n, "flip at {at}: {seen} records");
    }
    // The whole store: a torn last record opens with every earlier write and without the last.
    let copy = tempfile::tempdir().unwrap();
    common::copy_data_dir(&dir, copy.path());
    patch(
        &copy.path().join("wal").join(seg.file_name().unwrap()),
        |b| b[start as usize + len / 2..start as usize + len].fill(0),
    );
    let present = open_and_read(copy.path(), &written).await.unwrap();
    assert!(
        present[..written.len() - 1].iter().all(|p| *p),
        "{present:?}"
    );
    assert!(
        !present[written.len() - 1],
        "the torn record is not replayed"
    );
    // And the untouched store has everything.
    let copy = tempfile::tempdir().unwrap();
    common::copy_data_dir(&dir, copy.path());
    assert!(open_and_read(copy.path(), &written)
        .await
        .unwrap()
        .iter()
        .all(|p| *p));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_durable_records_is_refused_naming_segment_and_offset() {
    let (_tmp, dir, written) = crashed_store(30).await;
    let all = frames(&dir);
    let (seg, start, len) = all[all.len() / 2].clone();
    let copy = tempfile::tempdir().unwrap();
    common::copy_data_dir(&dir, copy.path());
    let seg_copy = copy.path().join("wal").join(seg.file_name().unwrap());
    // A flipped byte inside the payload of a middle record.
    patch(&seg_copy, |b| {
        b[start as usize + 40 + (len - 40) / 2] ^= 0x10
    });
    match recovery::scan(&copy.path().join("wal"), |_, _, _, _| Ok::<(), ()>(())) {
        Err(ScanFailure::Log(ScanError::Corrupt {
            segment, offset, ..
        })) => {
            assert_eq!(segment, seg_copy);
            assert_eq!(offset, start);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let err = open_and_read(copy.path(), &written).await.unwrap_err();
    assert!(
        err.contains(&seg_copy.display().to_string()) && err.contains(&format!("offset {start}")),
        "the error names the segment and offset: {err}"
    );
    let report = shardbox::check::run(copy.path(), false).unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&format!("offset {start}"))),
        "{}",
        report.summary()
    );
    // The undamaged store checks clean (deep: redb first repairs the killed shards' allocator
    // state) and says what the next start will replay.
    let clean = tempfile::tempdir().unwrap();
    common::copy_data_dir(&dir, clean.path());
    let report = shardbox::check::run_with(clean.path(), false, true).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    assert_eq!(
        report.log_pending,
        written.len() as u64,
        "{}",
        report.summary()
    );
}
