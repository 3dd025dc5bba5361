//! A warm standby (`shardbox follow`) against a real 3-node nats-server cluster on loopback:
//! it copies its primary's log, serves reads read-only, answers with the position it reflects
//! and waits for `min_position`; killed with SIGKILL under load, the primary is replaced by the
//! promoted standby with every write, job and event it acknowledged (`ack = "hub"`), over
//! several cycles (`STANDBY_TEST_CYCLES`, 3 by default; the closing figures use 20); the old
//! primary, started again, is fenced and takes no write.

use crate::common;
use crate::sink::{export_lines, hub_with};

use common::spawn::{spawn_shardbox, spawn_shardbox_cmd, KillOnDrop};
use common::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a writer had acknowledged: KV keys and values, job ids, event ids.
#[derive(Default, Debug)]
struct Acked {
    kv: BTreeMap<String, String>,
    /// Each acknowledged KV write's `Shardbox-Position` LSN (at or after its own record).
    kv_lsn: BTreeMap<String, u64>,
    jobs: Vec<String>,
    events: Vec<String>,
}

/// Writes KV values, jobs and events to `addr` until `stop` or until the server is gone,
/// keeping what was acknowledged (a 2xx) in `acked`.
async fn writer(addr: SocketAddr, tag: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return;
    };
    let mut c = Client::connect(addr).await;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("{tag}-{i}");
        let value = format!("v-{tag}-{i}");
        let (path, body, kind) = match i % 3 {
            0 => (format!("/v1/kv/cycle/{key}"), value.clone(), 0),
            1 => (
                "/v1/queues/work/jobs".to_string(),
                json!({"payload": {"k": key}}).to_string(),
                1,
            ),
            _ => (
                "/v1/streams/ev/events".to_string(),
                json!({"type": "t", "data": {"k": key}}).to_string(),
                2,
            ),
        };
        let method = if kind == 0 { "PUT" } else { "POST" };
        let headers: &[(&str, &str)] = if kind == 0 {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let r = match tokio::time::timeout(
            Duration::from_secs(10),
            c.try_send(method, &path, headers, body),
        )
        .await
        {
            Ok(Ok(r)) => r,
            _ => return, // the server is gone
        };
        if r.status >= 300 {
            continue;
        }
        let mut a = acked.lock().unwrap();
        match kind {
            0 => {
                let lsn = r
                    .header("shardbox-position")
                    .and_then(|p| p.split(':').nth(1))
                    .and_then(|l| l.parse().ok())
                    .expect("a write's answer names its position");
                a.kv_lsn.insert(key.clone(), lsn);
                a.kv.insert(key, value);
            }
            1 => a.jobs.push(r.json()["id"].as_str().unwrap().to_string()),
            _ => a.events.extend(
                r.json()["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string()),
            ),
        }
    }
}

async fn status(addr: SocketAddr) -> Option<Value> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr))
        .await
        .ok()?;
    let r = c.try_send("GET", "/v1/status", &[], "").await.ok()?;
    (r.status == 200).then(|| r.json())
}

/// Waits until the standby at `standby` has applied everything the primary at `primary` wrote
/// (the same `Shardbox-Position`).
async fn same_position(primary: SocketAddr, standby: SocketAddr) -> String {
    let mut c = Client::connect(primary).await;
    let at = c
        .get("/healthz")
        .await
        .header("shardbox-position")
        .unwrap()
        .to_string();
    // A read that waits for it.
    let mut s = Client::connect(standby).await;
    let r = s.get(&format!("/v1/kv/cycle?min_position={at}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.header("shardbox-position").unwrap().to_string();
    let lsn = |p: &str| p.split(':').nth(1).unwrap().parse::<u64>().unwrap();
    assert!(lsn(&got) >= lsn(&at), "{got} answers min_position {at}");
    at
}

/// What of `acked` (and of `earlier_events`) the box at `addr` lacks.
async fn missing_from(addr: SocketAddr, acked: &Acked, earlier_events: &[String]) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    let mut missing = Vec::new();
    for (k, v) in &acked.kv {
        let r = c.get(&format!("/v1/kv/cycle/{k}")).await;
        if r.status != 200 || r.text() != *v {
            missing.push(format!("kv {k}: {}", r.status));
        }
    }
    for id in &acked.jobs {
        let r = c.get(&format!("/v1/queues/work/jobs/{id}")).await;
        if r.status != 200 {
            missing.push(format!("job {id}: {}", r.status));
        }
    }
    let r = c.get("/v1/streams/ev/events?limit=10000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let have: std::collections::HashSet<String> = r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for id in earlier_events.iter().chain(&acked.events) {
        if !have.contains(id) {
            missing.push(format!("event {id}"));
        }
    }
    missing
}

/// Waits until both sinks of the (new) primary at `addr` stream: they went on where the box's
/// streams end.
async fn sinks_stream(addr: SocketAddr, what: &str) {
    common::eventually(60, what, || async move {
        let s = status(addr).await?;
        (s["sink"]["state"] == "streaming" && s["sink_log"]["state"] == "streaming").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_with_every_acknowledged_write_and_the_old_primary_is_fenced() {
    let Some((_cluster, tmp, env)) = hub_with(
        "ship_log = true\nsnapshot_interval_ms = 0\nack = \"hub\"\nack_timeout_ms = 5000\n",
    )
    .await
    else {
        return;
    };
    let cycles: usize = std::env::var("STANDBY_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (child, mut primary) = spawn_shardbox(&tmp.path().join("box-0"), &env).expect("start");
    let mut primary_child = KillOnDrop(child);
    let mut primary_dir = tmp.path().join("box-0");
    let mut c = Client::connect(primary).await;
    // Something before the snapshot, and the snapshot a standby starts from.
    for i in 0..20 {
        let r = c.put(&format!("/v1/kv/cycle/before-{i}"), "x").await;
        assert!(r.status < 300, "{}", r.text());
    }
    let r = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut acked_all = Acked::default();
    let mut promote_ms = Vec::new();
    for cycle in 0..cycles {
        // A standby, rebuilt from the hub (snapshot, then the log through every earlier
        // promotion), copying the primary as it writes.
        let standby_dir = tmp.path().join(format!("box-{}", cycle + 1));
        let (child, standby) =
            spawn_shardbox_cmd("follow", &standby_dir, &env).expect("start the standby");
        let standby_child = KillOnDrop(child);
        common::eventually(60, "the standby follows", || async move {
            let s = status(standby).await?;
            (s["standby"]["state"] == "following").then_some(())
        })
        .await;
        // Read-only, naming the primary.
        let mut s = Client::connect(standby).await;
        let r = s.put("/v1/kv/cycle/on-standby", "no").await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "standby");
        assert!(r.text().contains("edge-1"), "{}", r.text());

        // A load, then a quiet moment: the standby at the primary's position holds what the
        // primary holds, export for export.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let w = tokio::spawn(writer(
            primary,
            format!("c{cycle}a"),
            stop.clone(),
            acked.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Relaxed);
        w.await.unwrap();
        let at = same_position(primary, standby).await;
        let mut pc = Client::connect(primary).await;
        let theirs = export_lines(&mut pc).await;
        let ours = export_lines(&mut s).await;
        assert_eq!(
            theirs.len(),
            ours.len(),
            "cycle {cycle} at {at}: as many records"
        );
        assert!(
            theirs == ours,
            "cycle {cycle}: the standby's export differs at {at}"
        );
        // Read-your-writes across boxes: a write's position, asked of the standby — whose
        // read cache held the value before (read twice: the second is a cache hit).
        let r = pc.put("/v1/kv/cycle/ryw", "old").await;
        let pos = r.header("shardbox-position").unwrap().to_string();
        for _ in 0..2 {
            let r = s.get(&format!("/v1/kv/cycle/ryw?min_position={pos}")).await;
            assert_eq!((r.status, r.text()), (200, "old".to_string()));
        }
        let r = pc.put("/v1/kv/cycle/ryw", &format!("c{cycle}")).await;
        assert!(r.status < 300, "{}", r.text());
        let pos = r.header("shardbox-position").unwrap().to_string();
        let r = s.get(&format!("/v1/kv/cycle/ryw?min_position={pos}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("c{cycle}"));
        if cycle == 0 {
            // A position of another history, one not given right, one never reached.
            let r = s
                .get("/v1/kv/cycle/ryw?min_position=0000000000000001:1")
                .await;
            assert_eq!(r.status, 409, "{}", r.text());
            assert_eq!(r.json()["error"]["code"], "generation_mismatch");
            let r = s.get("/v1/kv/cycle/ryw?min_position=soon").await;
            assert_eq!(r.status, 400, "{}", r.text());
            let generation = pos.split(':').next().unwrap();
            let r = s
                .get(&format!(
                    "/v1/kv/cycle/ryw?min_position={generation}:999999999"
                ))
                .await;
            assert_eq!(r.status, 504, "{}", r.text());
            assert_eq!(r.json()["error"]["code"], "position_not_reached");
            assert!(r.header("retry-after").is_some());
        }

        // Under load, the primary killed.
        let stop = Arc::new(AtomicBool::new(false));
        let w = tokio::spawn(writer(
            primary,
            format!("c{cycle}b"),
            stop.clone(),
            acked.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let _ = primary_child.0.kill();
        let _ = primary_child.0.wait();
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(15), w).await;

        // Promoted: every acknowledged write is there.
        let r = s.send("POST", "/v1/admin/promote", &[], "").await;
        assert_eq!(r.status, 200, "cycle {cycle}: {}", r.text());
        promote_ms.push(r.json()["took_ms"].as_u64().unwrap());
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            !acked.kv.is_empty() && !acked.jobs.is_empty() && !acked.events.is_empty(),
            "a real load: {acked:?}"
        );
        let missing = missing_from(standby, &acked, &acked_all.events).await;
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged with ack = hub and lost in the promotion: {missing:?}"
        );
        // Its sinks go on where the box's streams end (the changes stream is never ahead of
        // the log stream it holds).
        sinks_stream(standby, "the new primary's sinks stream").await;
        // The new primary takes writes, in a new generation.
        let r = s.put("/v1/kv/cycle/after-promotion", "yes").await;
        assert!(r.status < 300, "{}", r.text());
        assert!(
            !r.header("shardbox-position")
                .unwrap()
                .starts_with(at.split(':').next().unwrap()),
            "a new generation after the promotion"
        );

        // The old primary, started again on its directory: fenced, it takes no write.
        let (child, old) = spawn_shardbox(&primary_dir, &env).expect("restart the old primary");
        let _old_child = KillOnDrop(child);
        let fenced = common::eventually(30, "the old primary is fenced", || async move {
            let mut o = Client::connect(old).await;
            let r = o.put("/v1/kv/cycle/from-the-old-primary", "no").await;
            assert!(
                r.status >= 400,
                "the old primary acknowledged a write after the promotion: {}",
                r.text()
            );
            (r.status == 409).then(|| r.json())
        })
        .await;
        assert_eq!(fenced["error"]["code"], "fenced", "{fenced}");
        let r = Client::connect(old).await.get("/readyz").await;
        assert_eq!(r.status, 503, "{}", r.text());
        drop(_old_child);
        let r = Client::connect(standby)
            .await
            .get("/v1/kv/cycle/from-the-old-primary")
            .await;
        assert_eq!(
            r.status, 404,
            "nothing of the old primary reached the new one"
        );

        acked_all.kv.extend(acked.kv);
        acked_all.jobs.extend(acked.jobs);
        acked_all.events.extend(acked.events);
        primary = standby;
        primary_child = standby_child;
        primary_dir = standby_dir;
    }
    // Every cycle's acknowledged writes, on the last primary.
    let mut c = Client::connect(primary).await;
    for (k, v) in &acked_all.kv {
        let r = c.get(&format!("/v1/kv/cycle/{k}")).await;
        assert_eq!((r.status, r.text()), (200, v.clone()), "kv {k}");
    }
    promote_ms.sort();
    eprintln!(
        "standby: {cycles} cycles, {} acknowledged KV writes, {} jobs, {} events, none lost; promote took {promote_ms:?} ms",
        acked_all.kv.len(),
        acked_all.jobs.len(),
        acked_all.events.len()
    );
}

/// With the default `ack = "local"`, a failover loses exactly the writes acknowledged after the
/// last record the hub held: every acknowledged write at or before the promotion's `through_lsn`
/// is on the new primary, and what is missing all came after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_local_a_failover_loses_only_what_the_hub_did_not_hold() {
    let Some((_cluster, tmp, env)) = hub_with("ship_log = true\nsnapshot_interval_ms = 0\n").await
    else {
        return;
    };
    let (child, primary) = spawn_shardbox(&tmp.path().join("primary"), &env).expect("start");
    let mut primary_child = KillOnDrop(child);
    let mut c = Client::connect(primary).await;
    let r = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (child, standby) =
        spawn_shardbox_cmd("follow", &tmp.path().join("standby"), &env).expect("the standby");
    let mut standby_child = KillOnDrop(child);
    common::eventually(60, "the standby follows", || async move {
        let s = status(standby).await?;
        (s["standby"]["state"] == "following").then_some(())
    })
    .await;
    // Four writers at full speed, the primary killed among them.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(writer(
                primary,
                format!("w{w}"),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = primary_child.0.kill();
    let _ = primary_child.0.wait();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
    }
    let mut s = Client::connect(standby).await;
    let r = s.send("POST", "/v1/admin/promote", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let through = r.json()["through_lsn"].as_u64().unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.kv.len() > 20, "a real load: {}", acked.kv.len());
    let (mut kept, mut lost_after) = (0, 0);
    for (k, v) in &acked.kv {
        let r = s.get(&format!("/v1/kv/cycle/{k}")).await;
        let there = r.status == 200 && r.text() == *v;
        let lsn = acked.kv_lsn[k];
        if lsn <= through {
            assert!(
                there,
                "{k} was acknowledged at record {lsn}, which the hub held (through {through}), and is not on the new primary"
            );
            kept += 1;
        } else if !there {
            lost_after += 1;
        }
    }
    eprintln!(
        "ack = local: {} acknowledged KV writes; {kept} at or before the hub's last record ({through}) all kept; {lost_after} acknowledged after it lost",
        acked.kv.len()
    );
    // The promoted box started again with `follow` by mistake does not follow itself.
    let _ = standby_child.0.kill();
    let _ = standby_child.0.wait();
    let (child, again) =
        spawn_shardbox_cmd("follow", &tmp.path().join("standby"), &env).expect("again");
    let _again = KillOnDrop(child);
    let s = common::eventually(30, "it stops", || async move {
        let s = status(again).await?;
        (s["standby"]["state"] == "stopped").then_some(s)
    })
    .await;
    assert!(
        s["standby"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("shardbox serve")),
        "{s}"
    );
}

/// Polls until a PUT to `addr` succeeds (a primary with `failover = "auto"` takes writes once
/// it holds its lease).
async fn writes_taken(addr: SocketAddr, what: &str) {
    common::eventually(60, what, || async move {
        let mut c = Client::connect(addr).await;
        let r = c.try_send("PUT", "/v1/kv/cycle/probe", &[], "p").await;
        match r {
            Ok(r) if r.status < 300 => Some(()),
            Ok(_) => None,
            Err(e) => panic!("{what}: {e}"),
        }
    })
    .await;
}

/// With `failover = "auto"`: the primary takes writes only while it holds its lease in the
/// hub; one whose lease another process takes stops taking writes (503 `no_lease`) until the
/// lease is free again. A standby does not promote itself while the primary renews its lease,
/// and does, by itself, once the primary is killed and the lease expires — with every write
/// acknowledged under `ack = "hub"`. The old primary, started again, is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failover_auto_a_standby_takes_over_by_itself_once_the_primary_lease_expires() {
    let Some((cluster, tmp, env)) = hub_with(
        "ship_log = true\nsnapshot_interval_ms = 0\nack = \"hub\"\nfailover = \"auto\"\nlease_ms = 2000\n",
    )
    .await
    else {
        return;
    };
    let primary_dir = tmp.path().join("primary");
    let (child, primary) = spawn_shardbox(&primary_dir, &env).expect("start");
    let mut primary_child = KillOnDrop(child);
    writes_taken(primary, "the primary takes its lease and writes").await;
    let s = status(primary).await.unwrap();
    assert_eq!(s["lease"]["held"], true, "{s}");
    assert_eq!(s["lease"]["holder"]["role"], "primary", "{s}");

    // Another process takes the lease: the primary stops taking writes, says why, and takes
    // them again once that lease has expired.
    let js = cluster.jetstream().await;
    let kv = js
        .get_key_value("SHARDBOX_edge-1_LEASE")
        .await
        .expect("the lease bucket");
    let intruder = json!({"node": "intruder", "generation": "0000000000000001", "role": "primary", "at_ms": 0});
    kv.put("primary", intruder.to_string().into())
        .await
        .expect("put the intruder's lease");
    let refused = common::eventually(10, "the primary stops taking writes", || async move {
        let mut c = Client::connect(primary).await;
        let r = c.put("/v1/kv/cycle/while-not-held", "no").await;
        (r.status >= 300).then_some(r)
    })
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "no_lease");
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.text().contains("another process"),
        "{}",
        refused.text()
    );
    let r = Client::connect(primary).await.get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
    writes_taken(
        primary,
        "the primary takes writes again once the lease expired",
    )
    .await;

    // A standby: it does not take over while the primary renews its lease.
    let mut c = Client::connect(primary).await;
    let r = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (child, standby) =
        spawn_shardbox_cmd("follow", &tmp.path().join("standby"), &env).expect("the standby");
    let _standby_child = KillOnDrop(child);
    common::eventually(60, "the standby follows", || async move {
        let s = status(standby).await?;
        (s["standby"]["state"] == "following" && s["lease"]["holder"]["role"] == "primary")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = status(standby).await.unwrap();
    assert_eq!(s["standby"]["state"], "following", "{s}");
    let r = Client::connect(primary)
        .await
        .put("/v1/kv/cycle/still-primary", "yes")
        .await;
    assert!(r.status < 300, "{}", r.text());

    // The primary killed under load: the standby promotes itself.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let w = tokio::spawn(writer(primary, "auto".into(), stop.clone(), acked.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = primary_child.0.kill();
    let _ = primary_child.0.wait();
    let killed = std::time::Instant::now();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
    writes_taken(standby, "the standby promotes itself and takes writes").await;
    let took = killed.elapsed();
    let s = status(standby).await.unwrap();
    assert_eq!(s["standby"]["state"], "promoted", "{s}");
    assert_eq!(s["lease"]["promotions_total"], 1, "{s}");
    assert_eq!(s["lease"]["held"], true, "{s}");
    assert_eq!(s["lease"]["holder"]["role"], "primary", "{s}");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        !acked.kv.is_empty() && !acked.jobs.is_empty() && !acked.events.is_empty(),
        "a real load: {acked:?}"
    );
    let missing = missing_from(standby, &acked, &[]).await;
    assert!(
        missing.is_empty(),
        "acknowledged with ack = hub and lost in the automatic promotion: {missing:?}"
    );
    eprintln!(
        "failover auto: {} KV writes, {} jobs, {} events acknowledged, none lost; writes on the standby {} ms after the kill (lease 2000 ms)",
        acked.kv.len(),
        acked.jobs.len(),
        acked.events.len(),
        took.as_millis()
    );

    // Both its sinks go on where the box's streams end: the changes stream never got ahead
    // of the log stream the standby holds.
    sinks_stream(standby, "the new primary's sinks stream").await;

    // The old primary, back: fenced, never taking a write.
    let (child, old) = spawn_shardbox(&primary_dir, &env).expect("restart the old primary");
    let _old_child = KillOnDrop(child);
    let fenced = common::eventually(30, "the old primary is fenced", || async move {
        let mut o = Client::connect(old).await;
        let r = o.put("/v1/kv/cycle/from-the-old-primary", "no").await;
        assert!(
            r.status >= 400,
            "the old primary acknowledged a write after the promotion: {}",
            r.text()
        );
        (r.status == 409).then(|| r.json())
    })
    .await;
    assert_eq!(fenced["error"]["code"], "fenced", "{fenced}");
    // It let the lease be: the new primary still holds it and writes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = Client::connect(standby)
        .await
        .put("/v1/kv/cycle/after-the-old-came-back", "yes")
        .await;
    assert!(r.status < 300, "{}", r.text());
}

/// With `failover = "auto"`, a standby promotes itself only in place of a primary it saw hold
/// the lease: one following a primary without automatic failover stays a standby when that
/// primary dies. A standby promoted by command while its old primary is alive takes the lease
/// from it: from the promotion on, the old primary answers no write with a 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_standby_replaces_only_a_lease_holder_and_a_promotion_takes_the_lease() {
    let base = "ship_log = true\nsnapshot_interval_ms = 0\nack = \"hub\"\n";
    let Some((cluster, tmp, manual)) = hub_with(base).await else {
        return;
    };
    let auto_dir = tmp.path().join("auto-config");
    std::fs::create_dir_all(&auto_dir).unwrap();
    let auto = crate::sink::config_file_with(
        &auto_dir,
        &cluster.urls(),
        3,
        &format!("{base}failover = \"auto\"\nlease_ms = 1000\n"),
    );
    let (child, p1) = spawn_shardbox(&tmp.path().join("p1"), &manual).expect("start");
    let mut p1_child = KillOnDrop(child);
    let mut c = Client::connect(p1).await;
    let r = c.put("/v1/kv/cycle/first", "1").await;
    assert!(r.status < 300, "{}", r.text());
    let r = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (child, s1) = spawn_shardbox_cmd("follow", &tmp.path().join("s1"), &auto).expect("s1");
    let _s1_child = KillOnDrop(child);
    common::eventually(60, "s1 follows", || async move {
        let s = status(s1).await?;
        (s["standby"]["state"] == "following").then_some(())
    })
    .await;
    let _ = p1_child.0.kill();
    let _ = p1_child.0.wait();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = status(s1).await.unwrap();
    assert_eq!(
        s["standby"]["state"], "following",
        "a standby that never saw a primary hold the lease promoted itself: {s}"
    );
    assert_eq!(s["lease"]["promotions_total"], 0, "{s}");
    // It did look, and found the key free (no primary ever held it), rather than never look.
    assert_eq!(s["lease"]["errors_total"], 0, "{s}");
    assert!(s["lease"]["holder"].is_null(), "{s}");
    let js = cluster.jetstream().await;
    let kv = js
        .get_key_value("SHARDBOX_edge-1_LEASE")
        .await
        .expect("the standby made the lease bucket when it looked");
    assert!(kv.entry("primary").await.unwrap().is_none());

    // Promoted by command, s1 takes the lease; s2 follows it.
    let r = Client::connect(s1)
        .await
        .send("POST", "/v1/admin/promote", &[], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    writes_taken(s1, "s1 holds the lease and writes").await;
    // Its sinks go on from the streams' ends, though its log begins after the record the
    // changes stream ends with (it was rebuilt from a snapshot taken after it).
    sinks_stream(s1, "s1's sinks stream").await;
    let (child, s2) = spawn_shardbox_cmd("follow", &tmp.path().join("s2"), &auto).expect("s2");
    let _s2_child = KillOnDrop(child);
    common::eventually(60, "s2 follows s1 and sees its lease", || async move {
        let s = status(s2).await?;
        (s["standby"]["state"] == "following" && s["lease"]["holder"]["role"] == "primary")
            .then_some(())
    })
    .await;

    // s2 promoted by command while s1 is alive and idle: s1 loses the lease and takes no
    // write from then on; s2 holds it.
    let r = Client::connect(s2)
        .await
        .send("POST", "/v1/admin/promote", &[], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    writes_taken(s2, "s2 holds the lease and writes").await;
    for i in 0..20 {
        let r = Client::connect(s1)
            .await
            .put(&format!("/v1/kv/cycle/old-{i}"), "no")
            .await;
        assert!(
            r.status >= 400,
            "the old primary took a write after its successor's promotion: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = status(s2).await.unwrap();
    assert_eq!(s["lease"]["held"], true, "{s}");
    let s1_status = status(s1).await.unwrap();
    assert_eq!(s1_status["lease"]["held"], false, "{s1_status}");
}
