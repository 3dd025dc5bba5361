//! A batch whose redb commit fails after its record was logged is cancelled by an abort record:
//! it is not acknowledged, its shard stops, and a restart does not replay it. (It arms a
//! process-wide failpoint, so it runs alone: `common::alone`.)

use crate::common;
use shardbox::{Config, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_after_logging_is_not_replayed() {
    if !common::alone() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let open = || {
        let mut config = Config::with_data_dir(&dir);
        config.engine.shards = 2;
        config.engine.checkpoint_interval_ms = 86_400_000;
        Store::open(config).unwrap()
    };
    let store = open();
    store
        .kv()
        .put("ab", "before", b"1".to_vec(), Default::default())
        .await
        .unwrap();
    shardbox::testing::failpoint::set(
        "writer.commit",
        shardbox::testing::failpoint::Action::Error("injected commit failure".into()),
    );
    let failed = store
        .kv()
        .put("ab", "lost", b"2".to_vec(), Default::default())
        .await;
    shardbox::testing::failpoint::clear("writer.commit");
    assert!(
        failed.is_err(),
        "the write whose commit failed is not acknowledged"
    );
    let shard = store
        .engine()
        .shard_for(&shardbox::kv::stored_key("ab", "lost"));
    assert!(
        store
            .engine()
            .failed_shards()
            .iter()
            .any(|(s, _)| *s == shard),
        "its shard stops taking writes"
    );
    // A copy of the log (what the log sink ships and a standby applies) carries the cancelled
    // record as a record of no operation: every frame is whole and applies in order, and the
    // copy holds what the box acknowledged and nothing it refused.
    let feed = store.engine().feed();
    let from = shardbox::engine::feed::Position::after_record(feed.generation(), 0);
    let (records, _) = feed.read_records(from, 100).unwrap();
    assert_eq!(
        records.len(),
        3,
        "the first write, the cancelled one, its abort"
    );
    let copy = {
        // The same MANIFEST (shard count and hash seed), as a standby's restore brings.
        let at = tmp.path().join("copy");
        std::fs::create_dir_all(&at).unwrap();
        std::fs::copy(dir.join("MANIFEST"), at.join("MANIFEST")).unwrap();
        let mut config = Config::with_data_dir(&at);
        config.engine.shards = 2;
        config.engine.checkpoint_interval_ms = 50;
        Store::open(config).unwrap()
    };
    for r in &records {
        let applied = copy.engine().replicate(&r.frame).await;
        let applied = applied.unwrap_or_else(|e| panic!("record {}: {e}", r.lsn));
        applied.await.unwrap().unwrap();
    }
    assert_eq!(copy.kv().get("ab", "lost").unwrap(), None);
    assert_eq!(
        copy.kv().get("ab", "before").unwrap().map(|v| v.payload),
        Some(bytes::Bytes::from_static(b"1"))
    );
    // The abort (the cancelled shard's last record: its shard stopped on the box) does not pin
    // the copy's log: a checkpoint lets go of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while copy.engine().wal().pinned_bytes(shard) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the copied abort keeps pinning shard {shard}'s log"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    copy.close();
    store.close();
    drop(store);

    // The log holds the failed batch's record and the abort after it: replay skips it.
    let store = open();
    assert_eq!(store.kv().get("ab", "lost").unwrap(), None);
    assert_eq!(
        store.kv().get("ab", "before").unwrap().map(|v| v.payload),
        Some(bytes::Bytes::from_static(b"1"))
    );
    store
        .kv()
        .put("ab", "after", b"3".to_vec(), Default::default())
        .await
        .unwrap();
    store.close();
    drop(store);
    let report = shardbox::check::run(&dir, false).unwrap();
    assert!(report.is_clean(), "{}", report.summary());
}
