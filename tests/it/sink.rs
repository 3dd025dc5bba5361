//! The NATS JetStream sink against a real 3-node nats-server cluster on loopback (the pinned
//! release, `sync_interval: always`): under a steady load of writes to every domain, with
//! shardbox killed (SIGKILL) mid-stream 20 times and the stream's leader killed 10 times, the
//! box's stream holds exactly the box's changes — each once, in position order, no gap, the
//! same bodies the box's own feed serves; with the whole hub down, the box keeps taking writes
//! and catches up once the hub is back.

use crate::common;

use common::nats::Cluster;
use common::spawn::{spawn_shardbox, KillOnDrop};
use common::Client;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config_file(dir: &Path, urls: &[String], replicas: usize) -> Vec<(String, String)> {
    config_file_with(dir, urls, replicas, "")
}

/// [`config_file`] with more `[sink.nats]` lines.
pub(crate) fn config_file_with(
    dir: &Path,
    urls: &[String],
    replicas: usize,
    extra: &str,
) -> Vec<(String, String)> {
    let servers: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "[sink.nats]\nservers = [{}]\nbox = \"edge-1\"\nstream = \"SHARDBOX\"\nsubject_prefix = \"shardbox\"\nreplicas = {replicas}\nwindow = 256\n{extra}",
        servers.join(", ")
    );
    let path = dir.join("shardbox.toml");
    std::fs::write(&path, text).unwrap();
    common::env(&[
        ("SHARDBOX_CONFIG", path.to_str().unwrap()),
        ("SHARDBOX_DISK_BALLAST_BYTES", "0"),
        ("SHARDBOX_LOG", "shardbox=info"),
    ])
}

/// A 3-node hub (`None` without a nats-server) and a config for box `edge-1` with `extra`
/// `[sink.nats]` lines, in a temporary directory.
pub(crate) async fn hub_with(
    extra: &str,
) -> Option<(Cluster, tempfile::TempDir, Vec<(String, String)>)> {
    let Some(cluster) = Cluster::start(3).await else {
        eprintln!("skipped: no nats-server");
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    let env = config_file_with(tmp.path(), &cluster.urls(), 3, extra);
    Some((cluster, tmp, env))
}

/// Writes to every domain until `stop`, against whatever address `addr` holds (the server is
/// restarted under it); counts acknowledged writes, and in `refused` the answers that were
/// neither a success nor a 404.
async fn load(
    addr: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let at = *addr.lock().unwrap();
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(at)).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        drop(stream);
        // (Client::connect panics on a refused connection: the server may be going down.)
        let Ok(mut c) = tokio::spawn(Client::connect(at)).await else {
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let r = match i % 4 {
                0 => {
                    c.try_send(
                        "PUT",
                        &format!("/v1/kv/app.x/k{}", i % 50),
                        &[],
                        format!("v{i}"),
                    )
                    .await
                }
                1 => {
                    c.try_send(
                        "POST",
                        "/v1/streams/clicks/events",
                        &[("content-type", "application/json")],
                        json!({"type": "click", "data": {"i": i}}).to_string(),
                    )
                    .await
                }
                2 => {
                    c.try_send(
                        "POST",
                        "/v1/queues/mail/jobs",
                        &[("content-type", "application/json")],
                        json!({"payload": {"i": i}}).to_string(),
                    )
                    .await
                }
                _ => {
                    c.try_send(
                        "DELETE",
                        &format!("/v1/kv/app.x/k{}", (i + 25) % 50),
                        &[],
                        "",
                    )
                    .await
                }
            };
            match r {
                Ok(r) if r.status < 300 || r.status == 404 => {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(_) => break, // the server went away: reconnect
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Runs [`load`] against `addr` for `d`; (acknowledged, refused) writes.
async fn load_for(addr: SocketAddr, d: Duration) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(load(
        Arc::new(Mutex::new(addr)),
        stop.clone(),
        acked.clone(),
        refused.clone(),
    ));
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    (
        acked.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

async fn sink_status(addr: SocketAddr) -> Option<Value> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), Client::connect(addr))
        .await
        .ok()?;
    let r = c.try_send("GET", "/v1/status", &[], "").await.ok()?;
    Some(r.json()["sink"].clone())
}

/// Waits until the sink has shipped everything the box committed.
async fn caught_up(addr: SocketAddr, secs: u64) -> Value {
    common::eventually(secs, "the sink caught up", || async move {
        let s = sink_status(addr).await?;
        (s["state"] == "streaming" && s["lag_records"] == 0).then_some(s)
    })
    .await
}

/// Every message of the box's stream, in stream order: (position, body).
async fn stream_messages(cluster: &Cluster) -> Vec<(String, Value, String)> {
    let js = cluster.jetstream().await;
    // A busy machine (every cluster test at once on two cores) can time a request out.
    let (stream, last) = common::eventually(30, "the box's stream", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("SHARDBOX_edge-1").await.ok()?;
            let last = stream.get_info().await.ok()?.state.last_sequence;
            Some((stream, last))
        }
    })
    .await;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.expect("message");
        let pos = m
            .headers
            .get("Shardbox-Position")
            .unwrap()
            .as_str()
            .to_string();
        let id = m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["position"], pos.as_str());
        assert!(
            m.subject.starts_with(&format!(
                "shardbox.edge-1.{}.",
                body["domain"].as_str().unwrap()
            )),
            "{}",
            m.subject
        );
        out.push((pos, body, id));
    }
    out
}

/// The box's own feed from `after` to its end.
async fn feed(addr: SocketAddr, after: &str) -> Vec<Value> {
    let mut c = Client::connect(addr).await;
    common::read_changes(&mut c, after, "").await.0
}

use common::feed_place as place;

/// A cluster, and shardbox shipping to it with a cursor `verify` at its start (the feed from
/// there is what the stream must hold).
async fn box_and_hub() -> Option<(
    Cluster,
    tempfile::TempDir,
    Vec<(String, String)>,
    KillOnDrop,
    SocketAddr,
    String,
)> {
    let Some(cluster) = Cluster::start(3).await else {
        eprintln!("skipped: no nats-server");
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    let env = config_file(tmp.path(), &cluster.urls(), 3);
    let (child, addr) = spawn_shardbox(&tmp.path().join("data"), &env).expect("start shardbox");
    let child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    let start = common::cursor_now(&mut c, "verify").await;
    Some((cluster, tmp, env, child, addr, start))
}

/// The stream against the feed: the same changes, each once, in order.
async fn check_stream(cluster: &Cluster, addr: SocketAddr, start: &str) -> usize {
    let shipped = stream_messages(cluster).await;
    let want = feed(addr, start).await;
    let mut ids = std::collections::HashSet::new();
    for w in shipped.windows(2) {
        assert!(
            place(&w[0].0) < place(&w[1].0),
            "out of order: {} then {}",
            w[0].0,
            w[1].0
        );
    }
    for (_, _, id) in &shipped {
        assert!(ids.insert(id.clone()), "{id} twice");
    }
    assert_eq!(
        shipped.len(),
        want.len(),
        "the stream holds {} changes, the box's feed {}",
        shipped.len(),
        want.len()
    );
    for ((pos, body, _), w) in shipped.iter().zip(&want) {
        if body.get("omitted_bytes").is_some() {
            // Too large for one NATS message: the change without its value, saying so.
            let mut w = w.clone();
            let map = w.as_object_mut().unwrap();
            for f in ["value", "data", "payload"] {
                map.remove(f);
            }
            map.insert("omitted_bytes".into(), body["omitted_bytes"].clone());
            assert_eq!(body, &w, "at {pos}");
            assert!(body["omitted_bytes"].as_u64().unwrap() > 1 << 20);
        } else {
            assert_eq!(body, w, "at {pos}");
        }
    }
    shipped.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_jetstream_once_in_order_across_kills_of_either_side() {
    let Some((mut cluster, tmp, env, mut child, first, start)) = box_and_hub().await else {
        return;
    };
    let data = tmp.path().join("data");
    let addr = Arc::new(Mutex::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(load(
        addr.clone(),
        stop.clone(),
        acked.clone(),
        Arc::new(AtomicU64::new(0)),
    ));
    let mut rng = common::seeded_rng("sink_kills");
    use rand::Rng;
    // 20 times: shardbox killed mid-stream and started again on the same data.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..400))).await;
        let _ = child.kill();
        let _ = child.wait();
        let (c2, a2) = spawn_shardbox(&data, &env).expect("restart shardbox");
        child = KillOnDrop(c2);
        *addr.lock().unwrap() = a2;
    }
    // 10 times: the stream's leader killed, and started again.
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        // The leader, once both followers are current again (else a kill would take the
        // stream's quorum, which is not what this checks).
        let leader = common::eventually(60, "the stream has a leader and current replicas", || {
            let cluster = &cluster;
            async move {
                let js = tokio::time::timeout(Duration::from_secs(5), cluster.jetstream())
                    .await
                    .ok()?;
                let mut s = match js.get_stream("SHARDBOX_edge-1").await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("get_stream: {e}");
                        return None;
                    }
                };
                let info = match s.info().await {
                    Ok(i) => i.cluster.clone()?,
                    Err(e) => {
                        eprintln!("info: {e}");
                        return None;
                    }
                };
                eprintln!(
                    "cluster: leader {:?} replicas {:?}",
                    info.leader, info.replicas
                );
                (info.replicas.len() == 2 && info.replicas.iter().all(|p| p.current && !p.offline))
                    .then_some(info.leader?)
            }
        })
        .await;
        let i = cluster.index_of(&leader).expect("a node of ours");
        cluster.kill_node(i);
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        cluster.start_node(i);
        cluster.wait_ready().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("round {round}: killed leader {leader}");
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let now = *addr.lock().unwrap();
    let status = caught_up(now, 60).await;
    assert_eq!(
        status["atomic_batches"], true,
        "2.15 takes atomic batches: {status}"
    );
    let n = check_stream(&cluster, now, &start).await;
    eprintln!(
        "{} writes acknowledged, {n} changes shipped once each in order; sink: {status}",
        acked.load(Ordering::Relaxed)
    );
    assert!(n > 500, "only {n} changes");
    let metrics = Client::connect(now).await.get("/metrics").await.text();
    assert_eq!(common::metric(&metrics, "shardbox_sink_lag_records"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_down_makes_the_box_lag_not_stop_and_it_catches_up() {
    let outage = Duration::from_secs(
        std::env::var("SINK_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8),
    );
    let Some((mut cluster, _tmp, _env, _child, addr, start)) = box_and_hub().await else {
        return;
    };
    caught_up(addr, 30).await;
    // A value larger than a NATS message may be (1 MiB by default) goes without its value.
    let mut c = Client::connect(addr).await;
    let big = vec![b'x'; 2 << 20];
    let r = c.send("PUT", "/v1/kv/big/blob", &[], big).await;
    assert_eq!(r.status, 201, "{}", r.text());
    caught_up(addr, 30).await;
    let shipped = stream_messages(&cluster).await;
    let last = &shipped.last().expect("shipped").1;
    assert_eq!(
        (last["key"].as_str(), last.get("value")),
        (Some("blob"), None),
        "{last}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(load(
        Arc::new(Mutex::new(addr)),
        stop.clone(),
        acked.clone(),
        refused.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.load(Ordering::Relaxed);
    for i in 0..3 {
        cluster.kill_node(i);
    }
    let down_at = acked.load(Ordering::Relaxed);
    tokio::time::sleep(outage).await;
    let during = acked.load(Ordering::Relaxed) - down_at;
    let s = sink_status(addr).await.unwrap();
    assert!(
        s["state"] == "disconnected" || s["state"] == "connecting",
        "the sink says it is cut off: {s}"
    );
    assert!(s["lag_records"].as_u64().unwrap() > 0, "{s}");
    // The backlog has an age: its first change was made as the hub went down.
    assert!(s["lag_ms"].as_u64().unwrap() > 0, "{s}");
    // The box went on taking writes and refused none (its rate is a bench's business:
    // `cargo bench --bench suite -- --only sink`).
    eprintln!("{before} writes before the outage, {during} during it; sink {s}");
    assert!(
        during > 0,
        "no write was acknowledged while the hub was down"
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "writes were refused while the hub was down"
    );
    for i in 0..3 {
        cluster.start_node(i);
    }
    let back = Instant::now();
    cluster.wait_ready().await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    caught_up(addr, 60).await;
    eprintln!(
        "backlog of a {} s outage drained {:.1} s after the hub came back",
        outage.as_secs(),
        back.elapsed().as_secs_f64()
    );
    check_stream(&cluster, addr, &start).await;
}

/// docs/operations.md's hub-side recipe, as written there: a JetStream KV bucket whose stream
/// sources the box's stream with a subject transform holds every key the box writes, where the
/// NATS KV API reads it — names with dots, spaces and `=` included (escaped to characters a KV
/// key may hold); a later write replaces the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_bucket_on_the_hub_holds_the_box_keys() {
    use async_nats::jetstream::stream::{Config, Source, SubjectTransform};
    let Some((cluster, _tmp, _env, _child, addr, _start)) = box_and_hub().await else {
        return;
    };
    let mut c = Client::connect(addr).await;
    let odd = "a b=c.d";
    for i in 0..200 {
        let r = c.put(&format!("/v1/kv/app/k{i}"), &format!("v{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = c.put("/v1/kv/app/a%20b%3Dc.d", "odd").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let s = caught_up(addr, 30).await;
    assert_eq!(
        s["atomic_batches"], true,
        "the hub takes atomic batches: {s}"
    );

    let js = cluster.jetstream().await;
    js.create_stream(Config {
        name: "KV_fleet".into(),
        subjects: vec!["$KV.fleet.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 3,
        sources: Some(vec![Source {
            name: "SHARDBOX_edge-1".into(),
            subject_transforms: vec![SubjectTransform {
                source: "shardbox.edge-1.kv.*.*".into(),
                destination: "$KV.fleet.edge-1.{{wildcard(1)}}.{{wildcard(2)}}".into(),
            }],
            ..Default::default()
        }]),
        ..Default::default()
    })
    .await
    .expect("the fleet bucket's stream");
    // A KV get is the last message on `$KV.<bucket>.<key>` (what the KV API reads).
    let bucket = js
        .get_stream("KV_fleet")
        .await
        .expect("the bucket's stream");
    let value = |key: String| {
        let bucket = bucket.clone();
        async move {
            let m = bucket
                .get_last_raw_message_by_subject(&format!("$KV.fleet.{key}"))
                .await
                .ok()?;
            let change: Value = serde_json::from_slice(&m.payload).ok()?;
            change["value"].as_str().map(str::to_string)
        }
    };
    let got = common::eventually(30, "the bucket has the box's keys", || {
        let value = &value;
        async move {
            let last = value("edge-1.app.k199".into()).await?;
            let first = value("edge-1.app.k0".into()).await?;
            Some((first, last))
        }
    })
    .await;
    assert_eq!(got, ("v0".to_string(), "v199".to_string()));
    let key = format!("edge-1.app.{}", shardbox::store::sink::escape(odd));
    assert_eq!(value(key).await.as_deref(), Some("odd"));

    let r = c.put("/v1/kv/app/k0", "again").await;
    assert_eq!(r.status, 200, "{}", r.text());
    common::eventually(30, "the bucket has the new value", || {
        let value = &value;
        async move { (value("edge-1.app.k0".into()).await? == "again").then_some(()) }
    })
    .await;
}

/// A hub from before JetStream's atomic batches (nats-server 2.11.11, one node): the sink says
/// so (`atomic_batches: false`) and ships one change per publish — each once, in order, with
/// no gap, the same bodies as the box's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_without_atomic_batches_gets_one_change_at_a_time() {
    let Some(bin) = common::nats::nats_server_before_batches() else {
        eprintln!("skipped: no nats-server 2.11.11");
        return;
    };
    let cluster = Cluster::start_with(bin, 1, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let env = config_file(tmp.path(), &cluster.urls(), 1);
    let (child, first) = spawn_shardbox(&tmp.path().join("data"), &env).expect("start shardbox");
    let _child = KillOnDrop(child);
    let mut c = Client::connect(first).await;
    let start = common::cursor_now(&mut c, "verify").await;
    let (_, refused) = load_for(first, Duration::from_secs(3)).await;
    let s = caught_up(first, 60).await;
    assert_eq!(s["atomic_batches"], false, "{s}");
    assert_eq!(refused, 0);
    let n = check_stream(&cluster, first, &start).await;
    assert_eq!(s["acked_total"].as_u64(), Some(n as u64), "{s}");
    assert!(n > 50, "only {n} changes");
}

/// Issue 22's restore: a box that ships its log (`ship_log = true`) and a snapshot taken on
/// demand, written to before and after the snapshot (KV puts and deletes, events, jobs enqueued,
/// claimed with a lease and acked), then killed with its data directory lost. `shardbox restore
/// --from-nats` on an empty directory rebuilds it from the newest snapshot and the log after
/// it, and the rebuilt box's export equals the lost box's at its last shipped write — keys,
/// revisions, event ids, job ids, states and leases. A snapshot whose file is damaged on the hub
/// is passed over for the one before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_box_comes_back_from_the_hub() {
    let Some((cluster, tmp, env)) =
        hub_with("ship_log = true\nsnapshot_interval_ms = 0\nsnapshots_keep = 2\n").await
    else {
        return;
    };
    let config = env
        .iter()
        .find(|(k, _)| k == "SHARDBOX_CONFIG")
        .map(|(_, v)| v.clone())
        .unwrap();
    let lost = tmp.path().join("lost");
    let (child, addr) = spawn_shardbox(&lost, &env).expect("start shardbox");
    let mut child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    let run_load = |ms: u64| load_for(addr, Duration::from_millis(ms));
    run_load(1500).await;
    // Two snapshots; the newer one is damaged on the hub below.
    let first = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    run_load(1000).await;
    let second = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second = second.json();
    assert!(
        second["first_lsn"].as_u64() > first["first_lsn"].as_u64(),
        "{first} {second}"
    );
    run_load(1000).await;
    // Jobs claimed with a lease, one acked: states and leases travel too.
    let claimed = c
        .post_json("/v1/queues/mail/claim", json!({"max": 3, "lease": "1h"}))
        .await;
    assert_eq!(claimed.status, 200, "{}", claimed.text());
    let jobs = claimed.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let ack = c
        .post_json(
            &format!(
                "/v1/queues/mail/jobs/{}/ack",
                jobs[0]["id"].as_str().unwrap()
            ),
            json!({"lease_token": jobs[0]["lease_token"]}),
        )
        .await;
    assert!(ack.status < 300, "{}", ack.text());
    // A third snapshot: snapshots_keep = 2 lets the first go.
    let third = c.send("POST", "/v1/admin/snapshot", &[], "").await;
    assert_eq!(third.status, 200, "{}", third.text());
    let third = third.json();
    assert!(
        third["first_lsn"].as_u64() > second["first_lsn"].as_u64(),
        "{second} {third}"
    );
    // Nothing new since: the same snapshot, not another.
    let again = c.send("POST", "/v1/admin/snapshot", &[], "").await.json();
    assert_eq!(again["id"], third["id"], "{again}");
    // Everything shipped: the changes and the log.
    let status = common::eventually(60, "both sinks caught up", || async move {
        let mut c = Client::connect(addr).await;
        let s = c.get("/v1/status").await.json();
        let done = |k: &str| s[k]["state"] == "streaming" && s[k]["lag_records"] == 0;
        (done("sink") && done("sink_log")).then_some(s)
    })
    .await;
    assert_eq!(
        status["sink_log"]["stream"], "SHARDBOX_edge-1_LOG",
        "{status}"
    );
    let before = export_lines(&mut c).await;
    assert!(
        before.len() > 100,
        "a real workload: {} lines",
        before.len()
    );
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&lost).unwrap();

    // The newer snapshot's shard file damaged on the hub: its object rewritten.
    let js = cluster.jetstream().await;
    let bucket = js
        .get_object_store("SHARDBOX_edge-1_SNAPSHOTS")
        .await
        .unwrap();
    {
        use futures_util::StreamExt;
        let mut whole = Vec::new();
        let mut list = bucket.list().await.unwrap();
        while let Some(o) = list.next().await {
            let o = o.unwrap();
            if let Some(id) = o.name.strip_suffix("/DONE").filter(|_| !o.deleted) {
                whole.push(id.to_string());
            }
        }
        whole.sort();
        assert_eq!(
            whole,
            [
                second["id"].as_str().unwrap(),
                third["id"].as_str().unwrap()
            ],
            "the newest two are kept"
        );
    }
    let id = third["id"].as_str().unwrap();
    bucket
        .put(
            format!("{id}/shards/000.redb").as_str(),
            &mut &b"not a shard"[..],
        )
        .await
        .unwrap();

    let rebuilt = tmp.path().join("rebuilt");
    let out = common::cli::shardbox(&[
        "restore",
        "--from-nats",
        "--config",
        &config,
        "--data",
        common::cli::p(&rebuilt),
    ]);
    let text = common::cli::ok(&out, "restore --from-nats");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("from snapshot {}", second["id"].as_str().unwrap())),
        "the older snapshot is used: {text}{stderr}"
    );
    assert!(stderr.contains(id), "the damaged one is named: {stderr}");
    // The rebuilt box, without the sink: the same records as the lost one.
    let plain = common::env(&[("SHARDBOX_DISK_BALLAST_BYTES", "0")]);
    let (child, addr) = spawn_shardbox(&rebuilt, &plain).expect("start the rebuilt box");
    let _child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    let after = export_lines(&mut c).await;
    assert_eq!(after.len(), before.len(), "as many records");
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a, b);
    }
    // A new generation: the lost box's positions are refused.
    let pos = status["sink"]["acked_position"].as_str().unwrap();
    let r = c.get(&format!("/v1/changes?after={pos}")).await;
    assert_eq!(r.status, 409, "{}", r.text());
}

/// Every line of the box's export but its header (which names the box's position).
pub(crate) async fn export_lines(c: &mut Client) -> Vec<Value> {
    let r = c.get("/v1/admin/export").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an export line"))
        .filter(|l: &Value| l["type"] != "header")
        .collect();
    assert_eq!(lines.last().unwrap()["type"], "end", "a whole export");
    lines
}

/// `ack = "hub"`: a write's 2xx comes once the hub holds its log record — the record carrying
/// the value is in the log stream when the reply arrives, every time; with the hub down, a
/// write answers 504 `hub_ack_timeout` after `ack_timeout_ms` and is done on the box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_hub_a_reply_means_the_hub_holds_the_write() {
    let Some((mut cluster, tmp, env)) = hub_with(
        "ship_log = true\nsnapshot_interval_ms = 3600000\nack = \"hub\"\nack_timeout_ms = 1500\n",
    )
    .await
    else {
        return;
    };
    let (child, addr) = spawn_shardbox(&tmp.path().join("data"), &env).expect("start shardbox");
    let _child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    common::eventually(30, "the log sink streams", || async move {
        let mut c = Client::connect(addr).await;
        let s = c.get("/v1/status").await.json();
        (s["sink_log"]["state"] == "streaming").then_some(())
    })
    .await;
    let js = cluster.jetstream().await;
    let mut stream = js.get_stream("SHARDBOX_edge-1_LOG").await.unwrap();
    for i in 0..20 {
        let value = format!("hub-acked-{i}-{:016x}", rand::random::<u64>());
        let r = c
            .send("PUT", &format!("/v1/kv/app/h{i}"), &[], value.clone())
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
        // Right after the reply: the record is in the log stream.
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut found = false;
        for seq in (1..=last).rev().take(8) {
            let m = stream.get_raw_message(seq).await.unwrap();
            if m.payload
                .windows(value.len())
                .any(|w| w == value.as_bytes())
            {
                found = true;
                break;
            }
        }
        assert!(found, "write {i} was answered before the hub held it");
    }
    // The snapshot schedule's first turn, by itself: the hub had none, so one is taken at start.
    common::eventually(60, "a snapshot taken by the schedule", || {
        let js = js.clone();
        async move {
            use futures_util::StreamExt;
            let bucket = js
                .get_object_store("SHARDBOX_edge-1_SNAPSHOTS")
                .await
                .ok()?;
            let mut list = bucket.list().await.ok()?;
            while let Some(Ok(o)) = list.next().await {
                if o.name.ends_with("/DONE") && !o.deleted {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
    for i in 0..3 {
        cluster.kill_node(i);
    }
    let r = c
        .send("PUT", "/v1/kv/app/down", &[], "while the hub is down")
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "hub_ack_timeout");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(1500 ms)"),
        "the timeout it waited: {e}"
    );
    let r = c.get("/v1/kv/app/down").await;
    assert_eq!(r.status, 200, "the write is done on the box");
}
