//! KV read caching: a cached value older than the store must never win.
//!
//! Writers and readers race on a few keys for many rounds (real redb shards, real foyer memory
//! cache, reader threads running in parallel with the writers). Each writer publishes the
//! revision of every acknowledged write; each reader notes the newest acknowledged revision of
//! its key *before* it reads and asserts the read is at least that new.

use shardbox::{Config, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const KEYS: usize = 8;
const READS_PER_READER: usize = 150_000;

async fn race(kv_cache_bytes: u64) -> (u64, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("d"));
    config.engine.shards = 2;
    config.kv.kv_cache_bytes = kv_cache_bytes;
    config.engine.durability = shardbox::config::DurabilityMode::parse("periodic:50").unwrap(); // more writes per second: more chances to race
    let store = Store::open(config).unwrap();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..2 {
        let (kv, acked, stop) = (store.kv().clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = (n as usize * 3 + w) % KEYS;
                let key = format!("k{k}");
                let rev = if n.is_multiple_of(2) {
                    kv.put("race", &key, n.to_le_bytes().to_vec(), Default::default())
                        .await
                        .unwrap()
                        .revision
                } else {
                    let ops = vec![shardbox::kv::BatchOp::Put {
                        key: key.clone(),
                        value: n.to_le_bytes().to_vec().into(),
                        ttl_ms: None,
                        if_revision: None,
                    }];
                    match &kv.batch_write("race", ops).await.unwrap()[0] {
                        shardbox::kv::BatchOpResult::Put(p) => p.revision,
                        other => panic!("{other:?}"),
                    }
                };
                acked[k].fetch_max(rev, Ordering::SeqCst);
                n += 1;
            }
            n
        }));
    }

    let mut readers = Vec::new();
    for r in 0..2 {
        let (kv, acked) = (store.kv().clone(), acked.clone());
        readers.push(std::thread::spawn(move || {
            let mut checked = 0u64;
            for i in 0..READS_PER_READER {
                let k = (i * 7 + r) % KEYS;
                let before = acked[k].load(Ordering::SeqCst);
                let got = kv.get("race", &format!("k{k}")).unwrap();
                let rev = got.map_or(0, |v| v.revision);
                assert!(
                    rev >= before,
                    "read of k{k} returned revision {rev}, older than {before} acknowledged before the read began"
                );
                checked += 1;
            }
            checked
        }));
    }
    let mut reads = 0;
    for r in readers {
        reads += tokio::task::spawn_blocking(move || r.join().unwrap())
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    let hits = store
        .kv()
        .read_cache()
        .map_or(0, |c| c.hits.load(Ordering::Relaxed));
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.close())
        .await
        .unwrap();
    assert_eq!(reads, 2 * READS_PER_READER as u64);
    assert!(writes > 100, "writers barely ran: {writes}");
    (writes, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_never_return_a_revision_older_than_an_acknowledged_write() {
    let (_, hits) = race(16 << 20).await;
    // The cache was really in play: most reads of these hot keys were hits.
    assert!(hits > 1000, "only {hits} cache hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cache_bytes_zero_turns_read_caching_off() {
    let (_, hits) = race(0).await;
    assert_eq!(hits, 0);
}

#[tokio::test]
async fn deletes_prefix_deletes_and_ttl_are_seen_through_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::with_data_dir(tmp.path().join("d"));
    let clock = Arc::new(shardbox::ManualClock::new(1_750_000_000_000));
    let store = Store::open_with_clock(config, clock.clone()).unwrap();
    let kv = store.kv();
    let put = |k: &'static str, ttl: Option<u64>| {
        let kv = kv.clone();
        async move {
            let opts = shardbox::kv::PutOptions {
                ttl_ms: ttl,
                ..Default::default()
            };
            kv.put("ns", k, b"v".to_vec(), opts).await.unwrap()
        }
    };
    put("a", None).await;
    put("p/1", None).await;
    put("p/2", None).await;
    put("t", Some(1000)).await;
    for k in ["a", "p/1", "p/2", "t"] {
        assert!(kv.get("ns", k).unwrap().is_some()); // fill
        assert!(kv.get("ns", k).unwrap().is_some()); // hit
    }
    let hits = kv.read_cache().unwrap().hits.load(Ordering::Relaxed);
    assert!(hits >= 4, "{hits}");
    kv.delete("ns", "a", Default::default()).await.unwrap();
    assert!(kv.get("ns", "a").unwrap().is_none());
    assert_eq!(kv.delete_prefix("ns", "p/").await.unwrap(), 2);
    assert!(kv.get("ns", "p/1").unwrap().is_none());
    assert!(kv.get("ns", "p/2").unwrap().is_none());
    clock.advance_ms(1001);
    assert!(
        kv.get("ns", "t").unwrap().is_none(),
        "expired value served from the cache"
    );
    let (n, rev) = kv.incr("ns", "c", 5, None).await.unwrap();
    assert_eq!(kv.get("ns", "c").unwrap().unwrap().revision, rev);
    kv.incr("ns", "c", 1, None).await.unwrap();
    let got = kv.batch_get("ns", &["c".to_string()]).unwrap();
    assert_eq!(
        got[0].as_ref().unwrap().payload,
        (n + 1).to_string().into_bytes()
    );
    store.close();
}
