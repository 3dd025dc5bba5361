//! The README's walk through the API is a test: its shell blocks are extracted and run, as
//! written, against a fresh real server. Every request must succeed, except those whose comment
//! (on the line or the line above) names the 4xx status they expect; none may get a 5xx.

use crate::common;

use common::{spawn::spawn_shardbox, Client};
use std::collections::BTreeSet;
use std::process::Command;

/// The `sh` blocks of the section "A walk through the API", in order.
fn walk_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find("## A walk through the API")
        .expect("README has the walk");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in rest[..end].lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The 4xx statuses the README allows for a request path: named in a comment on a line that
/// mentions the path, or on the comment line just above it.
fn allowed_4xx(script: &str, path: &str) -> BTreeSet<u16> {
    let lines: Vec<&str> = script.lines().collect();
    let mut allowed = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let cmd = line.split(" # ").next().unwrap_or(line);
        let bare = path.split('?').next().unwrap_or(path);
        if !mentions(cmd, bare) {
            continue;
        }
        let mut comments = vec![line.split_once('#').map_or("", |(_, c)| c)];
        if i > 0 && lines[i - 1].trim_start().starts_with('#') {
            comments.push(lines[i - 1]);
        }
        for c in comments {
            for word in c.split(|ch: char| !ch.is_ascii_digit()) {
                if let Ok(n) = word.parse::<u16>() {
                    if (400..500).contains(&n) {
                        allowed.insert(n);
                    }
                }
            }
        }
    }
    allowed
}

/// Whether a command line names exactly `path` (not a longer path that starts with it):
/// `/v1/kv/app` is not mentioned by `/v1/kv/app/user/42`. Shell variables stand for one segment.
fn mentions(cmd: &str, path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').collect();
    cmd.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '?'))
        .filter_map(|word| {
            word.find("/v1/")
                .or(word.find("/readyz"))
                .or(word.find("/metrics"))
                .map(|i| &word[i..])
        })
        .any(|word| {
            let ws: Vec<&str> = word.split('/').collect();
            ws.len() == segs.len()
                && ws
                    .iter()
                    .zip(&segs)
                    .all(|(w, p)| w == p || w.starts_with('$') || w.contains("$("))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let blocks = walk_blocks(&readme);
    assert!(blocks.len() >= 4, "found {} blocks", blocks.len());
    let script = blocks.join("\n");
    assert!(script.contains("B=http://127.0.0.1:7070"));

    let tmp = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_shardbox(&tmp.path().join("data"), &[]).unwrap();
    // Killed however the test ends (a failed assertion must not leave a server running).
    let _child = common::spawn::KillOnDrop(child);
    let log_dir = tmp.path().join("requests");
    std::fs::create_dir(&log_dir).unwrap();
    // Every curl call writes "<status> <method> <url>" to a file of its own (a call sent to the
    // background must not interleave its line with the next one's); the script runs unchanged.
    let prelude = format!(
        "curl() {{ command curl -sS --max-time 30 -w '%{{stderr}}@@ %{{http_code}} %{{method}} %{{url_effective}}\\n' \"$@\" 2>>\"{log}/$(date +%s%N).$BASHPID\"; }}\n",
        log = log_dir.display()
    );
    let body = script
        .replace("B=http://127.0.0.1:7070", &format!("B=http://{addr}"))
        .replace(
            "SB=./target/release/shardbox",
            &format!("SB={}", env!("CARGO_BIN_EXE_shardbox")),
        );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}{body}"))
            .output()
            .expect("run bash")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut files: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let logged: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    let calls: Vec<(u16, String, String)> = logged
        .lines()
        .filter_map(|l| {
            let mut p = l.strip_prefix("@@ ")?.splitn(3, ' ');
            Some((
                p.next()?.parse().ok()?,
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect();
    let curl_calls = script.matches("curl ").count();
    assert!(
        calls.len() >= curl_calls,
        "{} requests logged for {curl_calls} curl calls\n{logged}\n{stdout}",
        calls.len()
    );
    for (status, method, url) in &calls {
        let path = url
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        let ok = match status {
            200..=299 => true,
            400..=499 => allowed_4xx(&script, &path).contains(status),
            _ => false,
        };
        assert!(
            ok,
            "{method} {path} answered {status}\nlog:\n{logged}\noutput:\n{stdout}"
        );
    }

    // What the walk leaves behind is what it says it does.
    let mut c = Client::connect(addr).await;
    let r = c.get("/v1/kv/app/user/42").await;
    assert_eq!(r.text(), r#"{"name":"ada l."}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let clicks = c.get("/v1/streams/clicks").await.json();
    assert_eq!(
        clicks["events"], 1,
        "the recent event stays, the old one is trimmed: {clicks}"
    );
    let q = c.get("/v1/queues/emails").await.json();
    assert_eq!(q["paused"], true, "{q}");
    assert!(
        stdout.contains("lease_token"),
        "the claim printed its job:\n{stdout}"
    );
    // The shell client's lines ("From the shell").
    for line in [
        "\nhello\nexit 3: no such key\n",
        "acked job ",
        "exit 3: nothing to do",
        "disk.free_bytes: ",
    ] {
        assert!(stdout.contains(line), "{line:?} in the output:\n{stdout}");
    }
    assert!(
        stdout.contains("filled"),
        "the waiting cache reader got the fill:\n{stdout}"
    );
    // The walk shows what it says: a second page, a dead job, events on the SSE tail.
    assert!(
        stdout.contains(r#""key":"user/44""#) && stdout.contains(r#""cursor":null"#),
        "the listing's second page:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""state":"dead""#) && stdout.contains("smtp timeout"),
        "the nacked job among the dead:\n{stdout}"
    );
    assert!(
        stdout.matches("\nid: ").count() >= 2 || stdout.starts_with("id: "),
        "the SSE tail replayed the stream's events:\n{stdout}"
    );
}
