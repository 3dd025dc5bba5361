//! Replay equals the live state: a seeded random workload over every domain (KV with TTLs,
//! counters, batches and prefix deletes; queue jobs through claim/ack/nack/extend/cancel/
//! requeue/purge/pause; event appends, trims and drops; cache purges; schedules; and the
//! clock moving so sweeps, queue timers, cron and retention write too) runs with checkpoints
//! off. Once quiet, the directory is copied while the store runs (a crash image: shard files at
//! their first checkpoint plus the log), the live store stops cleanly, and the copy is opened
//! from the log alone. Every table of every shard must be byte for byte the same.

use crate::common;

use common::{Client, TestServer};
use rand::Rng;
use serde_json::json;
use shardbox::Clock;
use std::time::Duration;

async fn workload(c: &mut Client, s: &TestServer, rng: &mut rand::rngs::StdRng, steps: usize) {
    let mut claimed: Vec<serde_json::Value> = Vec::new();
    for step in 0..steps {
        let k = rng.random_range(0..40);
        let r = match rng.random_range(0..20) {
            0..=3 => {
                let ttl = ["", "?ttl=2s", "?ttl=1h"][rng.random_range(0..3)];
                c.put(
                    &format!("/v1/kv/ns{}/k{k}{ttl}", k % 3),
                    &format!("v{step}"),
                )
                .await
            }
            4 => c.delete(&format!("/v1/kv/ns{}/k{k}", k % 3)).await,
            5 => {
                c.post_json(
                    "/v1/kv/ns0:incr",
                    json!({"key": format!("n{}", k % 5), "by": k}),
                )
                .await
            }
            6 => {
                let ops = json!([
                    {"op": "put", "key": format!("b{k}"), "value_b64": "eA==", "ttl": "3s"},
                    {"op": "delete", "key": format!("b{}", k + 1)}
                ]);
                c.post_json("/v1/kv/ns1:batchWrite", json!({"ops": ops}))
                    .await
            }
            7 if step % 25 == 0 => c.delete("/v1/kv/ns2?prefix=k1").await,
            8 | 9 => {
                let delay = ["", "\"delay\":\"1s\","][rng.random_range(0..2)];
                let body = format!(
                    "{{{delay}\"payload\":{{\"n\":{step}}},\"priority\":{},\"max_attempts\":2}}",
                    k % 10
                );
                // Every third enqueue carries an idempotency key (kept responses, replays and
                // the expiry sweeper are logged like any write).
                let key = format!("e{}", k % 7);
                let (h, body) = if step % 3 == 0 {
                    (
                        vec![("idempotency-key", key.as_str())],
                        format!("{{\"payload\":{}}}", k % 7),
                    )
                } else {
                    (vec![], body)
                };
                c.send("POST", &format!("/v1/queues/q{}/jobs", k % 2), &h, body)
                    .await
            }
            10 => {
                let r = c
                    .post_json(
                        &format!("/v1/queues/q{}/claim", k % 2),
                        json!({"max": 2, "lease": "2s"}),
                    )
                    .await;
                if let Some(jobs) = r.json()["jobs"].as_array() {
                    for j in jobs {
                        let mut j = j.clone();
                        j["q"] = json!(format!("q{}", k % 2));
                        claimed.push(j);
                    }
                }
                r
            }
            11 if !claimed.is_empty() => {
                let j = claimed.swap_remove(rng.random_range(0..claimed.len()));
                let action = ["ack", "nack", "extend"][rng.random_range(0..3)];
                let path = format!(
                    "/v1/queues/{}/jobs/{}/{action}",
                    j["q"].as_str().unwrap(),
                    j["id"].as_str().unwrap()
                );
                c.post_json(&path, json!({"lease_token": j["lease_token"]}))
                    .await
            }
            12 => {
                c.post_json("/v1/queues/q0/dead:requeue", json!({"all": true}))
                    .await
            }
            13 if step % 40 == 0 => c.post_json("/v1/queues/q1:pause", json!({})).await,
            13 => c.post_json("/v1/queues/q1:resume", json!({})).await,
            14 | 15 => {
                let ts = s.clock.now_ms() - rng.random_range(0..7_200_000u64);
                let body = format!(
                    "{{\"ts\":{ts},\"type\":\"t{}\",\"data\":{{\"s\":{step}}}}}\n{{\"data\":[{k}]}}\n",
                    k % 3
                );
                c.send(
                    "POST",
                    &format!("/v1/streams/s{}/events", k % 2),
                    &[("content-type", "application/x-ndjson")],
                    body,
                )
                .await
            }
            16 if step % 30 == 0 => {
                let before = s.clock.now_ms() - 3_600_000;
                c.delete(&format!("/v1/streams/s1/events?before={before}"))
                    .await
            }
            17 => {
                c.post_json(
                    "/v1/cache/web:purge",
                    json!({"tags": [format!("t{}", k % 4)]}),
                )
                .await
            }
            18 if step % 20 == 0 => {
                let body = json!({"cron": "* * * * *", "queue": "cq", "payload": {"s": step}});
                c.send(
                    "PUT",
                    &format!("/v1/schedules/c{}", k % 3),
                    &[],
                    body.to_string(),
                )
                .await
            }
            _ => {
                // Time passes: leases expire, delays elapse, TTLs run out, cron ticks.
                s.clock.advance_ms(rng.random_range(100..40_000));
                continue;
            }
        };
        assert!(r.status < 500, "step {step}: {} {}", r.status, r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_log_alone_rebuilds_every_table() {
    let mut rng = common::seeded_rng("replaying_the_log_alone_rebuilds_every_table");
    let s = TestServer::start_with(|c| {
        c.engine.checkpoint_interval_ms = 86_400_000;
        c.engine.checkpoint_log_bytes = 1 << 40;
        c.engine.wal_segment_bytes = 256 << 10;
        c.kv.sweep_interval_ms = 50;
        c.events.retention_interval_ms = 100;
        c.queue.queue_tick_max_ms = 50;
        c.idempotency.idempotency_ttl_ms = 20_000;
    })
    .await;
    let mut c = s.client().await;
    let r = c
        .send(
            "PUT",
            "/v1/streams/s1",
            &[],
            json!({"bucket": "1h", "retention": "3h"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 201);
    workload(&mut c, &s, &mut rng, 600).await;
    // Quiet: nothing written for longer than any background task's period.
    let engine = s.store.engine().clone();
    let mut last = engine.wal().written_lsn();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = engine.wal().written_lsn();
        if now != last {
            last = now;
            quiet_since = std::time::Instant::now();
        }
    }
    assert_eq!(engine.wal().durable_lsn(), last);
    let checkpoints: u64 = engine
        .shards()
        .iter()
        .map(|s| {
            s.state
                .checkpoints
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(
        checkpoints, 0,
        "the shard files must not have moved past the start"
    );
    assert!(last > 300, "only {last} log records");
    // The crash image, then a clean stop of the live store.
    let image = tempfile::tempdir().unwrap();
    common::copy_data_dir(&s.dir, image.path());
    drop(c);
    drop(engine);
    let dir = s.dir.clone();
    let tmp = s.stop().await;
    let live = common::dump::dump(&dir, false);
    drop(tmp);
    // The image replays from the log alone.
    let store = shardbox::Store::open(shardbox::Config::with_data_dir(image.path())).unwrap();
    let replayed: u64 = store.engine().replay_report().applied.iter().sum();
    assert!(replayed > 300, "replayed {replayed} records");
    tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap();
    let rebuilt = common::dump::dump(image.path(), false);
    let tables: Vec<_> = live.keys().map(|(s, t)| format!("{s}:{t}")).collect();
    assert!(
        tables.iter().any(|t| t.contains("q_jobs")) && tables.iter().any(|t| t.contains("ev/")),
        "{tables:?}"
    );
    for (key, rows) in &live {
        assert_eq!(
            rebuilt.get(key),
            Some(rows),
            "table {key:?} differs after replay"
        );
    }
    assert_eq!(live.len(), rebuilt.len(), "the same tables exist");
}
