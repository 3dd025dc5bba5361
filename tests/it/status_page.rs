//! The status page in a real browser: headless chromium loads `/` from a running server with
//! data in it, runs the page's script, and the numbers it shows must be the API's. At a desktop's and a phone's
//! width no card scrolls sideways and every figure is there on first paint; screenshots of both
//! are kept in `target/tmp/status-page-{1280,412}.png`.

use crate::common;

use common::TestServer;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn browser() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !p.is_empty() {
                return Some(PathBuf::from(p));
            }
        }
    }
    None
}

/// The browser, installed by the repo's script if missing.
fn find_or_install() -> Option<PathBuf> {
    if let Some(b) = browser() {
        return Some(b);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-browser.sh");
    let ok = Command::new("bash")
        .arg(script)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        browser()
    } else {
        None
    }
}

fn headless(bin: &PathBuf, profile: &std::path::Path, args: &[&str], url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=1500",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element carrying `data-k="key"`.
fn shown(dom: &str, key: &str) -> Option<String> {
    let at = dom.find(&format!("data-k=\"{key}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_the_api_says() {
    let Some(bin) = find_or_install() else {
        // CI installs it and says so: there, a missing browser is a failure, not a skip.
        assert!(
            std::env::var_os("REQUIRE_BROWSER").is_none(),
            "REQUIRE_BROWSER is set and no chromium could be found or installed"
        );
        eprintln!(
            "SKIPPED: no chromium, and this machine cannot install it (needs root and apt-get)"
        );
        return;
    };
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for i in 0..7 {
        c.post_json("/v1/queues/mail/jobs", json!({"payload": i}))
            .await;
    }
    c.post_json("/v1/queues/mail/claim", json!({"max": 2}))
        .await;
    c.post_json("/v1/queues/reports/jobs", json!({"payload": 1}))
        .await;
    assert_eq!(
        c.post_json("/v1/queues/reports:pause", json!({}))
            .await
            .status,
        204
    );
    for i in 0..5 {
        let r = c
            .post_json("/v1/streams/clicks/events", json!({"data": {"n": i}}))
            .await;
        assert!(r.status < 300);
    }
    for i in 0..20 {
        c.send("PUT", &format!("/v1/kv/app/k{i}"), &[], "v").await;
        c.get(&format!("/v1/kv/app/k{i}")).await;
    }
    c.send("PUT", "/v1/cache/pages/home?ttl=60s", &[], "html")
        .await;
    c.get("/v1/cache/pages/home").await;
    c.get("/v1/cache/pages/home").await;
    c.get("/v1/cache/pages/missing").await;

    // CPU % needs a second of the window (clock ticks are 10 ms).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let api = c.get("/v1/status").await.json();
    let q = c.get("/v1/queues/mail").await.json();
    let st = c.get("/v1/streams/clicks").await.json();
    let tmp = tempfile::tempdir().unwrap();

    // A desktop and a phone. The virtual time budget is shorter than the page's poll, so what
    // is checked is its first paint: every figure there at once, none waiting for a second poll.
    for (width, height) in [(1280, 900), (412, 915)] {
        let size = format!("--window-size={width},{height}");
        let url = s.url("/");
        let (bin2, profile, size2) = (bin.clone(), tmp.path().to_path_buf(), size.clone());
        let dom = tokio::task::spawn_blocking(move || {
            headless(&bin2, &profile, &["--dump-dom", &size2], &url)
        })
        .await
        .unwrap();
        assert!(
            dom.contains("data-loaded=\"1\""),
            "at {width}px the page's script did not render once: {dom}"
        );
        assert!(
            dom.contains("data-overflow=\"\""),
            "at {width}px a card (or the page) scrolls sideways: {}",
            dom.split("data-overflow=")
                .nth(1)
                .unwrap_or("?")
                .split(' ')
                .next()
                .unwrap_or("?")
        );
        assert_eq!(
            shown(&dom, "queue.mail.ready"),
            Some(q["ready"].to_string())
        );
        assert_eq!(
            shown(&dom, "queue.mail.in_flight"),
            Some(q["in_flight"].to_string())
        );
        assert_eq!(q["ready"], 5);
        assert_eq!(shown(&dom, "queue.mail.state").as_deref(), Some("running"));
        assert_eq!(
            shown(&dom, "queue.reports.state").as_deref(),
            Some("paused")
        );
        assert_eq!(
            shown(&dom, "stream.clicks.events"),
            Some(st["events"].to_string())
        );
        assert_eq!(st["events"], 5);
        assert_eq!(
            shown(&dom, "cache.hits"),
            Some(api["cache"]["hits"].to_string())
        );
        assert_eq!(
            shown(&dom, "cache.misses"),
            Some(api["cache"]["misses"].to_string())
        );
        assert_eq!(api["cache"]["hits"], 2);
        let ratio = api["cache"]["hit_ratio"].as_f64().unwrap();
        assert_eq!(
            shown(&dom, "cache.hit_ratio"),
            Some(format!("{:.1} %", 100.0 * ratio))
        );
        assert_eq!(
            shown(&dom, "log.durability").as_deref(),
            api["log"]["durability"].as_str()
        );
        assert_eq!(shown(&dom, "health").as_deref(), Some("healthy"));
        // Every figure an operator looks for is there, as a value (no dash) on first paint.
        let mut figures: Vec<String> = [
            "win.requests_per_s",
            "win.p50_ms",
            "win.p99_ms",
            "win.server_error_ratio",
            "win.client_errors_per_s",
            "proc.cpu_percent",
            "proc.resident_bytes",
            "http.connections_open",
            "disk.free_bytes",
            "log.disk_bytes",
            "queue.mail.oldest_ready_age",
            "queue.mail.dead",
            "stream.clicks.newest",
            "cache.memory_bytes",
        ]
        .map(String::from)
        .to_vec();
        for domain in ["kv", "queues", "events", "cache"] {
            for f in [
                "per_s",
                "p50_ms",
                "p99_ms",
                "client_errors",
                "server_errors",
            ] {
                figures.push(format!("domain.{domain}.{f}"));
            }
        }
        for shard in api["shards"].as_array().unwrap() {
            let id = shard["id"].as_u64().unwrap();
            figures.push(format!("shard.{id}.file_bytes"));
            figures.push(format!("shard.{id}.ops_per_s"));
        }
        for key in &figures {
            let v = shown(&dom, key);
            assert!(
                v.as_deref().is_some_and(|v| !v.is_empty() && v != "–"),
                "at {width}px `{key}` shows {v:?}"
            );
        }
        // The KV requests above were measured: a rate and latencies, not zero.
        assert_ne!(shown(&dom, "domain.kv.per_s").as_deref(), Some("0.0"));

        // A screenshot of the viewport, kept as the test's artifact.
        let shot =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("status-page-{width}.png"));
        let _ = std::fs::remove_file(&shot);
        let arg = format!("--screenshot={}", shot.display());
        let url = s.url("/");
        let (bin2, profile) = (bin.clone(), tmp.path().to_path_buf());
        tokio::task::spawn_blocking(move || headless(&bin2, &profile, &[&arg, &size], &url))
            .await
            .unwrap();
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let dim = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
        assert_eq!((dim(16), dim(20)), (width, height), "screenshot size");
        eprintln!("screenshot: {}", shot.display());
    }
    s.stop().await;
}
