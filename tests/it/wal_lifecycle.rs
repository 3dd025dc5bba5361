//! The write-ahead log's own life in a served store: checkpoints triggered by log size recycle
//! segments, so the log's disk use stays bounded without anyone asking.

use crate::common;

use common::{eventually, metric, TestServer};

fn wal_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("wal")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_size_checkpoints_recycle_segments_and_bound_the_log() {
    let s = TestServer::start_with(|c| {
        c.engine.checkpoint_interval_ms = 86_400_000; // only the size trigger
        c.engine.checkpoint_log_bytes = 1 << 16;
        c.engine.wal_segment_bytes = 1 << 16;
        c.engine.wal_spare_segments_max = 1;
    })
    .await;
    let mut c = s.client().await;
    let value = "x".repeat(4096);
    // ~4 MiB of log: 64 segments' worth, with a checkpoint every 64 KiB of log per shard.
    for i in 0..1000 {
        let r = c
            .send("PUT", &format!("/v1/kv/big/k{i}"), &[], value.clone())
            .await;
        assert!(r.status < 300, "{} {}", r.status, r.text());
        // The log never holds much more than what the shards still need.
        if i % 100 == 99 {
            let files = wal_files(&s.dir);
            assert!(files <= 8, "{files} files in wal/ after {i} puts");
        }
    }
    let m = eventually(10, "checkpoints and recycling happen", || {
        let addr = s.addr;
        async move {
            let text = common::Client::connect(addr)
                .await
                .get("/metrics")
                .await
                .text();
            let checkpoints: f64 = text
                .lines()
                .filter(|l| l.starts_with("shardbox_shard_checkpoints_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (checkpoints >= 10.0 && metric(&text, "shardbox_wal_segments_recycled_total") >= 1.0)
                .then_some(text)
        }
    })
    .await;
    assert!(
        metric(&m, "shardbox_wal_segments_deleted_total") >= 1.0,
        "spares are capped"
    );
    for i in [0, 500, 999] {
        assert_eq!(c.get(&format!("/v1/kv/big/k{i}")).await.text(), value);
    }
    s.stop().await;
}

/// `periodic:<ms>`: replies do not wait for a sync, and the log syncs by itself within the
/// interval (the durable LSN catches up with the written one with no further request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_syncs_the_log_by_itself() {
    let s = TestServer::start_with(|c| {
        c.engine.durability = shardbox::config::DurabilityMode::parse("periodic:200").unwrap()
    })
    .await;
    let mut c = s.client().await;
    for i in 0..20 {
        let r = c.send("PUT", &format!("/v1/kv/p/k{i}"), &[], "v").await;
        assert_eq!(r.status, 201);
    }
    let addr = s.addr;
    eventually(10, "the log syncs up to what was written", || async move {
        let text = common::Client::connect(addr)
            .await
            .get("/metrics")
            .await
            .text();
        let written = metric(&text, "shardbox_wal_written_lsn");
        let durable = metric(&text, "shardbox_wal_durable_lsn");
        (written >= 20.0 && durable >= written).then_some(())
    })
    .await;
    s.stop().await;
}
